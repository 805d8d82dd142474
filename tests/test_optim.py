"""Optimizers, schedules and gradient clipping against PyTorch (the oracle) and nanoGPT's formula.

Each optimizer runs 10 steps from identical parameters on an identical sequence of gradients, in
float64, with two parameter groups of different learning rates and one parameter whose gradient
is sometimes None (skipped by both); parameters and optimizer state must match torch's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import groundup as gu
from groundup.nn import Parameter
from groundup.nn.utils import clip_grad_norm_, clip_grad_value_
from groundup.optim import SGD, Adam, AdamW
from groundup.optim.schedule import (
    CosineAnnealingLR,
    LambdaLR,
    StepLR,
    WarmupCosine,
    scheduled_lr,
    warmup_cosine_lr,
    warmup_linear_lr,
)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

SHAPES = [(4, 3), (3,), (2, 5)]          # group 0: first two, group 1: the last
N_STEPS = 10


def _initial_params(seed: int = 0, dtype=np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _gradients(seed: int = 1, dtype=np.float64) -> list[list[np.ndarray | None]]:
    """One list of gradients per step; the (3,) parameter has no gradient on every third step."""
    rng = np.random.default_rng(seed)
    steps = []
    for t in range(N_STEPS):
        grads = [rng.standard_normal(s).astype(dtype) * (1 + t) for s in SHAPES]
        if t % 3 == 1:
            grads[1] = None
        steps.append(grads)
    return steps


def _groups(params, extra_group1):
    return [{"params": params[:2]}, {"params": params[2:], **extra_group1}]


def _run_ours(make, arrays, grad_steps, extra_group1):
    params = [Parameter(gu.tensor(a.copy(), dtype=a.dtype)) for a in arrays]
    opt = make(_groups(params, extra_group1))
    history = []
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = None if g is None else gu.tensor(g.copy(), dtype=g.dtype)
        opt.step()
        history.append([p.data.copy() for p in params])
    return params, opt, history


def _run_torch(make, arrays, grad_steps, extra_group1):
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    opt = make(_groups(params, extra_group1))
    history = []
    for grads in grad_steps:
        for p, g in zip(params, grads):
            p.grad = None if g is None else torch.from_numpy(g.copy())
        opt.step()
        history.append([p.detach().numpy().copy() for p in params])
    return params, opt, history


CASES = {
    "sgd": (lambda m, g: m.SGD(g, lr=0.1), {"lr": 0.03}),
    "sgd-momentum": (lambda m, g: m.SGD(g, lr=0.1, momentum=0.9), {"lr": 0.03}),
    "sgd-nesterov": (lambda m, g: m.SGD(g, lr=0.1, momentum=0.9, nesterov=True), {"lr": 0.03}),
    "sgd-weight-decay": (lambda m, g: m.SGD(g, lr=0.1, momentum=0.5, weight_decay=0.1), {"lr": 0.03}),
    "sgd-dampening": (lambda m, g: m.SGD(g, lr=0.1, momentum=0.9, dampening=0.3), {"lr": 0.03, "momentum": 0.5}),
    "adam": (lambda m, g: m.Adam(g, lr=1e-2), {"lr": 3e-3}),
    "adam-weight-decay": (lambda m, g: m.Adam(g, lr=1e-2, weight_decay=0.1), {"lr": 3e-3}),
    "adam-amsgrad": (lambda m, g: m.Adam(g, lr=1e-2, amsgrad=True), {"lr": 3e-3}),
    "adamw": (lambda m, g: m.AdamW(g, lr=1e-2), {"lr": 3e-3, "weight_decay": 0.0}),
    "adamw-nanogpt": (lambda m, g: m.AdamW(g, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1), {"lr": 3e-3}),
    "adamw-small-beta1": (lambda m, g: m.AdamW(g, lr=1e-2, betas=(0.3, 0.9), eps=1e-6), {"lr": 3e-3}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_matches_torch_for_10_steps(case):
    make, extra = CASES[case]
    arrays, grad_steps = _initial_params(), _gradients()
    ours, opt, ours_history = _run_ours(lambda g: make(gu.optim, g), arrays, grad_steps, extra)
    theirs, topt, torch_history = _run_torch(lambda g: make(torch.optim, g), arrays, grad_steps, extra)
    for step, (a, b) in enumerate(zip(ours_history, torch_history)):
        for i, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12, err_msg=f"{case}: step {step}, param {i}")
    assert not np.array_equal(ours_history[-1][0], arrays[0]), "the parameters did not move"
    # same optimizer state under the same names (step counts and buffers)
    ours_state, torch_state = opt.state_dict()["state"], topt.state_dict()["state"]
    assert set(ours_state) == set(torch_state)
    for index, entry in torch_state.items():
        assert set(ours_state[index]) == set(entry), f"{case}: state keys of param {index}"
        for name, value in entry.items():
            np.testing.assert_allclose(np.asarray(ours_state[index][name]), value.numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=f"{case}: state[{index}][{name!r}]")


def test_float32_adamw_matches_torch():
    arrays, grad_steps = _initial_params(dtype=np.float32), _gradients(dtype=np.float32)
    make = lambda m, g: m.AdamW(g, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)  # noqa: E731
    _, _, ours = _run_ours(lambda g: make(gu.optim, g), arrays, grad_steps, {})
    _, _, theirs = _run_torch(lambda g: make(torch.optim, g), arrays, grad_steps, {})
    for a, b in zip(ours[-1], theirs[-1]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sgd_default_lr_is_torchs():
    arrays, grad_steps = _initial_params(), _gradients()
    _, _, ours = _run_ours(lambda g: gu.optim.SGD(g), arrays, grad_steps, {})
    _, _, theirs = _run_torch(lambda g: torch.optim.SGD(g), arrays, grad_steps, {})
    assert gu.optim.SGD([Parameter(gu.zeros(1))]).defaults["lr"] == torch.optim.SGD(
        [torch.nn.Parameter(torch.zeros(1))]).defaults["lr"] == 1e-3
    for a, b in zip(ours[-1], theirs[-1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd-weight-decay", "adam-weight-decay", "adamw-nanogpt"])
def test_step_leaves_gradients_untouched(name):
    make, extra = CASES[name]
    params = [Parameter(gu.tensor(a, dtype=a.dtype)) for a in _initial_params()]
    opt = make(gu.optim, _groups(params, extra))
    grads = _gradients()[0]
    for p, g in zip(params, grads):
        p.grad = gu.tensor(g.copy(), dtype=g.dtype)
    opt.step()
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.data, g)


@pytest.mark.parametrize("case", ["sgd-momentum", "adam-amsgrad", "adamw-nanogpt"])
def test_state_dict_round_trip_continues_identically(case):
    make, extra = CASES[case]
    arrays, grad_steps = _initial_params(), _gradients()
    params, opt, _ = _run_ours(lambda g: make(gu.optim, g), arrays, grad_steps[:5], extra)
    saved = opt.state_dict()
    json.dumps(saved["param_groups"])  # hyper-parameters are plain JSON
    # a fresh optimizer on copies of the parameters, loaded from the state dict
    twins = [Parameter(gu.tensor(p.data.copy(), dtype=p.dtype)) for p in params]
    twin_opt = make(gu.optim, _groups(twins, {}))
    twin_opt.load_state_dict(saved)
    assert twin_opt.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    for grads in grad_steps[5:]:
        for p, q, g in zip(params, twins, grads):
            p.grad = q.grad = None if g is None else gu.tensor(g, dtype=g.dtype)
        opt.step()
        twin_opt.step()
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(p.data, q.data)
    # the saved state is a copy: later steps did not change it
    first = saved["state"][0]
    if "step" in first:
        assert first["step"] == 5
    name = "exp_avg" if "exp_avg" in first else "momentum_buffer"
    assert not np.array_equal(first[name], opt.state[params[0]][name])


def test_load_torch_state_dict_continues_like_torch():
    make, extra = CASES["adamw-nanogpt"]
    arrays, grad_steps = _initial_params(), _gradients()
    tparams, topt, _ = _run_torch(lambda g: make(torch.optim, g), arrays, grad_steps[:4], extra)
    ours = [Parameter(gu.tensor(p.detach().numpy().copy(), dtype=gu.float64)) for p in tparams]
    opt = make(gu.optim, _groups(ours, {}))
    opt.load_state_dict(topt.state_dict())
    for grads in grad_steps[4:]:
        for p, q, g in zip(ours, tparams, grads):
            p.grad = None if g is None else gu.tensor(g, dtype=g.dtype)
            q.grad = None if g is None else torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for p, q in zip(ours, tparams):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_load_state_dict_rejects_mismatches_and_changes_nothing():
    params = [Parameter(gu.tensor(a, dtype=a.dtype)) for a in _initial_params()]
    opt = Adam(_groups(params, {"lr": 0.5}))
    for p, g in zip(params, _gradients()[0]):
        p.grad = gu.tensor(g, dtype=g.dtype)
    opt.step()
    good = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameter groups"):
        Adam([{"params": params}]).load_state_dict(good)
    bad = opt.state_dict()
    bad["state"][2]["exp_avg"] = np.zeros((5, 2))
    bad["param_groups"][1]["lr"] = 123.0
    with pytest.raises(ValueError, match=r"state\[2\]\['exp_avg'\] has shape \(5, 2\).*\(2, 5\)"):
        opt.load_state_dict(bad)
    assert opt.param_groups[1]["lr"] == 0.5
    np.testing.assert_array_equal(opt.state[params[2]]["exp_avg"], good["state"][2]["exp_avg"])


def test_param_group_errors_and_zero_grad():
    p, q = Parameter(gu.zeros(2)), Parameter(gu.zeros(3))
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": [p]}, {"params": [p, q]}], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        AdamW([p], lr=-1.0)
    opt = SGD([p], lr=0.1)
    opt.add_param_group({"params": [q], "lr": 0.01})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert opt.param_groups[1]["momentum"] == 0.0
    p.grad, q.grad = gu.ones(2), gu.ones(3)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad.data, np.zeros(2))
    opt.zero_grad()
    assert p.grad is None and q.grad is None


# ------------------------------------------------------------------ schedules
def _pair(lr0=0.1, lr1=0.02):
    ours = SGD([{"params": [Parameter(gu.zeros(1))]}, {"params": [Parameter(gu.zeros(1))], "lr": lr1}], lr=lr0)
    theirs = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr1}], lr=lr0)
    return ours, theirs


@pytest.mark.parametrize("kind", ["step", "cosine", "lambda"])
def test_schedulers_match_torch(kind):
    ours, theirs = _pair()
    if kind == "step":
        sched, tsched = StepLR(ours, step_size=7, gamma=0.5), torch.optim.lr_scheduler.StepLR(theirs, 7, gamma=0.5)
    elif kind == "cosine":
        sched = CosineAnnealingLR(ours, T_max=20, eta_min=1e-3)
        tsched = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=20, eta_min=1e-3)
    else:
        fn = lambda e: 0.95**e  # noqa: E731
        sched, tsched = LambdaLR(ours, fn), torch.optim.lr_scheduler.LambdaLR(theirs, fn)
    values, expected = [sched.get_last_lr()], [tsched.get_last_lr()]
    for _ in range(45):  # past T_max, where torch's cosine comes back up
        ours.step()
        theirs.step()
        sched.step()
        tsched.step()
        values.append(sched.get_last_lr())
        expected.append(tsched.get_last_lr())
        assert [g["lr"] for g in ours.param_groups] == values[-1]
    np.testing.assert_allclose(values, expected, rtol=1e-14, atol=0)
    assert len({v[0] for v in values}) > 3


def test_scheduler_state_dict_resumes():
    ours, _ = _pair()
    sched = CosineAnnealingLR(ours, T_max=10)
    for _ in range(4):
        sched.step()
    saved = json.loads(json.dumps(sched.state_dict()))
    expected = [sched.step() or sched.get_last_lr() for _ in range(3)]
    fresh, _ = _pair()
    for g, old in zip(fresh.param_groups, ours.param_groups):
        g["initial_lr"] = old["initial_lr"]
    resumed = CosineAnnealingLR(fresh, T_max=10, last_epoch=3)
    resumed.load_state_dict(saved)
    for g, lr in zip(fresh.param_groups, saved["_last_lr"]):
        g["lr"] = lr
    got = [resumed.step() or resumed.get_last_lr() for _ in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-15)


def _nanogpt_get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """Copied from nanoGPT's train.py (the independent oracle)."""
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate
    if it > lr_decay_iters:
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)


