"""Recurrent layers with torch.nn's names, arguments, parameter layouts and default init.

Cells (one time step): ``RNNCell``, ``GRUCell``, ``LSTMCell``. Layers (whole sequences, stacked,
optionally bidirectional): ``RNN``, ``GRU``, ``LSTM``. Equations, exactly as torch computes them
(W_* rows are stacked per gate in the order given; ``weight_ih`` is (G*H, in), ``weight_hh`` (G*H, H)):

    RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)              (or relu), G = 1
    GRU   r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)            gates r, z, n, G = 3
          z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
          n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
          h' = (1 - z) * n + z * h
    LSTM  i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_ih x + b_ih + W_hh h + b_hh)   G = 4
          c' = f * c + i * g
          h' = o * tanh(c')

Every weight and bias starts as U(-1/sqrt(H), 1/sqrt(H)), drawn in torch's parameter order.

How a layer runs (per layer and direction): the input projection of *all* time steps is one GEMM,
``(T*N, in) @ weight_ih.T``; then a fused Function (``RNNScan``, ``GRUScan``, ``LSTMScan``, in
``groundup/nn/scans.py``) loops over time with only the hidden-state GEMM and the gates, and has a
hand-derived backward (backpropagation through time) that ends with one GEMM for ``weight_hh``'s gradient. Each scan is
one graph node instead of ~15 per step: a GRU (H=128, T=16, N=32) trains about twice as fast as the
same loop composed from Tensor ops, about as fast as torch on one CPU thread. The tests check the
scans against finite differences and the layers against torch. Inside a scan the gates are kept
gate-major, (T, G, N, H), so each gate of a step is one contiguous block; both biases are added per
step (the projection GEMM has none); ``forward_projected`` takes the first layer's projections from a
caller that computes them otherwise, and ``forward_lookup`` takes them as rows of a projected table
picked by token id (a language model: an LSTM then looks the rows up inside its scan).

The cells are composed from Tensor ops (no hand-written backward), so every hidden state is an
ordinary Tensor: ``unroll_cell`` runs a cell (or a unidirectional layer's weights) step by step and
returns the list of h_t, on which ``retain_grad()`` measures how d h_T / d h_t shrinks with T - t.

Not supported: packed sequences, LSTM ``proj_size`` other than 0.

References: Elman 1990 (RNN); Hochreiter & Schmidhuber 1997, Gers et al. 2000 (LSTM); Cho et al.
2014, https://arxiv.org/abs/1406.1078 (GRU); https://pytorch.org/docs/stable/nn.html#recurrent-layers
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

from groundup import creation
from groundup import functional as F
from groundup.nn import init
from groundup.nn.module import Module, Parameter
from groundup.nn.scans import GRUScan, LSTMScan, RNNScan
from groundup.tensor import Tensor

__all__ = ["RNNCell", "GRUCell", "LSTMCell", "RNN", "GRU", "LSTM", "unroll_cell"]

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}



# ============================================================================ one step, composed from Tensor ops
def _rnn_step(x: Tensor, h: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
              bias_hh: Tensor | None, nonlinearity: str = "tanh") -> Tensor:
    """h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh).   x: (N, in), h: (N, H) -> (N, H); also unbatched (in,), (H,)"""
    pre = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)   # (N, H)
    return pre.tanh() if nonlinearity == "tanh" else pre.relu()


def _gru_step(x: Tensor, h: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
              bias_hh: Tensor | None) -> Tensor:
    """One GRU step, torch's equations.   x: (N, in), h: (N, H) -> (N, H)"""
    x_r, x_z, x_n = F.linear(x, weight_ih, bias_ih).chunk(3, dim=-1)           # 3 x (N, H)
    h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)           # 3 x (N, H)
    r = (x_r + h_r).sigmoid()
    z = (x_z + h_z).sigmoid()
    n = (x_n + r * h_n).tanh()                                                # NOTE: r gates W_hn h + b_hn
    return (h - n) * z + n                                                    # = (1 - z) n + z h, as torch


