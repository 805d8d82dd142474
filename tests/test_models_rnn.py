"""Tests for ``groundup.models.rnn_lm`` (RNNLM) and ``groundup.models.seq2seq`` (Seq2Seq).

Oracles: the same models written in PyTorch with our weights copied in (logits, loss and every
parameter gradient); a NumPy softmax for the masked loss; the attention weights' own invariants
(sum to 1, exactly 0 on padding, results independent of how much padding a row gets).
"""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import optim
from groundup.models.rnn_lm import IGNORE_INDEX, RNNLM, RNNLMConfig
from groundup.models.seq2seq import AdditiveAttention, Seq2Seq, Seq2SeqConfig

try:
    import torch
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch as an oracle")
CELLS = ["rnn", "gru", "lstm"]


def _lm_batch(rng, batch=3, steps=6, vocab=11):
    x = rng.integers(0, vocab, (batch, steps))
    y = rng.integers(0, vocab, (batch, steps))
    y[0, 4:] = IGNORE_INDEX                                                  # a padded row
    return x, y


# ---------------------------------------------------------------------------- RNNLM
@pytest.mark.parametrize("cell", CELLS)
def test_rnnlm_shapes(cell):
    cfg = RNNLMConfig(vocab_size=11, cell=cell, n_embd=5, hidden_size=7, num_layers=2)
    model = RNNLM(cfg)
    idx = gu.tensor(np.random.default_rng(0).integers(0, 11, (3, 6)))
    assert model(idx).shape == (3, 6, 11)
    states, final = model.hidden_states(idx)
    assert states.shape == (3, 6, 7)
    h_n = final[0] if cell == "lstm" else final
    assert h_n.shape == (2, 3, 7)
    # continuing from the final state equals running the whole sequence at once
    first, state = model.hidden_states(idx[:, :4])
    rest, _ = model.hidden_states(idx[:, 4:], state)
    np.testing.assert_allclose(rest.detach().numpy(), states.detach().numpy()[:, 4:], rtol=1e-5, atol=1e-6)


def test_rnnlm_config_and_input_errors():
    with pytest.raises(ValueError, match="cell must be one of"):
        RNNLMConfig(cell="transformer")
    with pytest.raises(ValueError, match="hidden_size"):
        RNNLMConfig(hidden_size=0)
    model = RNNLM(RNNLMConfig(vocab_size=5, n_embd=3, hidden_size=4))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        model(gu.tensor(np.array([[1, 5]])))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(gu.tensor(np.array([1, 2])))
    with pytest.raises(ValueError, match="do not match"):
        model.loss(gu.tensor(np.zeros((2, 3), np.int64)), gu.tensor(np.zeros((2, 4), np.int64)))


