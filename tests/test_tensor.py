"""The autograd engine: graph shapes (diamonds, reuse, long chains), grad modes, in-place safety,
error messages, dtype propagation, creation functions and conversions.

Gradients are checked against finite differences (``check_grad``) or closed forms derived by
hand in the test, never against numbers copied from a previous run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from helpers import Backend, assert_graph_dtype, assert_matches_torch, check_grad, positive

import groundup as gu
import groundup.functional as F
from groundup.function import Function


def leaf(*shape: int, dtype: object = gu.float64, device: str = "cpu") -> gu.Tensor:
    return gu.randn(*shape, dtype=dtype, device=device, requires_grad=True)


# ---------------------------------------------------------------- graph shapes
@pytest.mark.parametrize("order", ["short_first", "long_first"])
def test_diamond_graph(order: str, backend: Backend) -> None:
    """y feeds the output directly and through a longer path; both contributions must arrive
    before y's own backward runs, whichever parent the traversal meets first."""
    x = leaf(4, device=backend.device)
    y = x * 2.0
    a = y * 3.0
    z = y + a if order == "short_first" else a + y
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(4, 8.0))  # d/dx (2x + 6x)
    check_grad(lambda t: (t.tanh() * 2.0) + (t.tanh() * 2.0).exp() * t.tanh(), (3, 2), device=backend.device)


def test_reused_tensor_accumulates(backend: Backend) -> None:
    x = leaf(3, 2, device=backend.device)
    (x * x + x - x.exp() * x).sum().backward()
    data = x.detach().numpy()
    np.testing.assert_allclose(x.grad.numpy(), 2 * data + 1 - np.exp(data) * (1 + data), rtol=1e-12)
    check_grad(lambda t: t @ t.T + t.sum(), (3, 3), device=backend.device)
    check_grad(lambda t: gu.cat([t, t * 2, t], dim=0)[1:].sum(0), (2, 3), device=backend.device)


def test_gradient_accumulates_across_calls() -> None:
    x = leaf(3)
    (x * 2).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 + 2 * x.detach().numpy())
    x.zero_grad_()
    assert x.grad is None
    (x * 5).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(3, 5.0))


def test_long_chain_has_no_recursion_error() -> None:
    x = gu.tensor([0.5, -0.25], dtype=gu.float64, requires_grad=True)
    y = x
    start = time.perf_counter()
    for _ in range(10_000):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(2, 1.0001**10_000), rtol=1e-9)
    assert time.perf_counter() - start < 20  # 20,000 nodes: linear, not quadratic


def test_grad_only_flows_to_tensors_that_require_it() -> None:
    x, c = leaf(3), gu.randn(3, dtype=gu.float64)
    y = x * c
    assert y.requires_grad and not (c * 2).requires_grad and (c * 2)._ctx is None
    y.sum().backward()
    assert c.grad is None
    np.testing.assert_allclose(x.grad.numpy(), c.numpy())


# ---------------------------------------------------------------- grad modes, detach, retain_grad
def test_no_grad_and_enable_grad() -> None:
    x = leaf(3)
    assert gu.is_grad_enabled()
    with gu.no_grad():
        assert not gu.is_grad_enabled()
        y = x * 2
        with gu.enable_grad():
            z = x * 3
        w = x * 4
    assert gu.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None and not w.requires_grad
    assert z.requires_grad and z._ctx is not None

    @gu.no_grad()
    def frozen(t: gu.Tensor) -> gu.Tensor:
        return t * 2

    assert not frozen(x).requires_grad
    with pytest.raises(ValueError), gu.no_grad():
        raise ValueError("leaving by an exception restores grad mode")
    assert gu.is_grad_enabled()


def test_detach_cuts_the_graph_and_shares_memory() -> None:
    x = leaf(3)
    d = x.detach()
    assert not d.requires_grad and d._ctx is None and np.shares_memory(d.data, x.data)
    (d * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), d.numpy())  # d is a constant: no 2x term


