"""The engine against PyTorch where the two once differed: each test runs the same call in torch and
groundup on the same random inputs (values, shapes, dtypes, gradients of a random upstream gradient),
or checks that groundup refuses, with an error naming the problem, what torch refuses.

Shapes and dims are drawn by Hypothesis; ``assert_matches_torch`` (``helpers.py``) does the comparing.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_matches_torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import groundup as gu

torch = pytest.importorskip("torch")

shapes_1d = array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4)


# ---------------------------------------------------------------- var / std: torch's signature
@given(shape=shapes_1d, data=st.data())
def test_var_and_std_read_the_second_positional_argument_as_unbiased(shape: tuple, data: st.DataObject) -> None:
    """torch's ``x.var(dim, unbiased, keepdim)``: ``x.var(1, False)`` is the biased variance (it was
    read as keepdim=False, giving the unbiased one)."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    unbiased, keepdim = data.draw(st.booleans()), data.draw(st.booleans())
    for op in ("var", "std"):
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(dim, unbiased, keepdim))
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(dim, unbiased))
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(unbiased))
        assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(dim, keepdim=keepdim, correction=0))


def test_var_refuses_unbiased_with_correction_and_a_non_bool_unbiased() -> None:
    x = gu.randn(3, 4)
    with pytest.raises(TypeError, match="unbiased or correction"):
        x.var(1, True, correction=0)
    with pytest.raises(TypeError, match="unbiased .* must be a bool"):
        x.std(1, 0)


# ---------------------------------------------------------------- in-place writes through views
def _w_grad_after(lib: object, edit: str) -> list[float]:
    """w's gradient of sum(a[:2] viewed some way * w) after an in-place ``edit`` of ``a`` or a view of it."""
    a = lib.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = lib.tensor([[1.0, -1.0], [2.0, 0.5]], requires_grad=True)
    saved = {"base": a, "T": a.T, "row": a[0:1].expand(2, 2), "reshape": a.reshape(4)[:4].reshape(2, 2),
             "unsqueeze": a.unsqueeze(0)[0]}[edit.split(":")[0]]
    z = (saved * w).sum()
    target = {"view": a[1:], "T": a.T, "detach": a.detach(), "base": a, "reshape": a.reshape(4)}[edit.split(":")[1]]
    with lib.no_grad():
        target.mul_(2)
    z.backward()
    return w.grad.tolist()


@pytest.mark.parametrize("edit", ["base:view", "base:T", "T:base", "row:base", "reshape:view", "unsqueeze:detach",
                                  "base:detach", "T:reshape"])
def test_an_in_place_write_through_a_view_of_a_saved_tensor_is_caught_as_in_torch(edit: str) -> None:
    """Views share one version counter in torch; here each tensor had its own, so writing into a saved
    array through a view (or writing the base of a saved view, or a detached copy) went unseen and
    backward returned gradients computed from the changed values."""
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _w_grad_after(torch, edit)
    with pytest.raises(RuntimeError, match="modified in place after it was used"):
        _w_grad_after(gu, edit)


def test_memory_that_is_not_shared_is_not_flagged() -> None:
    """A copy (advanced indexing) has memory of its own: writing it is fine."""
    for lib in (torch, gu):
        a = lib.tensor([[1.0, 2.0], [3.0, 4.0]])
        w = lib.tensor([[1.0, -1.0], [2.0, 0.5]], requires_grad=True)
        z = (a * w).sum()
        with lib.no_grad():
            a[[0, 1]].mul_(2)
        z.backward()
        assert w.grad.tolist() == [[1.0, 2.0], [3.0, 4.0]]


# ---------------------------------------------------------------- reductions: dim=() and repeated dims
REDUCTIONS = ("sum", "mean", "amax", "var", "std", "logsumexp")


@pytest.mark.parametrize("op", REDUCTIONS)
@given(shape=shapes_1d, keepdim=st.booleans(), empty=st.sampled_from([(), []]))
def test_an_empty_dim_list_reduces_every_dim_as_in_torch(op: str, shape: tuple, keepdim: bool, empty: object) -> None:
    """``x.sum(dim=())`` is the sum of everything in torch; here it reduced nothing (NumPy's reading).
    (torch's own var / std gradient over dim=() is inf, its backward counting no elements: the values
    are compared there, the gradient is checked against dim=None's.)"""
    keepdim = keepdim or op == "logsumexp"          # torch's logsumexp(dim=(), keepdim=False) fails itself
    grad = op not in ("var", "std")
    assert_matches_torch([shape], lambda x: getattr(x, op)(dim=empty, keepdim=keepdim), grad=grad)
    if not grad:
        assert_matches_torch([shape], lambda x: getattr(x, op)(dim=None, keepdim=keepdim),
                             lambda x: getattr(x, op)(dim=empty, keepdim=keepdim))


