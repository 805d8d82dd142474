"""Tests for ``groundup.models.transformer_seq2seq`` (TransformerSeq2Seq).

Oracles: torch.nn.Transformer (pre-norm, batch_first) with our weights copied in and its own sinusoidal
table, in float64 (logits, loss, every parameter gradient, and the last decoder layer's cross-attention
weights read from torch's own MultiheadAttention); invariances the masks promise (padded source
positions and later decoder inputs change nothing); greedy decoding against teacher forcing on its own
output; learning to reverse sequences; the attention stage's train/evaluate helpers running it unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import groundup as gu
from groundup import optim
from groundup.data import copy_sequences
from groundup.models.transformer_seq2seq import IGNORE_INDEX, TransformerSeq2Seq, TransformerSeq2SeqConfig

SMALL = dict(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=24, max_len=12)


def _batch(rng, lengths=(5, 2, 7), vocab=9, steps=4, tgt_vocab=8):
    """Right-padded sources (pad 0) of the given lengths; targets bos + 3..7 + eos, the last row padded."""
    src = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros(src.shape, bool)
    for row, n in enumerate(lengths):
        src[row, :n] = rng.integers(1, vocab, n)
        mask[row, :n] = True
    tgt = rng.integers(3, tgt_vocab, (len(lengths), steps))
    tgt_in = np.concatenate([np.ones((len(lengths), 1), np.int64), tgt], 1)
    tgt_out = np.concatenate([tgt, np.full((len(lengths), 1), 2)], 1)
    tgt_out[-1, -2:] = IGNORE_INDEX                                          # a shorter target
    return src, mask, tgt_in, tgt_out


def _model(**overrides) -> TransformerSeq2Seq:
    return TransformerSeq2Seq(TransformerSeq2SeqConfig(9, 8, **{**SMALL, **overrides}))


def _sinusoid_table(length: int, width: int) -> np.ndarray:
    """The paper's table, written independently: pe[t, 2i] = sin(t w_i), pe[t, 2i + 1] = cos(t w_i),
    rounded to float32 as the model stores it (``.double()`` casts the stored table)."""
    pe = np.zeros((length, width))
    for t in range(length):
        for i in range(0, width, 2):
            angle = t / 10000 ** (i / width)
            pe[t, i], pe[t, i + 1] = math.sin(angle), math.cos(angle)
    return pe.astype(np.float32).astype(np.float64)


def test_shapes_and_attention_alias():
    model = _model()
    src, mask, tgt_in, tgt_out = _batch(np.random.default_rng(0))
    assert model.encode(gu.tensor(src), mask).shape == (3, 7, 16)
    assert model(gu.tensor(src), mask, gu.tensor(tgt_in)).shape == (3, 5, 8)
    assert model.loss(src, mask, tgt_in, tgt_out).shape == ()
    ids, weights = model.greedy_decode(gu.tensor(src), mask, max_len=6)
    assert ids.shape == (3, 6) and ids.dtype == np.int64
    assert weights.shape == (3, 6, 7) and weights.dtype == np.float32
    assert model.attn is model.transformer.decoder.layers[-1].multihead_attn
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == len(set(names)) and not any(name.startswith("attn.") for name in names)


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_matches_torch_transformer(activation):
    """Logits, loss, every parameter gradient and the cross-attention weights of greedy decoding agree
    with torch.nn.Transformer holding our weights (float64, padded sources, an ignored target)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    ours = _model(activation=activation).double()
    ours.out.bias.data[2] -= 20.0                                            # no eos: decode all 5 steps
    theirs = nn.Module()
    theirs.src_embed, theirs.tgt_embed = nn.Embedding(9, 16), nn.Embedding(8, 16)
    theirs.transformer = nn.Transformer(16, 2, 2, 2, 24, dropout=0.0, activation=activation, batch_first=True,
                                        norm_first=True)
    theirs.out = nn.Linear(16, 8)
    theirs.double()
    state = ours.state_dict()
    np.testing.assert_array_equal(state.pop("pos.pe"), _sinusoid_table(12, 16))
    theirs.load_state_dict({k: torch.tensor(v) for k, v in state.items()})   # strict: the same names

    def their_logits(src, mask, tgt_in):
        pe = torch.tensor(_sinusoid_table(12, 16))
        xs = theirs.src_embed(src) * 4.0 + pe[:src.shape[1]]                 # sqrt(16) = 4
        xt = theirs.tgt_embed(tgt_in) * 4.0 + pe[:tgt_in.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], dtype=torch.float64)
        hidden = theirs.transformer(xs, xt, tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=~mask,
                                    memory_key_padding_mask=~mask)
        return theirs.out(hidden)

    src, mask, tgt_in, tgt_out = _batch(np.random.default_rng(6))
    t_src, t_mask, t_in = torch.tensor(src), torch.tensor(mask), torch.tensor(tgt_in)
    logits_t = their_logits(t_src, t_mask, t_in)
    loss_t = nn.functional.cross_entropy(logits_t.reshape(-1, 8), torch.tensor(tgt_out).reshape(-1), ignore_index=-1)
    loss_t.backward()
    logits = ours(src, mask, tgt_in)
    loss = ours.loss(src, mask, tgt_in, tgt_out)
    loss.backward()
    np.testing.assert_allclose(logits.detach().numpy(), logits_t.detach().numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(loss.item(), loss_t.item(), rtol=1e-10)
    their_params = dict(theirs.named_parameters())
    assert {name for name, _ in ours.named_parameters()} == set(their_params)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), their_params[name].grad.numpy(), rtol=1e-8, atol=1e-11,
                                   err_msg=name)

    # cross-attention weights: catch the inputs of torch's last cross-attention, ask it for its weights
    ids, weights = ours.greedy_decode(src, mask, max_len=5)
    seen = {}
    hook = theirs.transformer.decoder.layers[-1].multihead_attn.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(args=args, kwargs=kwargs), with_kwargs=True)
    prefix = torch.tensor(np.concatenate([np.ones((3, 1), np.int64), ids[:, :-1]], 1))   # (B, U): bos + ids
    with torch.no_grad():
        greedy_logits = their_logits(t_src, t_mask, prefix)
        hook.remove()
        _, their_weights = theirs.transformer.decoder.layers[-1].multihead_attn(
            *seen["args"], key_padding_mask=seen["kwargs"]["key_padding_mask"], need_weights=True)
    np.testing.assert_array_equal(ids[:, 0], greedy_logits[:, 0].argmax(-1).numpy())
    ends = [next((t + 1 for t, i in enumerate(row) if i == 2), len(row)) for row in ids]
    ran = max(ends)                                                          # steps before every row ended
    assert ran == 5
    np.testing.assert_allclose(weights[:, :ran], their_weights.numpy()[:, :ran], rtol=1e-5, atol=1e-7)
    assert (weights[:, ran:] == 0).all()


