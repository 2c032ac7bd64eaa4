"""A small decoder-only transformer language model (GPT-style), written for this project.

Tokens and positions are embedded (learned tables), added, and passed through ``n_layer``
pre-LayerNorm blocks ``x + attention(norm(x))`` then ``x + mlp(norm(x))``; a final LayerNorm and a
linear head give next-token logits. Every matrix multiplication is an ``nn.Linear`` applied to a
``(batch, sequence, features)`` tensor, which is the shape the preconditioners see: they average
their statistics over batch *and* positions (see :mod:`eva.statistics`). The embeddings are not
``nn.Linear`` and stay with the first-order optimizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPT", "CausalSelfAttention", "FeedForward", "DecoderBlock"]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` attends to positions ``≤ t``.

    Queries, keys and values come from one ``nn.Linear(d_model, 3·d_model)`` (``qkv``) and the heads
    are merged by ``nn.Linear(d_model, d_model)`` (``proj``); attention itself is
    ``F.scaled_dot_product_attention(..., is_causal=True)``.

    Args:
        d_model: Width of the residual stream.
        n_head: Number of heads; must divide ``d_model``.
        dropout: Dropout on the attention weights and on the output (training only).
    """

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, d_model)`` → ``(B, T, d_model)``."""
        b, t, d = x.shape
        heads = (
            part.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
            for part in self.qkv(x).split(d, dim=-1)
        )
        q, k, v = heads
        p = self.dropout if self.training else 0.0
        mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.out_drop(self.proj(mixed.transpose(1, 2).reshape(b, t, d)))


class FeedForward(nn.Module):
    """Position-wise MLP: ``Linear(d, 4d)`` → GELU → ``Linear(4d, d)`` → dropout."""

    def __init__(self, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, d_model)`` → ``(B, T, d_model)``."""
        return self.drop(self.proj(F.gelu(self.fc(x))))


class DecoderBlock(nn.Module):
    """One pre-LayerNorm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, d_model)`` → ``(B, T, d_model)``."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class GPT(nn.Module):
    """Decoder-only transformer: int64 token ids ``(B, T)`` → next-token logits ``(B, T, vocab)``.

    Weights are drawn from N(0, 0.02²), biases and LayerNorm shifts start at zero, and the two
    linear layers that write into the residual stream in every block (``attn.proj``,
    ``mlp.proj``) are scaled down by ``1/√(2·n_layer)`` so that the stream's variance does not
    grow with depth (the GPT-2 initialisation).

    Module names (what ``skip_layers`` patterns match): ``tok_emb``, ``pos_emb``,
    ``blocks.<i>.attn.qkv``, ``blocks.<i>.attn.proj``, ``blocks.<i>.mlp.fc``,
    ``blocks.<i>.mlp.proj``, ``ln_f`` and ``head``.

    Args:
        vocab_size: Number of token ids (256 for bytes).
        context: Longest sequence the model takes (size of the position table).
        n_layer: Number of blocks.
        n_head: Attention heads per block; must divide ``d_model``.
        d_model: Width of the residual stream.
        dropout: Dropout probability on embeddings, attention and block outputs. Default 0.
        tie_weights: Share the head's weight with the token embedding. Default ``False``: a
            tied weight is one parameter used by an ``nn.Embedding`` and by the ``nn.Linear``
            head, so its gradient holds both uses, while a preconditioner that handles the head
            builds its curvature from the head's inputs and output gradients only; the
            preconditioned step would then be wrong for the embedding half. Untied weights keep
            every preconditioned ``nn.Linear`` the sole user of its weight. With tying, leave the
            head to the first-order optimizer (``skip_layers=["head"]``).

    Raises:
        ValueError: A size that is not a positive integer, ``n_head`` not dividing ``d_model``,
            or a dropout outside ``[0, 1)``.
    """

    def __init__(
        self,
        vocab_size: int,
        context: int,
        n_layer: int,
        n_head: int,
        d_model: int,
        dropout: float = 0.0,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("context", context),
            ("n_layer", n_layer),
            ("n_head", n_head),
            ("d_model", d_model),
        ):
            _positive(name, value)
        if d_model % n_head:
            raise ValueError(f"n_head ({n_head}) must divide d_model ({d_model})")
        if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size, self.context, self.tie_weights = vocab_size, context, tie_weights
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)
        residual_std = 0.02 / math.sqrt(2 * n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, std=residual_std)
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits.

        Args:
            tokens: int64 ids of shape ``(B, T)`` with ``T ≤ context``.

        Returns:
            Logits of shape ``(B, T, vocab_size)``; position ``t`` depends on tokens ``≤ t`` only.

        Raises:
            ValueError: ``tokens`` is not 2-D, not an integer tensor, or longer than ``context``.
        """
        if tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex():
            raise ValueError(
                f"GPT takes integer token ids of shape (batch, sequence), got {tokens.dtype} "
                f"{tuple(tokens.shape)}"
            )
        t = tokens.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.context}")
        positions = torch.arange(t, device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
