"""The fused scans under groundup's recurrent layers: a whole sequence of one layer direction in one node.

``RNNScan``, ``GRUScan`` and ``LSTMScan`` are Functions (``groundup/function.py``): the forward loops
over time with only the hidden-state GEMM and the gates, in NumPy, and the backward is
backpropagation through time derived by hand, ending with one GEMM for ``weight_hh``'s gradient.
Each scan is one graph node instead of ~15 per step. The layers in ``groundup/nn/recurrent.py``
(``RNN``, ``GRU``, ``LSTM``) call them; their equations are that file's docstring, exactly as torch
computes them. The tests check every scan against finite differences in float64 and the layers
against torch (``tests/test_nn_recurrent.py``, ``tests/test_ops_composite.py``).

Inside a scan the gates are kept gate-major, (T, G, N, H), so each gate of a step is one contiguous
(N, H) block; every pass over them happens inside the time loop, while that step is in cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.function import Function
from groundup.ops import kernels as K

__all__ = ["RNNScan", "GRUScan", "LSTMScan"]


# ============================================================================ fused scans
def _tanh_is_fast() -> bool:
    """Whether NumPy's float32 tanh runs its AVX-512 loop (then one tanh beats exp + reciprocal).

    NOTE: measured on 2 cores, (4, 64, 128) float32: with AVX-512 (AMD EPYC, 2026-12-02) tanh 6.1 us,
    exp 12.2 us + add 2.3 us + reciprocal 5.9 us; with AVX2 (an earlier AMD EPYC) exp ran about twice
    as fast as tanh. NumPy says which loop it dispatches (``numpy.lib.introspect``, NumPy 2)."""
    try:
        from numpy.lib.introspect import opt_func_info

        return opt_func_info(func_name="^tanh$", signature="float32")["tanh"]["ff"]["current"] == "X86_V4"
    except (ImportError, KeyError, TypeError, ValueError):
        return False


_TANH_IS_FAST = _tanh_is_fast()


def _sigmoid_(a: Any) -> Any:
    """sigmoid(a) in place: (1 + tanh(a / 2)) / 2 where NumPy's tanh is fast (``_tanh_is_fast``), else
    1 / (1 + exp(-a)) (exp(-a) = inf for a very negative a gives the right limit, 0)."""
    xp = array_module(a)
    if _TANH_IS_FAST and xp is np:
        a *= 0.5
        xp.tanh(a, out=a)
        a *= 0.5
        a += 0.5
        return a
    xp.negative(a, out=a)
    with np.errstate(over="ignore"):
        xp.exp(a, out=a)
    a += 1
    xp.reciprocal(a, out=a)
    return a


def _time_order(length: int, reverse: bool) -> range:
    """The order in which the steps are computed: T-1 .. 0 for the backward direction."""
    return range(length - 1, -1, -1) if reverse else range(length)


def _step_links(reverse: bool) -> tuple[slice, slice, int]:
    """(later, earlier, first): step ``later[k]`` starts from the state of step ``earlier[k]``; step
    ``first`` (computed first) starts from h0. Indexing (T, ...) arrays with these avoids copying the
    states into a (T, ...) array of previous states."""
    return (slice(None, -1), slice(1, None), -1) if reverse else (slice(1, None), slice(None, -1), 0)


def _gate_major(a: Any, gates: int) -> Any:
    """View of a (T, N, G*H) array as (T, G, N, H): element [t, k] is gate k of step t, an (N, H) block.

    NOTE: the scans keep their own gates gate-major, so that every gate of a step is one contiguous
    (N, H) block: NumPy runs an (N, H) column block of an (N, G*H) array one row at a time, about
    twice as slowly. ``xi`` itself is only read through this view, one step at a time, while it is in
    cache (a gate-major copy of all of it up front costs more than the per-step reads save).
    """
    steps, batch, width = a.shape
    return a.reshape(steps, batch, gates, width // gates).transpose(0, 2, 1, 3)   # (T, N, G, H) -> (T, G, N, H)


def _gate_blocks_t(weight_hh: Any, order: tuple[int, ...]) -> Any:
    """weight_hh (G*H, H) -> (G, H, H), block k = W_{order[k]}.T (contiguous): ``h @ blocks`` is (G, N, H)."""
    xp = array_module(weight_hh)
    hidden = weight_hh.shape[1]
    blocks = weight_hh.reshape(len(order), hidden, hidden)[list(order)]          # (G, H, H) copy, gates reordered
    return xp.ascontiguousarray(blocks.transpose(0, 2, 1))                       # (G, H, H): W_k.T


def _gate_columns(weight_hh: Any, order: tuple[int, ...]) -> Any:
    """weight_hh (G*H, H) -> (H, G*H), column block k = W_{order[k]}.T (contiguous): ``h @ it`` is (N, G*H).

    NOTE: one (N, H) @ (H, G*H) GEMM is faster than G (N, H) @ (H, H) ones into a gate-major (G, N, H)
    array (``h @ _gate_blocks_t``): measured on a 2-core Intel Xeon (Ice Lake, OpenBLAS on 2 threads,
    2026-12-03), N=64, H=128, G=4: 69 against 96 us a step.
    """
    xp = array_module(weight_hh)
    hidden = weight_hh.shape[1]
    blocks = weight_hh.reshape(len(order), hidden, hidden)[list(order)]          # (G, H, H) copy, gates reordered
    return xp.ascontiguousarray(blocks.reshape(-1, hidden).T)                    # (G*H, H) -> (H, G*H)


def _weight_grads(d_gates: Any, states: Any, h0: Any, reverse: bool, has_bias: bool) -> tuple[Any, Any]:
    """(dL/d weight_hh (G*H, H), dL/d bias_hh (G*H,) or None) from d_gates (T, N, G*H) and the states (T, N, H).

    Step t reads the state of the step before it (h0 for the first step): one GEMM for the steps that
    read a computed state, one more for the first step unless h0 is zero (as in a language model).
    """
    width, hidden = d_gates.shape[-1], states.shape[-1]
    later, earlier, first = _step_links(reverse)
    d_weight = K.matmul_tn(d_gates[later].reshape(-1, width), states[earlier].reshape(-1, hidden))   # (G*H, H)
    if h0.any():
        d_weight += d_gates[first].T @ h0                                        # (G*H, N) @ (N, H)
    return d_weight, _sum_rows(d_gates) if has_bias else None


def _sum_rows(a: Any) -> Any:
    """a (..., K) summed over every leading axis -> (K,). NOTE: a GEMV with ones, twice as fast as sum here."""
    xp = array_module(a)
    flat = a.reshape(-1, a.shape[-1])                                            # (rows, K)
    return xp.ones(flat.shape[0], dtype=a.dtype) @ flat


def _bias_grads(d_bias_hh: Any, d_bias_ih: Any, count: int) -> tuple[Any, ...]:
    """The gradients of a scan's ``count`` trailing bias inputs: (), (b_hh,) or (b_hh, b_ih)."""
    return (d_bias_hh, d_bias_ih)[:count]


