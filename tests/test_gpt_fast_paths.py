"""The fused twin's other paths: the LayerNorms folded into the Linears (taken from 4 C rows on), and
the chunks sent to cpu_threads' worker processes; both against the readable model in float64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_gpt_twins import loss_and_grads, pair, tokens

from groundup import parallel


def _compare(readable, fast, idx, targets, mask=None, n_threads=None):
    la, xa, ga = loss_and_grads(readable, idx, targets, mask)
    if n_threads is None:
        lb, xb, gb = loss_and_grads(fast, idx, targets, mask)
    else:
        with parallel.cpu_threads(n_threads):
            lb, xb, gb = loss_and_grads(fast, idx, targets, mask)
    assert abs(la - lb) <= 1e-9 * abs(la)
    np.testing.assert_allclose(xb, xa, rtol=1e-9, atol=1e-12)
    for name in ga:
        np.testing.assert_allclose(gb[name], ga[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("pos,bias,padded", list(itertools.product(["rotary", "learned"], [True, False],
                                                                    [False, True])))
def test_folded_layer_norms_agree_with_the_readable_model(pos, bias, padded):
    readable, fast = pair(pos_encoding=pos, norm="pre", bias=bias)
    idx, targets = tokens((8, 8)), tokens((8, 8), seed=2)                   # 64 rows = 4 C: folded
    mask = None
    if padded:
        mask = np.ones((8, 8), bool)
        mask[0, 5:] = False
        mask[3, :3] = False
        targets = np.where(mask, targets, -100)
    _compare(readable, fast, idx, targets, mask)


@pytest.mark.parametrize("norm,bias,padded,dropout", [("pre", True, False, 0.0), ("pre", False, True, 0.0),
                                                     ("post", True, True, 0.0), ("post", False, False, 0.2),
                                                     ("pre", False, False, 0.2)])
def test_chunks_in_worker_processes_agree_with_the_readable_model(norm, bias, padded, dropout):
    readable, fast = pair(pos_encoding="rotary", norm=norm, bias=bias, dropout=dropout)
    idx, targets = tokens((9, 8)), tokens((9, 8), seed=2)
    mask = None
    if padded:
        mask = np.ones((9, 8), bool)
        mask[4, 6:] = False
        mask[7, :2] = False
        targets = np.where(mask, targets, -100)
    _compare(readable, fast, idx, targets, mask, n_threads=3)


@pytest.mark.parametrize("pos,dropout,threads", [("learned", 0.2, 2), ("sinusoidal", 0.0, 3), ("none", 0.2, 2),
                                                  ("learned", 0.0, 3)])
def test_embeddings_made_in_each_chunk_agree_with_the_readable_model(pos, dropout, threads):
    """With worker processes the stack makes each chunk's embeddings where the chunk runs (``GPT_STEM``:
    wte, wpe or the sinusoid table, dropout): the readable model's loss and every gradient, wpe's too."""
    readable, fast = pair(pos_encoding=pos, dropout=dropout)
    idx, targets = tokens((7, 8)), tokens((7, 8), seed=4)
    mask = np.ones((7, 8), bool)
    mask[2, 5:] = False
    targets = np.where(mask, targets, -100)
    _compare(readable, fast, idx, targets, mask, n_threads=threads)


def test_worker_processes_start_inside_the_context_and_stop_on_exit():
    if not parallel.worker_processes.__module__ or not hasattr(__import__("os"), "fork"):
        pytest.skip("no fork")
    _, fast = pair()
    with parallel.cpu_threads(2):
        fast.loss(tokens((4, 8)), tokens((4, 8), seed=1)).backward()
        workers = parallel.worker_processes()
        assert len(workers) == 1 and workers[0].proc.is_alive()
    assert not workers[0].proc.is_alive()
    assert parallel.worker_processes() == []


def test_ctrl_c_is_the_parents_to_handle_not_the_workers():
    """SIGINT to the process group: a worker ignores it (the parent's handler, forked into it, would
    raise KeyboardInterrupt there and kill it) and still answers; the parent stops it on exit."""
    import os
    import signal
    import time

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    readable, fast = pair()
    idx, targets = tokens((4, 8)), tokens((4, 8), seed=1)
    try:
        with parallel.cpu_threads(2):
            fast.loss(idx, targets).backward()
            (worker,) = parallel.worker_processes()
            os.kill(worker.proc.pid, signal.SIGINT)
            time.sleep(0.3)
            assert worker.proc.is_alive()
            _compare(readable, fast, idx, targets)
        assert not worker.proc.is_alive()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_forward_without_backward_leaves_the_workers_usable():
    readable, fast = pair()
    idx, targets = tokens((4, 8)), tokens((4, 8), seed=1)
    with parallel.cpu_threads(2):
        for _ in range(12):                                                 # more than a worker keeps
            fast.loss(idx, targets)
        _compare(readable, fast, idx, targets)