def test_padding_never_changes_the_logits():
    model = _model()
    src, mask, tgt_in, _ = _batch(np.random.default_rng(5), lengths=(2, 7, 4))
    before = model(src, mask, tgt_in).detach().numpy()
    changed = src.copy()
    changed[~mask] = np.random.default_rng(1).integers(1, 9, (~mask).sum())   # new ids under the padding
    after = model(changed, mask, tgt_in).detach().numpy()
    np.testing.assert_array_equal(after, before)
    alone = model(src[:1, :2], mask[:1, :2], tgt_in[:1]).detach().numpy()   # no padding at all
    np.testing.assert_allclose(alone, before[:1], rtol=1e-5, atol=1e-6)
    ids_batch, w_batch = model.greedy_decode(src, mask, 5)
    ids_alone, w_alone = model.greedy_decode(src[:1, :2], mask[:1, :2], 5)
    np.testing.assert_array_equal(ids_batch[0], ids_alone[0])
    np.testing.assert_allclose(w_batch[0, :, :2], w_alone[0], rtol=1e-5, atol=1e-6)
    assert (w_batch[~np.broadcast_to(mask[:, None], w_batch.shape)] == 0).all()
    np.testing.assert_allclose(w_batch.sum(-1), 1.0, rtol=1e-5)
    real = src.copy()
    real[0, 1] = 1 + real[0, 1] % 8                                         # a real token does matter
    assert not np.allclose(model(real, mask, tgt_in).detach().numpy()[0], before[0])


def test_decoder_is_causal():
    model = _model()
    src, mask, tgt_in, _ = _batch(np.random.default_rng(2), steps=6)
    before = model(src, mask, tgt_in).detach().numpy()
    for t in range(1, tgt_in.shape[1]):
        changed = tgt_in.copy()
        changed[:, t:] = 3 + (changed[:, t:] - 2) % 5                      # every id from t on differs
        after = model(src, mask, changed).detach().numpy()
        np.testing.assert_array_equal(after[:, :t], before[:, :t], err_msg=f"t={t}")
        assert not np.allclose(after[:, t], before[:, t])


