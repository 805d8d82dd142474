"""The attention decoder's fast path: ``groundup.ops.additive_attention`` against finite differences and
against ``AdditiveAttention.forward`` (Tensor ops), and ``Seq2Seq.forward`` with attention (the fused
teacher-forced decoder) against the readable step-by-step ``_step`` loop, values and gradients in float64,
with far fewer graph nodes."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import creation
from groundup.models.seq2seq import AdditiveAttention, Seq2Seq, Seq2SeqConfig
from groundup.ops.additive_attention import AdditiveAttention as AttentionOp
from groundup.tensor import _topological_order
from tests.helpers import check_grad

B, S, K, Q, A = 3, 5, 4, 6, 7


def _mask(rng: np.random.Generator) -> np.ndarray:
    lengths = np.array([S, 2, 1])                                   # full, partial, a single real token
    return np.arange(S)[None, :] < lengths[:, None]                 # (B, S) True at real tokens


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("with_weights", [False, True])
def test_op_matches_finite_differences(masked: bool, with_weights: bool) -> None:
    mask = _mask(np.random.default_rng(0)) if masked else None
    check_grad(lambda q, k, pk, wq, wv: AttentionOp.apply(q, k, pk, wq, wv, mask=mask, with_weights=with_weights),
               (B, Q), (B, S, K), (B, S, A), (A, Q), (1, A))


@pytest.mark.parametrize("masked", [True, False])
def test_fused_equals_the_module_forward(masked: bool) -> None:
    rng = np.random.default_rng(1)
    attn = AdditiveAttention(Q, K, A).double()
    mask = _mask(rng) if masked else np.ones((B, S), dtype=bool)
    arrays = [rng.standard_normal((B, Q)), rng.standard_normal((B, S, K))]
    results = []
    for path in ("readable", "fused"):
        attn.zero_grad()
        query, keys = (gu.tensor(a, requires_grad=True) for a in arrays)
        projected = attn.project_keys(keys)                          # (B, S, A)
        if path == "readable":
            context, weights = attn(query, keys, projected, mask)
            assert float(abs(weights.detach().numpy()[~mask]).max(initial=0.0)) == 0.0
        else:
            context = attn.fused(query, keys, projected, mask)
        R = rng.standard_normal(context.shape) if path == "readable" else results[0][-1]
        (context * gu.tensor(R)).sum().backward()
        grads = [query.grad.numpy(), keys.grad.numpy()] + [p.grad.numpy() for p in attn.parameters()]
        results.append((context.detach().numpy(), grads, R))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def _batch(rng: np.random.Generator, cfg: Seq2SeqConfig, batch: int = 4, src_len: int = 7, steps: int = 5):
    lengths = rng.integers(1, src_len + 1, batch)
    lengths[0] = src_len
    mask = np.arange(src_len)[None, :] < lengths[:, None]           # (B, S) right-padded
    src = np.where(mask, rng.integers(1, cfg.src_vocab_size, (batch, src_len)), 0)
    tgt_in = rng.integers(0, cfg.tgt_vocab_size, (batch, steps))
    return src, mask, tgt_in


def _readable_logits(model: Seq2Seq, src, mask, tgt_in):
    """The decoder as greedy decoding runs it: ``_step`` at every t (Tensor ops and the nn.GRU layer)."""
    enc, summary, checked = model._encode(src, mask)
    keys = model.attn.project_keys(enc)
    state, logits = summary, []
    for t in range(tgt_in.shape[1]):
        step_logits, state, _ = model._step(gu.tensor(tgt_in[:, t]), state, enc, keys, checked, summary)
        logits.append(step_logits)
    return creation.stack(logits, dim=1)                            # (B, U, V)


def test_teacher_forced_decoder_equals_the_step_loop() -> None:
    rng = np.random.default_rng(2)
    cfg = Seq2SeqConfig(src_vocab_size=11, tgt_vocab_size=9, n_embd=5, hidden_size=6, attention=True, attn_size=4)
    gu.manual_seed(0)
    model = Seq2Seq(cfg).double()
    src, mask, tgt_in = _batch(rng, cfg)
    R = rng.standard_normal((4, 5, cfg.tgt_vocab_size))
    results = []
    for run in (lambda: model(src, mask, tgt_in), lambda: _readable_logits(model, src, mask, tgt_in)):
        model.zero_grad()
        logits = run()
        (logits * gu.tensor(R)).sum().backward()
        results.append((logits.detach().numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()}))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-11, atol=1e-12)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        np.testing.assert_allclose(grad, results[1][1][name], rtol=1e-9, atol=1e-11, err_msg=name)


def test_teacher_forced_decoder_has_few_nodes_per_step() -> None:
    cfg = Seq2SeqConfig(src_vocab_size=11, tgt_vocab_size=9, n_embd=5, hidden_size=6, attention=True, attn_size=4)
    model = Seq2Seq(cfg)
    rng = np.random.default_rng(3)
    counts = {}
    for steps in (4, 8):
        src, mask, tgt_in = _batch(rng, cfg, steps=steps)
        counts[steps] = len(_topological_order(model(src, mask, tgt_in)))
    per_step = (counts[8] - counts[4]) / 4
    assert per_step <= 10, f"{per_step} graph nodes per decoder step"
    src, mask, tgt_in = _batch(rng, cfg, steps=8)
    readable = len(_topological_order(_readable_logits(model, src, mask, tgt_in)))
    assert counts[8] * 2 < readable, (counts[8], readable)
