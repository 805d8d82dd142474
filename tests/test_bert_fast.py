"""FastBERT, the fused twin of the readable BERT: the same loss, logits and every gradient in float64
(post- and pre-norm, exact and tanh GELU, padding, dropout with the same masks), over the threads
and worker processes of ``cpu_threads``, with LoRA (the readable blocks), hooks refused."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
import groundup.functional as F
from groundup.models.bert import BERT, BERTConfig
from groundup.models.bert_fast import FastBERT
from groundup.parallel import cpu_threads


def _pair(**overrides):
    cfg = BERTConfig(**{**dict(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.0), **overrides})
    gu.manual_seed(0)
    readable = BERT(cfg).double()
    fast = FastBERT(cfg).double()
    fast.load_state_dict(readable.state_dict())
    return readable, fast


def _batch(rows=3, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(5, 20, (rows, 8))
    labels = np.where(rng.random((rows, 8)) < 0.4, idx, -100)
    labels[:, 0] = idx[:, 0]
    mask = np.ones((rows, 8), dtype=bool)
    mask[1, 5:] = False                                                     # a padded row
    return idx, labels, mask


def _loss_and_grads(model, batch, seed=7):
    model.zero_grad()
    gu.manual_seed(seed)                                                    # the dropout masks' generator
    loss = model.loss(*batch)
    loss.backward()
    return float(loss.item()), {n: p.grad.data.copy() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(readable, fast, batch, threads=None):
    """The fast twin's loss and every gradient equal the readable model's (in ``cpu_threads(threads)``)."""
    la, ga = _loss_and_grads(readable, batch)
    if threads is None:
        lb, gb = _loss_and_grads(fast, batch)
    else:
        with cpu_threads(threads):                                          # the stack's chunks split the batch
            lb, gb = _loss_and_grads(fast, batch)
    assert lb == pytest.approx(la, rel=1e-12)
    assert ga.keys() == gb.keys()
    for name in ga:
        np.testing.assert_allclose(gb[name], ga[name], rtol=1e-9, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fast_equals_readable_in_float64(activation, norm, dropout):
    readable, fast = _pair(activation=activation, norm=norm, dropout=dropout)
    _assert_same(readable, fast, _batch())


def test_logits_and_classification_equal_readable():
    readable, fast = _pair()
    readable.eval(), fast.eval()
    idx, _, mask = _batch()
    np.testing.assert_allclose(fast(idx, mask).data, readable(idx, mask).data, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(fast.classify(idx, mask).data, readable.classify(idx, mask).data, rtol=1e-11)


def test_split_over_threads_and_workers_equals_one_pass():
    readable, fast = _pair(dropout=0.1)
    _assert_same(readable, fast, _batch(rows=6, seed=1), threads=2)


@pytest.mark.parametrize("activation,norm,unlabelled", [("gelu", "post", 0), ("gelu_tanh", "pre", 1),
                                                      ("gelu", "pre", 0), ("gelu_tanh", "post", 1)])
def test_mlm_head_in_each_chunk_equals_one_pass(activation, norm, unlabelled):
    """The MLM head and loss run inside the stack, on each chunk's labelled rows (a chunk may have none)."""
    readable, fast = _pair(activation=activation, norm=norm, dropout=0.1)
    idx, labels, mask = _batch(rows=6, seed=2)
    rows = slice(0, 3) if unlabelled == 0 else slice(3, 6)                  # chunk 0 (here) or 1 (the worker)
    labels[rows] = -100
    _assert_same(readable, fast, (idx, labels, mask), threads=2)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_fused_mlm_head_gradients_match_central_differences(norm):
    """The fused head's and stem's gradients (the decoder tied to wte, the LayerNorms folded, the
    embeddings and ln_embd made per chunk) against finite differences of its own loss in float64,
    split over a worker process."""
    _, fast = _pair(norm=norm, activation="gelu")
    batch = _batch(rows=4, seed=3)
    with cpu_threads(2):
        _, grads = _loss_and_grads(fast, batch)
        params = dict(fast.named_parameters())
        rng = np.random.default_rng(0)
        names = ["mlm_head.dense.weight", "mlm_head.dense.bias", "mlm_head.ln.weight", "mlm_head.ln.bias",
                 "wte.weight", "mlm_head.decoder.bias", "wpe.weight", "wse.weight", "ln_embd.weight",
                 "ln_embd.bias"] + (["ln_f.weight", "ln_f.bias"] if norm == "pre" else [])
        for name in names:
            p = params[name].data
            for flat in rng.choice(p.size, 3, replace=False):
                i = np.unravel_index(flat, p.shape)
                old, h = p[i], 1e-6
                p[i] = old + h
                up = float(fast.loss(*batch).item())
                p[i] = old - h
                down = float(fast.loss(*batch).item())
                p[i] = old
                assert grads[name][i] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9), (name, i)


