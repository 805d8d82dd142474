"""groundup.train.DataParallel: one step's forward and backward split by rows over worker processes.

Oracle: one ordinary forward and backward over the whole batch, in float64, so the split's loss and
every parameter gradient must agree to rounding (1e-10). Covered: a padded language model whose loss
averages over tokens (the count weighting), the encoder-decoder transformer with padded sources,
BERT's masked-LM loss over labelled positions, dropout (reproducible, and each block draws its own
masks), gradients accumulating onto existing ones, blocks with nothing to count, the fallbacks
(outside cpu_threads, one row) and the refusals (BatchNorm, ragged rows, a replica that no longer
matches the model).
"""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup import nn
from groundup.parallel import cpu_threads, worker_processes
from groundup.train.data_parallel import DataParallel

pytestmark = pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="worker processes need fork")


def _grads(model):
    return {name: None if p.grad is None else p.grad.data.copy() for name, p in model.named_parameters()}


def _one_pass(model, batch):
    model.zero_grad()
    loss = model.loss(*batch)
    loss.backward()
    return float(loss.item()), _grads(model)


def _split(model, batch, **kwargs):
    model.zero_grad()
    with cpu_threads(2):
        assert worker_processes(), "the context should fork a worker"
        loss = DataParallel(model, **kwargs)(*batch)
    return loss, _grads(model)


def _assert_same(one, split, rtol=1e-10):
    (loss1, g1), (loss2, g2) = one, split
    assert loss2 == pytest.approx(loss1, rel=rtol, abs=1e-12)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert (g1[name] is None) == (g2[name] is None), name
        if g1[name] is not None:
            scale = max(1.0, float(np.abs(g1[name]).max()))
            np.testing.assert_allclose(g2[name], g1[name], rtol=0, atol=rtol * scale, err_msg=name)


def _lm_batch(rows=9, width=7, vocab=11, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (rows, width))
    y = rng.integers(0, vocab, (rows, width))
    lengths = rng.integers(1, width + 1, rows)
    y[np.arange(width)[None, :] >= lengths[:, None]] = -1                 # right padding, ragged
    y[:4, 2:] = -1                                                          # the first block counts fewer tokens
    return x, y


def test_language_model_with_padding_equals_one_pass():
    from groundup.models.rnn_lm import RNNLM, RNNLMConfig

    gu.manual_seed(0)
    model = RNNLM(RNNLMConfig(vocab_size=11, cell="lstm", n_embd=6, hidden_size=5)).double()
    batch = _lm_batch()
    count = lambda x, y: (y != -1).sum()                                    # noqa: E731 - the loss's mean is over tokens
    _assert_same(_one_pass(model, batch), _split(model, batch, count=count))
    rows_only = _split(model, batch)                                        # rows would weight the blocks wrongly
    assert abs(rows_only[0] - _one_pass(model, batch)[0]) > 1e-6


def test_transformer_with_padded_sources_equals_one_pass():
    from groundup.models.transformer_seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig

    gu.manual_seed(1)
    model = TransformerSeq2Seq(TransformerSeq2SeqConfig(12, 10, d_model=8, nhead=2, num_encoder_layers=1,
                                                        num_decoder_layers=1, dim_feedforward=16, max_len=16,
                                                        dropout=0.0)).double()
    rng = np.random.default_rng(1)
    src = rng.integers(3, 12, (6, 5))
    src_mask = np.ones((6, 5), dtype=bool)
    src_mask[2, 3:] = src_mask[5, 1:] = False
    tgt_in, tgt_out = rng.integers(3, 10, (6, 4)), rng.integers(3, 10, (6, 4))
    tgt_out[0, 2:] = -1
    batch = (src, src_mask, tgt_in, tgt_out)
    count = lambda src, mask, tin, tout: (tout != -1).sum()                 # noqa: E731
    _assert_same(_one_pass(model, batch), _split(model, batch, count=count))


def test_bert_masked_lm_equals_one_pass():
    from groundup.models.bert import BERT, BERTConfig

    gu.manual_seed(2)
    model = BERT(BERTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.0)).double()
    rng = np.random.default_rng(2)
    idx = rng.integers(5, 20, (5, 8))
    labels = np.where(rng.random((5, 8)) < 0.3, idx, -100)
    labels[:, 0] = idx[:, 0]
    mask = np.ones((5, 8), dtype=bool)
    mask[1, 5:] = False
    count = lambda i, lab, m: (lab != -100).sum()                           # noqa: E731
    one, split = _one_pass(model, (idx, labels, mask)), _split(model, (idx, labels, mask), count=count)
    _assert_same(one, split, rtol=1e-9)