def test_retain_grad_keeps_a_non_leaf_gradient() -> None:
    x = leaf(3)
    y = x * 3
    y.retain_grad()
    h = y.tanh()
    (h * 2).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), 2 * (1 - np.tanh(y.detach().numpy()) ** 2))
    assert h.grad is None  # not retained
    with pytest.raises(RuntimeError, match="retain_grad"):
        gu.randn(2).retain_grad()


def test_backward_twice_needs_retain_graph() -> None:
    x = leaf(3)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    z = (x + 1).sum()  # an op that saves nothing is freed too
    z.backward()
    with pytest.raises(RuntimeError, match="second time"):
        z.backward()


# ---------------------------------------------------------------- in-place safety
def test_modifying_a_saved_tensor_then_backward_raises() -> None:
    x, w = leaf(3), gu.randn(3, dtype=gu.float64)
    y = x * w  # Mul saved w
    w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()
    z = x.exp()  # Exp saved its output
    with gu.no_grad():
        z.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        z.sum().backward()
    s = x + w  # Add saves nothing: editing w afterwards does not change the gradient
    w.fill_(3.0)
    s.sum().backward()


def test_in_place_on_graph_tensors_is_refused() -> None:
    x = leaf(3)
    with pytest.raises(RuntimeError, match="leaf"):
        x.add_(1.0)
    with gu.no_grad():
        x.add_(1.0)  # an optimizer step
    y = x * 2
    for edit in (lambda t: t.__setitem__(0, 5.0), lambda t: t.mul_(2.0), lambda t: t.masked_fill_(t > 0, 0.0)):
        with pytest.raises(RuntimeError, match="in-place"):
            edit(y)


# ---------------------------------------------------------------- errors
def test_requires_grad_only_for_floats() -> None:
    with pytest.raises(RuntimeError, match="floating point"):
        gu.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError, match="floating point"):
        gu.zeros(3, dtype=gu.int64, requires_grad=True)
    with pytest.raises(RuntimeError, match="floating point"):
        gu.arange(3).requires_grad_()
    assert not (gu.arange(3) * 2).requires_grad


def test_backward_on_non_scalar_needs_a_gradient() -> None:
    x = leaf(2, 3)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        y.backward()
    with pytest.raises(RuntimeError, match=r"gradient has shape \(3,\)"):
        y.backward(gu.ones(3, dtype=gu.float64))
    g = gu.randn(2, 3, dtype=gu.float64)
    y.backward(g)
    np.testing.assert_allclose(x.grad.numpy(), 2 * g.numpy())
    with pytest.raises(RuntimeError, match="does not require grad"):
        gu.randn(3).sum().backward()


def test_shape_errors_name_the_op_and_both_shapes() -> None:
    a, b = gu.randn(3, 4), gu.randn(5, 6)
    with pytest.raises(RuntimeError, match=r"matmul: \(3, 4\) @ \(5, 6\)"):
        a @ b
    with pytest.raises(RuntimeError, match=r"matmul: \(2, 3, 4\) @ \(3, 4, 5\)"):
        gu.randn(2, 3, 4) @ gu.randn(3, 4, 5)
    with pytest.raises(RuntimeError, match=r"add: shapes \(3, 4\) and \(5, 6\)"):
        a + b
    with pytest.raises(RuntimeError, match=r"mul: shapes \(3, 4\) and \(3,\)"):
        a * gu.randn(3)
    with pytest.raises(RuntimeError, match=r"reshape: shape \(5,\).*\(3, 4\)"):
        a.reshape(5)
    with pytest.raises(RuntimeError, match=r"cat.*\(3, 4\), \(5, 6\)"):
        gu.cat([a, b])
    with pytest.raises(RuntimeError, match=r"stack.*\(3, 4\)"):
        gu.stack([a, b])
    with pytest.raises(RuntimeError, match=r"expand.*\(3, 4\).*\(2, 4\)"):
        a.expand(2, 4)
    with pytest.raises(IndexError, match=r"\(3, 4\)"):
        a[5]
    with pytest.raises(RuntimeError, match=r"masked_fill.*\(2,\).*\(3, 4\)"):
        a.masked_fill(gu.tensor([True, False]), 0.0)
    with pytest.raises(IndexError, match="dim 2"):
        a.sum(dim=2)