class RNNScan(Function):
    """All hidden states of one Elman RNN layer direction: h_t = act(xi_t + h_{t-1} @ W_hh.T + b_hh).

    Inputs: ``xi`` (T, N, H), the input projections x_t @ W_ih.T + b_ih of every step; ``h0`` (N, H);
    ``weight_hh`` (H, H); optional ``bias_hh`` (H,), optionally followed by ``bias_ih`` (H,) (then ``xi``
    is x_t @ W_ih.T without b_ih: see ``_RNNBase._scan``). Options: ``nonlinearity`` 'tanh' | 'relu',
    ``reverse`` (run from t = T-1 down to 0). Output: (T, N, H), h_t in time order.
    """

    def forward(self, xi, h0, weight_hh, *biases, nonlinearity: str = "tanh", reverse: bool = False):
        xp = array_module(xi)
        states = xp.empty(xi.shape, dtype=xi.dtype)                   # (T, N, H)
        bias = sum(biases[1:], biases[0]) if biases else None          # (H,): b_hh (+ b_ih)
        h = h0
        for t in _time_order(xi.shape[0], reverse):
            pre = h @ weight_hh.T                                      # (N, H)
            pre += xi[t]
            if bias is not None:
                pre += bias                                            # NOTE: per step, in cache: cheaper than xi + b
            if nonlinearity == "tanh":
                xp.tanh(pre, out=states[t])
            else:
                xp.maximum(pre, 0, out=states[t])
            h = states[t]
        self.save_for_backward(h0, weight_hh, states)
        self.options = (nonlinearity, reverse, len(biases))
        return states

    def backward(self, grad_states):
        h0, weight_hh, states = self.saved
        nonlinearity, reverse, n_bias = self.options
        xp = array_module(states)
        # d h_t / d pre_t for every step at once (it does not depend on the incoming gradient)
        if nonlinearity == "tanh":
            slope = 1 - states * states                                # (T, N, H)
        else:
            slope = (states > 0).astype(states.dtype)                  # NOTE: relu'(0) = 0, as torch
        d_pre = xp.empty_like(states)                                  # (T, N, H): dL/d preactivation
        dh = xp.zeros_like(h0)                                         # dL/dh_t through later steps
        for t in reversed(_time_order(states.shape[0], reverse)):
            dh += grad_states[t]                                       # dh is this loop's own array
            xp.multiply(dh, slope[t], out=d_pre[t])
            dh = d_pre[t] @ weight_hh                                  # (N, H) -> previous state
        needs = self.needs_input_grad
        d_weight, d_bias = _weight_grads(d_pre, states, h0, reverse, n_bias > 0) if any(needs[2:]) else (None, None)
        d_biases = _bias_grads(d_bias, None if d_bias is None else d_bias.copy(), n_bias)   # b_ih: same values
        return (d_pre if needs[0] else None, dh if needs[1] else None, d_weight, *d_biases)


