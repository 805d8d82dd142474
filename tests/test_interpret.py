"""groundup.interpret against independent oracles.

- the logit lens and direct logit attribution recomputed by hand in NumPy from the weights of a
  1-layer GPT (a picoGPT-style forward: no hooks, no engine);
- the residual decomposition sums to the final stream; DLA's parts sum to the model's logit difference;
- zero-ablating a head (or an MLP) by hook equals zeroing its weights; mean-ablating over the input
  itself with one sequence is a no-op;
- patching: the clean activation into the clean run is a no-op, the clean input everywhere gives 1,
  nothing gives 0, and at the first block only the corrupted position can matter;
- causal tracing: with no noise nothing changes; restoring the last layer's stream at the last
  position restores p(answer) exactly;
- head detectors on patterns built by hand;
- every tool leaves no hook behind, also when it raises.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import groundup as gu
from groundup.interpret import (
    ablate,
    ablation_hooks,
    ablation_table,
    all_parts,
    answer_prob_metric,
    causal_trace,
    direct_logit_attribution,
    head_scores,
    induction_mask,
    lens_losses,
    logit_diff_metric,
    logit_lens,
    patch_heads,
    patch_residual,
    previous_token_mask,
    run_patched,
    score_heads,
)
from groundup.models.attn_only import AttnOnlyConfig, AttnOnlyLM
from groundup.models.deep_stack import DeepStackConfig, DeepStackLM
from groundup.models.gpt import GPT, GPTConfig

V, T = 23, 7


def tiny_gpt(n_layer: int = 2, bias: bool = True, pos: str = "learned", seed: int = 0) -> GPT:
    gu.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=n_layer, n_head=2, n_embd=16, bias=bias,
                          pos_encoding=pos, tie_weights=False))
    rng = np.random.default_rng(seed)
    for p in model.parameters():      # larger random weights than the init, so every part matters
        p.data = rng.normal(0, 0.3, p.shape).astype(np.float64)
    return model.to(dtype=np.float64).eval()


def ids_and_targets(B: int = 1, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def logits_of(model, ids) -> np.ndarray:
    with gu.no_grad():
        return model(ids).numpy()


def no_hooks_left(model) -> bool:
    return all(not point.active for point in model.hook_points().values())


# ----------------------------------------------------------------------------- a NumPy oracle
def layer_norm(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def numpy_forward(model: GPT, ids: np.ndarray) -> dict[str, np.ndarray]:
    """A 1-layer GPT (learned positions, biases) from its weights: streams, each head's output, the MLP's."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items()}
    H, C = 2, p["wte.weight"].shape[1]
    D = C // H
    n = ids.shape[0]
    x = p["wte.weight"][ids] + p["wpe.weight"][:n]                            # (T, C)
    h = layer_norm(x, p["blocks.0.ln_1.weight"], p["blocks.0.ln_1.bias"])
    qkv = h @ p["blocks.0.attn.qkv.weight"].T + p["blocks.0.attn.qkv.bias"]  # (T, 3C)
    q, k, v = np.split(qkv, 3, axis=-1)
    heads = []
    for i in range(H):
        s = q[:, i * D:(i + 1) * D] @ k[:, i * D:(i + 1) * D].T / math.sqrt(D)
        s = np.where(np.tri(n, dtype=bool), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        z = a @ v[:, i * D:(i + 1) * D]                                         # (T, D)
        heads.append(z @ p["blocks.0.attn.proj.weight"][:, i * D:(i + 1) * D].T)  # (T, C)
    mid = x + sum(heads) + p["blocks.0.attn.proj.bias"]
    h2 = layer_norm(mid, p["blocks.0.ln_2.weight"], p["blocks.0.ln_2.bias"])
    f = h2 @ p["blocks.0.mlp.fc.weight"].T + p["blocks.0.mlp.fc.bias"]
    f = 0.5 * f * (1 + np.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f ** 3)))
    mlp = f @ p["blocks.0.mlp.proj.weight"].T + p["blocks.0.mlp.proj.bias"]
    out = mid + mlp
    return {"x": x, "heads": np.stack(heads), "mlp": mlp, "out": out, "p": p}


