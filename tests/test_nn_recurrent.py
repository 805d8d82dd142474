"""Tests for ``groundup.nn.recurrent``: RNN/GRU/LSTM cells and layers, the fused scans, ``unroll_cell``.

Oracles: torch.nn with the same weights (``load_state_dict`` of torch's ``state_dict``), comparing
outputs, final states and the gradients of ``sum(out * R)`` (random ``R``) with respect to every
parameter, the input and the initial state; and float64 central differences (``check_grad``) for the
hand-derived backward of each scan and for small whole layers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_graph_dtype, check_grad

import groundup as gu
from groundup import functional as F
from groundup import nn
from groundup.nn import scans
from groundup.nn.recurrent import unroll_cell
from groundup.nn.scans import GRUScan, LSTMScan, RNNScan

try:
    import torch
except ImportError:  # the finite-difference tests still run
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch as an oracle")
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-8, atol=1e-10)}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def _flat(result):
    """(output, h_n) / (output, (h_n, c_n)) / h / (h, c) -> a flat list of tensors."""
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in _flat(item)]
    return [result]


def check_matches_torch(make, inputs, dtype, train=False, seed=0):
    """Build ``make(torch.nn)`` and ``make(gu.nn)``, copy torch's weights into ours, run ``inputs``
    (arrays: the input, then the initial state(s), a pair for LSTM) through both, and compare every
    output and every gradient of a random weighting of all outputs."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    theirs = make(torch.nn).to(getattr(torch, np.dtype(dtype).name)).train(train)
    ours = make(nn).to(dtype=dtype).train(train)
    assert list(ours.state_dict()) == list(theirs.state_dict()), "parameter names or order differ from torch's"
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})

    def leaves(make_leaf):
        return [tuple(make_leaf(a) for a in x) if isinstance(x, tuple) else make_leaf(x) for x in inputs]

    their_in = leaves(lambda a: torch.tensor(a.astype(dtype), requires_grad=True))
    our_in = leaves(lambda a: gu.tensor(a.astype(dtype), requires_grad=True))
    their_out, our_out = _flat(theirs(*their_in)), _flat(ours(*our_in))
    assert len(our_out) == len(their_out)
    their_total, our_total = 0, 0
    for k, (t, o) in enumerate(zip(their_out, our_out)):
        assert o.shape == tuple(t.shape), f"output {k}: shape {o.shape}, torch {tuple(t.shape)}"
        assert o.dtype == dtype, f"output {k}: dtype {o.dtype}"
        np.testing.assert_allclose(o.detach().numpy(), t.detach().numpy(), err_msg=f"output {k}", **TOL[dtype])
        weight = rng.standard_normal(o.shape).astype(dtype)
        their_total = their_total + (t * torch.tensor(weight)).sum()
        our_total = our_total + (o * gu.tensor(weight)).sum()
    their_total.backward()
    our_total.backward()
    for k, (t, o) in enumerate(zip(_flat(their_in), _flat(our_in))):
        assert o.grad is not None, f"input {k} got no gradient"
        np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), err_msg=f"grad of input {k}", **TOL[dtype])
    their_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        np.testing.assert_allclose(p.grad.numpy(), their_params[name].grad.numpy(), err_msg=f"grad of {name}",
                                   **TOL[dtype])
    return ours, theirs


# ------------------------------------------------------------------ layers against torch
IN, H, T, N = 3, 4, 5, 2
LAYERS = {  # id -> (torch class name, extra arguments)
    "rnn-tanh": ("RNN", {}), "rnn-relu": ("RNN", {"nonlinearity": "relu"}), "gru": ("GRU", {}), "lstm": ("LSTM", {}),
}


def _state(name, layers, directions, batch):
    """Random initial state arrays for a layer: (L*D, N, H) (or (L*D, H) when batch is None)."""
    shape = (layers * directions, H) if batch is None else (layers * directions, batch, H)
    if name == "LSTM":
        return (np.random.standard_normal(shape), np.random.standard_normal(shape))
    return np.random.standard_normal(shape)