@pytest.mark.parametrize("op", REDUCTIONS)
def test_a_dim_given_twice_is_refused_as_in_torch(op: str) -> None:
    """(0, 0) or (0, -3) named one dim twice; it was silently read as (0,)."""
    for dims in ((0, 0), (2, -1)):
        with pytest.raises(RuntimeError, match="multiple times"):
            getattr(torch.randn(2, 3, 4), op)(dim=dims)
        with pytest.raises(RuntimeError, match="appears more than once"):
            getattr(gu.randn(2, 3, 4), op)(dim=dims)


# ---------------------------------------------------------------- indexing: torch's reading of lists and masks
@given(data=st.data())
def test_a_list_holding_lists_indexes_as_a_tuple_as_in_torch(data: st.DataObject) -> None:
    """torch reads ``x[[[0, 1], [2, 3]]]`` as ``x[[0, 1], [2, 3]]`` (one index per dim), with a warning
    that it deprecates this; NumPy's reading, one (2, 2) index into dim 0, gave another shape and other
    values, silently. Both now read it torch's way and warn; the tuple says the same without a warning."""
    shape = (4, 3, 3)
    n = data.draw(st.integers(1, 3))
    k = data.draw(st.integers(1, 4))
    index = [data.draw(st.lists(st.integers(-shape[d], shape[d] - 1), min_size=k, max_size=k)) for d in range(n)]
    with pytest.warns(UserWarning, match="non-tuple sequence"), pytest.warns(UserWarning, match="tuple of indices"):
        assert_matches_torch([shape], lambda x: x[list(index)])
        assert_matches_torch([shape], lambda x: x[[index[0], slice(None)] + index[1:2]])
    assert_matches_torch([shape], lambda x: x[tuple(index)])


@pytest.mark.filterwarnings("ignore:indexing with dtype torch.uint8")   # torch's deprecation note
def test_uint8_masks_empty_lists_and_negative_steps_read_as_in_torch() -> None:
    """A uint8 tensor is a mask in torch (it was read as the indices 0 and 1); ``x[[]]`` selects no row
    (it was a NumPy error about a float index); a negative step is refused as in torch (NumPy reversed)."""
    mask = np.array([1, 0, 1, 1], dtype=np.uint8)
    assert_matches_torch([(4, 3), mask], lambda x, m: x[m])
    assert_matches_torch([(4, 3)], lambda x: x[[]])
    assert_matches_torch([(4, 3)], lambda x: x[:, []])
    for lib in (torch, gu):
        x = lib.zeros(4, 3)
        with pytest.raises(ValueError, match="step must be greater than zero"):
            x[::-1]
        with pytest.raises(ValueError, match="step must be greater than zero"):
            x[:, ::-2] = 1.0


# ---------------------------------------------------------------- movement: what torch refuses
@pytest.mark.parametrize("op", ["tril", "triu"])
def test_tril_and_triu_refuse_fewer_than_two_dims(op: str) -> None:
    """NumPy turns a vector into an (n, n) triangle; torch refuses a tensor of fewer than 2 dims."""
    for shape in ((4,), ()):
        with pytest.raises(RuntimeError, match="at least 2 dim"):
            getattr(torch.randn(shape), op)()
        with pytest.raises(RuntimeError, match="at least 2 dims"):
            getattr(gu.randn(shape), op)()


def test_expand_refuses_minus_one_in_a_new_leading_dim() -> None:
    """-1 keeps an existing dim's size; in a new leading dim it read the size of another dim."""
    with pytest.raises(RuntimeError, match="isn't allowed in a leading, non-existing dimension"):
        torch.randn(3, 1).expand(-1, 3, 4)
    with pytest.raises(RuntimeError, match="not allowed in a new leading dim"):
        gu.randn(3, 1).expand(-1, 3, 4)
    assert_matches_torch([(3, 1)], lambda x: x.expand(2, -1, 4))


