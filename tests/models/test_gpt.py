"""The small GPT (``models/gpt.py``): shapes, causality, weight tying, bad arguments, and every
preconditioner of the comparison taking a step on it with the output head left first-order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eva import KFAC, Eva, EvaF, EvaS, Shampoo
from models.gpt import GPT
from models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=32, context=8, n_layer=2, n_head=2, d_model=16)
BLOCK_LINEARS = [
    f"blocks.{i}.{name}"
    for i in range(2)
    for name in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
]


# Eva-s on a first step: its vectors are the gradient's own mode means, whose squared norms
# multiply to ~1e-14 here, so at the default damping Eq. 23's correction is ~1e-6 of G and
# grafting gives G back. A loss scaled by 1e4 (as under fp16 loss scaling) makes the
# correction (the removed rank-one component) visible; grafting makes the scale irrelevant
# otherwise.
LOSS_SCALE = {EvaS: 1e4}
RESIDUAL_WRITERS = ("attn.proj.weight", "mlp.proj.weight")


def trained_norms(model: GPT) -> GPT:
    """LayerNorm scales and shifts away from their initial 1 and 0, as after some training.

    At initialisation a LayerNorm's output has zero mean over features in every row, so the
    gradient of the Linear layer it feeds has zero row means: Eva-s's first mode vector is 0
    there and its correction vanishes (P = G after grafting).
    """
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    return model


def tiny_gpt(seed: int = 0, **kwargs: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(**{**TINY, **kwargs})  # type: ignore[arg-type]


def test_registry_builds_gpt_with_logits_per_position() -> None:
    model = build_model("gpt", **TINY)
    tokens = torch.randint(32, (3, 8))
    assert isinstance(model, GPT) and model(tokens).shape == (3, 8, 32)
    assert model(tokens[:, :5]).shape == (3, 5, 32)  # shorter than the context is fine
    assert model.head.bias is None and model.head.weight is not model.tok_emb.weight


def test_causal_position_t_ignores_later_tokens() -> None:
    model = tiny_gpt().eval()
    tokens = torch.randint(32, (2, 8))
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 32
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-4


def test_attention_matches_explicit_masked_softmax() -> None:
    """One attention layer against the textbook formula with an explicit causal mask."""
    model = tiny_gpt().double().eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(16, dim=-1)
    heads = []
    for h in range(2):
        cols = slice(8 * h, 8 * h + 8)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / 8**0.5
        mask = torch.ones(6, 6, dtype=torch.bool).tril()
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        heads.append(weights @ v[..., cols])
    want = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), want)


def test_tied_weights_share_one_parameter() -> None:
    model = tiny_gpt(tie_weights=True)
    assert model.head.weight is model.tok_emb.weight
    untied = sum(p.numel() for p in tiny_gpt().parameters())
    assert untied - sum(p.numel() for p in model.parameters()) == 32 * 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_head": 3}, "n_head"),
        ({"d_model": 0}, "d_model"),
        ({"context": 2.5}, "context"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        tiny_gpt(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs_raise_one_line() -> None:
    model = tiny_gpt()
    with pytest.raises(ValueError, match="exceeds the model's context 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 8))


@pytest.mark.parametrize("cls", [Eva, KFAC, Shampoo, EvaF, EvaS], ids=lambda c: c.__name__)
def test_preconditioner_steps_on_gpt_and_leaves_head_first_order(cls: type) -> None:
    """With ``skip_layers=["head"]`` exactly the blocks' Linear layers are preconditioned: their
    weight gradients are rewritten; the head, embeddings and LayerNorms keep their raw
    gradients (biases too where the method leaves biases first-order: Eva-s, Shampoo). Then
    the optimizer step moves every parameter and the loss stays finite.

    One exception, by construction: the layers that write into the residual stream
    (``attn.proj``, ``mlp.proj``) have output gradients with zero mean over features (every
    consumer of the stream is a LayerNorm, whose input gradient is orthogonal to the constant
    vector), so Eva-s's mode vector along the output dimension is zero there and Eva-s leaves
    those gradients as they are (the LayerNorm analogue of eva/batchnorm.py's zero b̄)."""
    model = trained_norms(tiny_gpt())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pre = cls(model, optimizer, skip_layers=["head"], update_interval=1)
    assert [layer.name for layer in pre.layers] == BLOCK_LINEARS
    tokens = torch.randint(32, (4, 9), generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    (loss * LOSS_SCALE.get(cls, 1.0)).backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pre.step()
    rewritten = {f"{n}.weight" for n in BLOCK_LINEARS}
    if cls.include_bias:
        rewritten |= {f"{n}.bias" for n in BLOCK_LINEARS}
    for name, p in model.named_parameters():
        change = float((p.grad - raw[name]).norm() / raw[name].norm())
        if cls is EvaS and name.endswith(RESIDUAL_WRITERS):
            assert change < 1e-3, (name, change)
        elif name in rewritten:
            assert torch.isfinite(p.grad).all() and change > 1e-3, (name, change)
        else:
            assert torch.equal(p.grad, raw[name]), f"{name} must stay first-order"
    optimizer.step()
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not move"
    again = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    assert torch.isfinite(again)