def lens_by_hand(p, resid):
    z = layer_norm(resid, p["ln_f.weight"], p["ln_f.bias"]) @ p["lm_head.weight"].T
    return z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)


def test_logit_lens_matches_numpy_by_hand():
    model = tiny_gpt(n_layer=1)
    ids, targets = ids_and_targets()
    ref = numpy_forward(model, ids[0])
    lens = logit_lens(model, ids, targets, k=4)
    assert lens.names == ["embed", "blocks.0"]
    assert lens.top_ids.shape == (2, T, 4) and lens.top_probs.shape == (2, T, 4) and lens.loss.shape == (2, T)
    for row, resid in enumerate((ref["x"], ref["out"])):
        logp = lens_by_hand(ref["p"], resid)                                  # (T, V)
        np.testing.assert_allclose(lens.loss[row], -logp[np.arange(T), targets[0]], rtol=1e-9, atol=1e-10)
        np.testing.assert_array_equal(lens.top_ids[row], np.argsort(-logp, axis=-1, kind="stable")[:, :4])
        np.testing.assert_allclose(lens.top_probs[row], np.exp(np.sort(logp, axis=-1)[:, ::-1][:, :4]), rtol=1e-9)
    final = lens_by_hand(ref["p"], ref["out"])
    kl = (np.exp(final) * (final - lens_by_hand(ref["p"], ref["x"]))).sum(-1)
    np.testing.assert_allclose(lens.kl_to_final[0], kl, rtol=1e-9)
    np.testing.assert_allclose(lens.kl_to_final[-1], 0.0, atol=1e-12)
    assert no_hooks_left(model)


def test_logit_lens_last_row_is_the_models_loss():
    model = tiny_gpt(n_layer=3, bias=False, pos="rotary")
    ids, targets = ids_and_targets(B=4)
    losses = lens_losses(model, ids, targets)
    assert losses.shape == (4,)
    np.testing.assert_allclose(losses[-1], float(model.loss(ids, targets).item()), rtol=1e-10)
    lens = logit_lens(model, ids[0], None)
    assert lens.loss is None and lens.names == ["embed", "blocks.0", "blocks.1", "blocks.2"]
    with pytest.raises(ValueError, match="one sequence"):
        logit_lens(model, ids)
    for wrong in (targets[:1], targets[:, :-2]):           # one row for four, or shorter: not broadcast
        with pytest.raises(ValueError, match=r"lens_losses: targets \(\d, \d\) must match idx \(4, 7\)"):
            lens_losses(model, ids, wrong)


def test_accumulated_and_decomposed_residual_stream():
    model = tiny_gpt(n_layer=2, bias=True)
    ids, _ = ids_and_targets(B=2)
    _, cache = model.run_with_cache(ids)
    stack, labels = cache.accumulated_resid()
    assert labels == ["embed", "blocks.0", "blocks.1"] and tuple(stack.shape) == (3, 2, T, 16)
    np.testing.assert_array_equal(stack.numpy()[2], cache["blocks.1.hook_resid_post"].numpy())
    parts, names = cache.decompose_resid()
    assert names == ["embed", "L0H0", "L0H1", "L0attn_bias", "L0MLP", "L1H0", "L1H1", "L1attn_bias", "L1MLP"]
    np.testing.assert_allclose(parts.numpy().sum(0), cache["blocks.1.hook_resid_post"].numpy(), rtol=1e-10, atol=1e-12)
    _, partial = model.run_with_cache(ids, names=["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post",
                                                  "blocks.*.attn.hook_result"])     # no hook_mlp_out
    with pytest.raises(KeyError, match="blocks.0.hook_mlp_out"):   # not a decomposition without the MLPs
        partial.decompose_resid()
    _, first = model.run_with_cache(ids, names=["blocks.0.*", "blocks.*.attn.hook_result", "blocks.*.hook_mlp_out"])
    for method in (first.accumulated_resid, first.decompose_resid):  # block 0 only: not the final stream
        with pytest.raises(KeyError, match="blocks.1.hook_resid_post"):
            method()