def test_warmup_cosine_matches_nanogpt():
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 10, 100
    for it in range(130):
        assert warmup_cosine_lr(it, lr, min_lr, warmup, decay) == _nanogpt_get_lr(it, lr, min_lr, warmup, decay)
    assert warmup_cosine_lr(0, lr, min_lr, warmup, decay) == pytest.approx(lr / 11)
    assert warmup_cosine_lr(warmup, lr, min_lr, warmup, decay) == pytest.approx(lr)
    assert warmup_cosine_lr(55, lr, min_lr, warmup, decay) == pytest.approx((lr + min_lr) / 2)
    assert warmup_cosine_lr(decay, lr, min_lr, warmup, decay) == pytest.approx(min_lr)
    assert warmup_linear_lr(55, lr, min_lr, warmup, decay) == pytest.approx((lr + min_lr) / 2)
    assert scheduled_lr("constant", 500, lr, min_lr, warmup, decay) == lr
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'exp'"):
        scheduled_lr("exp", 0, lr, min_lr, warmup, decay)


def test_warmup_cosine_scheduler_follows_the_function():
    ours, _ = _pair(lr0=1e-3, lr1=5e-4)
    sched = WarmupCosine(ours, warmup_iters=5, decay_iters=30, min_lr=[1e-4, 5e-5])
    for it in range(40):
        assert ours.param_groups[0]["lr"] == _nanogpt_get_lr(it, 1e-3, 1e-4, 5, 30)
        assert ours.param_groups[1]["lr"] == _nanogpt_get_lr(it, 5e-4, 5e-5, 5, 30)
        ours.step()
        sched.step()