class GRUScan(Function):
    """All hidden states of one GRU layer direction (torch's equations, gates r, z, n).

    Inputs: ``xi`` (T, N, 3H) = x_t @ W_ih.T + b_ih for every step; ``h0`` (N, H); ``weight_hh`` (3H, H);
    optional ``bias_hh`` (3H,), optionally followed by ``bias_ih`` (3H,) (then ``xi`` is x_t @ W_ih.T
    without b_ih). Option ``reverse``. Output: (T, N, H), h_t in time order.
    Inside, the gates are kept gate-major, (T, 3, N, H), so that each gate of a step is contiguous.
    """

    def forward(self, xi, h0, weight_hh, *biases, reverse: bool = False):
        xp = array_module(xi)
        steps, batch, hidden = xi.shape[0], xi.shape[1], h0.shape[-1]
        states = xp.empty((steps, batch, hidden), dtype=xi.dtype)     # (T, N, H)
        x_gates = _gate_major(xi, 3)                                   # (T, 3, N, H) view
        gates = xp.empty(x_gates.shape, dtype=xi.dtype)                # (T, 3, N, H): r, z, n after activation
        gh = xp.empty_like(gates)                                      # (T, 3, N, H): h W_hh.T + b_hh (hn: for dr)
        bias = biases[0].reshape(3, 1, hidden).copy() if biases else None   # (3, 1, H): b_hh
        bias_in = None                                                 # (H,): b_in, added to x's part of n
        if len(biases) == 2:
            bias[:2] += biases[1].reshape(3, 1, hidden)[:2]            # b_ir, b_iz join b_hr, b_hz
            bias_in = biases[1][2 * hidden:]
        weight_t = _gate_blocks_t(weight_hh, (0, 1, 2))                # (3, H, H)
        h = h0
        for t in _time_order(steps, reverse):
            xp.matmul(h, weight_t, out=gh[t])                          # (N, H) @ (3, H, H) -> (3, N, H)
            if bias is not None:
                gh[t] += bias
            rz = xp.add(gh[t, :2], x_gates[t, :2], out=gates[t, :2])   # (2, N, H)
            _sigmoid_(rz)
            r, z, n = gates[t]
            xp.multiply(r, gh[t, 2], out=n)                            # NOTE: r gates W_hn h + b_hn
            n += x_gates[t, 2]
            if bias_in is not None:
                n += bias_in
            xp.tanh(n, out=n)
            h_next = states[t]                                         # (1 - z) n + z h, as torch: (h - n) z + n
            xp.subtract(h, n, out=h_next)
            h_next *= z
            h_next += n
            h = h_next
        self.save_for_backward(h0, weight_hh, states, gates, gh)
        self.options = (reverse, len(biases))
        return states

    def backward(self, grad_states):
        h0, weight_hh, states, gates, gh = self.saved
        reverse, n_bias = self.options
        xp = array_module(states)
        steps, batch, hidden = states.shape
        later, earlier, first = _step_links(reverse)
        r, z, n, hn = gates[:, 0], gates[:, 1], gates[:, 2], gh[:, 2]      # 4 x (T, N, H)
        # Local derivatives of h' = n + z (h - n), n = tanh(pre_n), pre_n = xi_n + r * hn, for all steps at
        # once: only the products with the incoming gradient dh must wait for the loop.
        slope = 1 - gates[:, :2]                                       # (T, 2, N, H)
        slope *= gates[:, :2]                                          # sigmoid' of r, z
        to_pre_r = slope[:, 0]
        to_pre_r *= hn                                                 # d pre_n / d pre_r
        to_pre_z = slope[:, 1]                                         # d h' / d pre_z = (h - n) z (1 - z)
        h_minus_n = xp.empty_like(states)                              # (T, N, H)
        xp.subtract(states[earlier], n[later], out=h_minus_n[later])
        xp.subtract(h0, n[first], out=h_minus_n[first])
        to_pre_z *= h_minus_n
        to_pre_n = xp.multiply(n, n, out=h_minus_n)                    # d h' / d pre_n = (1 - z) (1 - n^2)
        xp.subtract(1, to_pre_n, out=to_pre_n)
        to_pre_n *= 1 - z
        d_pre_n = xp.empty_like(states)                                # (T, N, H): dL/d pre_n
        d_gates_h = xp.empty((steps, batch, 3, hidden), dtype=states.dtype)   # (T, N, 3, H): dL/d (h W_hh.T + b_hh)
        dh = xp.zeros_like(h0)
        back = xp.empty_like(dh)                                       # (N, H): the GEMM's output, one buffer
        for t in reversed(_time_order(steps, reverse)):
            dh += grad_states[t]                                       # dh is this loop's own array
            xp.multiply(dh, to_pre_n[t], out=d_pre_n[t])
            xp.multiply(d_pre_n[t], to_pre_r[t], out=d_gates_h[t, :, 0])
            xp.multiply(dh, to_pre_z[t], out=d_gates_h[t, :, 1])
            xp.multiply(d_pre_n[t], r[t], out=d_gates_h[t, :, 2])     # n sees r * (W_hn h + b_hn)
            dh *= z[t]
            xp.matmul(d_gates_h[t].reshape(batch, 3 * hidden), weight_hh, out=back)   # (N, H) -> previous state
            dh += back
        d_gates_h = d_gates_h.reshape(steps, batch, 3 * hidden)        # (T, N, 3H), gates side by side
        needs = self.needs_input_grad
        d_gates_x = None                                               # (T, N, 3H): dL/d xi, = d_gates_h but for n
        if needs[0] or n_bias == 2:
            d_gates_x = d_gates_h.copy()
            d_gates_x[..., 2 * hidden:] = d_pre_n
        d_weight, d_bias = _weight_grads(d_gates_h, states, h0, reverse, n_bias > 0) if any(needs[2:]) else (None, None)
        d_bias_ih = _sum_rows(d_gates_x) if n_bias == 2 and needs[4] else None
        return (d_gates_x if needs[0] else None, dh if needs[1] else None, d_weight,
                *_bias_grads(d_bias, d_bias_ih, n_bias))