def _lstm_step(x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
               bias_hh: Tensor | None) -> tuple[Tensor, Tensor]:
    """One LSTM step, torch's equations.   x: (N, in), h, c: (N, H) -> (h', c'), each (N, H)"""
    pre = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)   # (N, 4H)
    i, f, g, o = pre.chunk(4, dim=-1)                                          # 4 x (N, H)
    c_next = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c_next.tanh(), c_next


# ============================================================================ shared checks
def _check_sizes(name: str, input_size: Any, hidden_size: Any) -> None:
    for label, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"{name}: {label} should be of type int, got {type(value).__name__}")
    if hidden_size <= 0:
        raise ValueError(f"{name}: hidden_size must be greater than zero, got {hidden_size}")
    if input_size < 0:
        raise ValueError(f"{name}: input_size must be non-negative, got {input_size}")


def _check_nonlinearity(name: str, nonlinearity: str) -> None:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{name}: unknown nonlinearity {nonlinearity!r}; select from 'tanh' or 'relu'")


def _check_dtype(name: str, what: str, t: Tensor, weight: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor, got {type(t).__name__}")
    if t.dtype != weight.dtype:
        raise RuntimeError(f"{name}: {what} has dtype {t.dtype} but the parameters are {weight.dtype}; "
                           f"convert one of them (e.g. x.to({str(weight.dtype)!r}) or module.to(dtype=...))")


# ============================================================================ cells
class _CellBase(Module):
    """Parameters and shape handling shared by the three cells."""

    _gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool, device: Any, dtype: Any):
        super().__init__()
        _check_sizes(type(self).__name__, input_size, hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        rows = self._gates * hidden_size
        self.weight_ih = Parameter(creation.empty(rows, input_size, dtype=dtype, device=device))
        self.weight_hh = Parameter(creation.empty(rows, hidden_size, dtype=dtype, device=device))
        if bias:
            self.bias_ih = Parameter(creation.empty(rows, dtype=dtype, device=device))
            self.bias_hh = Parameter(creation.empty(rows, dtype=dtype, device=device))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default: every parameter ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def _batch(self, input: Tensor, hx: Tensor | None) -> tuple[Tensor, Tensor, bool]:
        """Check shapes; return (x (N, in), h (N, H), batched)."""
        name = type(self).__name__
        _check_dtype(name, "input", input, self.weight_ih)
        if input.ndim not in (1, 2):
            raise ValueError(f"{name}: expected input to be 1-D (in,) or 2-D (N, in), got {input.ndim}-D "
                             f"of shape {input.shape}")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input has {input.shape[-1]} features, expected input_size="
                               f"{self.input_size} (input shape {input.shape})")
        batched = input.ndim == 2
        x = input if batched else input.unsqueeze(0)                          # (N, in)
        if hx is None:
            return x, creation.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device), batched
        _check_dtype(name, "hx", hx, self.weight_ih)
        if hx.ndim != input.ndim:
            raise RuntimeError(f"{name}: for {input.ndim}-D input, hx should also be {input.ndim}-D, got "
                               f"{hx.ndim}-D of shape {hx.shape}")
        h = hx if batched else hx.unsqueeze(0)                                # (N, H)
        if h.shape != (x.shape[0], self.hidden_size):
            raise RuntimeError(f"{name}: hx has shape {hx.shape}, expected "
                               f"{(x.shape[0], self.hidden_size) if batched else (self.hidden_size,)}")
        return x, h, batched

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"   # unquoted, as torch prints it
        return s


