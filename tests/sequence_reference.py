"""Independent float64 reference for linear layers that see ``(batch, sequence, features)``.

:class:`SeqNet` is a tiny language model (embedding → linear → tanh → linear over every
position) that records each linear layer's input and (gradient-retaining) output. The
statistics of the paper are recomputed here by explicit loops over sequences and positions, a
path that shares nothing with the library's hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LINEARS = ("fc1", "fc2")


class SeqNet(nn.Module):
    """``Embedding(vocab, d)`` → ``Linear(d, hidden)`` → tanh → ``Linear(hidden, vocab)``.

    Takes int64 tokens ``(B, T)`` and returns logits ``(B, T, vocab)``; ``forward`` records each
    linear layer's input and output in ``self.io``.
    """

    def __init__(self, vocab: int = 7, d: int = 4, hidden: int = 5, bias: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc1 = nn.Linear(d, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, vocab, bias=bias)
        self.double()
        self.io: dict[str, tuple[Tensor, Tensor]] = {}

    def _run(self, name: str, layer: nn.Module, x: Tensor) -> Tensor:
        y = layer(x)
        y.retain_grad()
        self.io[name] = (x.detach(), y)
        return y

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.emb(tokens)
        x = torch.tanh(self._run("fc1", self.fc1, x))
        return self._run("fc2", self.fc2, x)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy averaged over every position of every sequence (as ``train.py``)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def token_batch(gen: torch.Generator, b: int = 3, t: int = 5, vocab: int = 7) -> tuple:
    """Random ``(tokens, targets)``, both int64 ``(b, t)``."""
    return torch.randint(vocab, (b, t), generator=gen), torch.randint(vocab, (b, t), generator=gen)


def sequence_rows(
    net: SeqNet, name: str, sequences: int | None = None
) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """Per sequence ``s`` and position ``t``: the input row ``a[s][t]`` (a trailing 1 with a
    bias) and the output-gradient row ``b[s][t]`` of a linear layer; the first ``sequences``
    sequences only when given."""
    layer = getattr(net, name)
    x, y = net.io[name]
    count = x.shape[0] if sequences is None else sequences
    a_rows, b_rows = [], []
    for s in range(count):
        a_seq, b_seq = [], []
        for t in range(x.shape[1]):
            a = x[s, t]
            if layer.bias is not None:
                a = torch.cat([a, torch.ones(1, dtype=a.dtype)])
            a_seq.append(a)
            b_seq.append(y.grad[s, t])
        a_rows.append(a_seq)
        b_rows.append(b_seq)
    return a_rows, b_rows


def position_means(net: SeqNet, name: str, sequences: int | None = None) -> tuple[Tensor, Tensor]:
    """ā and b̄: means of the rows over all sequences *and* positions (``S·T`` rows)."""
    a_rows, b_rows = sequence_rows(net, name, sequences)
    n = len(a_rows) * len(a_rows[0])
    a_bar = sum(a for seq in a_rows for a in seq) / n
    b_bar = sum(b for seq in b_rows for b in seq) / n
    return a_bar, b_bar


def position_factors(net: SeqNet, name: str) -> tuple[Tensor, Tensor]:
    """``R = mean a aᵀ`` and ``Q = mean b bᵀ`` over all sequences and positions."""
    a_rows, b_rows = sequence_rows(net, name)
    n = len(a_rows) * len(a_rows[0])
    r = sum(torch.outer(a, a) for seq in a_rows for a in seq) / n
    q = sum(torch.outer(b, b) for seq in b_rows for b in seq) / n
    return r, q


def eva_direction(a_bar: Tensor, b_bar: Tensor, g: Tensor, gamma: float) -> Tensor:
    """Eq. 11–13 as a dense solve: ``(v vᵀ + γI)⁻¹ vec(G)`` with ``v = b̄ ⊗ ā`` (row-major vec)."""
    v = torch.kron(b_bar, a_bar)
    c = torch.outer(v, v) + gamma * torch.eye(v.numel(), dtype=v.dtype)
    return torch.linalg.solve(c, g.flatten()).reshape(g.shape)