def test_engine_checks_gradient_shapes_from_functions() -> None:
    class Broken(Function):
        def forward(self, x):
            return x * 2

        def backward(self, gz):
            return gz.sum(axis=0)  # wrong: drops a dimension

    x = leaf(3, 2)
    with pytest.raises(RuntimeError, match=r"Broken.backward.*\(2,\).*\(3, 2\)"):
        (Broken.apply(x) * 1.0).sum().backward()


def test_the_oracles_can_fail() -> None:
    """A wrong backward must fail check_grad; a wrong forward must fail the torch comparison."""

    class WrongSquare(Function):
        def forward(self, x):
            self.save_for_backward(x)
            return x * x

        def backward(self, gz):
            (x,) = self.saved
            return gz * x  # should be 2 * x

    with pytest.raises(AssertionError, match="finite differences"):
        check_grad(lambda t: WrongSquare.apply(t), (3,))
    with pytest.raises(AssertionError):
        assert_matches_torch([(3,)], lambda t: t.exp(), lambda t: t.exp() * 1.001)
    with pytest.raises(AssertionError, match="gradient"):
        assert_matches_torch([(3,)], lambda t: t * t, lambda t: WrongSquare.apply(t))


# ---------------------------------------------------------------- dtypes
def on(x: gu.Tensor, data: Any, dtype: Any = None) -> gu.Tensor:
    """A constant on x's device (CUDA for the cupy backend), in x's dtype when ``dtype`` is "x"."""
    return gu.tensor(data, dtype=x.dtype if isinstance(dtype, str) else dtype, device=x.device)


FLOAT32_OPS = {
    "scalars": lambda x: 2.5 * x + 1.5 - x / 3.0 + 1 - 0.5 ** x.sigmoid() + x**2.0 + (1.0 - x) * 0.1,
    "unary": lambda x: x.exp() + x.abs().add(1.0).log() + (x * x + 1.0).sqrt() + (x * x + 1).rsqrt() + x.tanh(),
    "clamp_relu": lambda x: x.clamp(-0.5, 0.5) + x.relu() + gu.maximum(x, 0.1) + gu.minimum(x, -0.1),
    "where_mask": lambda x: gu.where(x > 0, x, 0.5) + x.masked_fill(x < -1, -1e9).tril(),
    "reduce": lambda x: x.sum(0) + x.mean(1).sum() + x.var(0) + x.std(0) + x.max() + x.min(dim=0).values
    + x.logsumexp(0) + x.amax(dim=(0, 1)),
    "movement": lambda x: x.reshape(-1, 4)[1:, [0, 0, 2]].T.flatten().unsqueeze(0).expand(2, -1).repeat(1, 2)
    + gu.cat([x.permute(1, 0), x.T], dim=1).sum(),
    "split_stack": lambda x: gu.stack(x.split(2, dim=1), dim=0).sum(0) + x.chunk(2)[0].sum(),
    "matmul": lambda x: x @ x.T @ x[:, 0] + x.mT.matmul(x).sum() + x[0] @ x[1],
    "index": lambda x: x[x > 0].sum() + x[None, ..., 1] + x.gather(1, on(x, [[0, 0], [1, 3], [2, 2]])).sum(),
    "softmax_losses": lambda x: F.softmax(x, 1) + F.log_softmax(x, 0)
    + F.cross_entropy(x, on(x, [0, 3, 1]), label_smoothing=0.1)
    + F.cross_entropy(x, on(x, [0, 3, 1]), weight=on(x, [1.0, 2.0, 0.5, 1.0]), reduction="sum")
    + F.nll_loss(x, on(x, [0, 1, 2])) + F.mse_loss(x, x.detach() * 2.0)
    + F.binary_cross_entropy_with_logits(x, (x > 0).float(), pos_weight=on(x, [2.0] * 4)),
    "layers": lambda x: F.layer_norm(x, (4,), on(x, np.ones(4), "x"), on(x, np.zeros(4), "x"))
    + F.gelu(x) + F.gelu(x, approximate="tanh")
    + F.linear(x, on(x, np.full((4, 4), 0.5), "x"), on(x, np.ones(4), "x"))
    + F.embedding(on(x, [0, 1, 2]), x, padding_idx=1)
    + F.dropout(x, 0.3) + F.silu(x) + F.rms_norm(x, (4,), on(x, np.ones(4, dtype=np.float32))),
    "conv_pool": lambda x: F.conv2d(x.reshape(1, 1, 3, 4), on(x, np.full((2, 1, 2, 2), 0.5), "x"),
                                    on(x, np.zeros(2), "x"), padding=1).sum()
    + F.max_pool2d(x.reshape(1, 1, 3, 4), 2).sum() + F.avg_pool2d(x.reshape(1, 1, 3, 4), 2, padding=1).sum() + x,
    "attention": lambda x: F.scaled_dot_product_attention(x[None], x[None], x[None], is_causal=True)[0]
    + F.scaled_dot_product_attention(x, x, x, attn_mask=(x @ x.T).detach() > 0, scale=0.5)
    + F.scaled_dot_product_attention(x, x, x, attn_mask=on(x, np.zeros((3, 3), dtype=np.float32))),
}