# ------------------------------------------------------------------ clipping
@pytest.mark.parametrize("max_norm, norm_type", [(1.0, 2.0), (1e3, 2.0), (0.5, math.inf), (2.0, 1.0), (0.01, -math.inf),
                                                 (1.0, 0), (1e-3, -1.0), (1.0, 0.5), (0.5, "inf"), ("0.5", 3)])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    grads = [g for g in _gradients()[0] if g is not None] + [np.full((2, 2), 0.25)]
    ours = [Parameter(gu.zeros(*g.shape, dtype=gu.float64)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(*g.shape, dtype=torch.float64)) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = gu.tensor(g.copy(), dtype=gu.float64), torch.from_numpy(g.copy())
    total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert float(total) == pytest.approx(expected.item(), rel=1e-12)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.data, q.grad.numpy(), rtol=1e-12, atol=0)
    clipped = float(max_norm) < expected.item()
    assert clipped == (not np.array_equal(ours[0].grad.data, grads[0]))


def test_clip_grad_norm_of_a_nan_gradient_and_foreach_as_torch():
    """A NaN anywhere makes the total NaN, and torch then multiplies every gradient by NaN (the others were
    left unscaled); ``foreach=`` is part of torch's signature."""
    grads = [np.array([1.0, np.nan, 2.0]), np.array([3.0, 4.0])]
    ours = [Parameter(gu.zeros(*g.shape, dtype=gu.float64)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(*g.shape, dtype=torch.float64)) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = gu.tensor(g.copy(), dtype=gu.float64), torch.from_numpy(g.copy())
    total = clip_grad_norm_(ours, 1.0, foreach=False)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=False)
    assert math.isnan(total) and math.isnan(expected.item())
    for p, q in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad.data, q.grad.numpy())


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.05)),
                                          ("AdamW", dict(lr=0.05, weight_decay=0.1))])