LAYER_CASES = [  # id, layer arguments, input shape, with an initial state
    ("1layer", dict(), (T, N, IN), False),
    ("2layers-bidir-hx", dict(num_layers=2, bidirectional=True), (T, N, IN), True),
    ("2layers-bidir-batch_first-hx", dict(num_layers=2, bidirectional=True, batch_first=True), (N, T, IN), True),
    ("batch_first-hx", dict(batch_first=True), (N, T, IN), True),
    ("unbatched-2layers-bidir-hx", dict(num_layers=2, bidirectional=True), (T, IN), True),
    ("unbatched-batch_first-ignored", dict(batch_first=True), (T, IN), False),
    ("nobias-2layers", dict(num_layers=2, bias=False), (T, N, IN), True),
]


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
@pytest.mark.parametrize("kind", list(LAYERS))
@DTYPES
@pytest.mark.torch
@requires_torch
def test_layer_matches_torch(kind, case, dtype):
    name, extra = LAYERS[kind]
    _, args, shape, with_state = case
    make = lambda m: getattr(m, name)(IN, H, **args, **extra)  # noqa: E731
    inputs = [np.random.standard_normal(shape)]
    if with_state:
        batch = None if len(shape) == 2 else N
        inputs.append(_state(name, args.get("num_layers", 1), 2 if args.get("bidirectional") else 1, batch))
    check_matches_torch(make, inputs, dtype)


# ------------------------------------------------------------------ cells against torch
CELLS = {
    "rnncell-tanh": lambda m, **kw: m.RNNCell(IN, H, **kw),
    "rnncell-relu": lambda m, **kw: m.RNNCell(IN, H, nonlinearity="relu", **kw),
    "grucell": lambda m, **kw: m.GRUCell(IN, H, **kw),
    "lstmcell": lambda m, **kw: m.LSTMCell(IN, H, **kw),
}
CELL_CASES = [  # id, batch (None = unbatched), with a state, bias
    ("batched-hx", N, True, True), ("batched-no-hx", N, False, True), ("unbatched-hx", None, True, True),
    ("unbatched-no-hx", None, False, True), ("nobias-hx", N, True, False),
]


@pytest.mark.parametrize("case", CELL_CASES, ids=[c[0] for c in CELL_CASES])
@pytest.mark.parametrize("kind", list(CELLS))
@DTYPES
@pytest.mark.torch
@requires_torch
def test_cell_matches_torch(kind, case, dtype):
    _, batch, with_state, bias = case
    shape = (IN,) if batch is None else (batch, IN)
    state_shape = (H,) if batch is None else (batch, H)
    inputs = [np.random.standard_normal(shape)]
    if with_state:
        state = np.random.standard_normal(state_shape)
        inputs.append((state, np.random.standard_normal(state_shape)) if kind == "lstmcell" else state)
    check_matches_torch(lambda m: CELLS[kind](m, bias=bias), inputs, dtype)


# ------------------------------------------------------------------ finite differences of the fused scans
SCAN_T, SCAN_N, SCAN_H = 4, 2, 3