def test_float_inputs_passed_as_tensors_stay_tensors():
    from groundup.models.mlp import MLP, MLPConfig

    gu.manual_seed(3)
    model = MLP(MLPConfig(in_features=6, hidden_sizes=(5,), num_classes=3)).double()
    rng = np.random.default_rng(3)
    batch = (gu.tensor(rng.standard_normal((7, 6))), gu.tensor(rng.integers(0, 3, 7)))
    _assert_same(_one_pass(model, batch), _split(model, batch))


class Noisy(nn.Module):
    """mean(dropout(x * w)): its gradient shows which elements each block's mask kept."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(gu.ones(64, dtype=gu.float64))

    def loss(self, x):
        return gu.functional.dropout(gu.tensor(x) * self.w, 0.5, self.training).mean()


def test_dropout_is_reproducible_and_each_block_draws_its_own_masks():
    model = Noisy()
    x = np.ones((2, 64))                                                    # one row per block
    runs = []
    for _ in range(2):
        gu.manual_seed(5)
        runs.append(_split(model, (x,)))
    _assert_same(runs[0], runs[1], rtol=0)                                  # same seed, same masks
    # d loss / d w_j = (m0_j + m1_j) / 2 * 2 / 64: the value 1/64 needs m0_j != m1_j, i.e. masks of their own
    g = runs[0][1]["w"] * 64
    assert set(np.round(g, 12)) <= {0.0, 1.0, 2.0} and np.isclose(g, 1.0).any()


def test_gradients_accumulate_onto_existing_ones():
    from groundup.models.mlp import MLP, MLPConfig

    gu.manual_seed(4)
    model = MLP(MLPConfig(in_features=3, hidden_sizes=(4,), num_classes=2)).double()
    rng = np.random.default_rng(4)
    batch = (gu.tensor(rng.standard_normal((6, 3))), gu.tensor(rng.integers(0, 2, 6)))
    _, once = _one_pass(model, batch)
    model.loss(*batch).backward()                                           # twice: .grad holds 2x
    with cpu_threads(2):
        DataParallel(model)(*batch)                                         # a third time, split
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.data, 3 * once[name], rtol=1e-10, atol=1e-14)


def test_a_block_with_nothing_to_count_is_skipped():
    from groundup.models.rnn_lm import RNNLM, RNNLMConfig

    gu.manual_seed(6)
    model = RNNLM(RNNLMConfig(vocab_size=11, cell="gru", n_embd=4, hidden_size=3)).double()
    x, y = _lm_batch(rows=6)
    y[3:] = -1                                                              # the second block is all padding
    count = lambda x, y: (y != -1).sum()                                    # noqa: E731
    _assert_same(_one_pass(model, (x, y)), _split(model, (x, y), count=count))


def test_outside_the_context_and_for_one_row_it_is_one_ordinary_pass():
    from groundup.models.mlp import MLP, MLPConfig

    gu.manual_seed(7)
    model = MLP(MLPConfig(in_features=3, hidden_sizes=(4,), num_classes=2)).double()
    batch = (gu.tensor(np.ones((1, 3))), gu.tensor(np.zeros(1, dtype=np.int64)))
    one = _one_pass(model, batch)
    model.zero_grad()
    _assert_same(one, (DataParallel(model)(*batch), _grads(model)), rtol=0)
    _assert_same(one, _split(model, batch), rtol=0)


def test_refusals_name_what_is_wrong():
    from groundup.models.mlp import MLP, MLPConfig

    class WithNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm1d(3)

        def loss(self, x):
            return self.norm(x).sum()

    with pytest.raises(ValueError, match="BatchNorm"):
        DataParallel(WithNorm())
    model = MLP(MLPConfig(in_features=3, hidden_sizes=(4,), num_classes=2))
    with pytest.raises(AttributeError, match="no method 'score'"):
        DataParallel(model, loss="score")
    with pytest.raises(TypeError, match="groundup Module"):
        DataParallel(object())
    with pytest.raises(ValueError, match="same first"):
        DataParallel(model)(np.ones((4, 3)), np.zeros(3, dtype=np.int64))

    class Local(Noisy):
        pass

    with cpu_threads(2), pytest.raises(TypeError, match="cannot be pickled"):
        DataParallel(Local())(np.ones((2, 64)))


def test_a_replica_that_no_longer_matches_the_model_is_refused():
    import pickle

    from groundup.models.mlp import MLP, MLPConfig
    from groundup.train.data_parallel import _replica_step

    model = MLP(MLPConfig(in_features=3, hidden_sizes=(4,), num_classes=2))
    arrays = {f"p{j}": p.data for j, p in enumerate(model.parameters())}
    arrays["p0"] = np.ones((5, 3), dtype=np.float32)
    meta = {"key": "k", "loss": "loss", "training": True, "wrap": [True, False], "seed": 0, "weight": 1.0,
            "model": pickle.dumps(model)}
    with pytest.raises(ValueError, match="parameter 0 has shape"):
        _replica_step({}, arrays | {"b0": np.ones((2, 3), np.float32), "b1": np.zeros(2, np.int64)}, meta)
    with pytest.raises(RuntimeError, match="no replica"):
        _replica_step({}, arrays, meta | {"key": "other", "model": None})


def test_an_error_in_one_block_leaves_the_grads_and_the_workers_as_they_were():
    from groundup.models.rnn_lm import RNNLM, RNNLMConfig

    gu.manual_seed(9)
    model = RNNLM(RNNLMConfig(vocab_size=11, cell="rnn", n_embd=4, hidden_size=3)).double()
    x, y = _lm_batch(rows=6)
    bad = y.copy()
    bad[0, 0] = 99                                                          # out of range, in block 0 (here)
    count = lambda x, y: (y != -1).sum()                                    # noqa: E731
    model.zero_grad()
    with cpu_threads(2):
        step = DataParallel(model, count=count)
        with pytest.raises(IndexError):
            step(x, bad)
        assert all(p.grad is None for p in model.parameters())
        loss = step(x, y)                                                   # the worker answers the next call
    assert loss == pytest.approx(_one_pass(model, (x, y))[0], rel=1e-12)


def test_trainer_with_data_parallel_follows_the_one_process_trajectory(tmp_path):
    from groundup.models.rnn_lm import RNNLM, RNNLMConfig
    from groundup.train import TrainConfig, Trainer

    x_all, y_all = _lm_batch(rows=64, seed=3)

    def get_batch(split, rng):
        rows = rng.integers(0, 64, 8)
        return x_all[rows], y_all[rows]

    def train(**kwargs):
        gu.manual_seed(0)
        model = RNNLM(RNNLMConfig(vocab_size=11, cell="gru", n_embd=4, hidden_size=6)).double()
        cfg = TrainConfig(max_iters=6, lr=1e-2, eval_interval=3, eval_iters=1, progress=False)
        losses = []
        trainer = Trainer(model, cfg, get_batch, default_callbacks=False,
                          callbacks=[lambda t, event, info: losses.append(info["loss"]) if event == "step" else None],
                          **kwargs)
        with cpu_threads(2):                                                # fit's own context nests inside
            trainer.fit()
            assert worker_processes()
        return losses, {n: p.data.copy() for n, p in model.named_parameters()}

    blocks = []

    def count(x, y):
        blocks.append(len(x))
        return (y != -1).sum()

    (plain, w_plain), (split, w_split) = train(), train(data_parallel=count)
    assert blocks == [4, 4] * 6                                             # every step split in two blocks
    np.testing.assert_allclose(split, plain, rtol=1e-10)
    for name in w_plain:
        np.testing.assert_allclose(w_split[name], w_plain[name], rtol=1e-9, atol=1e-12, err_msg=name)
    with pytest.raises(ValueError, match="cannot split a loss_fn"):
        Trainer(RNNLM(RNNLMConfig(vocab_size=11)), TrainConfig(), get_batch, loss_fn=lambda m, b: m.loss(*b),
                data_parallel=True)


def test_workers_forked_under_no_grad_still_compute_gradients():
    from groundup.models.mlp import MLP, MLPConfig

    gu.manual_seed(10)
    model = MLP(MLPConfig(in_features=3, hidden_sizes=(4,), num_classes=2)).double()
    batch = (gu.tensor(np.random.default_rng(10).standard_normal((6, 3))), gu.tensor(np.arange(6) % 2))
    one = _one_pass(model, batch)
    model.zero_grad()
    with cpu_threads(2):
        with gu.no_grad():
            assert worker_processes()                                       # forked while grad mode is off
        loss = DataParallel(model)(*batch)
    _assert_same(one, (loss, _grads(model)))
