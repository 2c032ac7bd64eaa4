"""``models/cifar_resnet.py``: option-A shortcuts, and Eva finding the expected layers of a CIFAR
ResNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import eva
from models.cifar_resnet import ShortcutA, resnet20
from tests.helpers import n_params


def test_option_a_shortcut_is_parameter_free() -> None:
    model = resnet20()
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2  # entries of stages 2 and 3
    assert all(n_params(s) == 0 and not list(s.buffers()) for s in shortcuts)
    # Only 3×3 convolutions: 1 stem + 2 per block × 9 blocks; no 1×1 projection.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)

    shortcut = ShortcutA(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_eva_finds_resnet20_layers_and_steps() -> None:
    torch.manual_seed(0)
    model = resnet20()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    preconditioner = eva.Eva(model, optimizer)
    names = [layer.name for layer in preconditioner.layers]
    assert len(names) == 20  # 19 convolutions + the linear head
    assert names[0] == "conv1" and names[-1] == "fc"

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    preconditioner.step()
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert not torch.equal(before[0], after[0].detach())