def test_step_takes_torchs_closure(name, kwargs):
    """``opt.step(closure)``: the closure runs first with grad enabled (step itself runs under no_grad),
    zeroes the gradients, backpropagates and returns the loss, which step returns; as torch, step by step."""
    rng = np.random.default_rng(3)
    x, w0 = rng.standard_normal((6, 4)), rng.standard_normal((4, 2))
    ours_w = Parameter(gu.tensor(w0.copy(), dtype=gu.float64))
    theirs_w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    ours, theirs = getattr(gu.optim, name)([ours_w], **kwargs), getattr(torch.optim, name)([theirs_w], **kwargs)

    def our_closure():
        ours.zero_grad()
        loss = ((gu.tensor(x) @ ours_w) ** 2).mean()
        loss.backward()
        return loss

    def their_closure():
        theirs.zero_grad()
        loss = ((torch.from_numpy(x) @ theirs_w) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(4):
        loss, expected = ours.step(our_closure), theirs.step(their_closure)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
        np.testing.assert_allclose(ours_w.data, theirs_w.detach().numpy(), rtol=1e-12, atol=1e-15)
    assert ours.step() is None and theirs.step() is None


@pytest.mark.parametrize("name, kwargs", [("Adam", dict(lr=math.nan)), ("AdamW", dict(lr=math.nan)),
                                          ("Adam", dict(weight_decay=math.nan)), ("AdamW", dict(eps=math.nan)),
                                          ("AdamW", dict(lr=-1e-3)), ("SGD", dict(lr=-0.1))])
def test_optimizers_refuse_the_hyper_parameters_torch_refuses(name, kwargs):
    """A NaN lr, eps or weight decay is refused as torch's Adam and AdamW refuse it (it was accepted, and the
    first step turned every weight into NaN)."""
    with pytest.raises(ValueError, match="Invalid"):
        getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    with pytest.raises(ValueError, match="Invalid"):
        getattr(gu.optim, name)([Parameter(gu.zeros(2))], **kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=math.nan), dict(momentum=math.nan), dict(weight_decay=math.nan)])
