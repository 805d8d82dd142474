"""The Function base class: one differentiable op = a forward and a backward over raw arrays.

A Function's ``forward`` takes the raw ``xp`` arrays of its Tensor inputs (plus keyword
options) and returns one raw array; ``backward`` takes the gradient of the output and returns
one gradient per input, each exactly that input's shape (the engine checks it). This is the
design of micrograd and tinygrad: the engine in ``tensor.py`` only walks the graph.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from groundup.backend import array_module, device_of

if TYPE_CHECKING:
    from groundup.tensor import Tensor


# id(memory) -> how many in-place writes it has had. Keyed by the array that owns the memory, so a view,
# a reshape that shares memory and a detached tensor all count into one number, as torch's version
# counter is shared by every tensor viewing one storage; an entry is dropped when its memory is freed.
_STORAGE_VERSIONS: dict[int, int] = {}


def storage_of(array: Any) -> Any:
    """The object that owns the memory ``array`` reads (``array`` itself when it owns it): the end of
    its chain of ``.base`` (a slice, a transpose, ``broadcast_to`` and ``as_strided`` keep one)."""
    while (base := getattr(array, "base", None)) is not None:
        array = base
    return array


def storage_version(array: Any) -> int:
    """How many in-place writes the memory under ``array`` has had (through any view of it)."""
    return _STORAGE_VERSIONS.get(id(storage_of(array)), 0)


def bump_storage_version(array: Any) -> None:
    """Count one in-place write into the memory under ``array`` (called by every in-place op)."""
    root = storage_of(array)
    key = id(root)
    count = _STORAGE_VERSIONS.get(key)
    if count is None:
        count = 0
        try:
            weakref.finalize(root, _STORAGE_VERSIONS.pop, key, None)   # forget the memory when it is freed
        except TypeError:                                               # bytes and the like: keep the entry
            pass
    _STORAGE_VERSIONS[key] = count + 1


def wrap_dim(dim: Any, ndim: int, op: str, new_axis: bool = False) -> int:
    """``dim`` in ``-ndim .. ndim - 1`` as ``0 .. ndim - 1``; an IndexError naming ``op`` otherwise (torch's
    rule; a 0-d tensor takes dims -1 and 0). ``new_axis``: the dim of an axis to insert (unsqueeze,
    stack), one more place than the tensor has dims."""
    n = max(ndim + new_axis, 1)
    if not isinstance(dim, int | np.integer) or isinstance(dim, bool) or not -n <= dim < n:
        raise IndexError(f"{op}: dimension {dim!r} is out of range for a tensor of {ndim} dims "
                         f"(expected an int in [{-n}, {n - 1}])")
    return int(dim) % n


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` down to ``shape``: the adjoint of broadcasting ``shape`` up to ``grad.shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1
    )
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Function:
    """Base class of every differentiable op. Subclasses define ``forward`` and ``backward``."""

    __slots__ = ("parents", "needs_input_grad", "saved", "_versions")

    def forward(self, *arrays: Any, **options: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward (abstract)")

    def backward(self, grad: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward (abstract)")

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep arrays the backward needs; released after the backward pass runs."""
        self.saved = arrays

    @classmethod
    def apply(cls, *inputs: Tensor, **options: Any) -> Tensor:
        """Run ``forward`` on the inputs' arrays and, in grad mode, record the node."""
        from groundup.tensor import Tensor, is_grad_enabled  # here: tensor.py imports this module

        _check_one_device(cls.__name__, inputs)
        ctx = cls.__new__(cls)
        ctx.saved = ()
        track = is_grad_enabled() and any(t.requires_grad for t in inputs)
        ctx.needs_input_grad = tuple(t.requires_grad for t in inputs) if track else (False,) * len(inputs)
        out = ctx.forward(*[t.data for t in inputs], **options)
        if type(out) is not np.ndarray:
            out = array_module(out).asarray(out)
        if not track or out.dtype.kind != "f":  # integer and boolean results carry no gradient
            return Tensor._make(out, False, None)
        ctx.parents = inputs
        result = Tensor._make(out, True, ctx)
        ctx._versions = _watch_saved(ctx)
        return result


def _check_one_device(op: str, inputs: tuple[Tensor, ...]) -> None:
    """All inputs of one op live on one device (NumPy arrays with CuPy arrays is an error)."""
    if len(inputs) > 1:
        first = type(inputs[0].data)
        for t in inputs[1:]:
            if type(t.data) is not first and device_of(t.data) != device_of(inputs[0].data):
                devices = ", ".join(device_of(x.data) for x in inputs)
                raise RuntimeError(f"{op}: all inputs must be on one device, got ({devices})")


def _watch_saved(ctx: Function) -> list[tuple[Any, int]]:
    """(memory, version) for the memory under each array ``forward`` saved (an input, the output as
    exp, tanh and softmax save it, or a view of either): backward() compares the versions, so an
    in-place write into that memory through any tensor viewing it (a slice, a reshape, ``detach()``)
    is caught, as torch's shared version counter catches it."""
    roots: dict[int, Any] = {}
    for array in ctx.saved:
        if hasattr(array, "base"):
            root = storage_of(array)
            roots[id(root)] = root
    return [(root, _STORAGE_VERSIONS.get(key, 0)) for key, root in roots.items()]