def test_rnnlm_loss_skips_padding():
    """The loss is the mean NumPy cross-entropy over the positions whose target is not IGNORE_INDEX."""
    model = RNNLM(RNNLMConfig(vocab_size=11, cell="gru", n_embd=5, hidden_size=7))
    x, y = _lm_batch(np.random.default_rng(1))
    logits = model(gu.tensor(x)).detach().numpy().astype(np.float64)                  # (B, T, V)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = y != IGNORE_INDEX
    expected = -log_probs[real, y[real]].mean()
    np.testing.assert_allclose(model.loss(gu.tensor(x), gu.tensor(y)).item(), expected, rtol=1e-5)


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("cell", CELLS)
def test_rnnlm_matches_torch(cell):
    """Logits, loss and every parameter gradient equal a torch model with the same weights."""
    cfg = RNNLMConfig(vocab_size=11, cell=cell, n_embd=5, hidden_size=7)
    ours = RNNLM(cfg)
    theirs = torch.nn.Module()
    theirs.wte = torch.nn.Embedding(11, 5)
    theirs.rnn = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](5, 7, batch_first=True)
    theirs.lm_head = torch.nn.Linear(7, 11)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x, y = _lm_batch(np.random.default_rng(2))
    their_logits = theirs.lm_head(theirs.rnn(theirs.wte(torch.tensor(x)))[0])
    their_loss = torch.nn.functional.cross_entropy(their_logits.reshape(-1, 11), torch.tensor(y).reshape(-1),
                                                   ignore_index=IGNORE_INDEX)
    their_loss.backward()
    our_loss = ours.loss(gu.tensor(x), gu.tensor(y))
    our_loss.backward()
    np.testing.assert_allclose(ours(gu.tensor(x)).detach().numpy(), their_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(our_loss.item(), their_loss.item(), rtol=1e-5)
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), their_params[name].grad.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_rnnlm_lookup_projection_equals_the_readable_path(cell):
    """The projected-table lookup (the default) and rnn(wte(idx)) give the same logits, loss and
    parameter gradients (float64, 2 layers, with a carried state)."""
    model = RNNLM(RNNLMConfig(vocab_size=11, cell=cell, n_embd=5, hidden_size=7, num_layers=2)).to(dtype=gu.float64)
    x, y = _lm_batch(np.random.default_rng(4))
    results = []
    for lookup in (True, False):
        model.lookup_projection = lookup
        model.zero_grad()
        loss = model.loss(gu.tensor(x), gu.tensor(y))
        loss.backward()
        _, state = model.hidden_states(gu.tensor(x))
        out, _ = model.hidden_states(gu.tensor(x[:, :2]), state)         # continue from a carried state
        results.append([loss.item(), model(gu.tensor(x)).detach().numpy(), out.detach().numpy()]
                       + [p.grad.numpy() for p in model.parameters()])
    assert RNNLM.lookup_projection is True
    for k, (fast, readable) in enumerate(zip(*results)):
        np.testing.assert_allclose(fast, readable, rtol=1e-10, atol=1e-12, err_msg=f"item {k}")


