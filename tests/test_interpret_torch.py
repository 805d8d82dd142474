"""groundup.interpret against the same quantities measured with PyTorch forward hooks on the
PyTorch twin (``groundup.interop.torch_gpt.TorchGPT``) with copied weights, in float64: the logit
lens, a zero-ablated head, a residual-stream patching map and a head-output patching map."""

from __future__ import annotations

import numpy as np
import pytest

import groundup as gu
from groundup.interpret import ablate, logit_diff_metric, logit_lens, patch_heads, patch_residual
from groundup.models.gpt import GPT, GPTConfig

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from groundup.interop.torch_gpt import TorchGPT  # noqa: E402

V, T, H, C = 19, 6, 2, 16


@pytest.fixture(scope="module")
def twins():
    gu.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=H, n_embd=C, bias=True, tie_weights=False)
    ours = GPT(cfg).to(dtype=np.float64).eval()
    rng = np.random.default_rng(0)
    for p in ours.parameters():
        p.data = rng.normal(0, 0.3, p.shape)
    theirs = TorchGPT(cfg).double().eval()
    theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
    return ours, theirs


def test_logit_lens_matches_torch_forward_hooks(twins):
    ours, theirs = twins
    ids = np.random.default_rng(1).integers(0, V, (1, T))
    streams = []
    handles = [theirs.blocks[0].register_forward_pre_hook(lambda m, args: streams.append(args[0].clone()))]
    handles += [b.register_forward_hook(lambda m, args, out: streams.append(out.clone())) for b in theirs.blocks]
    try:
        with torch.no_grad():
            theirs(torch.from_numpy(ids))
            logp = torch.log_softmax(theirs.lm_head(theirs.ln_f(torch.stack(streams))), dim=-1).numpy()[:, 0]
    finally:
        for h in handles:
            h.remove()
    targets = np.random.default_rng(2).integers(0, V, (1, T))
    lens = logit_lens(ours, ids, targets, k=3)
    np.testing.assert_allclose(lens.loss, -np.take_along_axis(logp, targets[0][None, :, None], -1)[..., 0], rtol=1e-10)
    np.testing.assert_array_equal(lens.top_ids, np.argsort(-logp, axis=-1, kind="stable")[..., :3])


def test_zero_ablated_head_matches_torch(twins):
    ours, theirs = twins
    ids = np.random.default_rng(3).integers(0, V, (2, T))
    D = C // H

    def drop_head(module, args):                    # proj's input is the heads side by side (B, T, C)
        y = args[0].clone()
        y[..., D:2 * D] = 0.0                       # head 1
        return (y,)
    handle = theirs.blocks[0].attn.proj.register_forward_pre_hook(drop_head)
    try:
        with torch.no_grad():
            expected = theirs(torch.from_numpy(ids)).numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(ablate(ours, ids, np.zeros_like(ids), "L0H1").logits, expected, rtol=1e-10, atol=1e-12)


def test_patching_maps_match_torch(twins):
    ours, theirs = twins
    clean = np.random.default_rng(4).integers(0, V, (1, T))
    corrupted = clean.copy()
    corrupted[0, 1] = (corrupted[0, 1] + 3) % V
    answer, wrong = 2, 5

    def metric_of(logits):
        return float(logits[0, -1, answer] - logits[0, -1, wrong])

    def run(ids, pre_hooks):
        handles = [module.register_forward_pre_hook(fn) for module, fn in pre_hooks]
        try:
            with torch.no_grad():
                return theirs(torch.from_numpy(ids)).numpy()
        finally:
            for h in handles:
                h.remove()

    recorded = {}
    D = C // H
    record = [(b, lambda m, a, i=i: recorded.__setitem__(("resid", i), a[0].clone()))
              for i, b in enumerate(theirs.blocks)]
    record += [(b.attn.proj, lambda m, a, i=i: recorded.__setitem__(("z", i), a[0].clone()))
               for i, b in enumerate(theirs.blocks)]
    m_clean, m_corrupt = metric_of(run(clean, record)), metric_of(run(corrupted, []))

    def patch(kind, layer, where):
        def fn(module, args):
            x = args[0].clone()
            x[where] = recorded[(kind, layer)][where]
            return (x, *args[1:])                   # a block also takes (causal, cache, rope)
        return fn
    resid = np.array([[(metric_of(run(corrupted, [(theirs.blocks[l], patch("resid", l, (slice(None), t)))]))
                        - m_corrupt) / (m_clean - m_corrupt) for t in range(T)] for l in range(2)])
    heads = np.array([[(metric_of(run(corrupted, [(theirs.blocks[l].attn.proj,
                                                   patch("z", l, (..., slice(h * D, (h + 1) * D))))]))
                        - m_corrupt) / (m_clean - m_corrupt) for h in range(H)] for l in range(2)])
    metric = logit_diff_metric(answer, wrong)
    np.testing.assert_allclose(patch_residual(ours, clean, corrupted, metric).values, resid, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(patch_heads(ours, clean, corrupted, metric).values, heads, rtol=1e-8, atol=1e-10)