def test_greedy_decode_agrees_with_teacher_forcing_and_restores_the_mode():
    """Fed its own output as decoder input, the model's argmax reproduces it up to each row's eos.
    A model with dropout decodes deterministically (eval inside) and keeps its own train/eval mode."""
    model = _model(dropout=0.3)
    src, mask, _, _ = _batch(np.random.default_rng(3), lengths=(3, 7, 1, 5))
    ids, weights = model.greedy_decode(src, mask, max_len=8)
    assert model.training and all(m.training for m in model.modules())
    again, weights_again = model.greedy_decode(src, mask, max_len=8)
    np.testing.assert_array_equal(again, ids)
    np.testing.assert_array_equal(weights_again, weights)
    model.eval()
    prefix = np.concatenate([np.ones((4, 1), np.int64), ids[:, :-1]], 1)   # (B, U): bos + ids
    forced = model(src, mask, prefix).detach().numpy().argmax(-1)           # (B, U)
    for row in range(4):
        end = next((t + 1 for t, i in enumerate(ids[row]) if i == 2), ids.shape[1])
        np.testing.assert_array_equal(forced[row, :end], ids[row, :end])
        assert (ids[row, end:] == 2).all()
    np.testing.assert_allclose(model.cross_attention_weights(src, mask, prefix), weights, rtol=1e-5, atol=1e-7)
    model.greedy_decode(src, mask, max_len=3)
    assert not any(m.training for m in model.modules())


