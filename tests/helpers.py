"""Small shared test utilities: tiny models (``TinyMLP``, ``TinyCNN``, ``BatchNormCNN``, the
BatchNorm network ``ConvBN``), deterministic batches, a train-steps runner, parameter counts, the
registry's names (``NAMES``, ``STAT_NAMES``) and helpers to build any registered preconditioner
with only the keyword arguments it accepts."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import eva
from eva.options import OPTION_NAMES

DTYPE = torch.float64

Batch = tuple[Tensor, Tensor]


def registry_names() -> list[str]:
    """Config names of all registered preconditioners (new ones are covered automatically)."""
    return sorted(eva.PRECONDITIONERS)


NAMES = registry_names()
"""Every registered preconditioner's config name (for ``parametrize``)."""
STAT_NAMES = [n for n in NAMES if eva.PRECONDITIONERS[n].statistics_needed]
"""The registered preconditioners that capture layer statistics (``statistics_needed``)."""


def accepted_kwargs(cls: type) -> set[str]:
    """Names of the keyword arguments ``cls(model, optimizer, ...)`` accepts."""
    params = inspect.signature(cls).parameters.values()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    own = {p.name for p in params if p.kind in kinds} - {"model", "optimizer"}
    return own | OPTION_NAMES


# Where several steps at lr 0.1 are compared numerically: M-FAC's default damping (1e-5, tuned for
# lr ~ 1e-3) multiplies a fresh window's gradient by ~1e4, and the chaotic run that follows
# amplifies rounding differences beyond any tolerance.
STABLE_KWARGS: dict[str, dict[str, Any]] = {"mfac": {"damping": 1e-2}}


def build(cls: type, model: nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any):
    """``cls(model, optimizer, **kwargs)`` keeping only the kwargs the class accepts."""
    accepted = accepted_kwargs(cls)
    return cls(model, optimizer, **{k: v for k, v in kwargs.items() if k in accepted})


class TinyMLP(nn.Module):
    """Linear → ReLU → Linear → ReLU → Linear."""

    def __init__(self, d_in: int = 6, hidden: int = 5, d_out: int = 3, inplace: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x), inplace=self.inplace)
        x = F.relu(self.fc2(x), inplace=self.inplace)
        return self.fc3(x)


class TinyCNN(nn.Module):
    """Two convolutions (one strided, one without bias) and two linear layers on 3×6×6 images."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
        self.fc1 = nn.Linear(4 * 3 * 3, 6)
        self.fc2 = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class BatchNormCNN(TinyCNN):
    """TinyCNN with a batch-statistics BatchNorm after each convolution and fc1: b̄ = 0 there
    (eva.batchnorm), and Eva skips their ā (only fc2 keeps a rank-one correction)."""

    def __init__(self, classes: int = 3):
        super().__init__(classes)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm1d(6)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.fc1(x.flatten(1))))
        return self.fc2(x)


def make_model(builder: Callable[[], nn.Module] = TinyCNN, seed: int = 0) -> nn.Module:
    """A float64 model initialised from ``seed``."""
    torch.manual_seed(seed)
    return builder().to(DTYPE)


def copy_model(model: nn.Module, builder: Callable[[], nn.Module] = TinyCNN) -> nn.Module:
    """A fresh instance with the same parameters (no hooks carried over)."""
    twin = make_model(builder, seed=12345)
    twin.load_state_dict(model.state_dict())
    return twin


def image_batches(n: int, batch: int = 8, classes: int = 3, seed: int = 1) -> list[Batch]:
    """``n`` deterministic float64 batches of 3×6×6 images with labels."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, 6, 6, generator=g, dtype=DTYPE),
         torch.randint(classes, (batch,), generator=g))
        for _ in range(n)
    ]  # fmt: skip


def vector_batches(n: int, batch: int = 8, d_in: int = 6, classes: int = 3, seed: int = 1):
    """``n`` deterministic float64 batches of ``d_in``-vectors with labels."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, d_in, generator=g, dtype=DTYPE),
         torch.randint(classes, (batch,), generator=g))
        for _ in range(n)
    ]  # fmt: skip


def in_backward() -> bool:
    """Whether a backward pass is running (reads a torch internal: there is no public API)."""
    return torch._C._current_graph_task_id() != -1


def sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.SGD:
    """SGD with momentum and weight decay, as in the paper."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def forward_backward(model: nn.Module, batch: Batch, reduction: str = "mean") -> Tensor:
    """Cross-entropy forward and backward; returns the loss."""
    x, y = batch
    loss = F.cross_entropy(model(x), y, reduction=reduction)
    loss.backward()
    return loss


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    preconditioner: Any | None,
    batches: Iterable[Batch],
) -> None:
    """The usual loop: zero_grad, forward/backward, ``preconditioner.step()``, optimizer step."""
    for batch in batches:
        optimizer.zero_grad()
        forward_backward(model, batch)
        if preconditioner is not None:
            preconditioner.step()
        optimizer.step()


def grads(model: nn.Module) -> dict[str, Tensor | None]:
    """A copy of every parameter's ``.grad`` by qualified name."""
    return {
        n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()
    }


def assert_params_equal(a: nn.Module, b: nn.Module) -> None:
    """Bit-for-bit equality of all parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs: max |Δ| = {(sa[k] - sb[k]).abs().max()}"


def preconditioned_grads(
    model: nn.Module,
    name: str,
    batches: Iterable[Batch],
    wrap: Callable[[nn.Module], Callable[[Tensor], Tensor]] | None = None,
) -> list[list[Tensor]]:
    """Each step's preconditioned gradients of ``model`` under registered preconditioner
    ``name`` (refreshing every step, SGD with momentum), the forward run through ``wrap(model)``
    when given (e.g. ``torch.compile``)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pre = eva.PRECONDITIONERS[name](model, optimizer, update_interval=1)
    net = wrap(model) if wrap is not None else model
    steps = []
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        pre.step()
        steps.append([p.grad.clone() for p in model.parameters()])  # type: ignore[union-attr]
        optimizer.step()
    return steps


def assert_runs_close(got: list[list[Any]], want: list[list[Any]], **tolerance: float) -> None:
    """Step by step, tensor by tensor ``assert_close`` (``None`` where the other is ``None``)."""
    for got_step, want_step in zip(got, want, strict=True):
        for g, w in zip(got_step, want_step, strict=True):
            if w is None:
                assert g is None
            else:
                torch.testing.assert_close(g, w, **tolerance)


def _shift_output_gradient(module: nn.Module, inputs: tuple, output: Tensor) -> None:
    output.register_hook(lambda g: g + 1.0)


class ConvBN(nn.Module):
    """conv → BN → ReLU → conv → BN → flatten → linear → BN1d → linear, with optional twists
    on the first convolution's output (``use``)."""

    def __init__(self, use: str = "plain", bn: type[nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.use = use
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = bn(4)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 4 * 4, 5)
        self.bn3 = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 2)
        if use == "grad_hook":  # runs before the preconditioner's hooks (registered earlier)
            self.conv1.register_forward_hook(_shift_output_gradient)

    def forward(self, x: Tensor) -> Tensor:
        o = self.conv1(x)
        if self.use == "inplace_before_bn":
            o = o.mul_(2.0)
        y = torch.relu(self.bn1(o))
        if self.use == "second_consumer":  # a residual use of the raw convolution output
            y = y + 0.5 * o.tanh()
        y = torch.relu(self.bn2(self.conv2(y)))
        return self.fc2(torch.relu(self.bn3(self.fc1(y.flatten(1)))))


def fresh(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
