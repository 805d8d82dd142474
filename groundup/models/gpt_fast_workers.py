"""The fused GPT's chunks in worker processes: what a worker is sent, what it runs, and the protocols
of the stems and heads that let each chunk make its own embeddings and loss where it runs.

``TransformerStack`` (``groundup.models.gpt_fast``) sends chunks 1.. of the batch to the workers of
``groundup.parallel.worker_processes`` (``remote_requests``: the arrays; ``remote_forward`` and
``remote_backward``: what a worker runs, by name) and runs chunk 0 itself meanwhile. A stem (``GPT_STEM``
here, ``BERT_STEM`` in ``groundup.models.bert_fast``) makes a chunk's embeddings; a head (``LM_HEAD``
here, ``MLM_HEAD`` there) takes it through the final norm and the loss; so no activations travel
between the processes, only parameters, token ids and gradients.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from groundup.backend import array_module
from groundup.models.gpt_fast_block import (
    PARAM_NAMES,
    chunk_backward,
    chunk_forward,
    chunk_masks,
    fold_layer_norm,
    head_backward,
    head_forward,
    unfold_gradients,
)
from groundup.ops import kernels as K

__all__ = ["EmbeddingStem", "GPT_STEM", "LM_HEAD", "head_impl", "stem_impl", "free_region", "remote_requests",
           "remote_forward", "remote_backward"]


def free_region(worker: Any) -> int:
    """An input region (0 or 1) of ``worker`` that no pending forward's saved chunk still reads; else 2,
    the scratch region, whose inputs the worker then copies."""
    regions = worker.__dict__.get("gpt_regions", {})
    for region in (0, 1):
        ref = regions.get(region)
        if ref is None or ref() is None:
            return region
    return 2


_REMOTE_KEEP = 8              # saved chunks a worker keeps (oldest dropped): forwards whose backward never came


_FOLDED_KEYS = ("qkv.folded", "qkv.folded_bias", "attn.proj.weight", "attn.proj.bias", "fc.folded", "fc.folded_bias",
                  "mlp.proj.weight", "mlp.proj.bias")                        # what a folded block reads


class _LMHead:
    """``TransformerStack``'s GPT head: ln_f folded into lm_head (``fold_layer_norm``), the mean
    next-token loss. The protocol of a head (``head_impl``): ``setup`` once per forward in the calling
    process (its state: params, targets (B*T,), meta, shape), ``shipped`` (the arrays a worker needs),
    ``forward`` / ``backward`` per chunk (in a worker too, with the shipped arrays and the picklable
    meta), and ``finish`` (the summed gradients -> one per head array, in the order they came)."""

    name = f"{__name__}:LM_HEAD"

    @staticmethod
    def setup(head: dict[str, Any], arrays: tuple[Any, ...], shape: tuple[int, int, int]) -> dict[str, Any]:
        """ln_f (weight, bias when has_bias) and lm_head's weight (V, C), folded; the targets (B*T,)
        checked as ``LMHeadLoss`` does."""
        ln_w, ln_b, weight = (arrays[0], arrays[1], arrays[2]) if head["has_bias"] else (arrays[0], None, arrays[1])
        B, T, _ = shape
        V = weight.shape[0]
        t = array_module(weight).asarray(head["targets"]).reshape(B * T)
        bad = (t != -100) & ((t < 0) | (t >= V))
        if bad.any():
            raise IndexError(f"cross_entropy: target {int(t[bad][0])} is out of range for {V} classes")
        params = {"ln.weight": ln_w, "ln.bias": ln_b, "head.weight": weight, "head.bias": None}
        fold_layer_norm(params, "ln", "head", "head")
        return {"params": params, "targets": t, "shape": shape,
                "meta": {"eps": head["eps"], "has_bias": head["has_bias"]}}

    @staticmethod
    def shipped(params: dict[str, Any]) -> dict[str, Any]:
        return {name: params[name] for name in ("head.folded", "head.folded_bias") if params[name] is not None}

    @staticmethod
    def forward(x: Any, params: dict[str, Any], targets: Any, meta: dict[str, Any]) -> tuple[float, int, Any]:
        return head_forward(x, params, targets, meta["eps"], -100)

    @staticmethod
    def backward(scale: float, saved: Any, params: dict[str, Any], meta: dict[str, Any], gx_out: Any) -> dict:
        return head_backward(scale, saved, params, meta["has_bias"], gx_out)

    @staticmethod
    def finish(total: dict[str, Any], state: dict[str, Any]) -> list[Any]:
        unfold_gradients(total, state["params"], "ln", "head")
        return [total["ln.weight"]] + ([total["ln.bias"]] if state["meta"]["has_bias"] else []) + [total["head.weight"]]


LM_HEAD = _LMHead()


class EmbeddingStem:
    """What the embedding stems share (``stem_impl``'s protocol): the state ``setup`` returns, with the
    token ids (and the dropout mask, drawn before the blocks' masks) as the per-chunk inputs; every
    param shipped to the workers; the gradients returned in the order of ``meta["names"]``."""

    @staticmethod
    def state(stem: dict[str, Any], params: dict[str, Any], names: tuple[str, ...], rng: Any, xp: Any,
              **extra: Any) -> dict[str, Any]:
        (B, T), (_, C), dtype = stem["idx"].shape, params["wte"].shape, params["wte"].dtype
        inputs = {"idx": stem["idx"], **extra}
        if stem["dropout_p"] > 0:                                               # drawn before the blocks' masks
            inputs["drop"] = K.dropout_mask(rng, (B, T, C), stem["dropout_p"], dtype, xp)   # (B, T, C)
        return {"params": params, "inputs": inputs, "shape": (B, T, C), "dtype": dtype,
                "meta": {"names": names, **{k: stem[k] for k in ("eps",) if k in stem}}}

    @staticmethod
    def shipped(params: dict[str, Any]) -> dict[str, Any]:
        return params

    @staticmethod
    def finish(total: dict[str, Any], state: dict[str, Any]) -> list[Any]:
        return [total[n] for n in state["meta"]["names"]]


class _GPTStem(EmbeddingStem):
    """``TransformerStack``'s GPT stem (the protocol of ``stem_impl``): a chunk's token ids (b, T) ->
    wte(idx) [+ wpe(0..T-1) | + the sinusoid table] -> dropout, the blocks' input x.

    Backward: wte's gradient is gx (times the dropout mask) summed per id (``K.embedding_grad``),
    wpe's its sum over the chunk's sequences, in its first T rows.
    """

    name = f"{__name__}:GPT_STEM"

    @classmethod
    def setup(cls, stem: dict[str, Any], arrays: tuple[Any, ...], rng: Any, xp: Any) -> dict[str, Any]:
        names = ("wte", "wpe")[:len(arrays)]
        params = dict(zip(names, arrays))
        if stem["table"] is not None:
            params["table"] = stem["table"]                                     # (T, C), no gradient
        return cls.state(stem, params, names, rng, xp)

    @staticmethod
    def forward(inputs: dict[str, Any], params: dict[str, Any], meta: dict[str, Any]) -> tuple[Any, dict]:
        idx = inputs["idx"]
        T = idx.shape[1]
        x = params["wte"][idx]                                                  # (b, T, C) a copy
        if "wpe" in params:
            x += params["wpe"][:T]
        if "table" in params:
            x += params["table"]
        if "drop" in inputs:
            x *= inputs["drop"]
        return x, inputs

    @staticmethod
    def backward(gx: Any, saved: dict[str, Any], params: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        idx = saved["idx"]
        b, T = idx.shape
        C = params["wte"].shape[1]
        g = gx * saved["drop"] if "drop" in saved else gx                      # (b, T, C)
        grads = {"wte": K.embedding_grad(idx.reshape(-1), g.reshape(b * T, C), params["wte"].shape[0])}
        if "wpe" in params:
            grads["wpe"] = np.zeros_like(params["wpe"])
            grads["wpe"][:T] = g.sum(axis=0)                                    # (T, C)
        return grads


GPT_STEM = _GPTStem()


def _impl_named(name: str) -> Any:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def head_impl(head: dict[str, Any]) -> Any:
    """The head protocol object a ``TransformerStack`` head dict names (``head["impl"]``, "module:attr"),
    by default the GPT's (``LM_HEAD``)."""
    return _impl_named(head["impl"]) if head.get("impl") else LM_HEAD


def stem_impl(stem: dict[str, Any]) -> Any:
    """The stem protocol object a ``TransformerStack`` stem dict names (``stem["impl"]``, "module:attr").

    A stem makes each chunk's x where the chunk runs. Its protocol: ``setup(stem, arrays, rng, xp)``
    once per forward in the calling process (its state: params, inputs (a dict of arrays whose first
    axis is the batch, cut per chunk), meta, shape (B, T, C), dtype; dropout masks drawn from ``rng``
    before the blocks' own), ``shipped`` (the params a worker needs), ``forward(inputs, params, meta)``
    -> (x (b, T, C), saved) and ``backward(gx, saved, params, meta)`` -> gradients per chunk, and
    ``finish`` (the summed gradients -> one per stem array, in the order they came).
    """
    if not stem.get("impl"):
        raise ValueError("TransformerStack: a stem needs its protocol, stem['impl'] = 'module:attr'")
    return _impl_named(stem["impl"])


def remote_requests(x: Any, layers: list[dict[str, Any]], opt: dict[str, Any], bias: Any, any_key: Any,
                     drops: list[dict[str, Any]], parts: list[slice], head: dict[str, Any] | None = None,
                     stem: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The arrays each worker needs for chunks 1..: its x (or its stem's inputs and params), every
    layer's (folded) parameters, the rotary tables, its dropout masks, attention bias and key rows."""
    T = x.shape[1] if stem is None else stem["shape"][1]
    keys = _FOLDED_KEYS if opt["fold"] else PARAM_NAMES
    shared = {f"L{i}:{name}": params[name] for i, params in enumerate(layers) for name in keys
              if params.get(name) is not None}
    if opt["rope"] is not None:
        shared["rope.cos"], shared["rope.sin"] = opt["rope"]
    if opt.get("rope_z") is not None:
        shared["rope.z"], shared["rope.zc"] = opt["rope_z"]
    requests = []
    if stem is not None:
        shared.update((f"S:{name}", a) for name, a in stem["impl"].shipped(stem["params"]).items())
    for part in parts[1:]:
        request = dict(shared, x=x[part]) if stem is None else dict(
            shared, **{f"SI:{name}": a[part] for name, a in stem["inputs"].items()})
        for i, masks in enumerate(drops):
            for name, m in chunk_masks(masks, part, T).items():
                request[f"M{i}:{name}"] = m
        if bias is not None:
            request["bias"] = bias[part] if bias.ndim == 4 else bias
        if any_key is not True:
            request["any_key"] = any_key[part]
        if head:                                                                # the worker's chunk goes on to the loss
            request.update((f"H:{name}", a) for name, a in head["impl"].shipped(head["params"]).items())
            request["targets"] = head["targets"][part.start * T:part.stop * T]
        requests.append(request)
    return requests


def remote_forward(state: dict[str, Any], arrays: dict[str, Any], meta: dict[str, Any]) -> tuple[dict, dict]:
    """In a worker: one chunk's forward; keeps its saved activations under meta["key"] for
    ``remote_backward``. The arrays are views of the shared arena; the caller leaves their region
    alone until that backward, or sends them in the scratch region with meta["copy"] (copied here)."""
    n_layer, opt = meta["n_layer"], dict(meta["opt"])
    keep = np.array if meta["copy"] else (lambda a: a)
    layers: list[dict[str, Any]] = [dict.fromkeys(meta["param_keys"]) for _ in range(n_layer)]
    masks: list[dict[str, Any]] = [{} for _ in range(n_layer)]
    for name, a in arrays.items():
        kind, _, rest = name.partition(":")
        if kind.startswith("L"):
            layers[int(kind[1:])][rest] = keep(a)
        elif kind.startswith("M"):
            masks[int(kind[1:])][rest] = keep(a)
    opt["rope"] = (keep(arrays["rope.cos"]), keep(arrays["rope.sin"])) if "rope.cos" in arrays else None
    opt["rope_z"] = (keep(arrays["rope.z"]), keep(arrays["rope.zc"])) if "rope.z" in arrays else None
    stem = meta.get("stem")
    if stem:                                                                    # the chunk's x made here
        impl = _impl_named(stem["impl"])
        sparams = {name[2:]: keep(a) for name, a in arrays.items() if name.startswith("S:")}
        x, ssaved = impl.forward({name[3:]: np.array(a) for name, a in arrays.items() if name.startswith("SI:")},
                                 sparams, stem)
        stem = (impl, sparams, ssaved, stem)
    else:
        x = np.array(arrays["x"])                                               # post-norm saves it
    out = np.empty_like(x)
    saved = chunk_forward(x, layers, opt, arrays.get("bias"), arrays.get("any_key", True), masks, out)
    head = meta.get("head")
    if head:
        impl = _impl_named(head["impl"])
        hparams = {name[2:]: keep(a) for name, a in arrays.items() if name.startswith("H:")}
        nll, count, hsaved = impl.forward(out.reshape(-1, out.shape[-1]), hparams, np.array(arrays["targets"]), head)
        saved = saved + [(impl, hparams, hsaved, head)]
    if opt["save"]:
        state[meta["key"]] = (layers, opt, saved, stem)
        for old in sorted(k for k in state if isinstance(k, int))[:-_REMOTE_KEEP]:
            del state[old]
    return ({}, {"nll": nll, "count": count}) if head else ({"out": out}, {})


def remote_backward(state: dict[str, Any], arrays: dict[str, Any], meta: dict[str, Any]) -> tuple[dict, dict]:
    """In a worker: the backward of the chunk saved under meta["key"]: its gx and parameter gradients."""
    if meta["key"] not in state:
        raise RuntimeError("TransformerStack: this forward's saved chunk was dropped by its worker "
                           f"(it keeps the last {_REMOTE_KEEP}); call backward sooner")
    layers, opt, saved, stem = state.pop(meta["key"])
    opt = dict(opt, alloc=state["alloc"])                                       # NOTE: gradients made in place, no copy
    out = {}
    if "scale" in meta:                                                         # the head's backward first
        (impl, hparams, hsaved, hmeta), saved = saved[-1], saved[:-1]
        b, T, C = saved[-1]["shape"]
        gout = np.empty((b, T, C), dtype=saved[-1]["h1"].dtype)
        hgrads = impl.backward(meta["scale"], hsaved, hparams, hmeta, gout.reshape(b * T, C))
        out.update((f"H:{name}", g) for name, g in hgrads.items() if g is not None)
    else:
        gout = np.array(arrays["gout"])
    gx = state["alloc"](gout.shape, gout.dtype) if stem is None else np.empty_like(gout)
    grads = chunk_backward(gout, saved, layers, opt, gx)
    if stem is None:
        out["gx"] = gx
    else:                                                                       # gx on into the stem, here
        impl, sparams, ssaved, smeta = stem
        out.update((f"S:{name}", g) for name, g in impl.backward(gx, ssaved, sparams, smeta).items())
    for i, layer in enumerate(grads):
        out.update((f"{i}:{name}", g) for name, g in layer.items() if g is not None)
    return out, {}