def _scan_inputs(gates, bias):
    shapes = [(SCAN_T, SCAN_N, gates * SCAN_H), (SCAN_N, SCAN_H)]
    if gates == 4:
        shapes.append((SCAN_N, SCAN_H))                                   # c0
    shapes.append((gates * SCAN_H, SCAN_H))
    if bias:
        shapes.append((gates * SCAN_H,))
    return [np.random.standard_normal(s) * (0.5 if i == len(shapes) - 1 else 1.0) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("scan,gates,options", [
    (RNNScan, 1, {"nonlinearity": "tanh"}), (RNNScan, 1, {"nonlinearity": "relu"}), (GRUScan, 3, {}),
    (LSTMScan, 4, {}),
], ids=["rnn-tanh", "rnn-relu", "gru", "lstm"])
def test_scan_backward_matches_finite_differences(scan, gates, options, reverse, bias, gate_route):
    check_grad(lambda *args: scan.apply(*args, reverse=reverse, **options), *_scan_inputs(gates, bias))


SCANS = pytest.mark.parametrize("scan,gates,options", [
    (RNNScan, 1, {"nonlinearity": "tanh"}), (GRUScan, 3, {}), (LSTMScan, 4, {}),
], ids=["rnn", "gru", "lstm"])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@SCANS
def test_scan_with_both_biases_matches_finite_differences(scan, gates, options, reverse):
    """bias_hh then bias_ih (the layers' path: xi without b_ih), and a zero h0 (c0), whose term the
    weight gradient skips: every input's gradient, including both biases'."""
    inputs = _scan_inputs(gates, bias=True)
    inputs[1] = np.zeros_like(inputs[1])                                  # h0 = 0 (as in a language model)
    inputs.append(np.random.standard_normal(gates * SCAN_H) * 0.5)      # bias_ih
    check_grad(lambda *args: scan.apply(*args, reverse=reverse, **options), *inputs)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@SCANS
def test_scan_adds_bias_ih_as_if_it_were_in_xi(scan, gates, options, reverse):
    """scan(xi, ..., b_hh, b_ih) = scan(xi + b_ih, ..., b_hh), and so are the gradients (float64)."""
    *head, b_hh = _scan_inputs(gates, bias=True)
    b_ih = np.random.standard_normal(gates * SCAN_H)
    results = []
    for fold in (False, True):
        args = [gu.tensor(a, requires_grad=True) for a in (*head, b_hh, b_ih)]
        xi = args[0] + args[-1] if fold else args[0]
        out = scan.apply(xi, *args[1:-1], *(() if fold else args[-1:]), reverse=reverse, **options)
        (out * gu.tensor(np.linspace(-1, 1, out.numel()).reshape(out.shape))).sum().backward()
        results.append([out.detach().numpy(), *(a.grad.numpy() for a in args)])
    for ours, folded in zip(*results):
        np.testing.assert_allclose(ours, folded, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_small_layer_matches_finite_differences(name):
    """A whole 2-layer bidirectional layer in float64: input, initial state(s) and every parameter."""
    layer = getattr(nn, name)(2, 2, num_layers=2, bidirectional=True, dtype=gu.float64)
    names = [n for n, _ in layer.named_parameters()]
    is_lstm = name == "LSTM"

    def run(x, *rest):
        states, params = (rest[:2], rest[2:]) if is_lstm else (rest[:1], rest[1:])
        for param_name, value in zip(names, params):
            layer._parameters[param_name] = value                       # differentiate the parameters too
        return layer(x, tuple(states) if is_lstm else states[0])

    state_shapes = [(4, 2, 2)] * (2 if is_lstm else 1)
    params = [p.detach().numpy().copy() for p in layer.parameters()]
    check_grad(run, (3, 2, 2), *state_shapes, *params)


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_float32_stays_float32_through_forward_and_backward(name):
    """No scan upcasts to float64 (a leaf's .grad is cast back, so this walks the graph's nodes)."""
    layer = getattr(nn, name)(IN, H, num_layers=2, bidirectional=True)
    hx = gu.randn(4, N, H, requires_grad=True)
    output, state = layer(gu.randn(T, N, IN, requires_grad=True), (hx, hx) if name == "LSTM" else hx)
    assert output.dtype == gu.float32
    assert_graph_dtype(_flat((output, state)))


@pytest.fixture(params=["exp", "tanh"])
def gate_route(request, monkeypatch):
    """Both ways the scans compute their gates (the machine picks one, ``scans._tanh_is_fast``)."""
    monkeypatch.setattr(scans, "_TANH_IS_FAST", request.param == "tanh")
    return request.param


@requires_torch
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_saturated_gates_match_torch_without_warnings(name, recwarn, gate_route):
    """The scans take their sigmoids (and the LSTM its g gate) from one exp or one tanh: pre-activations
    far out on both sides (exp overflowing to inf) must give torch's limits 0 and 1, no NaN, no warning."""
    ours = getattr(nn, name)(IN, H, batch_first=True)
    theirs = getattr(torch.nn, name)(IN, H, batch_first=True)
    theirs.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((N, T, IN)).astype(np.float32) * 400   # |pre| in the hundreds
    x_ours, x_theirs = gu.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, their_out = ours(x_ours)[0], theirs(x_theirs)[0]
    assert np.isfinite(out.detach().numpy()).all()
    np.testing.assert_allclose(out.detach().numpy(), their_out.detach().numpy(), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    their_out.sum().backward()
    np.testing.assert_allclose(x_ours.grad.numpy(), x_theirs.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]


@requires_torch
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_both_gate_routes_match_torch(name, gate_route):
    """A 2-layer float32 layer through the exp or the tanh gates: outputs and gradients as torch's."""
    ours = getattr(nn, name)(IN, H, num_layers=2)
    theirs = getattr(torch.nn, name)(IN, H, num_layers=2)
    theirs.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((T, N, IN)).astype(np.float32) * 2
    x_ours, x_theirs = gu.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    out, their_out = ours(x_ours)[0], theirs(x_theirs)[0]
    np.testing.assert_allclose(out.detach().numpy(), their_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    weights = np.linspace(-1, 1, out.numel(), dtype=np.float32).reshape(out.shape)
    (out * gu.tensor(weights)).sum().backward()
    (their_out * torch.tensor(weights)).sum().backward()
    np.testing.assert_allclose(x_ours.grad.numpy(), x_theirs.grad.numpy(), rtol=1e-4, atol=1e-5)
    for (key, p), q in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


# ------------------------------------------------------------------ forward_projected
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_forward_projected_equals_forward(name):
    """Given x W_ih^T of both directions, a 2-layer bidirectional batch_first layer computes what
    ``forward`` computes from x: outputs, final states and every gradient (float64)."""
    gu.manual_seed(0)
    layer = getattr(nn, name)(IN, H, num_layers=2, bidirectional=True, batch_first=True, dtype=gu.float64)
    x_array = np.random.standard_normal((N, T, IN))
    hx_arrays = [np.random.standard_normal((4, N, H)) for _ in range(2 if name == "LSTM" else 1)]
    results = []
    for projected in (False, True):
        layer.zero_grad()
        x = gu.tensor(x_array, requires_grad=True)
        states = [gu.tensor(a, requires_grad=True) for a in hx_arrays]
        hx = tuple(states) if name == "LSTM" else states[0]
        if projected:
            x_time = x.transpose(0, 1)                                      # (T, N, in)
            out = layer.forward_projected([F.linear(x_time, layer.weight_ih_l0),
                                           F.linear(x_time, layer.weight_ih_l0_reverse)], hx)
        else:
            out = layer(x, hx)
        outputs = _flat(out)
        sum((o * gu.tensor(np.cos(np.arange(o.numel())).reshape(o.shape))).sum() for o in outputs).backward()
        results.append([o.detach().numpy() for o in outputs] + [t.grad.numpy() for t in (x, *states)]
                       + [p.grad.numpy() for p in layer.parameters()])
    assert len(results[0]) == len(results[1])
    for k, (ours, readable) in enumerate(zip(*results)):
        np.testing.assert_allclose(ours, readable, rtol=1e-10, atol=1e-12, err_msg=f"item {k}")


def test_forward_projected_rejects_wrong_projections():
    layer = nn.LSTM(IN, H, bidirectional=True)
    good = gu.randn(T, N, 4 * H)
    for projections in ([good], [good, gu.randn(T, N, 3 * H)], [good, gu.randn(T, N + 1, 4 * H)]):
        with pytest.raises(ValueError, match="projections"):
            layer.forward_projected(projections)
    with pytest.raises(RuntimeError, match="dtype"):
        layer.forward_projected([good, gu.randn(T, N, 4 * H, dtype=gu.float64)])


# ------------------------------------------------------------------ forward_lookup
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_forward_lookup_equals_forward_projected(name, bias, gate_route):
    """Rows of projected tables looked up by id (an LSTM does it inside its scan) give what
    ``forward_projected`` gives from the looked-up rows: outputs, final states and every gradient,
    tables included, 2 layers, both directions (float64)."""
    gu.manual_seed(1)
    vocab = 7
    layer = getattr(nn, name)(IN, H, num_layers=2, bidirectional=True, bias=bias, batch_first=True,
                              dtype=gu.float64)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, vocab, (T, N))                                    # (T, N) time-major ids
    idx[0, 0], idx[-1, -1] = 0, vocab - 1
    table_arrays = [rng.standard_normal((vocab, layer.weight_ih_l0.shape[0])) for _ in range(2)]
    hx_arrays = [rng.standard_normal((4, N, H)) for _ in range(2 if name == "LSTM" else 1)]
    results = []
    for lookup in (False, True):
        layer.zero_grad()
        tables = [gu.tensor(a, requires_grad=True) for a in table_arrays]
        states = [gu.tensor(a, requires_grad=True) for a in hx_arrays]
        hx = tuple(states) if name == "LSTM" else states[0]
        if lookup:
            out = layer.forward_lookup(tables, idx, hx)
        else:
            out = layer.forward_projected([F.embedding(idx, t) for t in tables], hx)
        outputs = _flat(out)
        sum((o * gu.tensor(np.sin(np.arange(o.numel())).reshape(o.shape))).sum() for o in outputs).backward()
        unused = [key for key, p in layer.named_parameters() if p.grad is None]
        assert unused == ["weight_ih_l0", "weight_ih_l0_reverse"]             # the tables stand in for them
        results.append([o.detach().numpy() for o in outputs] + [t.grad.numpy() for t in (*tables, *states)]
                       + [p.grad.numpy() for p in layer.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1])
    for k, (ours, plain) in enumerate(zip(*results)):
        np.testing.assert_allclose(ours, plain, rtol=1e-10, atol=1e-12, err_msg=f"item {k}")


def test_lstm_scan_lookup_matches_finite_differences(gate_route):
    """LSTMScan with ``idx``: the gradients of the table, h0, c0, weight_hh and both biases (float64)."""
    rng = np.random.default_rng(5)
    vocab, steps, batch, hidden = 5, 4, 3, 2
    idx = rng.integers(0, vocab, (steps, batch))
    arrays = [rng.standard_normal(shape) for shape in [(vocab, 4 * hidden), (batch, hidden), (batch, hidden),
                                                       (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]]
    for reverse in (False, True):
        check_grad(lambda *a, reverse=reverse: LSTMScan.apply(*a, reverse=reverse, idx=idx), *arrays)


def test_forward_lookup_rejects_bad_input():
    layer = nn.LSTM(IN, H, bidirectional=True)
    good = gu.randn(7, 4 * H)
    idx = np.zeros((T, N), dtype=np.int64)
    for tables in ([good], [good, gu.randn(7, 3 * H)], [good, gu.randn(8, 4 * H)]):
        with pytest.raises(ValueError, match="tables"):
            layer.forward_lookup(tables, idx)
    with pytest.raises(ValueError, match="idx"):
        layer.forward_lookup([good, good], np.zeros((T,), dtype=np.int64))
    with pytest.raises(IndexError, match="index 7 is out of range"):
        layer.forward_lookup([good, good], idx + 7)
    with pytest.raises(RuntimeError, match="dtype"):
        layer.forward_lookup([good, gu.randn(7, 4 * H, dtype=gu.float64)], idx)


# ------------------------------------------------------------------ unroll_cell
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_unroll_cell_of_a_layer_equals_the_layer(name, batched):
    """Step-by-step composite ops (unroll_cell) == the fused scans: values and parameter gradients."""
    layer = getattr(nn, name)(IN, H, num_layers=2, batch_first=True, dtype=gu.float64)
    x = gu.tensor(np.random.standard_normal((N, T, IN) if batched else (T, IN)))
    state_shape = (2, N, H) if batched else (2, H)
    hx = gu.tensor(np.random.standard_normal(state_shape))
    hx = (hx, gu.tensor(np.random.standard_normal(state_shape))) if name == "LSTM" else hx
    weight = np.random.standard_normal((N, T, H) if batched else (T, H))

    output, _ = layer(x, hx)
    (output * gu.tensor(weight)).sum().backward()
    fused = {n: p.grad.numpy().copy() for n, p in layer.named_parameters()}
    layer.zero_grad()
    states = unroll_cell(layer, x, hx)
    assert len(states) == T and all(s.shape == ((N, H) if batched else (H,)) for s in states)
    stacked = gu.stack(states, dim=1 if batched else 0)                    # (N, T, H) or (T, H)
    np.testing.assert_allclose(stacked.detach().numpy(), output.detach().numpy(), rtol=1e-12, atol=1e-12)
    (stacked * gu.tensor(weight)).sum().backward()
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), fused[n], rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("kind", ["rnncell-tanh", "grucell", "lstmcell"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.torch
@requires_torch
def test_unroll_cell_gradients_per_step_match_torch(kind, batched):
    """d h_T / d h_t through retain_grad(), the vanishing-gradient measurement, against torch."""
    steps = 12
    theirs, ours = CELLS[kind](torch.nn).double(), CELLS[kind](nn).to(dtype=gu.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = np.random.standard_normal((steps, N, IN) if batched else (steps, IN))

    states = unroll_cell(ours, gu.tensor(x))
    for h in states:
        h.retain_grad()
    states[-1].sum().backward()
    their_states, state = [], None
    for t in range(steps):
        state = theirs(torch.tensor(x[t]), state)
        h = state[0] if kind == "lstmcell" else state
        h.retain_grad()
        their_states.append(h)
    their_states[-1].sum().backward()
    for t, (o, th) in enumerate(zip(states, their_states)):
        np.testing.assert_allclose(o.detach().numpy(), th.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(o.grad.numpy(), th.grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=f"step {t}")
    norms = [float(np.linalg.norm(h.grad.numpy())) for h in states]
    assert norms[0] < norms[-1]  # the gradient reaching early steps has shrunk


def test_unroll_cell_rejects_bidirectional_and_other_modules():
    with pytest.raises(ValueError, match="bidirectional"):
        unroll_cell(nn.GRU(IN, H, bidirectional=True), gu.randn(T, N, IN))
    with pytest.raises(TypeError, match="Linear"):
        unroll_cell(nn.Linear(IN, H), gu.randn(T, N, IN))


# ------------------------------------------------------------------ modes, init, names, repr
def test_dropout_between_layers_only_in_training():
    layer = nn.LSTM(IN, H, num_layers=2, dropout=1.0)                   # drops all of layer 0's output
    x = gu.randn(T, N, IN)
    top = nn.LSTM(H, H)                                                  # layer 1 alone, fed zeros
    top.load_state_dict({k.replace("l1", "l0"): v for k, v in layer.state_dict().items() if "_l1" in k})
    dropped, _ = layer(x)
    expected, _ = top(gu.zeros(T, N, H))
    np.testing.assert_allclose(dropped.detach().numpy(), expected.detach().numpy(), rtol=1e-6, atol=1e-7)
    layer.eval()
    kept, _ = layer(x)
    assert np.abs(kept.detach().numpy() - expected.detach().numpy()).max() > 1e-3       # eval mode: no dropout


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        nn.GRU(IN, H, dropout=0.5)


def test_no_grad_gives_the_same_values_and_no_graph():
    layer = nn.GRU(IN, H, num_layers=2)
    x = gu.randn(T, N, IN)
    with_graph, _ = layer(x)
    with gu.no_grad():
        without, h_n = layer(x)
    assert not without.requires_grad and not h_n.requires_grad
    np.testing.assert_array_equal(without.numpy(), with_graph.detach().numpy())


@pytest.mark.parametrize("make", [
    lambda m: m.RNN(IN, H, 2, "relu", bidirectional=True),
    lambda m: m.GRU(IN, H, num_layers=3, bias=False, batch_first=True, dropout=0.25),
    lambda m: m.LSTM(IN, H, bidirectional=True),
    lambda m: m.RNNCell(IN, H, nonlinearity="relu"),
    lambda m: m.GRUCell(IN, H, bias=False),
    lambda m: m.LSTMCell(IN, H),
])
@pytest.mark.torch
@requires_torch
def test_names_shapes_init_and_repr_match_torch(make):
    gu.manual_seed(0)
    ours, theirs = make(nn), make(torch.nn)
    their_params = dict(theirs.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(their_params)
    assert repr(ours) == repr(theirs)
    bound = 1 / math.sqrt(H)
    values = np.concatenate([p.detach().numpy().ravel() for p in ours.parameters()])
    for name, p in ours.named_parameters():
        assert p.shape == tuple(their_params[name].shape), name
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.9 * bound
    np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.15)


def test_init_follows_the_seed():
    gu.manual_seed(3)
    a = nn.LSTM(IN, H, num_layers=2).state_dict()
    gu.manual_seed(3)
    b = nn.LSTM(IN, H, num_layers=2).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_all_weights_and_exports():
    layer = nn.GRU(IN, H, num_layers=2, bidirectional=True)
    assert [[p.shape for p in ws] for ws in layer.all_weights][3] == [(3 * H, 2 * H), (3 * H, H), (3 * H,), (3 * H,)]
    assert gu.nn.unroll_cell is unroll_cell and gu.nn.LSTMCell is nn.LSTMCell
    layer.flatten_parameters()


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("build,error,match", [
    (lambda: nn.LSTM(IN, H, proj_size=2), ValueError, "proj_size"),
    (lambda: nn.RNN(IN, H, nonlinearity="sigmoid"), ValueError, "nonlinearity"),
    (lambda: nn.RNNCell(IN, H, nonlinearity="gelu"), ValueError, "nonlinearity"),
    (lambda: nn.GRU(IN, H, num_layers=0), ValueError, "num_layers"),
    (lambda: nn.GRU(IN, H, num_layers=2, dropout=1.5), ValueError, "dropout"),
    (lambda: nn.GRU(IN, 0), ValueError, "hidden_size"),
    (lambda: nn.GRU(IN, 2.5), TypeError, "hidden_size"),
])
def test_bad_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("call,error,match", [
    (lambda: nn.GRU(IN, H)(gu.randn(T, N, IN + 1)), RuntimeError, "input_size"),
    (lambda: nn.GRU(IN, H)(gu.randn(1, T, N, IN)), ValueError, "2 dims"),
    (lambda: nn.GRU(IN, H)(gu.randn(T, N, IN, dtype=gu.float64)), RuntimeError, "dtype"),
    (lambda: nn.GRU(IN, H)(gu.randn(T, N, IN), gu.randn(2, N, H)), RuntimeError, "hx of shape"),
    (lambda: nn.GRU(IN, H)(gu.randn(T, IN), gu.randn(1, N, H)), RuntimeError, "2-D"),
    (lambda: nn.GRU(IN, H)(gu.randn(0, N, IN)), ValueError, "empty"),
    (lambda: nn.LSTM(IN, H)(gu.randn(T, N, IN), gu.randn(1, N, H)), TypeError, "pair"),
    (lambda: nn.GRUCell(IN, H)(gu.randn(N, IN), gu.randn(N + 1, H)), RuntimeError, "hx has shape"),
    (lambda: nn.GRUCell(IN, H)(gu.randn(N, IN), gu.randn(H)), RuntimeError, "2-D"),
    (lambda: nn.LSTMCell(IN, H)(gu.randn(N, IN), gu.randn(N, H)), TypeError, "pair"),
    (lambda: nn.RNNCell(IN, H)(gu.randn(N, IN + 1)), RuntimeError, "input_size"),
])
def test_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()