@pytest.mark.parametrize("dtype", [gu.float32, gu.float64])
@pytest.mark.parametrize("case", list(FLOAT32_OPS))
def test_float_dtype_is_kept_by_every_op_and_gradient(case: str, dtype: object, backend: Backend) -> None:
    """float32 stays float32 (and float64 stays float64) through each op, each backward and each
    leaf gradient, with Python float scalars mixed in: no silent upcast."""
    x = gu.tensor(positive((3, 4), -1.5, 1.5), dtype=dtype, requires_grad=True, device=backend.device)
    out = FLOAT32_OPS[case](x)
    assert out.dtype == dtype, f"{case}: output {out.dtype}"
    assert_graph_dtype([out])
    (out * 1.0).sum().backward()
    assert x.grad.dtype == dtype


def test_dtype_promotion_follows_torch() -> None:
    i = gu.arange(4)
    assert i.dtype == gu.int64 and (i * 2).dtype == gu.int64 and (i + 1.5).dtype == gu.float32
    assert (i / 2).dtype == gu.float32 and i.exp().dtype == gu.float32 and i.sum().dtype == gu.int64
    f32, f64 = gu.ones(2), gu.ones(2, dtype=gu.float64)
    assert (f32 + f64).dtype == gu.float64 and (f32 + i[:2]).dtype == gu.float32
    assert (f32 * np.float64(2.0)).dtype == gu.float32 and (f32 + gu.tensor(2.0, dtype=gu.float64)).dtype == gu.float32
    x = gu.ones(2, requires_grad=True)
    y = x.double() * 3.0
    assert y.dtype == gu.float64
    y.sum().backward()
    assert x.grad.dtype == gu.float32  # Cast's backward casts back
    assert gu.tensor([1.0]).dtype == gu.float32 and gu.tensor([1]).dtype == gu.int64
    assert gu.tensor([True]).dtype == gu.bool and gu.tensor(np.ones(2)).dtype == gu.float64


