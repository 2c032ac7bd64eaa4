"""eva — Eva, Eva-f, Eva-s and second-order baselines as gradient preconditioners for PyTorch.

Usage::

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    preconditioner = Eva(model, optimizer, damping=0.03, running_avg=0.95, kl_clip=0.001)
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        preconditioner.step()  # rewrites .grad of the layers it handles
        optimizer.step()
"""

from eva.eva import Eva
from eva.eva_f import EvaF
from eva.eva_gradnorm import EvaGradNorm
from eva.eva_s import EvaS
from eva.foof import FOOF
from eva.kfac import KFAC
from eva.mfac import MFAC
from eva.preconditioner import Preconditioner
from eva.shampoo import Shampoo

PRECONDITIONERS: dict[str, type[Preconditioner]] = {
    "eva": Eva,
    "eva_f": EvaF,
    "eva_s": EvaS,
    "kfac": KFAC,
    "foof": FOOF,
    "shampoo": Shampoo,
    "mfac": MFAC,
    "eva_gradnorm": EvaGradNorm,
}
"""Config name → preconditioner class."""

__all__ = [
    "PRECONDITIONERS",
    "FOOF",
    "KFAC",
    "MFAC",
    "Eva",
    "EvaF",
    "EvaGradNorm",
    "EvaS",
    "Preconditioner",
    "Shampoo",
]