def test_decomposition_refuses_post_norm():
    gu.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16, norm="post"))
    _, cache = model.run_with_cache(ids_and_targets()[0])
    with pytest.raises(ValueError, match="not a sum"):
        cache.decompose_resid()


def test_dla_matches_numpy_by_hand_on_one_layer():
    model = tiny_gpt(n_layer=1)
    ids, _ = ids_and_targets()
    ref = numpy_forward(model, ids[0])
    p, t, a, b = ref["p"], 4, 3, 9
    sigma = math.sqrt(ref["out"][t].var() + 1e-5)          # ln_f's scale, frozen at the clean run's value
    direction = p["lm_head.weight"][a] - p["lm_head.weight"][b]

    def share(vec):
        return float((vec - vec.mean()) / sigma * p["ln_f.weight"] @ direction)

    expected = [share(ref["x"][t]), share(ref["heads"][0][t]), share(ref["heads"][1][t]), share(ref["mlp"][t]),
                share(np.broadcast_to(p["blocks.0.attn.proj.bias"], (16,))) + float(p["ln_f.bias"] @ direction)]
    dla = direct_logit_attribution(model, ids, position=t, token=a, other=b)
    assert dla.labels == ["embed", "L0H0", "L0H1", "L0MLP", "bias"]
    np.testing.assert_allclose(dla.values, expected, rtol=1e-9, atol=1e-12)
    logits = lens_by_hand(p, ref["out"])                     # log-probs: differences equal logit differences
    np.testing.assert_allclose(dla.total, logits[t, a] - logits[t, b], rtol=1e-9)
    np.testing.assert_allclose(dla.scale, sigma, rtol=1e-12)


@pytest.mark.parametrize("bias,other", [(True, 5), (False, 5), (False, None)])
def test_dla_parts_sum_to_the_logit_difference(bias, other):
    model = tiny_gpt(n_layer=3, bias=bias, pos="rotary" if not bias else "learned")
    ids, _ = ids_and_targets()
    dla = direct_logit_attribution(model, ids, position=-1, token=2, other=other)
    logits = logits_of(model, ids)[0, -1]
    assert math.isclose(dla.total, logits[2] - (logits[other] if other is not None else 0.0), rel_tol=1e-12)
    np.testing.assert_allclose(dla.values.sum(), dla.total, rtol=1e-9, atol=1e-10)
    assert len(dla.labels) == 1 + 3 * 2 + 3 + (1 if bias else 0) and ("bias" in dla.labels) == bias
    assert dla.top(2)[0][1] == max(dla.values, key=abs)
    assert no_hooks_left(model)


def test_zero_ablating_a_head_equals_zeroing_its_weights():
    model = tiny_gpt(n_layer=2)
    ids, targets = ids_and_targets(B=3)
    result = ablate(model, ids, targets, "L1H0")
    edited = tiny_gpt(n_layer=2)
    edited.blocks[1].attn.proj.weight.data[:, 0:8] = 0.0    # head 0's columns of the output projection (D = 8)
    np.testing.assert_allclose(result.logits, logits_of(edited, ids), rtol=1e-10, atol=1e-12)
    assert math.isclose(result.loss, float(edited.loss(ids, targets).item()), rel_tol=1e-10)
    assert math.isclose(result.clean_loss, float(model.loss(ids, targets).item()), rel_tol=1e-10)
    also_v = tiny_gpt(n_layer=2)                            # ... and zeroing its value weights (z = pattern @ v = 0)
    C = 16
    also_v.blocks[1].attn.qkv.weight.data[2 * C:2 * C + 8] = 0.0
    also_v.blocks[1].attn.qkv.bias.data[2 * C:2 * C + 8] = 0.0
    np.testing.assert_allclose(result.logits, logits_of(also_v, ids), rtol=1e-10, atol=1e-12)
    assert no_hooks_left(model)


