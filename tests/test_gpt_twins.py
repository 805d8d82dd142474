"""The readable GPT and its fused twin FastGPT: equal in float64 (dropout included), the scoped CPU
threads (pure outside the context, chunk-count independent inside), and the hook points."""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import check_grad

import groundup as gu
from groundup import parallel
from groundup.models.gpt import GPT, GPTConfig
from groundup.models.gpt_fast import FastGPT

TINY = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


def pair(**overrides) -> tuple[GPT, FastGPT]:
    """A readable GPT in float64 with random weights everywhere, and its fast twin with the same weights."""
    gu.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, **overrides})).double()
    rng = np.random.default_rng(1)
    with gu.no_grad():
        for name, p in model.named_parameters():
            p.data[...] = rng.standard_normal(p.shape) * 0.3 + (1.0 if p.ndim == 1 and "ln" in name else 0.0)
    return model, model.as_class(FastGPT)


def tokens(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 13, shape)


def loss_and_grads(model: GPT, idx, targets, mask=None, seed=5) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
    model.zero_grad()
    gu.manual_seed(seed)
    loss = model.loss(idx, targets, attention_mask=mask)
    loss.backward()
    gu.manual_seed(seed)
    logits = model(idx, attention_mask=mask).detach().numpy()
    return loss.item(), logits, {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- readable == fast
CASES = list(itertools.product(["learned", "sinusoidal", "rotary", "none"], ["pre", "post"], [True, False],
                               [False, True], [True, False]))


@pytest.mark.parametrize("pos,norm,bias,padded,causal", CASES)
def test_readable_and_fast_agree_in_float64(pos, norm, bias, padded, causal):
    readable, fast = pair(pos_encoding=pos, norm=norm, bias=bias, causal=causal)
    idx, targets = tokens((3, 8)), tokens((3, 8), seed=2)
    mask = None
    if padded:
        mask = np.ones((3, 8), bool)
        mask[0, 6:] = False                                  # right padding
        mask[1, :2] = False                                  # left padding
        targets = np.where(mask, targets, -100)
    la, xa, ga = loss_and_grads(readable, idx, targets, mask)
    lb, xb, gb = loss_and_grads(fast, idx, targets, mask)
    assert abs(la - lb) <= 1e-9 * abs(la)
    np.testing.assert_allclose(xb, xa, rtol=1e-9, atol=1e-12)
    assert ga.keys() == gb.keys()
    for name in ga:
        np.testing.assert_allclose(gb[name], ga[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_dropout_draws_the_same_masks_in_both_twins_and_any_chunk_count():
    readable, fast = pair(pos_encoding="rotary", dropout=0.2)
    idx, targets = tokens((6, 8)), tokens((6, 8), seed=2)
    with parallel.cpu_threads(1):
        la, _, ga = loss_and_grads(readable, idx, targets)
        lb, _, gb = loss_and_grads(fast, idx, targets)
    with parallel.cpu_threads(3):
        assert parallel.num_threads() == 3
        lc, _, gc = loss_and_grads(fast, idx, targets)
    other, _, _ = loss_and_grads(fast, idx, targets, seed=6)
    assert abs(other - la) > 1e-6                            # dropout is on: another seed, another loss
    assert abs(la - lb) < 1e-12 and abs(lb - lc) < 1e-12
    for name in ga:
        np.testing.assert_allclose(gb[name], ga[name], rtol=1e-9, atol=1e-13, err_msg=name)
        np.testing.assert_allclose(gc[name], gb[name], rtol=1e-9, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("norm,rows", [("pre", 8), ("post", 8), ("pre", 2)])   # 8 rows of 8: folded
def test_rotary_in_its_real_form_equals_the_readable_model(monkeypatch, norm, rows):
    """``COMPLEX_ROPE`` off (the form CuPy runs): four real passes instead of the complex multiply,
    the qkv rows in their own order; the same numbers as the readable model, here and split over the
    worker processes."""
    from groundup.models import gpt_fast

    monkeypatch.setattr(gpt_fast, "COMPLEX_ROPE", False)
    readable, fast = pair(pos_encoding="rotary", norm=norm)
    idx, targets = tokens((rows, 8)), tokens((rows, 8), seed=3)
    la, xa, ga = loss_and_grads(readable, idx, targets)
    for threads in (1, 2):
        with parallel.cpu_threads(threads):
            lb, xb, gb = loss_and_grads(fast, idx, targets)
        assert abs(la - lb) <= 1e-9 * abs(la)
        np.testing.assert_allclose(xb, xa, rtol=1e-9, atol=1e-12)
        for name in ga:
            np.testing.assert_allclose(gb[name], ga[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_float32_twins_agree():
    gu.manual_seed(0)
    readable = GPT(GPTConfig.preset("baby", vocab_size=65, n_layer=2))
    fast = readable.as_class(FastGPT)
    idx, targets = np.random.default_rng(0).integers(0, 65, (4, 64)), np.random.default_rng(1).integers(0, 65, (4, 64))
    np.testing.assert_allclose(fast(idx).detach().numpy(), readable(idx).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert abs(fast.loss(idx, targets).item() - readable.loss(idx, targets).item()) < 1e-5


# ----------------------------------------------------------------------------- the scoped CPU context
def _blas_threads() -> list[int]:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


def test_loss_changes_nothing_in_the_process_outside_the_context():
    _, fast = pair()
    before = _blas_threads()
    fast.loss(tokens((4, 8)), tokens((4, 8), seed=1)).backward()
    assert _blas_threads() == before and parallel.num_threads() == 1


def test_context_gives_blas_the_threads_until_work_is_split_and_restores_it_on_exit():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):  # BLAS's own count (the suite runs it at 1)
        before = _blas_threads()
        with parallel.cpu_threads(2):
            assert parallel.num_threads() == 2
            assert all(n == 2 for n in _blas_threads())      # one Python thread at work: BLAS uses the cores
            with parallel.cpu_threads():                     # nested: keeps the outer settings
                assert parallel.num_threads() == 2 and all(n == 2 for n in _blas_threads())
            with parallel.cpu_threads(1):                    # nested with 1: no pool, BLAS on one thread
                assert parallel.num_threads() == 1 and all(n == 1 for n in _blas_threads())
            assert parallel.num_threads() == 2 and all(n == 1 for n in _blas_threads())   # one-way
        with parallel.cpu_threads(2):
            assert parallel.parallel_map(lambda i: i * i, range(4)) == [0, 1, 4, 9]
            assert all(n == 1 for n in _blas_threads())      # the first split section narrows BLAS for good
            with parallel.blas_threads():                    # ... except where one thread works alone
                assert all(n == 2 for n in _blas_threads())
            assert all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before and parallel.num_threads() == 1
        with pytest.raises(RuntimeError), parallel.cpu_threads(2):
            raise RuntimeError("boom")
        assert _blas_threads() == before and parallel.num_threads() == 1


def test_one_thread_at_the_top_level_puts_blas_on_one_thread_and_restores_it():
    """cpu_threads(1) (GROUNDUP_NUM_THREADS=1, `groundup bench --threads 1`) means one core, BLAS included."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):  # BLAS's own count (the suite runs it at 1)
        before = _blas_threads()
        assert all(n == 2 for n in before)
        with parallel.cpu_threads(1):
            assert parallel.num_threads() == 1 and all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before
        with pytest.raises(RuntimeError), parallel.cpu_threads(1):
            raise RuntimeError("boom")
        assert _blas_threads() == before


_FAULTS_SCRIPT = """
import resource, numpy as np
from groundup import parallel
def faults():
    # a step's pattern: eight 2 MB arrays made and written, then all dropped; the per-round page faults
    def rounds(n):
        for _ in range(n):
            arrays = [np.ones(512 * 1024, np.float32) for _ in range(8)]
            del arrays
    rounds(3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(10)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
out = [faults()]
with parallel.cpu_threads(1):
    out.append(faults())
out.append(faults())
with parallel.cpu_threads(2):
    with parallel.cpu_threads(1):
        pass
    out.append(faults())                      # still kept after the inner context left
out.append(faults())
print(*out)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the malloc tuning is glibc's mallopt")
def test_cpu_threads_keeps_freed_memory_mapped_inside_and_restores_malloc():
    """Inside cpu_threads (one thread or more) freed blocks stay mapped, so a step's arrays stop faulting
    in fresh pages (16 MB a round = 4096 pages); glibc's behaviour comes back on exit. A fresh
    interpreter, since malloc's settings are the process's."""
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    before, one, after_one, two_nested, after_two = map(float, out.stdout.split())
    assert before > 2000 and after_one > 2000 and after_two > 2000, out.stdout
    assert one < 100 and two_nested < 100, out.stdout


def test_worker_processes_run_blas_on_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(2, user_api="blas"), parallel.cpu_threads(2):
        workers = parallel.worker_processes()
        if not workers:
            pytest.skip("worker processes need fork (Linux)")
        _, meta = workers[0].call("helpers:worker_blas_threads", {}, {})
    assert meta["threads"] and all(n == 1 for n in meta["threads"])


def test_thread_count_respects_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GROUNDUP_NUM_THREADS", raising=False)
    assert parallel.default_threads() == 1
    monkeypatch.setenv("GROUNDUP_NUM_THREADS", "3")
    assert parallel.default_threads() == 3


# ----------------------------------------------------------------------------- hooks
def test_hook_points_have_the_documented_shapes_and_leave_no_trace():
    model, _ = pair(pos_encoding="rotary")
    idx = tokens((2, 5))
    _, cache = model.run_with_cache(idx)
    B, T, C, H, D = 2, 5, 16, 2, 8
    expected = {"hook_embed": (B, T, C), "ln_f.hook_normalized": (B, T, C)}
    for i in range(2):
        expected.update({f"blocks.{i}.hook_resid_pre": (B, T, C), f"blocks.{i}.hook_resid_mid": (B, T, C),
                         f"blocks.{i}.hook_resid_post": (B, T, C), f"blocks.{i}.hook_attn_out": (B, T, C),
                         f"blocks.{i}.hook_mlp_out": (B, T, C), f"blocks.{i}.attn.hook_q": (B, H, T, D),
                         f"blocks.{i}.attn.hook_k": (B, H, T, D), f"blocks.{i}.attn.hook_v": (B, H, T, D),
                         f"blocks.{i}.attn.hook_pattern": (B, H, T, T), f"blocks.{i}.attn.hook_z": (B, H, T, D),
                         f"blocks.{i}.attn.hook_result": (B, T, H, C), f"blocks.{i}.mlp.hook_pre": (B, T, 4 * C),
                         f"blocks.{i}.mlp.hook_post": (B, T, 4 * C)})
    assert {name: tuple(cache[name].shape) for name in expected} == expected
    assert not any(p.active for p in model.hook_points().values())
    with pytest.raises(ZeroDivisionError), model.hooks({"blocks.*.hook_resid_mid": lambda act, hook: 1 / 0}):
        model(idx)
    assert not any(p.active for p in model.hook_points().values())
    with pytest.raises(KeyError, match="no hook point matches 'blocks.9.hook_x'"), \
            model.hooks({"blocks.9.hook_x": lambda a, h: None}):
        pass


def test_hooked_paths_compute_the_same_logits():
    """Hooking the pattern or the per-head results switches to the explicit computation: same numbers."""
    model, _ = pair(pos_encoding="learned")
    idx = tokens((2, 8))
    base = model(idx).detach().numpy()
    with model.hooks({"blocks.*.attn.hook_pattern": lambda a, h: None, "blocks.*.attn.hook_result": lambda a, h: None}):
        np.testing.assert_allclose(model(idx).detach().numpy(), base, rtol=1e-10, atol=1e-12)


def test_cached_patterns_are_the_softmax_of_the_cached_queries_and_keys():
    model, _ = pair(pos_encoding="rotary")
    idx = tokens((2, 8))
    _, cache = model.run_with_cache(idx)
    for i in range(2):
        q, k = cache[f"blocks.{i}.attn.hook_q"].numpy(), cache[f"blocks.{i}.attn.hook_k"].numpy()
        scores = np.where(np.tril(np.ones((8, 8), bool)), q @ k.swapaxes(-1, -2) / math.sqrt(8), -np.inf)
        expected = np.exp(scores - scores.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(cache[f"blocks.{i}.attn.hook_pattern"].numpy(), expected, rtol=1e-10)
    # (caching hook_result sums the heads in another order: equal up to rounding)
    np.testing.assert_allclose(model.attention_maps(idx)[1], cache["blocks.1.attn.hook_pattern"].numpy(), rtol=1e-12)


def test_zeroing_a_heads_output_equals_zeroing_its_weights():
    model, _ = pair()
    idx = tokens((2, 8))

    def zero_head(act, hook):
        keep = np.ones((1, 2, 1, 1))
        keep[:, 1] = 0.0                                     # head 1 of (B, H, T, D)
        return act * gu.tensor(keep)

    with model.hooks({"blocks.0.attn.hook_z": zero_head}):
        hooked = model(idx).detach().numpy()
    with gu.no_grad():
        model.blocks[0].attn.proj.weight.data[:, 8:16] = 0.0  # the proj columns that read head 1
    np.testing.assert_allclose(model(idx).detach().numpy(), hooked, rtol=1e-10, atol=1e-12)


def test_patching_every_activation_of_run_b_into_run_a_gives_b():
    model, _ = pair(pos_encoding="sinusoidal")
    a, b = tokens((2, 8), seed=3), tokens((2, 8), seed=4)
    logits_b, cache_b = model.run_with_cache(b)
    patch = {name: (lambda act, hook: cache_b[hook.name]) for name in cache_b}
    with model.hooks(patch):
        patched = model(a).detach().numpy()
    np.testing.assert_allclose(patched, logits_b.numpy(), rtol=1e-12, atol=1e-12)
    assert not np.allclose(model(a).detach().numpy(), logits_b.numpy())


def test_gradients_flow_through_a_replaced_activation():
    """d loss / d delta for a hook that adds delta to the residual stream, against finite differences."""
    model, _ = pair(n_layer=1)
    idx, targets = tokens((2, 4)), tokens((2, 4), seed=1)

    def loss_with(delta):
        with model.hooks({"blocks.0.hook_resid_mid": lambda act, hook: act + delta}):
            return model.loss(idx, targets)

    check_grad(loss_with, (2, 4, 16))


def test_fast_twin_refuses_hooks_and_names_the_readable_class():
    _, fast = pair()
    with pytest.raises(TypeError, match="GPT.load"):
        with fast.hooks({"hook_embed": lambda a, h: None}):
            pass
    with pytest.raises(TypeError, match="readable twin"):
        fast.run_with_cache(tokens((1, 4)))


def test_cached_generation_refuses_active_hooks():
    model, _ = pair()
    with model.hooks({"hook_embed": lambda a, h: None}):
        with pytest.raises(ValueError, match="use_cache=False"):
            model.generate(np.array([[1]]), 3)
        assert model.generate(np.array([[1]]), 3, use_cache=False, seed=0).shape == (1, 4)


def test_gpt_file_is_the_readable_model():
    source = (Path(gu.__file__).parent / "models" / "gpt.py").read_text()
    assert source.count("def forward") >= 4
    assert re.search(r"for block in self\.blocks:\n\s+x = block\(x", source)


def test_adamw_inside_the_threads_gives_the_same_weights(monkeypatch):
    """AdamW shares its parameters out over cpu_threads' threads once the work is split: with the same
    gradients, the same update."""
    from groundup.optim import AdamW, adam

    monkeypatch.setattr(adam, "SHARE_OUT_MIN", 0)            # share out even this tiny model's update
    monkeypatch.setattr(adam, "FLAT_MAX", 0)                 # and every parameter one at a time
    shared = []
    monkeypatch.setattr(adam, "_share_out", lambda items, n, f=adam._share_out: shared.append(n) or f(items, n))

    results = []
    for n in (1, 2):
        _, fast = pair()
        opt = AdamW(fast.parameters(), lr=1e-2, weight_decay=0.1)
        for seed in range(3):
            opt.zero_grad()
            fast.loss(tokens((4, 8), seed), tokens((4, 8), seed + 10)).backward()    # outside: one thread
            with parallel.cpu_threads(n):
                parallel.split_work()                        # as in a run that splits (it shares out only then)
                opt.step()
        results.append({k: v.copy() for k, v in fast.state_dict().items()})
    assert 2 in shared                                       # the threaded path ran
    for name in results[0]:
        np.testing.assert_array_equal(results[1][name], results[0][name], err_msg=name)
