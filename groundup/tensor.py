"""Tensor: an n-dimensional array with reverse-mode automatic differentiation.

A ``Tensor`` wraps one NumPy (or CuPy) array. Ops on tensors record a graph of ``Function``
nodes; ``backward()`` walks it in reverse topological order, iteratively, calling each node's
hand-written backward and summing gradients where a tensor is used more than once.

Names and semantics follow PyTorch (``dim``, ``keepdim``, ``requires_grad``, ``.grad``), so
``x.sum(dim=1, keepdim=True)`` means the same thing here as in ``torch``.

This file holds the engine only: grad mode (``no_grad``), the ``Tensor`` class (its array, its
node in the graph, ``backward``), the checks ``backward`` makes, and the topological sort. The
ops, by torch's names, are methods that ``Tensor`` inherits from ``TensorMethods``
(``groundup/ops/methods.py``) and ``OrderingMethods`` (``groundup/ops/ordering.py``: sort, cumsum,
flip, ...); READING.md gives the reading order.

References: micrograd (github.com/karpathy/micrograd), tinygrad, the PyTorch autograd docs.
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from groundup import backend
from groundup.backend import array_module, as_dtype, device_of, to_device, to_numpy
from groundup.function import bump_storage_version, storage_version
from groundup.ops.methods import TensorMethods
from groundup.ops.ordering import OrderingMethods
from groundup.ops.pointwise_methods import PointwiseMethods

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()``."""
    return getattr(_state, "grad_enabled", True)


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.prev = is_grad_enabled()
        _state.grad_enabled = self.enabled

    def __exit__(self, *exc: object) -> None:
        _state.grad_enabled = self.prev


def no_grad() -> _GradMode:
    """Context manager / decorator: ops inside record no graph (like ``torch.no_grad``)."""
    return _GradMode(False)


def enable_grad() -> _GradMode:
    """Context manager / decorator: re-enable graph recording inside a ``no_grad`` block."""
    return _GradMode(True)


def _infer_dtype(data: Any) -> np.dtype:
    """torch's rule: Python floats -> float32, ints -> int64, bools -> bool."""
    arr = np.asarray(data)
    if arr.dtype == np.bool_:
        return backend.bool_
    if np.issubdtype(arr.dtype, np.integer):
        return backend.int64
    if np.issubdtype(arr.dtype, np.floating):
        return backend.float32
    raise TypeError(f"tensor: cannot make a tensor from data of dtype {arr.dtype}")