@given(data=st.data())
def test_masked_fill_with_a_mask_larger_than_the_input_has_torchs_gradient(data: st.DataObject) -> None:
    """A mask that broadcasts the input up gives a larger output (as torch); its backward returned the
    output's shape for the input's, and backward failed."""
    shape = data.draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3))
    mask_shape = data.draw(st.tuples(*[st.sampled_from([n, 2] if n == 1 else [n, 1]) for n in shape]))
    lead = data.draw(st.sampled_from([(), (2,)]))
    mask = np.random.standard_normal(lead + mask_shape) > 0
    assert_matches_torch([shape, mask], lambda x, m: x.masked_fill(m, -2.0))


@pytest.mark.parametrize("make", ["T", "slice", "expand"])
def test_contiguous_of_a_strided_view_is_a_copy_as_in_torch(make: str) -> None:
    """torch's contiguous() copies a non-contiguous tensor; here it returned the view itself, so an
    in-place write into the "copy" changed the tensor it came from."""
    for lib in (torch, gu):
        a = lib.tensor([[1.0, 2.0], [3.0, 4.0]])
        view = {"T": a.T, "slice": a[:, :1], "expand": a[:1].expand(3, 2)}[make]
        view.contiguous().add_(10.0)
        assert a.tolist() == [[1.0, 2.0], [3.0, 4.0]], lib.__name__
        same = a.contiguous()
        same.add_(1.0)
        assert a.tolist() == [[2.0, 3.0], [4.0, 5.0]], lib.__name__    # a contiguous tensor is returned itself
    assert_matches_torch([(3, 4)], lambda x: x.T.contiguous() * 2)


