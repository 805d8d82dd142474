"""Test helpers: one finite-difference gradient check and one PyTorch parity check for every op.

    check_grad(lambda x, y: x * y, (3, 1), (1, 4))          # float64 central differences
    assert_matches_torch([(3, 4)], lambda x: x.tanh())       # same lambda on both frameworks

``check_grad`` reduces a non-scalar output ``f(x)`` to ``(f(x) * R).sum()`` with a random ``R``,
so every output element's gradient is exercised with a different weight. ``assert_matches_torch``
compares forward values, shapes and dtypes, then the gradients of a random weighting of the
output, in float32 and float64 (tinygrad's ``helper_test_op``). Both also walk the recorded graph
and check that no Function silently changes the float dtype in its forward or backward.

Inputs are given as shapes (random normal values) or arrays: a float array is a differentiable
input; an integer or boolean array is a constant (class targets, indices, masks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import groundup as gu
from groundup.backend import to_numpy
from groundup.tensor import Tensor, _topological_order

Input = tuple[int, ...] | np.ndarray


@dataclass(frozen=True)
class Backend:
    """One array backend under test: its name, its array module and groundup's device name."""

    name: str
    xp: Any
    device: str


def as_array(spec: Input) -> np.ndarray:
    """A shape becomes standard-normal float64 values; an array is copied as is."""
    if isinstance(spec, np.ndarray):
        return spec.copy()
    return np.asarray(np.random.standard_normal(tuple(spec)))


def away_from(values: np.ndarray, points: Sequence[float] = (0.0,), margin: float = 1e-2) -> np.ndarray:
    """Push values at least ``margin`` away from each kink in ``points`` (relu at 0, clamp bounds),
    so that central differences never straddle a point where the derivative jumps."""
    out = np.array(values, dtype=np.float64)
    for p in points:
        close = np.abs(out - p) < margin
        out[close] = p + np.where(out[close] >= p, margin, -margin) * 2
    return out


def positive(shape: tuple[int, ...], low: float = 0.5, high: float = 2.0) -> np.ndarray:
    """Values in [low, high): a domain for log, sqrt, rsqrt, pow."""
    return np.asarray(np.random.uniform(low, high, size=shape))


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


def _outputs(result: Any) -> list[Any]:
    """An op's result as a flat list (split/chunk return tuples, max(dim) returns values+indices)."""
    if isinstance(result, (tuple, list)):
        return [r for item in result for r in _outputs(item)]
    return [result]


def assert_graph_dtype(outputs: Sequence[Tensor]) -> None:
    """No Function in the graph changes the float dtype, in its forward or its backward.

    Forward: a node whose float inputs share one dtype has that dtype (only ``Cast`` may change
    it). Backward: each gradient has its input's dtype. The engine casts a leaf's gradient to the
    leaf's dtype, so a float64 upcast inside one backward would be invisible from ``x.grad``;
    this calls each node's backward directly, with an upstream gradient of the node's dtype.
    """
    seen: set[int] = set()
    for out in outputs:
        if not isinstance(out, Tensor) or out._ctx is None:
            continue
        for node in _topological_order(out):
            if id(node) in seen:
                continue
            seen.add(id(node))
            ctx = node._ctx
            name = type(ctx).__name__
            in_dtypes = {p.dtype for p in ctx.parents if p.dtype.kind == "f"}
            if name != "Cast" and len(in_dtypes) == 1:
                assert node.dtype in in_dtypes, f"{name} forward turned {in_dtypes.pop()} into {node.dtype}"
            xp = gu.backend.array_module(node.data)
            grads = ctx.backward(xp.ones(node.shape, dtype=node.dtype))
            grads = grads if isinstance(grads, tuple) else (grads,)
            for parent, g in zip(ctx.parents, grads):
                if g is not None and parent.dtype.kind == "f":
                    assert g.dtype == parent.dtype, f"{name} backward gave a {g.dtype} gradient for a " \
                                                    f"{parent.dtype} input"