class RNNCell(_CellBase):
    """One Elman RNN step: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh) (or relu).

    Args:
        input_size, hidden_size: features of x and of h (H).
        bias: learn ``bias_ih`` and ``bias_hh``.
        nonlinearity: 'tanh' or 'relu'.

    Parameters: ``weight_ih`` (H, in), ``weight_hh`` (H, H), ``bias_ih`` (H,), ``bias_hh`` (H,).

    forward(input, hx=None): input (N, in) or (in,); hx (N, H) or (H,), zeros if None.
    Returns h' with hx's shape.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: Any = None, dtype: Any = None):
        _check_nonlinearity("RNNCell", nonlinearity)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, h, batched = self._batch(input, hx)
        h = _rnn_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)
        return h if batched else h.squeeze(0)


class GRUCell(_CellBase):
    """One GRU step (gates r, z, n; torch's n = tanh(W_in x + b_in + r * (W_hn h + b_hn))).

    Parameters: ``weight_ih`` (3H, in), ``weight_hh`` (3H, H), ``bias_ih`` (3H,), ``bias_hh`` (3H,),
    rows stacked as [r; z; n].

    forward(input, hx=None): input (N, in) or (in,); hx (N, H) or (H,), zeros if None.
    Returns h' with hx's shape.
    """

    _gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: Any = None):
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, h, batched = self._batch(input, hx)
        h = _gru_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if batched else h.squeeze(0)


class LSTMCell(_CellBase):
    """One LSTM step (gates i, f, g, o): c' = f c + i g, h' = o tanh(c').

    Parameters: ``weight_ih`` (4H, in), ``weight_hh`` (4H, H), ``bias_ih`` (4H,), ``bias_hh`` (4H,),
    rows stacked as [i; f; g; o].

    forward(input, hx=None): input (N, in) or (in,); hx a pair (h, c), each (N, H) or (H,), zeros if None.
    Returns (h', c') with the shapes of (h, c).
    """

    _gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: Any = None):
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"LSTMCell: hx must be a pair (h, c), got {type(hx).__name__}")
        x, h, batched = self._batch(input, None if hx is None else hx[0])
        if hx is None:
            c = creation.zeros_like(h)
        else:
            _, c, _ = self._batch(input, hx[1])
        h, c = _lstm_step(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


# ============================================================================ layers
class _RNNBase(Module):
    """Parameters, shape handling and the layer/direction loop shared by RNN, GRU and LSTM."""

    mode = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 nonlinearity: str = "tanh", device: Any = None, dtype: Any = None):
        super().__init__()
        name = type(self).__name__
        _check_sizes(name, input_size, hidden_size)
        if not isinstance(num_layers, numbers.Integral) or isinstance(num_layers, bool) or num_layers <= 0:
            raise ValueError(f"{name}: num_layers must be an int greater than zero, got {num_layers!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout should be a number in range [0, 1] representing the probability "
                             f"of an element being zeroed, got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout adds dropout after all but the last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        _check_nonlinearity(name, nonlinearity)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.nonlinearity = bidirectional, nonlinearity
        directions = 2 if bidirectional else 1
        rows = _GATES[self.mode] * hidden_size
        self._weight_names: list[tuple[str, ...]] = []   # per layer * directions + direction
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes = {"weight_ih": (rows, layer_in), "weight_hh": (rows, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(rows,), bias_hh=(rows,))
                for kind, shape in shapes.items():
                    setattr(self, kind + suffix, Parameter(creation.empty(*shape, dtype=dtype, device=device)))
                self._weight_names.append(tuple(kind + suffix for kind in shapes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default: every parameter ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), in torch's order."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """A no-op, for code written for torch (cuDNN weight packing does not exist here)."""

    @property
    def all_weights(self) -> list[list[Parameter]]:
        """[[weight_ih, weight_hh, bias_ih, bias_hh] of each layer and direction], as torch."""
        return [[self._parameters[n] for n in names] for names in self._weight_names]

    def _layer_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of layer * directions + direction ``k``."""
        params = [self._parameters[n] for n in self._weight_names[k]]
        return (params[0], params[1], params[2], params[3]) if self.bias else (params[0], params[1], None, None)

    def _time_major(self, input: Tensor, batch_first: bool) -> tuple[Tensor, bool]:
        """Check the input; return it as (T, N, in) and whether it was batched."""
        name = type(self).__name__
        _check_dtype(name, "input", input, self.weight_ih_l0)
        if input.ndim not in (2, 3):
            raise ValueError(f"{name}: expected input of 2 dims (T, in) (unbatched) or 3 dims "
                             f"({'N, T' if batch_first else 'T, N'}, in), got shape {input.shape}")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {input.shape[-1]} (input shape {input.shape})")
        batched = input.ndim == 3
        if not batched:
            x = input.unsqueeze(1)                                  # (T, 1, in)
        elif batch_first:
            x = input.transpose(0, 1)                               # (N, T, in) -> (T, N, in)
        else:
            x = input
        if x.shape[0] == 0:
            raise ValueError(f"{name}: the input sequence is empty (input shape {input.shape})")
        return x, batched

    def _states(self, hx: Tensor | None, batched: bool, batch: int, like: Tensor, what: str) -> list[Tensor]:
        """One initial state (N, H) per layer and direction, from hx (L*D, N, H) / (L*D, H) or zeros."""
        name = type(self).__name__
        count = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            zeros = creation.zeros(batch, self.hidden_size, dtype=like.dtype, device=like.device)
            return [zeros] * count
        _check_dtype(name, what, hx, self.weight_ih_l0)
        if hx.ndim != (3 if batched else 2):
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"{name}: for {kind} input, {what} should also be {3 if batched else 2}-D "
                               f"but got {hx.ndim}-D of shape {hx.shape}")
        h = hx if batched else hx.unsqueeze(1)                      # (L*D, N, H)
        if h.shape != (count, batch, self.hidden_size):
            expected = (count, batch, self.hidden_size) if batched else (count, self.hidden_size)
            raise RuntimeError(f"{name}: expected {what} of shape {expected}, got {hx.shape}")
        return [h[k] for k in range(count)]

    def _initial_states(self, hx: Any, batched: bool, batch: int, like: Tensor) -> tuple[list, list | None]:
        if self.mode != "LSTM":
            return self._states(hx, batched, batch, like, "hx"), None
        if hx is None:
            return self._states(None, batched, batch, like, "h0"), self._states(None, batched, batch, like, "c0")
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"LSTM: hx must be a pair (h_0, c_0), got {type(hx).__name__}")
        return self._states(hx[0], batched, batch, like, "h_0"), self._states(hx[1], batched, batch, like, "c_0")

    def _scan(self, x: Tensor | None, k: int, h0: Tensor, c0: Tensor | None, reverse: bool,
              xi: Tensor | None = None, idx: Any = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Run layer-direction ``k`` over x (T, N, in), or over its given projection ``xi`` = x W_ih^T
        (T, N, G*H), or over the rows ``xi[idx[t]]`` of a projected table ``xi`` (V, G*H), idx (T, N):
        (states (T, N, H), h_last (N, H), c_last or None)."""
        weight_ih, weight_hh, bias_ih, bias_hh = self._layer_weights(k)
        if idx is not None and self.mode != "LSTM":
            xi, idx = F.embedding(idx, xi), None                    # (T, N) -> (T, N, G*H)
        if xi is None:
            xi = F.linear(x, weight_ih)                             # (T, N, G*H): one GEMM for every step
        # NOTE: the scan adds b_ih with b_hh itself, at each step while the step's rows are in cache (an
        # LSTM given a table adds them to the table once), cheaper than a separate pass over the whole
        # (T, N, G*H) projection; the bias gradients share one sum
        bias = () if bias_hh is None else (bias_hh, bias_ih)
        last = 0 if reverse else (xi.shape[0] if idx is None else idx.shape[0]) - 1   # the step computed last
        if self.mode == "LSTM":
            hc = LSTMScan.apply(xi, h0, c0, weight_hh, *bias, reverse=reverse, idx=idx)   # (2, T, N, H)
            return hc[0], hc[0, last], hc[1, last]
        if self.mode == "GRU":
            states = GRUScan.apply(xi, h0, weight_hh, *bias, reverse=reverse)   # (T, N, H)
        else:
            states = RNNScan.apply(xi, h0, weight_hh, *bias, nonlinearity=self.nonlinearity, reverse=reverse)
        return states, states[last], None

    def _run(self, input: Tensor | None, hx: Any, projections: Sequence[Tensor] | None = None,
             idx: Any = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(output, h_n, c_n or None) with torch's shapes; ``projections``, ``idx``: see
        ``forward_projected`` and ``forward_lookup``."""
        if projections is None:
            x, batched = self._time_major(input, self.batch_first)    # (T, N, in)
        else:
            x, batched = None, True
        like = x if projections is None else projections[0]
        batch = like.shape[1] if idx is None else idx.shape[1]
        h0, c0 = self._initial_states(hx, batched, batch, like)
        directions = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                xi = projections[direction] if projections is not None and layer == 0 else None
                states, h_last, c_last = self._scan(layer_input, k, h0[k], None if c0 is None else c0[k],
                                                    reverse=direction == 1, xi=xi, idx=idx if layer == 0 else None)
                outputs.append(states)
                h_n.append(h_last)
                c_n.append(c_last)
            layer_input = outputs[0] if directions == 1 else creation.cat(outputs, dim=-1)   # (T, N, D*H)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output, h_n_t = layer_input, creation.stack(h_n, dim=0)     # (T, N, D*H), (L*D, N, H)
        c_n_t = creation.stack(c_n, dim=0) if c0 is not None else None
        if not batched:
            return output.squeeze(1), h_n_t.squeeze(1), None if c_n_t is None else c_n_t.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)                         # (T, N, D*H) -> (N, T, D*H)
        return output, h_n_t, c_n_t

    def forward_projected(self, projections: Sequence[Tensor], hx: Any = None) -> tuple[Tensor, Any]:
        """``forward`` from the first layer's input projections instead of the input: for a caller that
        computes x_t W_ih^T (without b_ih) itself, e.g. a language model, which looks the rows up in the
        projected embedding table (V, C) x (C, G*H) instead of projecting every (T*N, C) input.

        Args:
            projections: one time-major (T, N, G*H) tensor per direction (``weight_ih_l0`` and, for a
                bidirectional layer, ``weight_ih_l0_reverse``), whatever ``batch_first`` is.
            hx: as ``forward`` (batched).
        Returns:
            what ``forward`` returns (the output follows ``batch_first``).
        """
        name = type(self).__name__
        directions = 2 if self.bidirectional else 1
        width = _GATES[self.mode] * self.hidden_size
        if len(projections) != directions or any(p.ndim != 3 or p.shape[-1] != width or p.shape[0] == 0
                                                 or p.shape != projections[0].shape for p in projections):
            raise ValueError(f"{name}.forward_projected: expected {directions} non-empty (T, N, {width}) "
                             f"projections, got shapes {[tuple(p.shape) for p in projections]}")
        for p in projections:
            _check_dtype(name, "projection", p, self.weight_ih_l0)
        output, h_n, c_n = self._run(None, hx, projections)
        return (output, (h_n, c_n)) if self.mode == "LSTM" else (output, h_n)

    def forward_lookup(self, tables: Sequence[Tensor], idx: Any, hx: Any = None) -> tuple[Tensor, Any]:
        """``forward_projected`` where step t's projections are rows of a projected table: for a
        language model whose inputs are token ids, ``tables`` = [wte W_ih^T] (V, G*H) per direction
        and ``idx`` (T, N) time-major ids; the same numbers as ``forward_projected([table[idx]])``.

        NOTE: an LSTM looks the rows up step by step inside its scan (``LSTMScan``'s ``idx``), from
        the small table while it is in cache, instead of writing and rereading a (T, N, 4H) array;
        measured on 2 cores (Intel Xeon, 2026-12-02): the names LM's LSTM training step 8-9% faster.
        Other cells look the rows up first (``F.embedding``).
        """
        name = type(self).__name__
        directions = 2 if self.bidirectional else 1
        width = _GATES[self.mode] * self.hidden_size
        idx = idx.data if isinstance(idx, Tensor) else idx
        if len(tables) != directions or any(t.ndim != 2 or t.shape[-1] != width or t.shape != tables[0].shape
                                            for t in tables):
            raise ValueError(f"{name}.forward_lookup: expected {directions} (V, {width}) tables, "
                             f"got shapes {[tuple(t.shape) for t in tables]}")
        if getattr(idx, "ndim", 0) != 2 or idx.shape[0] == 0:
            raise ValueError(f"{name}.forward_lookup: idx must be non-empty (T, N) ids, got shape "
                             f"{getattr(idx, 'shape', None)}")
        for t in tables:
            _check_dtype(name, "table", t, self.weight_ih_l0)
        output, h_n, c_n = self._run(None, hx, tables, idx)
        return (output, (h_n, c_n)) if self.mode == "LSTM" else (output, h_n)

    def extra_repr(self) -> str:
        """torch's text (which leaves out ``nonlinearity`` for layers)."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(_RNNBase):
    """Multi-layer Elman RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) (or relu), G = 1 gate.

    Args:
        input_size: features of x.
        hidden_size: H, features of each hidden state.
        num_layers: stacked layers; layer k > 0 reads layer k-1's output (D*H features).
        nonlinearity: 'tanh' or 'relu' (the 4th positional argument, as in torch).
        bias: learn ``bias_ih_l{k}`` and ``bias_hh_l{k}``.
        batch_first: input and output are (N, T, features) instead of (T, N, features); hx and h_n are not.
        dropout: dropout on every layer's output except the last, in training mode only.
        bidirectional: add a backward-in-time direction (D = 2), its parameters suffixed ``_reverse``.

    Parameters (per layer k and direction): ``weight_ih_l{k}`` (G*H, in or D*H), ``weight_hh_l{k}``
    (G*H, H), ``bias_ih_l{k}`` (G*H,), ``bias_hh_l{k}`` (G*H,), each ~ U(-1/sqrt(H), 1/sqrt(H)).

    forward(input, hx=None):
        input: (T, N, in), (N, T, in) if batch_first, or unbatched (T, in).
        hx: (D*num_layers, N, H) or unbatched (D*num_layers, H); zeros if None.
    Returns:
        (output, h_n): output (T, N, D*H) (batch_first: (N, T, D*H); unbatched: (T, D*H)) holds the last
        layer's h_t of every step (both directions side by side); h_n (D*num_layers, N, H) holds the final
        state of every layer and direction (for the reverse direction, its state after reading t = 0).
    """

    mode = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         nonlinearity, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        output, h_n, _ = self._run(input, hx)
        return output, h_n


class GRU(_RNNBase):
    """Multi-layer GRU: gates r, z, n (G = 3), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z) n + z h.

    Arguments, parameters, input, hx and returns (output, h_n) as ``RNN`` (without ``nonlinearity``).
    """

    mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         "tanh", device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        output, h_n, _ = self._run(input, hx)
        return output, h_n


class LSTM(_RNNBase):
    """Multi-layer LSTM: gates i, f, g, o (G = 4), c' = f c + i g, h' = o tanh(c').

    Arguments and parameters as ``RNN`` (without ``nonlinearity``), plus ``proj_size``: only 0 (no
    projection of h) is supported; other values raise ValueError.

    forward(input, hx=None): input as ``RNN``; hx a pair (h_0, c_0), each (D*num_layers, N, H) or
    unbatched (D*num_layers, H); zeros if None.
    Returns:
        (output, (h_n, c_n)): output as ``RNN``; h_n and c_n (D*num_layers, N, H), or (D*num_layers, H)
        for unbatched input.
    """

    mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device: Any = None, dtype: Any = None):
        if proj_size != 0:
            raise ValueError(f"LSTM: proj_size={proj_size!r} is not supported; only proj_size=0 (no projection "
                             f"of the hidden state) is implemented")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         "tanh", device, dtype)
        self.proj_size = 0

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        output, h_n, c_n = self._run(input, hx)
        return output, (h_n, c_n)


# ============================================================================ step-by-step hidden states
def unroll_cell(cell: Module, input: Tensor, hx: Any = None, batch_first: bool | None = None) -> list[Tensor]:
    """Run a recurrence one step at a time and return every hidden state h_1 .. h_T as its own Tensor.

    The layers above compute all steps inside one fused node, so their per-step states are not in the
    graph; this helper rebuilds the same computation from Tensor ops (the cells' code), so that each
    h_t can ``retain_grad()`` and show how much gradient reaches step t (vanishing / exploding gradients).

    Args:
        cell: an ``RNNCell``, ``GRUCell`` or ``LSTMCell``; or a unidirectional ``RNN``, ``GRU`` or
            ``LSTM`` (any num_layers), whose own parameters are used, so gradients reach them.
        input: (T, N, in) or unbatched (T, in); (N, T, in) when ``batch_first``.
        hx: the initial state as the cell or layer takes it: a cell's (N, H) (LSTMCell: a pair (h, c));
            a layer's (num_layers, N, H) (LSTM: a pair). Zeros if None.
        batch_first: defaults to the layer's own ``batch_first``, and to False for a cell.
    Returns:
        A list of T tensors, each (N, H) (or (H,) for unbatched input): the hidden state h_t after step t
        (for a layer, of its last layer; for an LSTM, h_t and not c_t). ``gu.stack`` of the list equals
        a layer's ``output``.

    Example (the gradient of the last state with respect to each earlier one)::

        states = unroll_cell(nn.RNNCell(8, 32), x)            # x: (T, N, 8)
        for h in states:
            h.retain_grad()
        states[-1].sum().backward()
        norms = [float((h.grad * h.grad).sum().sqrt()) for h in states]   # d h_T / d h_t, t = 1 .. T
    """
    if isinstance(cell, _CellBase):
        if input.ndim not in (2, 3):
            raise ValueError(f"unroll_cell: expected input (T, N, in) or (T, in), got shape {input.shape}")
        x = input.transpose(0, 1) if batch_first and input.ndim == 3 else input      # (T, N, in) or (T, in)
        states, state = [], hx
        for t in range(x.shape[0]):
            state = cell(x[t], state)
            states.append(state[0] if isinstance(cell, LSTMCell) else state)
        return states
    if not isinstance(cell, _RNNBase):
        raise TypeError(f"unroll_cell: expected an RNNCell, GRUCell, LSTMCell, RNN, GRU or LSTM, "
                        f"got {type(cell).__name__}")
    if cell.bidirectional:
        raise ValueError("unroll_cell: a bidirectional layer has no single step order; unroll each direction's "
                         "weights with a cell instead")
    x, batched = cell._time_major(input, cell.batch_first if batch_first is None else batch_first)   # (T, N, in)
    h0, c0 = cell._initial_states(hx, batched, x.shape[1], x)
    if not batched:
        # NOTE: the (H,) states must be the graph nodes the next step reads, so unbatched input runs the
        # steps on 1-D tensors (the step functions accept them) rather than squeezing afterwards.
        x = input                                                  # (T, in)
        h0 = [h.squeeze(0) for h in h0]
        c0 = None if c0 is None else [c.squeeze(0) for c in c0]
    sequence = [x[t] for t in range(x.shape[0])]                 # T x (N, in) or T x (in,)
    for layer in range(cell.num_layers):
        weights = cell._layer_weights(layer)
        h, c = h0[layer], None if c0 is None else c0[layer]
        states = []
        for x_t in sequence:
            if cell.mode == "LSTM":
                h, c = _lstm_step(x_t, h, c, *weights)
            elif cell.mode == "GRU":
                h = _gru_step(x_t, h, *weights)
            else:
                h = _rnn_step(x_t, h, *weights, nonlinearity=cell.nonlinearity)
            states.append(h)
        if cell.dropout > 0 and cell.training and layer < cell.num_layers - 1:
            states = [F.dropout(s, cell.dropout, training=True) for s in states]
        sequence = states
    return sequence