def test_zero_ablating_an_mlp_equals_zeroing_its_weights():
    model = tiny_gpt(n_layer=2)
    ids, targets = ids_and_targets(B=2)
    edited = tiny_gpt(n_layer=2)
    edited.blocks[0].mlp.proj.weight.data[:] = 0.0
    edited.blocks[0].mlp.proj.bias.data[:] = 0.0
    np.testing.assert_allclose(ablate(model, ids, targets, "L0MLP").logits, logits_of(edited, ids), rtol=1e-10)


def test_mean_ablation_and_the_table():
    model = tiny_gpt(n_layer=2)
    ids, targets = ids_and_targets(B=1)
    same = ablate(model, ids, targets, ["L0H1", "L1MLP", "P2"], kind="mean")   # the mean over one sequence is itself
    assert abs(same.delta) < 1e-12
    other, _ = ids_and_targets(B=6, seed=5)
    mean = ablate(model, ids, targets, "L0H1", kind="mean", mean_over=other)
    assert mean.delta != 0.0
    table = ablation_table(model, ids, targets)
    assert list(table) == all_parts(model) == ["L0H0", "L0H1", "L0MLP", "L1H0", "L1H1", "L1MLP"]
    assert math.isclose(table["L1H0"], ablate(model, ids, targets, "L1H0").delta)
    position = ablate(model, ids, targets, "P3")            # the input at position 3 only changes later positions
    clean = logits_of(model, ids)
    np.testing.assert_allclose(position.logits[:, :3], clean[:, :3], rtol=1e-12)
    assert not np.allclose(position.logits[:, 3:], clean[:, 3:])
    with pytest.raises(ValueError, match="unknown part"):
        ablate(model, ids, targets, "L0X1")
    with pytest.raises(ValueError, match="2 layers"):
        ablate(model, ids, targets, "L5H0")
    with pytest.raises(ValueError, match=rf"part 'P99': the input has {ids.shape[1]} positions"):
        ablate(model, ids, targets, "P99")
    assert no_hooks_left(model)


def test_patching_endpoints_and_first_block():
    model = tiny_gpt(n_layer=2)
    clean, _ = ids_and_targets(B=1)
    corrupted = clean.copy()
    corrupted[0, 2] = (corrupted[0, 2] + 1) % V
    metric = logit_diff_metric(3, 7)
    _, clean_cache = model.run_with_cache(clean)
    everywhere = run_patched(model, corrupted, clean_cache, [("blocks.0.hook_resid_pre", (slice(None), slice(None)))])
    np.testing.assert_allclose(everywhere, logits_of(model, clean), rtol=1e-12)          # clean everywhere: 1
    noop = run_patched(model, clean, clean_cache, [("blocks.1.hook_resid_pre", (slice(None), 4)),
                                                   ("blocks.0.attn.hook_z", (slice(None), 1))])
    np.testing.assert_allclose(noop, logits_of(model, clean), rtol=1e-13, atol=1e-14)    # clean into clean: no-op
    resid = patch_residual(model, clean, corrupted, metric)
    assert resid.values.shape == (2, T) and resid.rows == ["blocks.0", "blocks.1"]
    np.testing.assert_allclose(resid.values[0], np.eye(T)[2], atol=1e-9)               # block 0: only position 2
    assert math.isclose(resid.clean, metric(logits_of(model, clean))) and math.isclose(
        resid.corrupted, metric(logits_of(model, corrupted)))
    heads = patch_heads(model, clean, corrupted, metric)
    assert heads.values.shape == (2, 2) and heads.cols == ["H0", "H1"]
    _, corrupt_cache = model.run_with_cache(corrupted)
    nothing = run_patched(model, corrupted, corrupt_cache, [("blocks.1.attn.hook_z", (slice(None), 0))])
    assert math.isclose(metric(nothing), resid.corrupted, rel_tol=1e-12)               # nothing patched: 0
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="same shape"):
        patch_residual(model, clean, corrupted[:, :-1], metric)
    for bad, message in ((logit_diff_metric(-1, 7), "answer -1 outside the vocabulary"),   # not token V - 1
                         (logit_diff_metric(3, V), f"wrong {V} outside the vocabulary of {V}"),
                         (answer_prob_metric(-2), "answer -2 outside the vocabulary"),
                         (answer_prob_metric(3, position=T), f"position {T} outside a sequence of {T}")):
        with pytest.raises(ValueError, match=message):
            patch_residual(model, clean, corrupted, bad)
    assert no_hooks_left(model)