# ---------------------------------------------------------------- creation
def test_creation_functions() -> None:
    assert gu.zeros(2, 3).shape == gu.zeros((2, 3)).shape == (2, 3)
    assert gu.zeros(2).dtype == gu.float32 and not gu.zeros(2).numpy().any()
    assert (gu.ones(2, 2, dtype=gu.float64).numpy() == 1).all() and gu.ones(1, dtype=gu.float64).dtype == gu.float64
    assert gu.full((2,), 7).dtype == gu.int64 and gu.full((2,), 0.5).dtype == gu.float32
    assert gu.full((2,), True).dtype == gu.bool and gu.full((2, 2), 3.0).tolist() == [[3.0, 3.0], [3.0, 3.0]]
    assert gu.arange(5).tolist() == list(range(5)) and gu.arange(5).dtype == gu.int64
    np.testing.assert_allclose(gu.arange(0, 1, 0.25).numpy(), [0, 0.25, 0.5, 0.75])
    assert gu.arange(0, 1, 0.25).dtype == gu.float32 and gu.arange(2, 8, 3).tolist() == [2, 5]
    assert gu.eye(3).numpy().trace() == 3 and gu.empty(2, 1).shape == (2, 1)
    assert sorted(gu.randperm(6).tolist()) == list(range(6))
    z = gu.zeros(3, requires_grad=True)
    assert z.requires_grad and z.is_leaf


def test_random_functions_statistics() -> None:
    n = gu.randn(200, 100)
    assert n.dtype == gu.float32 and abs(n.numpy().mean()) < 0.02 and abs(n.numpy().std() - 1) < 0.02
    u = gu.rand(200, 100, dtype=gu.float64)
    assert u.dtype == gu.float64 and 0 <= u.numpy().min() and u.numpy().max() < 1 and abs(u.numpy().mean() - 0.5) < 0.01
    r = gu.randint(3, 7, (1000,))
    assert r.dtype == gu.int64 and set(r.tolist()) == {3, 4, 5, 6}
    assert set(gu.randint(2, size=(100,)).tolist()) == {0, 1}


def test_like_functions_keep_shape_and_dtype() -> None:
    x = gu.randn(2, 3, dtype=gu.float64)
    for fn in (gu.zeros_like, gu.ones_like, gu.randn_like, gu.rand_like):
        y = fn(x)
        assert y.shape == (2, 3) and y.dtype == gu.float64 and not y.requires_grad
    assert gu.zeros_like(x, dtype=gu.float32).dtype == gu.float32
    assert gu.full_like(x, 4.0).tolist() == [[4.0] * 3] * 2 and gu.ones_like(x, requires_grad=True).requires_grad


def test_manual_seed_reproducibility() -> None:
    def draw() -> list[np.ndarray]:
        return [gu.randn(3, 2).numpy(), gu.rand(4).numpy(), gu.randint(0, 100, (5,)).numpy(),
                gu.randn_like(gu.zeros(2)).numpy(), F.dropout(gu.ones(20), 0.5).numpy()]

    gu.manual_seed(123)
    first = draw()
    gu.manual_seed(123)
    second = draw()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    gu.manual_seed(124)
    assert not np.array_equal(gu.randn(3, 2).numpy(), first[0])
    state = gu.get_rng_state()
    after = gu.randn(4).numpy()
    gu.set_rng_state(state)
    np.testing.assert_array_equal(gu.randn(4).numpy(), after)