def test_sgd_refuses_a_nan_hyper_parameter(kwargs):
    """torch's SGD lets a NaN through (its checks are ``lr < 0``); here it is refused like a negative one."""
    with pytest.raises(ValueError, match="Invalid"):
        SGD([Parameter(gu.zeros(2))], **kwargs)


def test_optimizers_refuse_parameters_in_a_set_as_torch():
    """A set's order changes between runs, so state_dict's numbering would too: torch refuses a set in a group
    (and here a top-level set as well, where torch lets it through); groundup took both."""
    ours, theirs = Parameter(gu.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match="ordering of tensors in sets will change between runs") as expected:
        torch.optim.SGD([{"params": {theirs}}], lr=0.1)
    for params in ([{"params": {ours}}], {ours}, [{"params": frozenset([ours])}]):
        with pytest.raises(TypeError) as info:
            SGD(params, lr=0.1)
        assert str(info.value) == str(expected.value)
    with pytest.raises(ValueError, match="parameter group has no 'params'"):
        SGD([{"lr": 0.1}])


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_load_state_dict_refuses_torchs_maximize(name):
    """A torch state saved with maximize=True loaded silently (its flag copied into the group, unused), and
    the optimizer went on minimising; maximize=False loads as before."""
    theirs = torch.nn.Parameter(torch.ones(3))
    for maximize in (True, False):
        opt = getattr(torch.optim, name)([theirs], lr=0.1, maximize=maximize)
        theirs.grad = torch.ones(3)
        opt.step()
        ours = getattr(gu.optim, name)([Parameter(gu.ones(3))], lr=0.1)
        if maximize:
            with pytest.raises(ValueError, match="group 0 has maximize=True"):
                ours.load_state_dict(opt.state_dict())
            assert ours.state == {}
        else:
            ours.load_state_dict(opt.state_dict())
            assert len(ours.state) == (0 if name == "SGD" else 1)