# LSTMScan keeps its gates in the order i, f, o, g: the three sigmoids are one contiguous block
_LSTM_ORDER = (0, 1, 3, 2)
_LSTM_EXP_SCALE = (-1.0, -1.0, -1.0, -2.0)   # i, f, o, g: the pre-activations as exp takes them
_LSTM_TANH_SCALE = (0.5, 0.5, 0.5, 1.0)      # i, f, o, g: the pre-activations as tanh takes them


class LSTMScan(Function):
    """All hidden and cell states of one LSTM layer direction (torch's equations, gates i, f, g, o).

    Inputs: ``xi`` (T, N, 4H) = x_t @ W_ih.T + b_ih for every step; ``h0``, ``c0`` (N, H);
    ``weight_hh`` (4H, H); optional ``bias_hh`` (4H,), optionally followed by ``bias_ih`` (4H,) (then
    ``xi`` is x_t @ W_ih.T without b_ih). Options ``reverse``; ``idx`` (T, N) ints: then ``xi`` is a
    table (V, 4H) and step t's projections are its rows ``xi[idx[t]]`` (a language model's projected
    embeddings), looked up step by step from the table (biases added to it once) while it is in cache.
    Output: (2, T, N, H): [0] holds h_t and [1] holds c_t, in time order (one Function has one output).
    Inside, the gates are kept gate-major in the order i, f, o, g, (T, 4, N, H): each gate of a step is
    contiguous and the three sigmoids are one block.

    NOTE: every pass over the gates happens inside the loop, one step at a time, while that step's
    rows are in cache; passes over all steps at once before or after the loop read and write arrays
    larger than the core's L2 cache. Measured on a 2-core Intel Xeon (Ice Lake, 2026-12-02), T=16,
    N=64, H=128: forward 3.3 -> 2.9 ms, backward 4.2 -> 3.9 ms against the same passes over all steps.
    """

    def forward(self, xi, h0, c0, weight_hh, *biases, reverse: bool = False, idx: Any = None):
        xp = array_module(xi)
        steps, batch = (xi.shape[0], xi.shape[1]) if idx is None else idx.shape
        hidden = h0.shape[-1]
        hc = xp.empty((2, steps, batch, hidden), dtype=xi.dtype)     # (2, T, N, H)
        tanh_c = xp.empty((steps, batch, hidden), dtype=xi.dtype)     # (T, N, H)
        gates = xp.empty((steps, 4, batch, hidden), dtype=xi.dtype)   # (T, 4, N, H): i, f, o, g after activation
        weight_cols = _gate_columns(weight_hh, _LSTM_ORDER)           # (H, 4H): i, f, o, g side by side
        bias = sum(biases[1:], biases[0]).reshape(4, 1, hidden)[list(_LSTM_ORDER)] if biases else None   # (4, 1, H)
        # One transcendental call gives all four gates of a step: where NumPy's tanh is fast
        # (``_tanh_is_fast``), sigmoid(a) = (1 + tanh(a/2)) / 2 for i, f, o; elsewhere sigmoid(a) =
        # 1 / (1 + exp(-a)) for i, f, o and tanh(a) = 2 sigmoid(2 a) - 1 for g (exp(+large) = inf gives
        # sigmoid's limit 0). ``scale`` turns the pre-activations into what that call takes.
        use_tanh = _TANH_IS_FAST and xp is np
        scale = xp.asarray(_LSTM_TANH_SCALE if use_tanh else _LSTM_EXP_SCALE, dtype=xi.dtype).reshape(4, 1, 1)
        table = x_gates = None
        clip = {"mode": "clip"} if xp is np else {}                    # CuPy's take has no mode= (rows checked)
        if idx is None:
            x_gates = _gate_major(xi, 4)                               # (T, 4, N, H) view, gates i, f, g, o
        else:
            if idx.dtype.kind not in "iu":
                raise TypeError(f"LSTMScan: idx must hold integers, got dtype {idx.dtype}")
            K.check_rows(idx, xi.shape[0], "LSTMScan", "table rows")   # then take(mode="clip") clips nothing
            table = xi.reshape(-1, 4, hidden).transpose(1, 0, 2)[list(_LSTM_ORDER)]   # (V, 4H) -> (4, V, H), i, f, o, g
            if bias is not None:
                table = table + bias                                   # the biases join every row once
            # NOTE: the scale joins the table and the weight once (not every step's pre-activations);
            # it is a power of two (and a sign), so every product and sum comes out the same.
            table = xp.ascontiguousarray(table * scale)
            weight_cols.reshape(hidden, 4, hidden)[...] *= scale.reshape(4, 1)   # (H, 4, H): column block k
            bias = None
        hw = xp.empty((batch, 4 * hidden), dtype=xi.dtype)             # (N, 4H): h @ weight_cols
        hw_gates = hw.reshape(batch, 4, hidden).transpose(1, 0, 2)     # (4, N, H) view, i, f, o, g
        ig = xp.empty((batch, hidden), dtype=xi.dtype)                 # (N, H): i * g, one buffer
        h, c_prev = h0, c0
        with np.errstate(over="ignore"):
            for t in _time_order(steps, reverse):
                pre = gates[t]                                         # (4, N, H): i, f, o, g
                xp.matmul(h, weight_cols, out=hw)                      # (N, H) @ (H, 4H) -> (N, 4H)
                if table is None:
                    xp.add(hw_gates[:2], x_gates[t, :2], out=pre[:2])   # i, f
                    xp.add(hw_gates[2:], x_gates[t, 3:1:-1], out=pre[2:])   # o, g
                    if bias is not None:
                        pre += bias
                    if use_tanh:
                        pre[:3] *= 0.5                                 # scale (0.5, 0.5, 0.5, 1)
                    else:
                        pre *= scale
                else:
                    xp.take(table, idx[t], axis=1, out=pre, **clip)    # (4, V, H) -> (4, N, H), rows checked
                    pre += hw_gates                                    # scaled already
                if use_tanh:
                    sig = pre[:3]                                      # (3, N, H) view
                    xp.tanh(pre, out=pre)                              # tanh(a / 2) for i, f, o; g = tanh(a_g)
                    sig *= 0.5
                    sig += 0.5                                         # i, f, o = sigmoid(a)
                    i, f, o, g = pre
                else:
                    xp.exp(pre, out=pre)
                    pre += 1
                    xp.reciprocal(pre, out=pre)                        # i, f, o = sigmoid(a), sigmoid(2 a_g)
                    i, f, o, g = pre
                    g *= 2
                    g -= 1                                             # g = tanh(a_g)
                c = hc[1, t]
                xp.multiply(f, c_prev, out=c)
                xp.multiply(i, g, out=ig)
                c += ig
                xp.tanh(c, out=tanh_c[t])
                xp.multiply(o, tanh_c[t], out=hc[0, t])
                h, c_prev = hc[0, t], c
        self.save_for_backward(h0, c0, weight_hh, hc, gates, tanh_c)
        self.options = (reverse, len(biases), idx, xi.shape[0])
        return hc

    def backward(self, grad_hc):
        h0, c0, weight_hh, hc, gates, tanh_c = self.saved
        reverse, n_bias, idx, rows = self.options
        xp = array_module(hc)
        steps, batch, hidden = tanh_c.shape
        first = _time_order(steps, reverse)[0]                         # the step that starts from h0, c0
        step_before = 1 if reverse else -1
        # c' = f c + i g, h' = o tanh(c'): per step, the local derivatives, then their products with the
        # incoming gradients dh (into h') and dc (into c')
        d_pre = xp.empty((steps, batch, 4, hidden), dtype=hc.dtype)   # (T, N, 4, H): dL/d pre_i, f, g, o
        dh, dc = xp.zeros_like(h0), xp.zeros_like(c0)
        slope = xp.empty((3, batch, hidden), dtype=hc.dtype)          # (3, N, H): d c' / d pre_i, f, g
        d_ifg = xp.empty_like(slope)                                   # (3, N, H): dL/d pre_i, f, g
        work = xp.empty_like(dc)                                       # (N, H)
        for t in reversed(_time_order(steps, reverse)):
            i, f, o, g = gates[t]
            tc = tanh_c[t]
            c_prev = c0 if t == first else hc[1, t + step_before]
            dh += grad_hc[0, t]                                        # dh, dc are this loop's own arrays
            dc += grad_hc[1, t]
            xp.multiply(tc, tc, out=work)                              # d h' / d c' = o (1 - tanh(c')^2)
            xp.subtract(1, work, out=work)
            work *= o
            work *= dh
            dc += work
            sig = gates[t, :3]                                         # (3, N, H): i, f, o
            xp.subtract(1, sig, out=slope)
            slope *= sig                                               # sigmoid' of i, f, o
            d_o = d_pre[t, :, 3]
            xp.multiply(dh, tc, out=d_o)                               # d h' / d pre_o = tanh(c') o (1 - o)
            d_o *= slope[2]
            slope[0] *= g                                              # d c' / d pre_i = g i (1 - i)
            slope[1] *= c_prev                                         # d c' / d pre_f = c f (1 - f)
            to_g = xp.multiply(g, g, out=slope[2])                     # d c' / d pre_g = i (1 - g^2)
            xp.subtract(1, to_g, out=to_g)
            to_g *= i
            xp.multiply(slope, dc, out=d_ifg)
            d_pre[t, :, :3] = d_ifg.transpose(1, 0, 2)                 # (3, N, H) -> (N, 3, H)
            dc *= f                                                    # (N, H) -> previous cell state
            xp.matmul(d_pre[t].reshape(batch, 4 * hidden), weight_hh, out=dh)   # (N, H) -> previous hidden state
        d_pre = d_pre.reshape(steps, batch, 4 * hidden)                # (T, N, 4H), gates side by side
        needs = self.needs_input_grad
        d_xi = d_pre if idx is None else K.embedding_grad(idx.reshape(-1), d_pre.reshape(-1, 4 * hidden), rows)
        d_weight, d_bias = _weight_grads(d_pre, hc[0], h0, reverse, n_bias > 0 and idx is None) \
            if any(needs[3:]) else (None, None)
        if n_bias and idx is not None:
            d_bias = _sum_rows(d_xi)                                   # each step's rows went to one table row
        d_biases = _bias_grads(d_bias, None if d_bias is None else d_bias.copy(), n_bias)   # b_ih: same values
        return (d_xi if needs[0] else None, dh if needs[1] else None, dc if needs[2] else None, d_weight, *d_biases)