# ---------------------------------------------------------------- conversions and properties
def test_properties_and_conversions() -> None:
    x = gu.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert x.shape == (2, 3) and x.size() == (2, 3) and x.size(1) == 3 and x.size(-2) == 2
    assert x.ndim == x.dim() == 2 and x.numel() == 6 and len(x) == 2 and x.dtype == gu.float32
    assert x.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and x.device == "cpu"
    assert x[1, 2].item() == 6.0 and isinstance(x.sum().item(), float) and gu.arange(3)[1].item() == 1
    assert float(x[0, 0]) == 1.0 and int(gu.tensor(7)) == 7
    with pytest.raises(ValueError, match="6 elements"):
        x.item()
    arr = x.numpy()
    assert isinstance(arr, np.ndarray) and np.shares_memory(arr, x.data)
    assert np.asarray(x).shape == (2, 3)
    g = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="detach"):
        g.numpy()
    np.testing.assert_array_equal(g.detach().numpy(), arr)
    a = np.ones(3)
    assert np.shares_memory(gu.from_numpy(a).data, a) and not np.shares_memory(gu.tensor(a).data, a)
    assert "grad_fn=<MulBackward>" in repr(g * 2) and "requires_grad=True" in repr(g)
    assert x.to(gu.float64).dtype == gu.float64 and x.to("cpu") is x and x.cpu() is x


def test_to_cuda_without_cupy_is_a_clear_error() -> None:
    if gu.cuda_is_available():
        pytest.skip("a GPU is present: moving to cuda works")
    with pytest.raises(RuntimeError, match="CuPy"):
        gu.randn(2).to("cuda")
    with pytest.raises(RuntimeError, match="CuPy"):
        gu.zeros(2, device="cuda")
    with pytest.raises(ValueError, match="tpu"):
        gu.randn(2).to("tpu")


def test_mixing_devices_is_an_error() -> None:
    if not gu.cuda_is_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    x = gu.randn(3, requires_grad=True)
    y = x.cuda()
    assert y.device == "cuda"
    with pytest.raises(RuntimeError, match="one device"):
        x + y
    (y * 2).cpu().sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), np.full(3, 2.0))


# ---------------------------------------------------------------- the engine reads in one sitting
def test_tensor_methods_are_defined_in_the_class_body() -> None:
    """Every op method is a ``def`` in TensorMethods' source (so grep and IDEs find it), help(Tensor)
    lists it, and nothing is attached to Tensor after the class statement."""
    import inspect
    import pydoc
    import re

    from groundup.ops.methods import TensorMethods

    source = inspect.getsource(TensorMethods)
    defined = set(re.findall(r"^    def (\w+)\(", source, re.M)) | set(re.findall(r"^    (\w+) = \w+$", source, re.M))
    methods = {name for name, value in vars(TensorMethods).items() if callable(value) or isinstance(value, property)}
    assert methods == defined, f"attached without a def: {sorted(methods - defined)}"
    assert {"__mul__", "__add__", "sum", "backward", "reshape", "softmax", "masked_fill"} <= set(dir(gu.Tensor))
    text = pydoc.render_doc(gu.Tensor, renderer=pydoc.plaintext)
    for name in ("__mul__", "sum", "reshape", "backward"):
        assert f"\n |  {name}(self" in text, f"help(Tensor) does not show {name}"
    attached = set(vars(gu.Tensor)) - set(re.findall(r"^    (?:def )?(\w+)", inspect.getsource(gu.Tensor), re.M))
    # (``__slotnames__`` is pickle's cache of the slots, set on the class once a Tensor is pickled)
    assert not attached - {"__module__", "__doc__", "__firstlineno__", "__static_attributes__", "__weakref__",
                           "__annotations__", "__qualname__", "__slotnames__"} - set(gu.Tensor.__slots__), \
        sorted(attached)


def test_backward_fits_on_one_screen() -> None:
    import inspect

    lines = inspect.getsource(gu.Tensor.backward).rstrip().splitlines()
    assert len(lines) <= 30, f"Tensor.backward is {len(lines)} lines; move checks into named helpers"


def test_docstring_examples_run() -> None:
    """The tiny examples in the docstrings of Tensor's methods are right (tinygrad runs its own)."""
    import doctest
    import importlib

    for name in ("groundup.ops.methods", "groundup.tensor", "groundup.function"):
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, f"{name}: {result.failed} failing docstring examples"
    assert doctest.testmod(importlib.import_module("groundup.ops.methods")).attempted >= 5