# ---------------------------------------------------------------- var / std at the edges
@given(shape=shapes_1d, data=st.data())
def test_std_of_a_constant_slice_has_torchs_zero_gradient(shape: tuple, data: st.DataObject) -> None:
    """torch's std has gradient 0 where the deviation is 0; std was sqrt(var) here, whose backward
    gave 0 * inf = nan in every element of a constant slice (a padded row, a saturated feature)."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.standard_normal(shape)
    first = [slice(None)] * len(shape)
    first[(dim + 1) % len(shape)] = 0
    x[tuple(first)] = 1.5                    # one slice across dim is constant (when dims > 1), or all of x
    assert_matches_torch([x], lambda t: t.std(dim=dim, keepdim=True))
    assert_matches_torch([np.full(shape, 2.0)], lambda t: t.std())


@pytest.mark.parametrize("op", ["var", "std"])
def test_var_with_no_degrees_of_freedom_is_inf_or_nan_as_in_torch(op: str) -> None:
    """correction >= the count (one element with the default correction, an empty dim) gives inf or nan
    as torch; the backward was a ZeroDivisionError. (torch's own var gradient for correction > count
    divides by the negative count - correction, unlike its forward; the values are compared there.)"""
    with np.errstate(divide="ignore", invalid="ignore"), pytest.warns(UserWarning, match="degrees of freedom"):
        assert_matches_torch([np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])],
                             lambda x: getattr(x, op)(dim=1, correction=3))
        assert_matches_torch([(3, 1)], lambda x: getattr(x, op)(dim=1))
        assert_matches_torch([(0, 3)], lambda x: getattr(x, op)(dim=0))
        assert_matches_torch([(2, 3)], lambda x: getattr(x, op)(dim=1, correction=5), grad=False)


@pytest.mark.parametrize("op", ["var", "std"])
def test_var_and_std_refuse_integer_tensors_as_torch(op: str) -> None:
    """They returned float64 for an int64 or bool tensor (NumPy's promotion); torch refuses, as mean does."""
    for data in ([1, 2, 4], [True, False, True]):
        with pytest.raises(RuntimeError, match="only support floating point"):
            getattr(torch.tensor(data), op)()
        with pytest.raises(RuntimeError, match="expected a floating point tensor"):
            getattr(gu.tensor(data), op)()


# ---------------------------------------------------------------- integer inputs: torch's result dtypes
@pytest.mark.parametrize("data", [[[1, -4, 7], [0, 3, -2]], [[True, False, True], [False, False, True]]])
def test_clamp_to_a_float_bound_and_logsumexp_of_integers_are_float32_as_in_torch(data: list) -> None:
    """NumPy's promotion made both float64; torch gives its default float32 (clamp to int bounds keeps int64)."""
    x = np.asarray(data)
    for fn in (lambda t: t.clamp(-1.5, 2.5), lambda t: t.clamp(min=0.5), lambda t: t.logsumexp(dim=1),
               lambda t: t.clamp(max=2.0)):
        assert_matches_torch([x], fn)
    assert_matches_torch([np.asarray(data, dtype=np.int64)], lambda t: t.clamp(-1, 2))
    with pytest.raises(RuntimeError, match="At least one of 'min' or 'max'"):
        torch.tensor(data).clamp()
    with pytest.raises(RuntimeError, match="at least one of min and max"):
        gu.tensor(data).clamp()


# ---------------------------------------------------------------- softmax: 0-d, empty, integer inputs
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@given(shape=array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3), data=st.data())
def test_softmax_of_empty_and_0d_tensors_and_its_dtype_argument_match_torch(op: str, shape: tuple,
                                                                            data: st.DataObject) -> None:
    """An empty input (a size-0 dim) and a 0-d input failed inside NumPy; ``dtype=`` was unknown."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    assert_matches_torch([shape], lambda x: getattr(x, op)(dim))
    assert_matches_torch([()], lambda x: getattr(x, op)(0))
    assert_matches_torch([shape], lambda x: getattr(torch.nn.functional, op)(x, dim=dim, dtype=torch.float64),
                         lambda x: getattr(gu.functional, op)(x, dim=dim, dtype=gu.float64))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_refuses_an_integer_tensor_as_torch(op: str) -> None:
    """It failed inside NumPy (casting exp's output into an int64 array); torch refuses with dtype= as the way out."""
    with pytest.raises(RuntimeError, match="not implemented for 'Long'"):
        getattr(torch.tensor([[1, 2, 3]]), op)(-1)
    with pytest.raises(RuntimeError, match="expected a floating point tensor, got dtype int64; pass dtype="):
        getattr(gu.tensor([[1, 2, 3]]), op)(-1)
    assert_matches_torch([np.array([[1, 2, 3]])], lambda x: getattr(x, op)(-1, dtype=torch.float32),
                         lambda x: getattr(x, op)(-1, dtype=gu.float32))


# ---------------------------------------------------------------- reductions of empty tensors
@given(shape=array_shapes(min_dims=2, max_dims=3, min_side=0, max_side=3).filter(lambda s: 0 in s),
       data=st.data())
def test_reductions_of_an_empty_tensor_match_torch(shape: tuple, data: st.DataObject) -> None:
    """max / min / amax over the non-empty dims of an empty tensor are empty, as torch (they were refused);
    logsumexp over a size-0 dim is -inf (a NumPy error); over a size-0 dim max is refused by both."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    keepdim = data.draw(st.booleans())
    with np.errstate(invalid="ignore"):      # the helper's weighted sum of -inf values is nan
        assert_matches_torch([shape], lambda x: x.logsumexp(dim, keepdim=keepdim))
    for op in ("max", "min", "amax"):
        if shape[dim] != 0:
            assert_matches_torch([shape], lambda x, op=op: getattr(x, op)(dim, keepdim=keepdim))
            continue
        with pytest.raises((RuntimeError, IndexError), match="non-zero size"):
            getattr(torch.zeros(shape), op)(dim)
        with pytest.raises(RuntimeError, match="cannot reduce over a dim of size 0"):
            getattr(gu.zeros(shape), op)(dim)


def test_cross_entropy_refuses_ignore_index_with_probability_targets() -> None:
    """ignore_index was silently dropped for a float target; torch refuses the pair."""
    logits, probs = np.random.standard_normal((4, 3)), np.full((4, 3), 1 / 3)
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(probs), ignore_index=1)
    with pytest.raises(RuntimeError, match="ignore_index=1 is not supported for a class-probability"):
        gu.functional.cross_entropy(gu.tensor(logits), gu.tensor(probs), ignore_index=1)
    assert_matches_torch([(4, 3), probs], lambda x, t: torch.nn.functional.cross_entropy(x, t, ignore_index=-100),
                         lambda x, t: gu.functional.cross_entropy(x, t, ignore_index=-100), const=(1,))


# ---------------------------------------------------------------- layers with a size-0 side
def _layer_matches_torch(ours: gu.nn.Module, theirs: torch.nn.Module, x: np.ndarray) -> None:
    """Copy torch's weights into ours, then compare the output and every gradient."""
    ours.load_state_dict({k: gu.tensor(v.detach().numpy()) for k, v in theirs.state_dict().items()})
    assert_matches_torch([x], lambda t: theirs(t), lambda t: ours(t), dtypes=("float32",))
    for (name, p), q in zip(theirs.named_parameters(), ours.parameters()):
        assert q.grad is not None and q.grad.shape == tuple(p.grad.shape), name
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")   # torch's note on its own init
@pytest.mark.parametrize("sizes", [(3, 0, (2, 3)), (0, 3, (2, 0)), (0, 0, (4, 0)), (3, 2, (0, 3))])
def test_linear_with_no_input_or_output_features_matches_torch(sizes: tuple) -> None:
    """Linear(0, n) and Linear(n, 0) failed inside NumPy (reshape(-1, 0) is ambiguous); torch gives
    zeros (a bias alone) and empty gradients."""
    n_in, n_out, shape = sizes
    _layer_matches_torch(gu.nn.Linear(n_in, n_out), torch.nn.Linear(n_in, n_out), np.random.standard_normal(shape))


def test_an_embedding_of_width_zero_matches_torch() -> None:
    ours, theirs = gu.nn.Embedding(4, 0), torch.nn.Embedding(4, 0)
    _layer_matches_torch(ours, theirs, np.array([[1, 2], [3, 3]]))


def test_masked_fill_with_a_value_that_requires_grad_differentiates_it_as_torch() -> None:
    """A 0-d value tensor was read as a number, so its gradient (torch: the sum over the masked places)
    was silently missing; a value with dims is refused as in torch."""
    mask = np.random.standard_normal((3, 4)) > 0
    assert_matches_torch([(3, 4), mask, ()], lambda x, m, v: x.masked_fill(m, v))
    assert_matches_torch([(3, 1), mask, ()], lambda x, m, v: x.masked_fill(m, v))
    with pytest.raises(RuntimeError, match="0-dimensional value"):
        torch.zeros(3, 4).masked_fill(torch.tensor(mask), torch.zeros(4))
    with pytest.raises(RuntimeError, match="0-d tensor"):
        gu.zeros(3, 4).masked_fill(gu.tensor(mask), gu.zeros(4))


@given(data=st.data())
def test_clamp_to_tensor_bounds_broadcasts_and_differentiates_them_as_torch(data: st.DataObject) -> None:
    """Tensor bounds went to NumPy's clip, whose backward failed (``bool & Tensor``) and would have given
    the bounds no gradient; torch broadcasts them and passes the gradient to the bound that wins."""
    shape = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3))
    low = data.draw(st.sampled_from([shape, shape[-1:], (1,) + shape]))
    x = np.round(np.random.standard_normal(shape), 1)           # rounded: some values tie with a bound
    lo = np.round(np.random.standard_normal(low), 1) - 0.5
    assert_matches_torch([x, lo, lo + 1.0], lambda t, a, b: t.clamp(a, b))
    assert_matches_torch([x, lo], lambda t, a: t.clamp(min=a))
    assert_matches_torch([x, lo], lambda t, b: t.clamp(max=b))