def test_clip_grad_value_takes_torchs_arguments():
    grads = [np.array([[-3.0, 0.2], [0.7, 5.0]]), np.array([-0.1, -2.0])]
    ours = [Parameter(gu.zeros(*g.shape, dtype=gu.float64)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(*g.shape, dtype=torch.float64)) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = gu.tensor(g.copy(), dtype=gu.float64), torch.from_numpy(g.copy())
    clip_grad_value_(ours, "0.5", foreach=False)
    torch.nn.utils.clip_grad_value_(theirs, "0.5", foreach=False)
    for p, q in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad.data, q.grad.numpy())


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_flat_update_of_small_parameters_equals_one_at_a_time(monkeypatch, amsgrad):
    """The small parameters go through one flat update (``_update_flat``): the same numbers, bit for bit,
    as updating them one at a time, with each one's moments still its own ``state`` entry; loading a
    state dict mid-run (the moments then are new arrays) continues identically."""
    from groundup.optim import adam

    rng = np.random.default_rng(7)
    shapes = [(5, 3), (3,), (7,), (130, 140), (2, 2, 2), (1,)]       # (130, 140) is above FLAT_MAX (4096)
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]

    def run(flat_max, reload_at=None):
        monkeypatch.setattr(adam, "FLAT_MAX", flat_max)
        params = [Parameter(gu.tensor(a.copy())) for a in start]
        opt = AdamW(params, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad)
        for t, gs in enumerate(grads):
            if t == reload_at:
                opt.load_state_dict(opt.state_dict())
            for p, g in zip(params, gs):
                p.grad = gu.tensor(g.copy())
            opt.step()
        return params, opt

    one_at_a_time, _ = run(0)
    flat, opt = run(1 << 12)
    reloaded, _ = run(1 << 12, reload_at=3)
    assert len(opt._flat_buckets) == 1                               # the five small ones, together
    for a, b, c in zip(one_at_a_time, flat, reloaded):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.data, c.data)
    small = flat[0]
    state = opt.state[small]
    assert state["step"] == 6 and state["exp_avg"].shape == small.shape
    assert state["exp_avg"].base is not None                         # a view of the bucket's flat moments
    assert not np.array_equal(flat[0].data, start[0])


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_a_step_between_forward_and_backward_is_refused_as_in_torch(name):
    """The step writes the weights in place: a graph that saved them before it cannot backpropagate
    through the old values any more. torch raises (its version counter); so must we, not use the new ones."""
    torch = pytest.importorskip("torch")
    x = np.ones((2, 3), np.float32)
    w0 = np.full((3, 1), 0.5, np.float32)
    for lib, param, opt_cls in (("torch", torch.nn.Parameter(torch.tensor(w0)), getattr(torch.optim, name)),
                                ("groundup", Parameter(gu.tensor(w0)), {"SGD": SGD, "Adam": Adam,
                                                                         "AdamW": AdamW}[name])):
        inp = torch.tensor(x, requires_grad=True) if lib == "torch" else gu.tensor(x, requires_grad=True)
        opt = opt_cls([param], lr=0.1)
        (inp @ param).sum().backward(retain_graph=True)        # a first backward gives the weight a gradient
        loss = (inp @ param).sum()                             # a graph that saved the weight
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation|modified in place"):
            loss.backward()
    fresh = Parameter(gu.tensor(w0))                               # a graph made after the step is fine
    opt = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name]([fresh], lr=0.1)
    (gu.tensor(x) @ fresh).sum().backward()
    opt.step()
    inp = gu.tensor(x, requires_grad=True)
    (inp @ fresh).sum().backward()
    np.testing.assert_allclose(inp.grad.numpy(), np.broadcast_to(fresh.data.reshape(1, 3), (2, 3)))