def check_grad(fn: Callable[..., Any], *shapes_or_arrays: Input, eps: float = 1e-6, rtol: float = 1e-5,
               atol: float = 1e-7, device: str = "cpu") -> None:
    """Compare the backward pass of ``fn`` with float64 central differences.

    Args:
        fn: takes one Tensor per input, returns a Tensor (or a tuple of them, e.g. ``split``).
        shapes_or_arrays: a shape (random normal float64 input) or an array per input; float
            arrays are differentiated, integer/boolean arrays are passed as constants.
        device: ``"cpu"`` or ``"cuda"``.
    """
    arrays = [as_array(s) for s in shapes_or_arrays]
    arrays = [a.astype(np.float64) if _is_float(a) else a for a in arrays]
    weights: list[np.ndarray] = []

    def loss(values: Sequence[np.ndarray], track: bool) -> tuple[Tensor | float, list[Tensor]]:
        inputs = [gu.tensor(a, requires_grad=track and _is_float(a), device=device) for a in values]
        outs = [o for o in _outputs(fn(*inputs)) if o.dtype.kind == "f"]
        assert outs, "check_grad: fn returned no floating point output"
        if not weights:
            # NOTE: a scalar output is used as is; a non-scalar one is weighted by a fixed random R
            # so that a wrong gradient cannot hide behind a symmetric sum.
            weights.extend(np.random.standard_normal(o.shape) if o.ndim else np.ones(()) for o in outs)
        if track:
            assert_graph_dtype(outs)
            total = sum((o * gu.tensor(w, device=device)).sum() for o, w in zip(outs, weights))
            return total, inputs
        return float(sum(np.sum(to_numpy(o.data) * w) for o, w in zip(outs, weights))), inputs

    total, inputs = loss(arrays, track=True)
    if not total.requires_grad:
        raise AssertionError("check_grad: the output does not depend on any differentiable input")
    total.backward()
    for i, (a, t) in enumerate(zip(arrays, inputs)):
        if not _is_float(a):
            continue
        analytic = np.zeros_like(a) if t.grad is None else to_numpy(t.grad.data)
        assert analytic.shape == a.shape, f"input {i}: gradient shape {analytic.shape} != {a.shape}"
        assert analytic.dtype == np.float64, f"input {i}: gradient dtype {analytic.dtype}"
        numeric = np.zeros_like(a)
        with gu.no_grad():
            for j in np.ndindex(a.shape):
                probe = [b.copy() for b in arrays]
                probe[i][j] = a[j] + eps
                up, _ = loss(probe, track=False)
                probe[i][j] = a[j] - eps
                down, _ = loss(probe, track=False)
                numeric[j] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i} (shape {a.shape}) differs from finite differences")


_TORCH_DTYPES = ("float32", "float64")