def test_causal_trace_endpoints():
    model = tiny_gpt(n_layer=2)
    ids, _ = ids_and_targets()
    answer = int(logits_of(model, ids)[0, -1].argmax())
    trace = causal_trace(model, ids, subject=[1, 2], answer=answer, samples=4)
    assert trace.resid.shape == trace.mlp.shape == trace.attn.shape == (2, T)
    assert trace.p_corrupted != trace.p_clean
    assert math.isclose(trace.resid[-1, -1], trace.p_clean, rel_tol=1e-9)    # the last stream decides
    np.testing.assert_allclose(trace.resid[0, :1], trace.p_corrupted, rtol=1e-9)   # before the subject: no change
    quiet = causal_trace(model, ids, subject=[1, 2], answer=answer, noise=0.0, samples=2)
    np.testing.assert_allclose([quiet.p_corrupted, *quiet.mlp.ravel()], quiet.p_clean, rtol=1e-9)
    np.testing.assert_allclose(trace.indirect_effect("mlp"), trace.mlp - trace.p_corrupted)
    assert no_hooks_left(model)


def test_head_detectors_on_patterns_built_by_hand():
    ids = np.array([[5, 6, 7, 8, 5, 6, 7, 8]])
    B, n = ids.shape
    previous = np.eye(n, k=-1)
    previous[0, 0] = 1.0
    induction = np.zeros((n, n))
    for t in range(n):
        induction[t, t - 3 if t >= 4 else t] = 1.0                           # key after the earlier copy
    patterns = np.stack([previous, induction])[None, None]                   # (L=1, B=1, H=2, T, T)
    prev_scores = score_heads(patterns, previous_token_mask(ids))
    ind_scores = score_heads(patterns, induction_mask(ids))
    np.testing.assert_allclose(prev_scores, [[1.0, 0.0]])
    np.testing.assert_allclose(ind_scores, [[0.0, 1.0]])
    assert induction_mask(ids)[0, 4].nonzero()[0].tolist() == [1]


def test_head_scores_of_a_model():
    model = tiny_gpt(n_layer=2)
    ids = np.tile(np.arange(5), (2, 2))                                       # (2, 10), repeated
    scores = head_scores(model, ids)
    assert set(scores) == {"previous_token", "duplicate_token", "induction", "first_token"}
    assert all(v.shape == (2, 2) and np.all((v >= 0) & (v <= 1 + 1e-12)) for v in scores.values())
    maps = model.attention_maps(ids)                                          # (L, B, H, T, T)
    np.testing.assert_allclose(scores["previous_token"], maps[:, :, :, np.arange(1, 10), np.arange(9)].mean(-1).mean(1))
    assert no_hooks_left(model)


def test_hooks_removed_when_a_tool_raises():
    model = tiny_gpt(n_layer=2)
    ids, targets = ids_and_targets(B=2)
    with pytest.raises(ValueError, match="as long as"):
        ablate(model, ids, targets, "L0H0", kind="mean", mean_over=ids[:, :-2])
    assert no_hooks_left(model)

    def broken(logits):
        raise RuntimeError("metric failed")
    corrupted = ids.copy()
    corrupted[:, 0] = (corrupted[:, 0] + 1) % V
    with pytest.raises(RuntimeError, match="metric failed"):
        patch_residual(model, ids, corrupted, broken)
    assert no_hooks_left(model)
    with pytest.raises(ValueError):
        with model.hooks(ablation_hooks(model, "L0H1")):
            raise ValueError("inside")
    assert no_hooks_left(model)
    assert model.training is False