def test_rnnlm_overfits_a_tiny_batch():
    """Four names that differ from their first letter on: only that letter is uncertain (log 4 nats each)."""
    names = ["ava", "bob", "cyd", "dan"]
    stoi = {c: i + 1 for i, c in enumerate("abcdnovy")}
    x = np.array([[0] + [stoi[c] for c in n] for n in names])               # (4, 4)
    y = np.array([[stoi[c] for c in n] + [0] for n in names])               # (4, 4)
    gu.manual_seed(0)
    model = RNNLM(RNNLMConfig(vocab_size=9, cell="gru", n_embd=8, hidden_size=32))
    opt = optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(150):
        loss = model.loss(gu.tensor(x), gu.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    floor = 4 * np.log(4) / y.size                                           # the entropy of the first letters
    assert floor < loss.item() < floor + 0.05
    assert model(gu.tensor(x)).detach().numpy()[:, 1:].argmax(-1).tolist() == y[:, 1:].tolist()


def test_rnnlm_generate_is_reproducible_and_well_formed():
    model = RNNLM(RNNLMConfig(vocab_size=9, cell="lstm", n_embd=4, hidden_size=8))
    first = model.generate(20, np.random.default_rng(3), max_len=12)
    second = model.generate(20, np.random.default_rng(3), max_len=12)
    assert first == second and len(first) == 20
    for ids in first:
        assert len(ids) <= 12 and all(1 <= i < 9 for i in ids)                # no separator inside a sample
    assert model.training                                                    # restored after sampling


# ---------------------------------------------------------------------------- Seq2Seq
def _seq2seq_batch(rng, lengths=(5, 2, 7), vocab=9, steps=4, tgt_vocab=8):
    src = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros(src.shape, bool)
    for row, n in enumerate(lengths):
        src[row, :n] = rng.integers(1, vocab, n)
        mask[row, :n] = True
    tgt = rng.integers(3, tgt_vocab, (len(lengths), steps))
    tgt_in = np.concatenate([np.ones((len(lengths), 1), np.int64), tgt], 1)
    tgt_out = np.concatenate([tgt, np.full((len(lengths), 1), 2)], 1)
    return src, mask, tgt_in, tgt_out


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_seq2seq_shapes(attention):
    model = Seq2Seq(Seq2SeqConfig(9, 8, n_embd=4, hidden_size=6, attention=attention, attn_size=5))
    src, mask, tgt_in, tgt_out = _seq2seq_batch(np.random.default_rng(0))
    enc, summary = model.encode(gu.tensor(src), mask)
    assert enc.shape == (3, 7, 6) and summary.shape == (3, 6)
    np.testing.assert_array_equal(summary.detach().numpy()[1], enc.detach().numpy()[1, 1])   # last real token
    assert model(gu.tensor(src), mask, gu.tensor(tgt_in)).shape == (3, 5, 8)
    assert model.loss(gu.tensor(src), mask, gu.tensor(tgt_in), gu.tensor(tgt_out)).shape == ()
    ids, weights = model.greedy_decode(gu.tensor(src), mask, max_len=6)
    assert ids.shape == (3, 6) and ids.dtype == np.int64
    assert (weights is not None) == attention
    if attention:
        assert weights.shape == (3, 6, 7)


def test_seq2seq_input_errors():
    model = Seq2Seq(Seq2SeqConfig(9, 8, n_embd=4, hidden_size=6))
    src = gu.tensor(np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match="no real tokens"):
        model.encode(src, np.array([[True, True, False], [False, False, False]]))
    with pytest.raises(ValueError, match="right-padded"):
        model.encode(src, np.array([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="src_mask"):
        model.encode(src, np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="bos_id"):
        Seq2SeqConfig(9, 2, bos_id=3)


def test_attention_weights_sum_to_one_and_ignore_padding():
    """Rows sum to 1; padded positions get exactly 0; a NumPy re-computation of the scores agrees."""
    rng = np.random.default_rng(4)
    attn = AdditiveAttention(query_size=6, key_size=5, attn_size=4)
    keys, query = rng.standard_normal((3, 7, 5)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)
    mask = np.arange(7)[None, :] < np.array([[7], [3], [1]])                # lengths 7, 3, 1
    keys_t = gu.tensor(keys)
    context, weights = attn(gu.tensor(query), keys_t, attn.project_keys(keys_t), mask)
    w = weights.detach().numpy()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert (w[~mask] == 0).all() and w[2, 0] == 1.0
    p = {k: v.astype(np.float64) for k, v in attn.state_dict().items()}
    scores = np.tanh(keys @ p["key_proj.weight"].T + p["key_proj.bias"] + (query @ p["query_proj.weight"].T)[:, None])
    scores = (scores @ p["score.weight"].T)[..., 0]                          # (B, S)
    scores = np.where(mask, scores, -np.inf)
    expected = np.exp(scores - scores.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(context.detach().numpy(), (expected[..., None] * keys).sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_seq2seq_padding_has_no_influence(attention):
    """A row decoded alone, or next to a longer row (so with padding), gives the same logits and weights."""
    model = Seq2Seq(Seq2SeqConfig(9, 8, n_embd=4, hidden_size=6, attention=attention))
    src, mask, tgt_in, _ = _seq2seq_batch(np.random.default_rng(5), lengths=(2, 7))
    padded = model(gu.tensor(src), mask, gu.tensor(tgt_in)).detach().numpy()
    src[0, 2:] = 5                                                           # change what is under the padding
    changed = model(gu.tensor(src), mask, gu.tensor(tgt_in)).detach().numpy()
    alone = model(gu.tensor(src[:1, :2]), mask[:1, :2], gu.tensor(tgt_in[:1])).detach().numpy()
    np.testing.assert_array_equal(padded, changed)
    np.testing.assert_allclose(padded[:1], alone, rtol=1e-5, atol=1e-6)
    ids_batch, w_batch = model.greedy_decode(src, mask, 5)
    ids_alone, w_alone = model.greedy_decode(src[:1, :2], mask[:1, :2], 5)
    np.testing.assert_array_equal(ids_batch[0], ids_alone[0])
    if attention:
        np.testing.assert_allclose(w_batch[0, :, :2], w_alone[0], rtol=1e-5, atol=1e-6)
        assert (w_batch[0, :, 2:] == 0).all()


@requires_torch
@pytest.mark.torch
@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_seq2seq_matches_torch(attention):
    """A step-by-step torch implementation of the same equations, with our weights: logits, loss, gradients.

    For the plain model this also checks that our fused teacher-forcing path equals stepping."""
    cfg = Seq2SeqConfig(9, 8, n_embd=4, hidden_size=6, attention=attention, attn_size=5)
    ours = Seq2Seq(cfg)
    nn = torch.nn
    theirs = nn.Module()
    theirs.src_embed, theirs.encoder = nn.Embedding(9, 4), nn.GRU(4, 6, batch_first=True)
    theirs.tgt_embed, theirs.decoder = nn.Embedding(8, 4), nn.GRU(4 + 6, 6, batch_first=True)
    if attention:
        theirs.attn = nn.Module()
        theirs.attn.query_proj, theirs.attn.key_proj = nn.Linear(6, 5, bias=False), nn.Linear(6, 5)
        theirs.attn.score = nn.Linear(5, 1, bias=False)
    theirs.out = nn.Linear(12, 8)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    src, mask, tgt_in, tgt_out = _seq2seq_batch(np.random.default_rng(6))
    t_src, t_mask, t_in = torch.tensor(src), torch.tensor(mask), torch.tensor(tgt_in)
    enc, _ = theirs.encoder(theirs.src_embed(t_src))
    summary = enc[torch.arange(3), t_mask.sum(1) - 1]
    state, logits = summary, []
    for t in range(tgt_in.shape[1]):
        context = summary
        if attention:
            scores = theirs.attn.score(torch.tanh(theirs.attn.key_proj(enc) + theirs.attn.query_proj(state)[:, None]))
            weights = scores[..., 0].masked_fill(~t_mask, float("-inf")).softmax(-1)
            context = (weights[..., None] * enc).sum(1)
        out, _ = theirs.decoder(torch.cat([theirs.tgt_embed(t_in[:, t]), context], -1)[:, None], state[None])
        state = out[:, 0]
        logits.append(theirs.out(torch.cat([state, context], -1)))
    their_logits = torch.stack(logits, 1)
    their_loss = torch.nn.functional.cross_entropy(their_logits.reshape(-1, 8), torch.tensor(tgt_out).reshape(-1))
    their_loss.backward()
    our_loss = ours.loss(gu.tensor(src), mask, gu.tensor(tgt_in), gu.tensor(tgt_out))
    our_loss.backward()
    our_logits = ours(gu.tensor(src), mask, gu.tensor(tgt_in)).detach().numpy()
    np.testing.assert_allclose(our_logits, their_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(our_loss.item(), their_loss.item(), rtol=1e-5)
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), their_params[name].grad.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "attention"])
def test_seq2seq_overfits_a_tiny_batch(attention):
    """Teacher-forced training on 6 pairs until greedy decoding reproduces every target exactly."""
    rng = np.random.default_rng(7)
    src, mask, tgt_in, tgt_out = _seq2seq_batch(rng, lengths=(3, 5, 4, 6, 2, 5), steps=5)
    gu.manual_seed(1)
    model = Seq2Seq(Seq2SeqConfig(9, 8, n_embd=8, hidden_size=24, attention=attention))
    opt = optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        loss = model.loss(gu.tensor(src), mask, gu.tensor(tgt_in), gu.tensor(tgt_out))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    ids, _ = model.greedy_decode(gu.tensor(src), mask, max_len=6)
    np.testing.assert_array_equal(ids, tgt_out)