class Tensor(TensorMethods, OrderingMethods, PointwiseMethods):
    """An array with an optional gradient. See ``groundup.tensor`` (the function) to make one.

    The ops (``x * y``, ``x.sum()``, ``x.reshape(...)``) are methods of ``TensorMethods``
    (``groundup/ops/methods.py``), ``OrderingMethods`` (``x.sort()``, ``x.cumsum(0)``:
    ``groundup/ops/ordering.py``) and ``PointwiseMethods`` (``x.sin()``, ``x // y``:
    ``groundup/ops/pointwise_methods.py``); this class holds the array, the graph and ``backward``.
    """

    __slots__ = ("_data", "grad", "requires_grad", "_ctx", "_retain_grad", "__weakref__")
    __array_priority__ = 1000  # numpy scalars defer to Tensor's reflected operators

    def __init__(self, data: Any, dtype: Any = None, requires_grad: bool = False, device: Any = None):
        if isinstance(data, Tensor):
            data = data.data
        if type(data).__module__.startswith("cupy"):
            array = data if dtype is None else data.astype(as_dtype(dtype), copy=False)
        elif isinstance(data, np.ndarray):
            array = data if dtype is None else data.astype(as_dtype(dtype), copy=False)
        else:
            if type(data).__module__ == "torch":
                data = data.detach().cpu().numpy()
            target = as_dtype(dtype) if dtype is not None else _infer_dtype(data)
            array = np.asarray(data, dtype=target)
        if array.dtype.kind not in "biufc":  # object, str, bytes, datetime: not numbers (torch refuses them)
            raise TypeError(f"tensor: cannot make a tensor from data of dtype {array.dtype}")
        if device is not None:
            array = to_device(array, device)
        self._data = array                  # the values (``.data``): a numpy.ndarray or a cupy.ndarray
        self.grad: Tensor | None = None     # dL/d(self) after backward(), for leaves (and retain_grad)
        self._ctx = None                    # the Function node that made this tensor; None for a leaf
        self._retain_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _make(cls, data: Any, requires_grad: bool, ctx: Any) -> Tensor:
        """Fast internal constructor (no dtype inference or checks)."""
        t = object.__new__(cls)
        t._data, t.grad, t.requires_grad, t._ctx, t._retain_grad = data, None, requires_grad, ctx, False
        return t

    def _set_data(self, value: Any) -> None:
        """``t.data = value``: the array itself (a Tensor gives its array, as ``p.data = p.data - lr * p.grad``
        computes a Tensor from ``p.data``, an array, and ``p.grad``, a Tensor)."""
        if isinstance(value, Tensor):
            value = value._data
        elif isinstance(value, np.generic):                # 0-d arithmetic in NumPy gives a scalar
            value = np.asarray(value)
        elif not (isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy")):
            raise TypeError(f"Tensor.data must be an array or a Tensor, got {type(value).__name__}")
        self._data = value

    # the values, read straight from the slot; set through _set_data
    data = property(operator.attrgetter("_data"), _set_data)

    # ----------------------------------------------------------------- autograd
    def backward(self, gradient: Any = None, retain_graph: bool = False) -> None:
        """Add d(self)/d(leaf) to every leaf's ``.grad``. ``gradient``: dL/d(self), needed unless self
        has one element; ``retain_graph``: keep the saved arrays so that backward can run again."""
        seed = _seed_gradient(self, gradient)
        if self._ctx is None:
            self._accumulate(seed)
            return
        grads: dict[int, Any] = {id(self): seed}   # id(tensor) -> dL/d(tensor), summed over its uses
        for node in _topological_order(self):      # each node comes after every node that uses it
            grad = grads.pop(id(node), None)
            if grad is None:
                continue
            if node._retain_grad:
                node._accumulate(grad)
            ctx = node._ctx
            _check_saved_arrays(ctx)
            in_grads = ctx.backward(grad)          # one gradient (or None) per input of the node
            in_grads = in_grads if isinstance(in_grads, tuple) else (in_grads,)
            parents = ctx.parents
            if not retain_graph:
                _release(ctx)
            for parent, g in zip(parents, in_grads):
                if g is None or not parent.requires_grad:
                    continue
                _check_gradient_shape(ctx, g, parent)
                if parent._ctx is None:
                    parent._accumulate(g)          # a leaf: into its .grad
                else:
                    grads[id(parent)] = grads[id(parent)] + g if id(parent) in grads else g

    def _accumulate(self, g: Any) -> None:
        """Add ``g`` into ``.grad`` (in this tensor's dtype; the first one is copied)."""
        if g.dtype != self.data.dtype:
            g = g.astype(self.data.dtype)
        if self.grad is None:
            self.grad = Tensor._make(g.copy(), False, None)
        else:
            self.grad.data = self.grad.data + g

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self.dtype.kind != "f":
            raise RuntimeError(f"only floating point tensors can require gradients, got dtype {self.dtype}")
        if not requires_grad and self._ctx is not None:
            raise RuntimeError("requires_grad_(False) on a non-leaf tensor; use .detach()")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf tensor after ``backward()`` (leaves always keep it)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        self._retain_grad = True

    def zero_grad_(self) -> None:
        self.grad = None

    def detach(self) -> Tensor:
        """The same values, cut from the graph (shares memory, like torch)."""
        return Tensor._make(self.data, False, None)

    # ----------------------------------------------------------------- x += y, x -= y, x *= y, x /= y
    def _inplace(self, other: Any, method: str, symbol: str) -> Tensor:
        """``x += y`` (and -=, *=, /=) as torch: x changes in place, so every name for it sees the change
        (``p -= lr * p.grad`` under ``no_grad`` updates the parameter). Where the graph is involved
        (grad mode on, and x or y requires grad) the engine cannot record an in-place change: a leaf
        that requires grad is refused, as in torch, and otherwise the result is computed out of
        place (the same values and gradients; only the name ``x`` holds it, other names for the old
        tensor keep the old values)."""
        other_grad = isinstance(other, Tensor) and other.requires_grad
        if is_grad_enabled() and (self.requires_grad or other_grad):
            if self.requires_grad and self._ctx is None:
                raise RuntimeError(f"'{symbol}=' on a leaf tensor that requires grad: an in-place change of it "
                                   f"is not allowed while grad mode is on (wrap the update in gu.no_grad())")
            return {"+": self.__add__, "-": self.__sub__, "*": self.__mul__, "/": self.__truediv__}[symbol](other)
        try:
            getattr(self, method)(other)
        except (TypeError, ValueError) as err:             # NumPy's casting and broadcasting refusals
            other_shape = tuple(other.shape) if isinstance(other, Tensor) else np.shape(other)
            raise RuntimeError(f"'{symbol}=': cannot write the result into the tensor of shape {self.shape} "
                               f"and dtype {self.dtype} (other: shape {other_shape}): {err}") from None
        return self

    def __iadd__(self, other: Any) -> Tensor:
        return self._inplace(other, "add_", "+")

    def __isub__(self, other: Any) -> Tensor:
        return self._inplace(other, "sub_", "-")

    def __imul__(self, other: Any) -> Tensor:
        return self._inplace(other, "mul_", "*")

    def __itruediv__(self, other: Any) -> Tensor:
        return self._inplace(other, "div_", "/")

    @property
    def _version(self) -> int:
        """In-place writes into this tensor's memory so far, through it or any view of it (torch's
        ``_version``, shared by the views of one storage)."""
        return storage_version(self._data)

    def _bump_version(self) -> None:
        """Called by every in-place op: refuse it on a graph tensor, else count the change (in the
        counter of its memory, which its views and detached copies share)."""
        if self.requires_grad and is_grad_enabled():
            if self._ctx is None:
                raise RuntimeError("a leaf tensor that requires grad is used in an in-place operation; "
                                   "wrap it in gu.no_grad() or use .data")
            # NOTE: in-place ops are not recorded in the graph, so the gradient would flow as if the
            # values had not changed; refuse instead of returning a silently wrong gradient.
            raise RuntimeError(f"in-place operation on a tensor computed by {type(self._ctx).__name__} that "
                               "requires grad is not recorded in the graph; use the out-of-place op")
        bump_storage_version(self._data)

    # ----------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return int(self.data.size)

    def is_floating_point(self) -> bool:
        return self.dtype.kind == "f"

    # ----------------------------------------------------------------- Python protocols, NumPy
    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        body = np.array2string(to_numpy(self.data), separator=", ", precision=4, threshold=50)
        extras = []
        if self.dtype != backend.float32 and self.dtype != backend.int64:
            extras.append(f"dtype={self.dtype}")
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self._ctx is not None:
            extras.append(f"grad_fn=<{type(self._ctx).__name__}Backward>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return f"tensor({body}{''.join(', ' + e for e in extras)})"

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"bool() of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.kind not in "iub" or self.data.size != 1:
            raise TypeError("only integer tensors of one element can be used as an index")
        return int(self.item())

    def __iter__(self) -> Iterator[Tensor]:
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = to_numpy(self.data)
        return arr if dtype is None else arr.astype(dtype)

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (shares memory on the CPU). Refuses a tensor in a graph."""
        if self.requires_grad and is_grad_enabled():
            raise RuntimeError("numpy(): call .detach() first on a tensor that requires grad")
        return to_numpy(self.data)

    def item(self) -> Any:
        if self.data.size != 1:
            raise ValueError(f"item(): tensor has {self.data.size} elements, expected exactly 1")
        return to_numpy(self.data).reshape(()).item()

    def tolist(self) -> Any:
        return to_numpy(self.data).tolist()


# --------------------------------------------------------------------- the checks of backward()
def _seed_gradient(root: Tensor, gradient: Any) -> Any:
    """dL/d(root) to start from: ones for a one-element root, else ``gradient`` (shape checked)."""
    if not root.requires_grad:
        raise RuntimeError("backward(): tensor does not require grad and has no grad_fn")
    xp = array_module(root.data)
    if gradient is None:
        if root.data.size != 1:
            raise RuntimeError(f"backward(): grad can be implicitly created only for scalar outputs; "
                               f"this tensor has shape {root.shape}, so pass gradient=")
        return xp.ones_like(root.data)
    seed = gradient.data if isinstance(gradient, Tensor) else xp.asarray(gradient, dtype=root.dtype)
    if tuple(seed.shape) != root.shape:
        raise RuntimeError(f"backward(): gradient has shape {tuple(seed.shape)}, "
                           f"expected the tensor's shape {root.shape}")
    return seed


def _check_saved_arrays(ctx: Any) -> None:
    """The node still has its saved arrays, and none was changed in place since it was saved."""
    if ctx.saved is None:
        raise RuntimeError("backward() through the graph a second time: the saved arrays were "
                           "freed; call backward(retain_graph=True) the first time")
    for memory, version in ctx._versions:
        now = storage_version(memory)
        if now != version:
            raise RuntimeError(
                f"{type(ctx).__name__}: a tensor saved for backward (its memory: shape "
                f"{tuple(getattr(memory, 'shape', ()))}) was modified in place after it was used, through "
                f"it or a tensor sharing its memory (a view, a detach()) (version {now}, saved at "
                f"{version}); gradients would be wrong (an optimizer's step() writes the parameters in place: "
                f"call backward() before it)")


def _release(ctx: Any) -> None:
    """Drop everything a node kept for its backward (the graph is used once unless retained)."""
    ctx.saved, ctx.parents, ctx._versions = None, (), ()
    if hasattr(ctx, "__dict__"):
        ctx.__dict__.clear()


def _check_gradient_shape(ctx: Any, g: Any, parent: Tensor) -> None:
    """A Function's backward must return each gradient in exactly its input's shape (B3)."""
    if tuple(g.shape) != parent.data.shape:
        raise RuntimeError(f"{type(ctx).__name__}.backward returned a gradient of shape "
                           f"{tuple(g.shape)} for an input of shape {parent.shape}")


def _topological_order(root: Tensor) -> list[Tensor]:
    """Non-leaf tensors reachable from ``root``, outputs before inputs (iterative DFS)."""
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        # NOTE: mark a node when it is expanded, not when it is pushed: a node pushed early and
        # reached again through a longer path must still finish after everything that uses it.
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._ctx.parents:
            if parent._ctx is not None and parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    order.reverse()
    return order


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False, device: Any = None) -> Tensor:
    """Make a tensor from data (a number, nested lists, a NumPy/CuPy array or a Tensor).

    Python floats become float32 and ints int64 (torch's defaults); a NumPy array keeps its dtype.

    >>> tensor([1.0, 2.0]).dtype
    dtype('float32')
    """
    if isinstance(data, Tensor):
        data = data.data.copy()
    elif isinstance(data, np.ndarray) or type(data).__module__.startswith("cupy"):
        data = data.copy()
    elif isinstance(data, (list, tuple)) and data and any(isinstance(d, Tensor) for d in _flat(data)):
        data = [d.tolist() if isinstance(d, Tensor) else d for d in data]
    return Tensor(data, dtype=dtype, requires_grad=requires_grad, device=device)


def _flat(data: Sequence[Any]) -> Iterator[Any]:
    for d in data:
        if isinstance(d, (list, tuple)):
            yield from _flat(d)
        else:
            yield d