def test_learns_to_reverse_sequences():
    """Reversing 4-6 tokens: teacher-forced training for a few seconds, then greedy decoding of held-out
    sequences is almost always exactly right (a unigram guess gets ~0)."""
    vocab, n = 6, 4000
    sources, masks, outs = [], [], []
    for k, length in enumerate((4, 5, 6)):
        seq, rev = copy_sequences(n // 3, length, vocab, seed=k, reverse=True)   # (n/3, L)
        src = np.zeros((len(seq), 6), np.int64)
        src[:, :length] = seq + 1                                             # 0 is padding
        out = np.full((len(seq), 7), IGNORE_INDEX)
        out[:, :length], out[:, length] = rev + 3, 2                          # targets 3.., then eos
        sources.append(src), masks.append(src > 0), outs.append(out)
    src, mask, tgt_out = np.concatenate(sources), np.concatenate(masks), np.concatenate(outs)
    tgt_in = np.concatenate([np.ones((len(src), 1), np.int64), np.maximum(tgt_out[:, :-1], 0)], 1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(src))
    train, test = order[:-300], order[-300:]
    gu.manual_seed(0)
    model = TransformerSeq2Seq(TransformerSeq2SeqConfig(vocab + 1, vocab + 3, d_model=32, nhead=2,
                                                        num_encoder_layers=1, num_decoder_layers=1,
                                                        dim_feedforward=64, max_len=8))
    opt = optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        rows = rng.choice(train, 64)
        loss = model.loss(src[rows], mask[rows], tgt_in[rows], tgt_out[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids, _ = model.greedy_decode(src[test], mask[test], max_len=7)
    target = np.where(tgt_out[test] == IGNORE_INDEX, 2, tgt_out[test])
    accuracy = (ids == target).all(1).mean()
    assert accuracy > 0.9, f"exact-match accuracy {accuracy:.3f} (final loss {loss.item():.3f})"


def test_runs_in_the_attention_stage_helpers(tmp_path):
    """train_seq2seq and evaluate_seq2seq, written for Seq2Seq, run this model unchanged."""
    from groundup.data import date_pairs
    from groundup.roadmap.runner import Context
    from groundup.roadmap.stages.attention import DateCodec, evaluate_seq2seq, train_seq2seq

    codec, pairs = DateCodec(), date_pairs(40, seed=3)
    longest = max(len(text) for text, _ in pairs)
    model = TransformerSeq2Seq(TransformerSeq2SeqConfig(codec.src_vocab_size, codec.tgt_vocab_size, d_model=16,
                                                        nhead=2, dim_feedforward=16, max_len=longest))
    history = train_seq2seq(Context(out_dir=tmp_path), model, pairs, codec, iters=2, lr=1e-3, batch_size=8,
                            rng=np.random.default_rng(0), description="test")
    assert len(history["train_loss"]) == 2 and np.isfinite(history["train_loss"]).all()
    result = evaluate_seq2seq(model, pairs[:10], codec, batch_size=4)
    assert len(result["predictions"]) == 10 and result["weights"] is not None
    for (text, _), w in zip(pairs[:10], result["weights"]):
        assert w.shape == (11, len(text))
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def test_config_errors():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by nhead=4"):
        TransformerSeq2SeqConfig(9, 8, d_model=10)
    with pytest.raises(ValueError, match="num_decoder_layers must be a positive int"):
        TransformerSeq2SeqConfig(9, 8, num_decoder_layers=0)
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        TransformerSeq2SeqConfig(9, 8, max_len=True)
    with pytest.raises(ValueError, match="dropout"):
        TransformerSeq2SeqConfig(9, 8, dropout=1.0)
    with pytest.raises(ValueError, match="activation"):
        TransformerSeq2SeqConfig(9, 8, activation="tanh")
    with pytest.raises(ValueError, match="bos_id=8 is not an id of tgt_vocab_size=8"):
        TransformerSeq2SeqConfig(9, 8, bos_id=8)
    with pytest.raises(ValueError, match="pad_id"):
        TransformerSeq2SeqConfig(9, 8, pad_id=-1)
    with pytest.raises(TypeError, match="TransformerSeq2SeqConfig"):
        TransformerSeq2Seq({"src_vocab_size": 9})


def test_input_errors():
    model = _model()
    src, mask, tgt_in, tgt_out = _batch(np.random.default_rng(0))
    with pytest.raises(TypeError, match="src must hold integer token ids, got dtype float"):
        model(src.astype(np.float32), mask, tgt_in)
    with pytest.raises(ValueError, match=r"src must have shape \(B, L\).*\(7,\)"):
        model(src[0], mask[0], tgt_in)
    with pytest.raises(IndexError, match="src holds id 9, outside 0..8"):
        model(np.where(mask, 9, 0), mask, tgt_in)
    with pytest.raises(IndexError, match="tgt_in holds id -1"):
        model(src, mask, np.where(tgt_in > 3, -1, tgt_in))
    with pytest.raises(ValueError, match=r"src_mask must be bool of the source's shape \(3, 7\), got int64"):
        model(src, mask.astype(np.int64), tgt_in)
    with pytest.raises(ValueError, match="src_mask"):
        model(src, mask[:, :5], tgt_in)
    with pytest.raises(ValueError, match="right-padded"):
        model(src, mask[:, ::-1], tgt_in)
    with pytest.raises(ValueError, match=r"rows \[1\] have no real tokens"):
        model(src, np.array([mask[0], mask[1] & False, mask[2]]), tgt_in)
    with pytest.raises(ValueError, match="different batch sizes"):
        model(src, mask, tgt_in[:2])
    with pytest.raises(ValueError, match=r"src of shape \(3, 13\) is longer than max_len=12"):
        model(np.ones((3, 13), np.int64), np.ones((3, 13), bool), tgt_in)
    with pytest.raises(ValueError, match=r"tgt_in of shape \(3, 13\) is longer than max_len=12"):
        model(src, mask, np.ones((3, 13), np.int64))
    with pytest.raises(ValueError, match=r"tgt_out of shape \(3, 4\) does not match tgt_in \(3, 5\)"):
        model.loss(src, mask, tgt_in, tgt_out[:, :4])
    with pytest.raises(IndexError, match="tgt_out holds id 8"):
        model.loss(src, mask, tgt_in, np.full_like(tgt_out, 8))
    with pytest.raises(ValueError, match=r"max_len must be an int in 1..12"):
        model.greedy_decode(src, mask, 13)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(src, mask, 0)
    model.loss(src, mask, tgt_in, tgt_out)                                  # the untouched inputs are fine


def test_hook_points_read_and_switch_off_the_cross_attention():
    """Hooks on the encoder-decoder's layers: the documented shapes, and zeroing every decoder layer's
    cross-attention output by hook makes the logits independent of the source (the encoder is cut off)."""
    model = _model()
    model.eval()
    src, mask, tgt_in, _ = _batch(np.random.default_rng(0))
    base = model(gu.tensor(src), mask, gu.tensor(tgt_in)).detach().numpy()
    _, cache = model.run_with_cache(gu.tensor(src), mask, gu.tensor(tgt_in))
    assert cache["transformer.encoder.layers.0.hook_attn_out"].shape == (3, 7, 16)
    assert cache["transformer.decoder.layers.0.hook_cross_attn_out"].shape == (3, 5, 16)
    assert cache["transformer.decoder.layers.0.hook_resid_post"].shape == (3, 5, 16)
    off = {"transformer.decoder.layers.*.hook_cross_attn_out": lambda act, hook: act * 0.0}
    other = np.random.default_rng(1).integers(1, 9, src.shape)
    with model.hooks(off):
        cut = model(gu.tensor(src), mask, gu.tensor(tgt_in)).detach().numpy()
        cut_other = model(gu.tensor(other), mask, gu.tensor(tgt_in)).detach().numpy()
    np.testing.assert_allclose(cut, cut_other, rtol=1e-6, atol=1e-6)          # the source no longer matters
    assert not np.allclose(cut, base, atol=1e-4)
    np.testing.assert_array_equal(model(gu.tensor(src), mask, gu.tensor(tgt_in)).detach().numpy(), base)