def test_tools_restore_the_training_mode():
    model = tiny_gpt(n_layer=1).train()
    ids, targets = ids_and_targets()
    logit_lens(model, ids, targets)
    ablate(model, ids, targets, "L0H0")
    assert model.training is True
    model.blocks[0].attn.eval()                             # a mixed state (one part frozen) comes back as it was
    direct_logit_attribution(model, ids, -1, 3)
    head_scores(model, ids)
    assert model.training is True and model.blocks[0].mlp.training is True
    assert model.blocks[0].attn.training is False and model.blocks[0].attn.qkv.training is False
    assert gu.is_grad_enabled()


def test_attention_only_and_deep_stack_models():
    gu.manual_seed(0)
    size = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=16)
    attn = AttnOnlyLM(AttnOnlyConfig(**size)).to(dtype=np.float64)
    deep = DeepStackLM(DeepStackConfig(**size)).to(dtype=np.float64)
    ids, targets = ids_and_targets(B=2)
    for model in (attn, deep):
        lens = logit_lens(model, ids[0], targets[0])
        assert lens.names == ["embed", "blocks.0", "blocks.1"]
        np.testing.assert_allclose(np.nanmean(lens_losses(model, ids, targets)[-1]),
                                   float(model.loss(ids, targets).item()), rtol=1e-10)
        dla = direct_logit_attribution(model, ids[0], position=-1, token=1, other=2)
        np.testing.assert_allclose(dla.values.sum(), dla.total, rtol=1e-8, atol=1e-10)
        assert head_scores(model, ids)["induction"].shape == (2, 2)
        assert ablate(model, ids, targets, "L1H1").loss > 0
        assert no_hooks_left(model)
    assert all_parts(attn) == ["L0H0", "L0H1", "L1H0", "L1H1"]
    with pytest.raises(ValueError, match="no MLP"):
        ablate(attn, ids, targets, "L0MLP")
    trace = causal_trace(attn, ids[0], subject=[0], answer=1, samples=2)
    assert np.isnan(trace.mlp).all() and not np.isnan(trace.attn).any()