@pytest.mark.parametrize("type_vocab_size", [0, 3])
def test_embeddings_in_each_chunk_equal_the_readable_ones(type_vocab_size):
    """The stem (wte + wpe [+ wse], ln_embd, dropout) runs per chunk, here and in the worker: the same
    loss and gradients as the readable model, with segments given, or no segment table at all."""
    readable, fast = _pair(type_vocab_size=type_vocab_size, dropout=0.1)
    idx, labels, mask = _batch(rows=6, seed=4)
    segments = (np.arange(8)[None, :] >= np.array([[2], [4], [6], [1], [3], [5]])).astype(np.int64)
    segments[0, -1] = 2 if type_vocab_size else 0                            # a third segment id
    batch = (idx, labels, mask) + ((segments,) if type_vocab_size else ())
    _assert_same(readable, fast, batch, threads=2)
    _assert_same(readable, fast, batch)                                     # and in one pass


def test_embedding_dropout_of_its_own_equals_readable():
    """The embeddings' Dropout set apart from the blocks' (here on, the blocks' off): the stem draws
    its mask as the readable model does."""
    readable, fast = _pair(dropout=0.0)
    for model in (readable, fast):
        model.dropout.p = 0.3
    _assert_same(readable, fast, _batch(rows=4, seed=6), threads=2)


def test_classification_training_equals_readable():
    """``classify`` (fine-tuning) runs the stem and the blocks fused: its loss and every gradient equal
    the readable model's, dropout and segments included, split over a worker and in one pass."""
    readable, fast = _pair(dropout=0.1)
    idx, _, mask = _batch(rows=6, seed=5)
    segments = (np.arange(8)[None, :] >= 4).repeat(6, axis=0).astype(np.int64)
    y = np.array([0, 1, 1, 0, 1, 0])

    def run(model):
        model.zero_grad()
        gu.manual_seed(11)
        loss = F.cross_entropy(model.classify(idx, mask, segments), y)
        loss.backward()
        return float(loss.item()), {n: p.grad.data.copy() for n, p in model.named_parameters() if p.grad is not None}

    la, ga = run(readable)
    for threads in (None, 2):
        if threads is None:
            lb, gb = run(fast)
        else:
            with cpu_threads(threads):
                lb, gb = run(fast)
        assert lb == pytest.approx(la, rel=1e-12)
        assert ga.keys() == gb.keys()
        for name in ga:
            np.testing.assert_allclose(gb[name], ga[name], rtol=1e-9, atol=1e-13, err_msg=name)


def test_fused_embeddings_refuse_bad_ids_as_the_readable_ones():
    readable, fast = _pair()
    idx, labels, mask = _batch()
    for model in (readable, fast):
        bad = idx.copy()
        bad[1, 2] = 20
        with pytest.raises(IndexError, match="20"):
            model.loss(bad, labels, mask)
        with pytest.raises(IndexError, match="token_type_ids"):
            model.loss(idx, labels, mask, np.full_like(idx, 2))             # two segments: ids 0 and 1


def test_fused_mlm_loss_refuses_bad_labels_as_the_readable_one():
    _, fast = _pair()
    idx, labels, mask = _batch()
    bad = labels.copy()
    bad[0, 0] = 20                                                          # vocab_size is 20
    with pytest.raises(IndexError, match="target 20 is out of range for 20 classes"):
        fast.loss(idx, bad, mask)
    with pytest.raises(ValueError, match="no position has a label"):
        fast.loss(idx, np.full_like(labels, -100), mask)
    with pytest.raises(ValueError, match="do not match idx"):
        fast.loss(idx, labels[:, :4], mask)
    with pytest.raises(TypeError, match="integer token ids"):
        fast.loss(idx, labels.astype(np.float64), mask)


def test_lora_wrapped_attention_runs_the_readable_blocks():
    from groundup.nn.lora import apply_lora

    readable, fast = _pair()
    for model in (readable, fast):
        gu.manual_seed(3)
        apply_lora(model, targets=("query", "value"), r=2)
    fast.load_state_dict(readable.state_dict())
    batch = _batch()
    (la, ga), (lb, gb) = _loss_and_grads(readable, batch), _loss_and_grads(fast, batch)
    assert lb == pytest.approx(la, rel=1e-12) and ga.keys() == gb.keys()


def test_hooks_are_refused_and_as_class_gives_the_readable_twin():
    readable, fast = _pair()
    with pytest.raises(TypeError, match="as_class"):
        fast.hooks({"blocks.0.hook_resid_post": lambda x, hook: x})
    back = fast.as_class(BERT)
    assert type(back) is BERT and back.training == fast.training
    idx, labels, mask = _batch()
    assert back.loss(idx, labels, mask).item() == pytest.approx(fast.loss(idx, labels, mask).item(), rel=1e-12)


def test_bert_saves_loads_into_either_twin_and_is_exported(tmp_path):
    """BERT has GPT's API: save, load as BERT or FastBERT, as_class; both live in groundup.models."""
    from groundup.models import BERT as ExportedBERT
    from groundup.models import FastBERT as ExportedFastBERT

    assert ExportedBERT is BERT and ExportedFastBERT is FastBERT
    gu.manual_seed(3)
    model = BERT(BERTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=8))
    model.save(tmp_path / "bert")
    fast = FastBERT.load(tmp_path / "bert")
    back = fast.as_class(BERT)
    assert type(fast) is FastBERT and type(back) is BERT and back.cfg == model.cfg
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value, err_msg=key)
    with pytest.raises(FileNotFoundError, match="BERT.load: no checkpoint directory"):
        BERT.load(tmp_path / "missing")