def assert_matches_torch(shapes: Sequence[Input], torch_fn: Callable[..., Any],
                         our_fn: Callable[..., Any] | None = None, atol: float = 1e-5, rtol: float = 1e-4, *,
                         const: Sequence[int] = (), dtypes: Sequence[str] = _TORCH_DTYPES,
                         device: str = "cpu", grad: bool = True) -> None:
    """Run the same op in PyTorch and groundup; compare values, shapes, dtypes and gradients.

    Args:
        shapes: a shape (random normal input) or an array per input; integer/boolean arrays are
            constants, float arrays are cast to each dtype under test.
        torch_fn: the op on torch tensors; ``our_fn`` defaults to the same lambda.
        const: indices of float inputs that get no gradient (targets, class weights).
        dtypes: float dtypes to test ("float32", "float64").
        device: where our tensors live (``"cpu"`` or ``"cuda"``); torch always runs on the CPU.
        grad: also compare the gradients of ``(out * R).sum()`` for a random ``R``.
    """
    torch = pytest.importorskip("torch")
    our_fn = our_fn or torch_fn
    base = [as_array(s) for s in shapes]
    for dtype in dtypes:
        arrays = [a.astype(dtype) if _is_float(a) else a for a in base]
        wants = [_is_float(a) and i not in const and grad for i, a in enumerate(arrays)]
        theirs = [torch.tensor(a, requires_grad=w) for a, w in zip(arrays, wants)]
        ours = [gu.tensor(a, requires_grad=w, device=device) for a, w in zip(arrays, wants)]
        their_out, our_out = _outputs(torch_fn(*theirs)), _outputs(our_fn(*ours))
        assert len(their_out) == len(our_out), f"{dtype}: {len(our_out)} outputs, torch gives {len(their_out)}"
        for k, (t, o) in enumerate(zip(their_out, our_out)):
            where = f"{dtype} output {k}"
            assert isinstance(o, Tensor), f"{where}: expected a Tensor, got {type(o).__name__}"
            assert o.shape == tuple(t.shape), f"{where}: shape {o.shape}, torch {tuple(t.shape)}"
            assert str(o.dtype) == str(t.dtype).removeprefix("torch."), f"{where}: dtype {o.dtype}, torch {t.dtype}"
            expected = t.detach().numpy()
            if expected.dtype.kind == "f":
                np.testing.assert_allclose(to_numpy(o.data), expected, atol=atol, rtol=rtol, err_msg=where)
            else:
                np.testing.assert_array_equal(to_numpy(o.data), expected, err_msg=where)
        float_outs = [(t, o) for t, o in zip(their_out, our_out) if t.dtype.is_floating_point and t.requires_grad]
        for t, o in zip(their_out, our_out):
            assert o.requires_grad == t.requires_grad, f"{dtype}: requires_grad {o.requires_grad}, " \
                                                       f"torch {t.requires_grad}"
        if not float_outs:
            continue
        assert_graph_dtype([o for _, o in float_outs])
        their_total, our_total = 0, 0
        for t, o in float_outs:
            weight = np.random.standard_normal(tuple(t.shape)).astype(dtype)
            their_total = their_total + (t * torch.tensor(weight)).sum()
            our_total = our_total + (o * gu.tensor(weight, device=device)).sum()
        their_total.backward()
        our_total.backward()
        for i, (t, o) in enumerate(zip(theirs, ours)):
            if not wants[i]:
                continue
            where = f"{dtype} gradient of input {i}"
            if t.grad is None:
                assert o.grad is None or not np.any(to_numpy(o.grad.data)), f"{where}: torch has none"
                continue
            assert o.grad is not None, f"{where}: missing (torch has one)"
            assert o.grad.dtype == np.dtype(dtype), f"{where}: dtype {o.grad.dtype}"
            np.testing.assert_allclose(to_numpy(o.grad.data), t.grad.numpy(), atol=atol, rtol=rtol, err_msg=where)


# ----------------------------------------------------------------------------- browser tests
def browser_or_reason() -> tuple[str | None, str]:
    """(path of a Chromium that Playwright can drive, "") or (None, why not)."""
    import os
    import shutil
    from pathlib import Path

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, "Playwright for Python is not installed (pip install playwright; no browser download needed)"
    for candidate in (os.environ.get("GROUNDUP_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate, ""
    return None, "no Chromium found (apt-get install -y chromium, or set GROUNDUP_CHROMIUM to its path)"


def require_browser(what: str) -> str:
    """Chromium's path; else fail when GROUNDUP_REQUIRE_BROWSER is set (CI), or skip with a loud warning."""
    import os
    import warnings

    chromium, missing = browser_or_reason()
    if chromium is None:
        if os.environ.get("GROUNDUP_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"GROUNDUP_REQUIRE_BROWSER is set but the {what} cannot run: {missing}")
        warnings.warn(f"{what} NOT RUN: {missing}", stacklevel=2)
        pytest.skip(f"{what} not run: {missing}")
    return chromium


def worker_blas_threads(state: dict[str, Any], arrays: dict[str, Any], meta: dict[str, Any]) -> tuple[dict, dict]:
    """A ``groundup.parallel.Worker`` function: the worker process's BLAS thread counts."""
    import threadpoolctl

    return {}, {"threads": [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]}