# ---------------------------------------------------------------- a net over many ops on permuted views
VIEW_OPS = {
    "add_other": lambda x, y: x + y, "mul_other": lambda x, y: x * y, "div_other": lambda x, y: x / (y.abs() + 1),
    "maximum": lambda x, y: x.maximum(y), "sum": lambda x, d, k: x.sum(d, keepdim=k),
    "mean": lambda x, d, k: x.mean(d, keepdim=k), "max": lambda x, d, k: x.max(d, keepdim=k),
    "min": lambda x, d, k: x.min(d, keepdim=k), "amax": lambda x, d, k: x.amax(d, keepdim=k),
    "logsumexp": lambda x, d, k: x.logsumexp(d, keepdim=k), "var": lambda x, d, k: x.var(d, keepdim=k),
    "std": lambda x, d, k: x.std(d, keepdim=k), "softmax": lambda x, d, k: x.softmax(d),
    "log_softmax": lambda x, d, k: x.log_softmax(d), "argmax": lambda x, d, k: x.argmax(d, keepdim=k),
    "unsqueeze": lambda x, d, k: x.unsqueeze(d) * 2, "flatten": lambda x, d, k: x.flatten(),
    "index": lambda x, d, k: x[..., ::2], "matmul": lambda x, d, k: x @ x.mT,
    "tanh": lambda x, d, k: x.tanh(), "sigmoid": lambda x, d, k: x.sigmoid(), "relu": lambda x, d, k: x.relu(),
}


