"""Learning-rate schedules of the paper, built from ``torch.optim.lr_scheduler``, stepped per
iteration.

- ``multistep``: linear warmup, then ×``gamma`` at the given fractions of training
  (the paper's CIFAR recipe: 5 warmup epochs, ×0.1 at 35 %, 75 %, 90 %);
- ``cosine``: linear warmup, then cosine annealing to 0 (Fig. 8);
- ``linear``: linear warmup, then linear decay to 0 (the autoencoder runs of Fig. 4);
- ``constant``: linear warmup, then the base lr.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

SCHEDULES = ("multistep", "cosine", "linear", "constant")


def build_schedule(
    optimizer: Optimizer,
    name: str,
    total_steps: int,
    warmup_steps: int = 0,
    milestones: Sequence[float] = (0.35, 0.75, 0.9),
    gamma: float = 0.1,
) -> LRScheduler:
    """A per-iteration schedule over ``total_steps`` iterations.

    Args:
        optimizer: The first-order optimizer.
        name: One of ``multistep``, ``cosine``, ``linear``, ``constant``.
        total_steps: Iterations in the whole run.
        warmup_steps: Linear warmup from ``lr/warmup_steps`` to ``lr`` over these iterations.
        milestones: ``multistep`` decay points as fractions of ``total_steps``.
        gamma: ``multistep`` decay factor.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name must be one of {SCHEDULES}, got {name!r}")
    warmup_steps = min(warmup_steps, total_steps)
    rest = max(total_steps - warmup_steps, 1)
    if name == "multistep":
        steps = sorted({max(round(f * total_steps) - warmup_steps, 1) for f in milestones})
        main: LRScheduler = MultiStepLR(optimizer, milestones=steps, gamma=gamma)
    elif name == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=rest)
    elif name == "linear":
        main = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=rest)
    else:
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup_steps == 0:
        return main
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])
