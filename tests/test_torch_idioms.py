"""PyTorch idioms a learner brings along, checked against torch itself: in-place updates (``p -= lr *
p.grad``, ``p.data += ...``), writing into slices, dims out of range, gather's index shape,
``view(dtype)``, init gains, ``x ** 0``, integer sums, ``randint(high, size)`` and
``import groundup.nn.functional as F``. Each one was silently different or failed before."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu

torch = pytest.importorskip("torch")


def _fit_three_steps(update) -> list[float]:
    """Three steps of the hand-written SGD loop of every PyTorch tutorial, with ``update(p)``."""
    gu.manual_seed(0)
    model = gu.nn.Linear(3, 1)
    x, y = gu.randn(8, 3), gu.randn(8, 1)
    losses = []
    for _ in range(3):
        loss = ((model(x) - y) ** 2).mean()
        model.zero_grad()
        loss.backward()
        losses.append(float(loss))
        for p in model.parameters():
            update(p)
    return losses


@pytest.mark.parametrize("style", ["-=", "data +=", "data ="])
def test_the_hand_written_sgd_step_updates_the_weights(style):
    def update(p):
        if style == "-=":
            with gu.no_grad():
                p -= 0.1 * p.grad
        elif style == "data +=":
            p.data += -0.1 * p.grad                      # micrograd / makemore's form
        else:
            p.data = p.data - 0.1 * p.grad

    losses = _fit_three_steps(update)
    assert losses[2] < losses[1] < losses[0]             # before: the loss stayed put (the names rebound)


def test_in_place_operators_change_the_tensor_itself_as_in_torch():
    a, t = gu.zeros(3), torch.zeros(3)
    b, u = a, t
    a += 1
    t += 1
    a *= gu.tensor([1.0, 2.0, 3.0])
    t *= torch.tensor([1.0, 2.0, 3.0])
    a -= 0.5
    t -= 0.5
    a /= 2
    t /= 2
    np.testing.assert_allclose(b.numpy(), u.numpy())     # the other name sees the change
    assert a is b


def test_in_place_on_a_leaf_that_requires_grad_is_refused_as_in_torch():
    w, tw = gu.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError):
        tw += 1
    with pytest.raises(RuntimeError, match="leaf tensor that requires grad"):
        w += 1
    with gu.no_grad():
        w += 1                                           # allowed where no graph is recorded
    assert w.tolist() == [2.0, 2.0, 2.0] and w.requires_grad


def test_in_place_with_the_graph_involved_keeps_the_gradient():
    """``acc += w * 2`` (acc needs no grad, w does) and ``h += x`` on a computed tensor: torch records
    them in place; here they become the out-of-place op, with the same values and gradients."""
    w, tw = gu.tensor([1.0, 2.0, 3.0], requires_grad=True), torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    acc, tacc = gu.zeros(3), torch.zeros(3)
    acc += w * 2
    tacc += tw * 2
    h, th = w * 3, tw * 3
    h += w * w
    th += tw * tw
    (acc * h).sum().backward()
    (tacc * th).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy())


def test_an_in_place_result_that_does_not_fit_names_the_shapes():
    i = gu.zeros(3, dtype=gu.int64)
    with pytest.raises(RuntimeError, match=r"'\+=': cannot write the result into the tensor of shape \(3,\)"):
        i += 0.5
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\)"):
        x = gu.zeros(3)
        x += gu.zeros(2, 3)


def test_writing_a_value_that_requires_grad_into_a_slice_is_refused():
    """The pre-allocate-then-fill pattern would lose the gradient (before: silently [6, 0] for torch's
    [15, 6]); it is refused with the out-of-place ways to build the tensor."""
    w = gu.tensor([2.0, 3.0], requires_grad=True)
    out = gu.zeros(2)
    with pytest.raises(RuntimeError, match="not recorded by autograd.*gu.stack"):
        out[0] = w[0] * w[1]
    built = gu.stack([w[0] * w[1], gu.tensor(0.0)])      # what the message offers, and torch's gradient
    ((built * w).sum() + built.sum()).backward()
    tw = torch.tensor([2.0, 3.0], requires_grad=True)
    tout = torch.zeros(2)
    tout[0] = tw[0] * tw[1]
    ((tout * tw).sum() + tout.sum()).backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy())
    with gu.no_grad():
        out[0] = w[0] * w[1]                              # no gradient wanted: allowed
    assert float(out[0]) == 6.0


@pytest.mark.parametrize("call", [
    lambda m, x: x.squeeze(2), lambda m, x: x.unsqueeze(5), lambda m, x: x.flatten(3),
    lambda m, x: m.cat([x, x], dim=2), lambda m, x: m.stack([x, x], dim=4), lambda m, x: m.stack([x, x], dim=-4),
    lambda m, x: x.transpose(0, 5), lambda m, x: x.softmax(5), lambda m, x: x.log_softmax(-3),
    lambda m, x: x.split(1, dim=3), lambda m, x: x.chunk(2, dim=-3),
])
def test_a_dim_out_of_range_is_an_index_error_as_in_torch(call):
    with pytest.raises(IndexError):
        call(torch, torch.zeros(1, 3))
    with pytest.raises(IndexError, match=r"dimension -?\d+ is out of range for a tensor of 2 dims"):
        call(gu, gu.zeros(1, 3))


def test_dims_in_range_still_work_at_both_ends():
    x, t = gu.zeros(2, 3), torch.zeros(2, 3)
    for fn in (lambda m, v: v.unsqueeze(-3), lambda m, v: v.unsqueeze(2), lambda m, v: m.stack([v, v], dim=-3),
               lambda m, v: m.stack([v, v], dim=2), lambda m, v: v.flatten(-2), lambda m, v: v.transpose(-1, 0)):
        assert tuple(fn(gu, x).shape) == tuple(fn(torch, t).shape)


def test_gather_takes_the_index_shape_as_torch_does():
    x, t = gu.arange(12.0).reshape(3, 4).requires_grad_(), torch.arange(12.0).reshape(3, 4).requires_grad_()
    index = [[0, 3]]
    out, tout = x.gather(1, gu.tensor(index)), t.gather(1, torch.tensor(index))
    np.testing.assert_array_equal(out.detach().numpy(), tout.detach().numpy())   # before: broadcast to (3, 2)
    (out * gu.tensor([[1.0, 2.0]])).sum().backward()
    (tout * torch.tensor([[1.0, 2.0]])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())
    with pytest.raises(IndexError, match="gather: index 4 is out of range for dim 1 of size 4"):
        x.gather(1, gu.tensor([[4]]))
    with pytest.raises(RuntimeError, match="gather: index"):
        x.gather(1, gu.tensor([0, 1]))                    # one dim fewer than the input


def test_view_dtype_reinterprets_the_bits():
    assert gu.tensor([1.0]).view(gu.int32).tolist() == torch.tensor([1.0]).view(torch.int32).tolist()
    assert gu.tensor([1.0, -2.0], dtype=gu.float64).view(gu.int32).tolist() == \
        torch.tensor([1.0, -2.0], dtype=torch.float64).view(torch.int32).tolist()


@pytest.mark.parametrize("nonlinearity", ["linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"])
def test_init_gains_and_kaiming_stds_match_torch(nonlinearity):
    assert gu.nn.init.calculate_gain(nonlinearity) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity))
    w = gu.zeros(400, 300)
    gu.nn.init.kaiming_normal_(w, nonlinearity=nonlinearity)
    fan_in = 300
    assert float(w.numpy().std()) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity, 0) / fan_in ** 0.5,
                                                   rel=0.03)


def test_bad_init_arguments_are_refused():
    with pytest.raises(ValueError, match="unsupported nonlinearity 'bogus'"):
        gu.nn.init.kaiming_normal_(gu.zeros(4, 4), nonlinearity="bogus")
    with pytest.raises(ValueError, match="mode 'fan_inn'"):
        gu.nn.init.kaiming_uniform_(gu.zeros(4, 4), mode="fan_inn")


def test_the_gradient_of_x_to_the_zero_is_zero_at_zero():
    for exponent in (0, gu.tensor(0.0)):
        x = gu.tensor([0.0, 2.0], requires_grad=True)
        (x ** exponent).sum().backward()
        assert x.grad.tolist() == [0.0, 0.0]
    x, t = gu.tensor([0.0, 2.0], requires_grad=True), torch.tensor([0.0, 2.0], requires_grad=True)
    (x ** gu.tensor([0.0, 3.0])).sum().backward()
    (t ** torch.tensor([0.0, 3.0])).sum().backward()
    assert x.grad.tolist() == t.grad.tolist()


def test_integer_sums_are_int64_and_linear_refuses_mixed_floats():
    assert gu.tensor([200, 100], dtype=gu.int32).type(np.uint8).sum().dtype == gu.int64
    assert torch.tensor([200, 100], dtype=torch.uint8).sum().dtype == torch.int64
    with pytest.raises(RuntimeError, match="linear: input dtype float64 differs from the weight's float32"):
        gu.nn.Linear(3, 2)(gu.zeros(1, 3, dtype=gu.float64))


def test_randint_takes_torchs_high_and_size_form():
    assert gu.randint(10, (3,)).shape == tuple(torch.randint(10, (3,)).shape)
    values = gu.randint(3, 5, (200,)).numpy()
    assert values.min() >= 3 and values.max() <= 4
    with pytest.raises(ValueError, match="randint: high"):
        gu.randint(5, 5, (2,))


def test_nn_functional_is_importable_under_torchs_path():
    import groundup.nn.functional as F

    assert F is gu.functional and gu.nn.functional is gu.functional
    np.testing.assert_array_equal(F.relu(gu.tensor([-1.0, 2.0])).numpy(), [0.0, 2.0])


def test_a_0d_tensor_does_not_widen_a_tensor_of_its_kind_even_when_it_requires_grad():
    s, ts = gu.tensor(1.0, dtype=gu.float64, requires_grad=True), torch.tensor(1.0, dtype=torch.float64,
                                                                             requires_grad=True)
    out, tout = gu.ones(3) + s * 2, torch.ones(3) + ts * 2
    assert out.dtype == gu.float32 and tout.dtype == torch.float32
    out.sum().backward()
    tout.sum().backward()
    assert s.grad.dtype == gu.float64 and float(s.grad) == float(ts.grad)
    assert (gu.tensor(1.0, dtype=gu.float64) + gu.tensor(2.0)).dtype == gu.float64   # two 0-d: ordinary promotion


def test_pad_takes_torchs_signature_and_crops_with_negative_amounts():
    import torch.nn.functional as TF

    import groundup.nn.functional as F

    x = gu.arange(6.0).reshape(2, 3).requires_grad_()
    t = torch.arange(6.0).reshape(2, 3).requires_grad_()
    for amounts, args in (((-1, 2), ()), ((1, 1), ("constant", 5.0)), ((0, 0, -1, 1), ()), ((2, -2, 1, 0), ())):
        out, tout = F.pad(x, amounts, *args), TF.pad(t, amounts, *args)
        np.testing.assert_array_equal(out.detach().numpy(), tout.detach().numpy())
        (out * out).sum().backward()
        (tout * tout).sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())
    with pytest.raises(ValueError, match="mode 'wrap' is not one of"):
        F.pad(x, (1, 1), "wrap")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_modes_match_torch_in_values_and_gradients(mode):
    import torch.nn.functional as TF

    import groundup.nn.functional as F

    data = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x, t = gu.tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    weight = np.random.default_rng(1).standard_normal((2, 3, 7, 9)).astype(np.float32)
    out, tout = F.pad(x, (2, 2, 3, 0), mode), TF.pad(t, (2, 2, 3, 0), mode)
    np.testing.assert_array_equal(out.detach().numpy(), tout.detach().numpy())
    (out * gu.tensor(weight)).sum().backward()
    (tout * torch.tensor(weight)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-6)
    if mode == "reflect":
        with pytest.raises(ValueError, match="pads dim 3 of size 5 by \\(5, 0\\)"):
            F.pad(x, (5, 0), mode)


def test_module_to_a_dtype_casts_and_a_bad_device_is_named():
    m = gu.nn.Linear(3, 2).to(gu.float64)
    assert m.weight.dtype == gu.float64 and m(gu.zeros(1, 3, dtype=gu.float64)).dtype == gu.float64
    assert gu.nn.Linear(3, 2).to("float64").weight.dtype == gu.float64
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        m.to("tpu")


def test_masked_fill_takes_a_list_and_a_bad_comparison_names_the_shapes():
    x = gu.arange(6.0).reshape(2, 3)
    t = torch.arange(6.0).reshape(2, 3)
    assert x.masked_fill([True, False, True], 0.0).tolist() == t.masked_fill(torch.tensor([True, False, True]),
                                                                             0.0).tolist()
    with pytest.raises(RuntimeError, match=r"comparison \(eq\): shapes \(2, 3\) and \(4,\) do not broadcast"):
        _ = gu.zeros(2, 3) == gu.zeros(4)


def _tied(nn):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    return Tied()


@pytest.mark.parametrize("edited", ["emb.weight", "head.weight"])
def test_editing_one_entry_of_a_tied_weight_loads_it_as_torch_does(edited):
    ours, theirs = _tied(gu.nn), _tied(torch.nn)
    sd, tsd = ours.state_dict(), theirs.state_dict()
    sd[edited], tsd[edited] = np.zeros((5, 3), np.float32), torch.zeros(5, 3)
    ours.load_state_dict(sd)
    theirs.load_state_dict(tsd)
    assert not theirs.emb.weight.detach().numpy().any() and not ours.emb.weight.detach().numpy().any()
    assert ours.head.weight is ours.emb.weight                # still one parameter


def test_tied_entries_that_disagree_with_each_other_are_refused():
    ours = _tied(gu.nn)
    sd = ours.state_dict()
    sd["emb.weight"], sd["head.weight"] = np.zeros((5, 3), np.float32), np.ones((5, 3), np.float32)
    before = ours.emb.weight.detach().numpy().copy()
    with pytest.raises(RuntimeError, match="tied weights emb.weight, head.weight are one parameter"):
        ours.load_state_dict(sd)
    np.testing.assert_array_equal(ours.emb.weight.detach().numpy(), before)   # nothing changed