@pytest.mark.parametrize("op", list(VIEW_OPS))
@given(shape=array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=4), data=st.data())
def test_ops_on_permuted_views_match_torch(op: str, shape: tuple, data: st.DataObject) -> None:
    """Each op on a permuted (non-contiguous) view, with a random dim, keepdim and a broadcast second
    operand: values, shapes, dtypes and gradients as torch's."""
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    fn = VIEW_OPS[op]
    if op.endswith("_other") or op == "maximum":
        other = tuple(1 if data.draw(st.booleans()) else shape[p] for p in perm)[data.draw(st.integers(0, 1)):]
        assert_matches_torch([shape, other], lambda x, y: fn(x.permute(*perm), y))
        return
    dim, keepdim = data.draw(st.integers(-len(shape), len(shape) - 1)), data.draw(st.booleans())
    assert_matches_torch([shape], lambda x: fn(x.permute(*perm), dim, keepdim))


@pytest.mark.parametrize("exponent", [2, 3, 0, 2.0])
def test_a_bool_tensor_to_a_number_has_torchs_dtype(exponent: float) -> None:
    """bool ** 2 stayed bool here (NumPy's x * x), so (m ** 2) + (m ** 2) was a logical or, 1 where torch gives 2."""
    m = np.array([True, False, True])
    assert_matches_torch([m], lambda t: t**exponent)
    assert_matches_torch([m], lambda t: t**exponent + t**exponent)


def test_attention_refuses_an_integer_mask_as_torch() -> None:
    """A 0/1 int64 mask was added to the scores as numbers (+1 where meant "may attend", nothing blocked)."""
    q, k = np.random.standard_normal((2, 3, 8)), np.random.standard_normal((2, 5, 8))
    mask = np.random.standard_normal((3, 5)) > 0
    mask[:, 0] = True
    with pytest.raises(RuntimeError, match="Expected attn_mask dtype to be bool or float"):
        torch.nn.functional.scaled_dot_product_attention(torch.tensor(q), torch.tensor(k), torch.tensor(k),
                                                         attn_mask=torch.tensor(mask.astype(np.int64)))
    with pytest.raises(RuntimeError, match="attn_mask must be bool .* got dtype int64"):
        gu.functional.scaled_dot_product_attention(gu.tensor(q), gu.tensor(k), gu.tensor(k),
                                                   attn_mask=gu.tensor(mask.astype(np.int64)))
    assert_matches_torch([q, k, k, mask], lambda a, b, c, m: torch.nn.functional.scaled_dot_product_attention(
        a, b, c, attn_mask=m), lambda a, b, c, m: gu.functional.scaled_dot_product_attention(a, b, c, attn_mask=m))


@pytest.mark.parametrize("lengths", [(4, 0), (0, 5), (0, 0)])
def test_attention_over_no_keys_or_no_queries_matches_torch(lengths: tuple) -> None:
    """No keys (an empty memory) gives zeros as torch, no queries an empty output; both failed inside NumPy."""
    (n_q, n_k), sdpa = lengths, torch.nn.functional.scaled_dot_product_attention
    for causal in (False, True):
        assert_matches_torch([(2, n_q, 8), (2, n_k, 8), (2, n_k, 6)],
                             lambda q, k, v, c=causal: sdpa(q, k, v, is_causal=c),
                             lambda q, k, v, c=causal: gu.functional.scaled_dot_product_attention(q, k, v, is_causal=c))


@pytest.mark.parametrize("op", ["cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "layer_norm",
                                "rms_norm", "gelu"])
def test_functional_ops_refuse_integer_inputs_as_torch(op: str) -> None:
    """cross_entropy and nll_loss of int64 logits returned a truncated int64 loss, the BCE an int64, gelu
    float64, and the norms failed inside NumPy; torch refuses an integer input to each."""
    x = np.array([[1, -2, 3], [0, 4, -5]])
    args = {"cross_entropy": (np.array([0, 2]),), "nll_loss": (np.array([0, 2]),), "layer_norm": ((3,),),
            "binary_cross_entropy_with_logits": (np.ones((2, 3)),), "rms_norm": ((3,),), "gelu": ()}[op]
    with pytest.raises((RuntimeError, NotImplementedError), match="not implemented for 'Long'|Long"):
        getattr(torch.nn.functional, op)(torch.tensor(x), *[torch.tensor(a) if isinstance(a, np.ndarray) else a
                                                             for a in args])
    with pytest.raises(RuntimeError, match=f"{op}: expected a floating point input, got dtype int64"):
        getattr(gu.functional, op)(gu.tensor(x), *[gu.tensor(a) if isinstance(a, np.ndarray) else a for a in args])