def test_ablation_hooks_keep_the_gradient_of_the_parts_left_alone():
    model = tiny_gpt(n_layer=2)
    ids, targets = ids_and_targets(B=2)
    with model.hooks(ablation_hooks(model, "L1H0")):
        model.loss(ids, targets).backward()
    edited = tiny_gpt(n_layer=2)                            # the same function: head 0's value weights zeroed
    C = 16
    edited.blocks[1].attn.qkv.weight.data[2 * C:2 * C + 8] = 0.0
    edited.blocks[1].attn.qkv.bias.data[2 * C:2 * C + 8] = 0.0
    edited.loss(ids, targets).backward()
    grads = dict(model.named_parameters())
    for name, p in edited.named_parameters():
        if name.startswith("blocks.1.attn.qkv"):            # the zeroed weights themselves differ
            continue
        assert grads[name].grad is not None, name
        np.testing.assert_allclose(grads[name].grad.numpy(), p.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    assert no_hooks_left(model)


def test_empty_inputs_and_causal_trace_arguments_are_refused_by_name():
    model = tiny_gpt(n_layer=2)
    ids, targets = ids_and_targets()
    empty = ids[:, :0]
    metric = logit_diff_metric(3, 7)
    calls = {"logit_lens": lambda: logit_lens(model, empty), "ablate": lambda: ablate(model, empty, empty, "L0H0"),
             "head_scores": lambda: head_scores(model, empty),
             "activation_patching": lambda: patch_residual(model, empty, empty, metric),
             "causal_trace": lambda: causal_trace(model, empty, subject=[0], answer=1)}
    for tool, call in calls.items():
        with pytest.raises(ValueError, match=rf"{tool}: .*empty"):
            call()
    with pytest.raises(ValueError, match=rf"subject position 10 outside a prompt of {T}"):
        causal_trace(model, ids, subject=[10], answer=1)      # not position 10 % T
    assert causal_trace(model, ids, subject=[-1], answer=1, samples=1).subject == [T - 1]
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        causal_trace(model, ids, subject=[1], answer=1, samples=0)
    with pytest.raises(ValueError, match=f"answer {V} outside the vocabulary of {V}"):
        causal_trace(model, ids, subject=[1], answer=V)
    with pytest.raises(ValueError, match="answer -1 outside the vocabulary"):
        causal_trace(model, ids, subject=[1], answer=-1)
    assert no_hooks_left(model)


def test_an_unknown_hook_name_lists_the_valid_ones():
    model = tiny_gpt(n_layer=2)
    ids, _ = ids_and_targets()
    with pytest.raises(KeyError) as err:
        model.run_with_cache(ids, names="blocks.0.hook_resid_psot")
    message = str(err.value)
    assert "'blocks.0.hook_resid_psot' (did you mean ['blocks.0.hook_resid_post'" in message
    for kind in ("hook_embed", "blocks.{i}.hook_resid_pre", "blocks.{i}.hook_mlp_out", "blocks.{i}.attn.hook_pattern",
                 "ln_f.hook_normalized"):                   # every kind of hook point, not the first few
        assert repr(kind) in message
    assert message.endswith("with i in 0..1\"")
    assert len(model.run_with_cache(ids, names=[])[1]) == 0 < len(model.run_with_cache(ids)[1])   # [] is no names
    with pytest.raises(KeyError, match="no hook point matches 'blocks.9.hook_x'; its hook points"), \
            model.hooks({"blocks.9.hook_x": lambda a, h: None}):
        pass
    assert no_hooks_left(model)


def test_targets_outside_the_vocabulary_are_refused_and_only_minus_100_is_ignored():
    model = tiny_gpt(n_layer=1)
    ids, targets = ids_and_targets()
    V = model.cfg.vocab_size
    for bad in (-5, V):
        wrong = targets.copy()
        wrong[0, 1] = bad
        with pytest.raises(IndexError, match=f"target {bad} is outside the vocabulary 0..{V - 1}"):
            ablate(model, ids, wrong, "L0H0")
        with pytest.raises(IndexError, match=f"target {bad}"):
            logit_lens(model, ids, wrong)
    ignored = targets.copy()
    ignored[0, 1] = -100
    assert np.isfinite(ablate(model, ids, ignored, "L0H0").loss)


def test_run_with_cache_takes_a_filter_function_of_the_names():
    model = tiny_gpt()
    ids, _ = ids_and_targets()
    _, cache = model.run_with_cache(ids, names=lambda name: name.endswith("hook_pattern"))
    assert sorted(cache.keys()) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    _, by_glob = model.run_with_cache(ids, names="blocks.*.attn.hook_pattern")
    assert np.array_equal(cache["blocks.1.attn.hook_pattern"].numpy(), by_glob["blocks.1.attn.hook_pattern"].numpy())


def test_a_position_or_token_that_is_not_an_integer_is_a_type_error():
    model = tiny_gpt(n_layer=1)
    ids, _ = ids_and_targets()
    with pytest.raises(TypeError, match="direct_logit_attribution: token must be an integer, got 1.7"):
        direct_logit_attribution(model, ids[0], 0, 1.7)
    with pytest.raises(TypeError, match="direct_logit_attribution: position must be an integer"):
        direct_logit_attribution(model, ids[0], 0.5, 1)
    assert direct_logit_attribution(model, ids[0], np.int64(-1), np.int64(3)) is not None   # NumPy integers are fine
    with gu.no_grad():
        logits = model(ids).numpy()
    with pytest.raises(TypeError, match="logit_diff_metric: answer must be an integer"):
        logit_diff_metric(2.0, 3)(logits)
