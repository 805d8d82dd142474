"""FastGPT: the readable ``GPT``'s twin for training, with the block stack and the head + loss fused.

Same parameters, same ``state_dict`` keys, same maths as ``groundup.models.gpt.GPT`` (tested equal in
float64, dropout included: the masks are drawn in the same order from the same generator); a
checkpoint loads into either class. ``groundup train``, ``sample`` and ``bench`` use this one;
hooks and interpretability use ``GPT`` (``FastGPT`` refuses hooks rather than skip them).

Why fuse: composed from engine ops a GPT block is ~40 graph nodes that each allocate their output and
their gradient. Here the forward and backward of the whole stack are written over raw arrays with
2-D ``(B*T, C)`` GEMMs and in-place elementwise work (the kernels of ``groundup.ops.kernels``). Inside
``groundup.parallel.cpu_threads()`` the batch is split into one chunk per thread and each chunk goes
through every block, forward and then backward, so a step waits for the others twice instead of
twice per block: chunk 0 in the calling thread, the others in the context's worker processes (where
the platform forks; else in its threads). Outside that context everything runs in the calling thread.
With worker processes each chunk also makes its own embeddings first (``GPT_STEM``) and goes on
through ln_f, lm_head and the loss after (``LM_HEAD``), so that no activations travel between them.

    pre-norm:   x = x + drop(proj(attention(ln_1(x))));   x = x + drop(mlp(ln_2(x)))
    post-norm:  x = ln_1(x + drop(proj(attention(x))));   x = ln_2(x + drop(mlp(x)))
    attention:  q, k, v = split(x @ qkv.T + b);  (rotary on q, k);  drop(softmax(q k^T / sqrt(D) + mask)) v
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np

from groundup import random
from groundup.backend import array_module
from groundup.function import Function
from groundup.models import gpt_fast_workers as workers_impl
from groundup.models.gpt import GPT
from groundup.models.gpt_fast_block import (
    PARAM_NAMES,
    chunk_backward,
    chunk_forward,
    chunk_masks,
    complex_rope,
    draw_dropout,
    fold_layer_norm,
    head_backward,
    head_forward,
    interleaved_rows,
    rotary_tables,
    sum_dicts,
    unfold_gradients,
)
from groundup.models.gpt_fast_workers import GPT_STEM, free_region, head_impl, remote_requests, stem_impl
from groundup.models.shared import check_token_ids
from groundup.ops import kernels as K
from groundup.parallel import chunks, parallel_map, split_work, worker_processes
from groundup.tensor import Tensor

__all__ = ["FastGPT", "TransformerStack", "LMHeadLoss", "PARAM_NAMES"]


class FastGPT(GPT):
    """``GPT`` with fused kernels: ``forward`` and ``loss`` give the readable model's numbers, faster."""

    # inside ``groundup.parallel.cpu_threads`` its stack splits the batch over threads / worker processes
    # (the Trainer then keeps BLAS on one thread for the whole run: ``groundup.parallel.split_work``)
    splits_work = True

    def hooks(self, fns: Any):  # type: ignore[override]
        raise TypeError("FastGPT runs fused kernels and has no hook points; use the readable twin: "
                        "GPT.load(run_dir) or model.as_class(GPT)")

    def run_with_cache(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.hooks({})

    def stack(self, x: Tensor | None, mask: Tensor | None, head: dict[str, Any] | None = None,
              head_arrays: list[Tensor] = (), stem: dict[str, Any] | None = None,
              stem_arrays: list[Tensor] = ()) -> Tensor:
        """Every block at once: x (B, T, C) -> (B, T, C); ``for block in self.blocks: x = block(x, mask)``.
        With ``head`` (see ``TransformerStack``): the mean loss of ln_f, lm_head after them; with ``stem``
        (x None): the embeddings before them, made per chunk (``GPT_STEM``)."""
        cfg = self.cfg
        params = [p for block in self.blocks for p in _block_parameters(block, cfg.bias)]
        first = [x] if stem is None else list(stem_arrays)
        T = x.shape[1] if stem is None else stem["idx"].shape[1]
        tables = self._rope_tables(T, first[0].dtype) if cfg.pos_encoding == "rotary" else None
        p = cfg.dropout if self.training else 0.0
        return TransformerStack.apply(
            *first, *params, *head_arrays, head=head, stem=stem, n_head=cfg.n_head, causal=cfg.causal,
            pre_norm=cfg.norm == "pre", eps=self.blocks[0].ln_1.eps, rope_tables=tables,
            mask=None if mask is None else mask.data, dropout_p=p, rng=random.generator() if p > 0 else None,
            has_bias=cfg.bias)                                                  # (B, T, C)

    def _rope_tables(self, T: int, dtype: Any) -> tuple[Any, Any]:
        """The rotary tables of ``TransformerStack`` for T positions, kept while the rotary buffers stay."""
        rotary = self.blocks[0].attn.rotary
        key = (rotary.cos_cached.data, rotary.sin_cached.data, T, np.dtype(dtype).str)
        cached = self.__dict__.get("_rope_cache")
        if cached is None or any(a is not b for a, b in zip(cached[0][:2], key[:2])) or cached[0][2:] != key[2:]:
            cos, sin = (t[:T].astype(dtype) for t in key[:2])
            cached = (key, rotary_tables(cos, sin, self.cfg.n_head))
            self.__dict__["_rope_cache"] = cached
        return cached[1]

    def forward(self, idx: Any, attention_mask: Any = None) -> Tensor:
        x, mask = self.embed(idx, attention_mask)                               # (B, T, C)
        return self.lm_head(self.ln_f(self.stack(x, mask)))                     # (B, T, V)

    def loss(self, idx: Any, targets: Any, attention_mask: Any = None) -> Tensor:
        """Mean next-token cross-entropy (-100 = ignore): ln_f, lm_head and the loss as one fused op."""
        t = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if tuple(t.shape) == tuple(np.shape(idx.data if isinstance(idx, Tensor) else idx)) and t.dtype.kind in "iu":
            x, loss = self._loss_in_workers(idx, t, attention_mask)
            if loss is not None:
                return loss
        else:
            x = self.stack(*self.embed(idx, attention_mask))                    # (B, T, C)
        if tuple(t.shape) != tuple(x.shape[:2]):
            raise ValueError(f"FastGPT.loss: targets {tuple(t.shape)} must match idx {tuple(x.shape[:2])}")
        if t.dtype.kind not in "iu":
            raise TypeError(f"FastGPT.loss: targets must be integer token ids, got dtype {t.dtype}")
        ln = [self.ln_f.weight] + ([self.ln_f.bias] if self.ln_f.bias is not None else [])
        return LMHeadLoss.apply(x, *ln, self.lm_head.weight, targets=array_module(x.data).asarray(t),
                                eps=self.ln_f.eps, has_bias=self.ln_f.bias is not None)

    def _loss_in_workers(self, idx: Any, t: Any, attention_mask: Any) -> Tensor | None:
        """The stack, ln_f, lm_head and the loss as one op when its chunks go to worker processes (each
        then takes its chunk through the head too: no stack output to send back); else None."""
        ids = np.shape(idx.data if isinstance(idx, Tensor) else idx)
        if (array_module(self.wte.weight.data) is not np or len(ids) != 2 or len(chunks(ids[0])) < 2
                or not worker_processes()):
            return self.stack(*self.embed(idx, attention_mask)), None
        stem, stem_arrays, mask = self._stem(idx, attention_mask)
        ln = [self.ln_f.weight] + ([self.ln_f.bias] if self.ln_f.bias is not None else [])
        head = dict(targets=np.asarray(t), eps=self.ln_f.eps, has_bias=self.ln_f.bias is not None,
                    n_arrays=len(ln) + 1)
        return None, self.stack(None, mask, head=head, head_arrays=[*ln, self.lm_head.weight], stem=stem,
                                stem_arrays=stem_arrays)

    def _stem(self, idx: Any, attention_mask: Any) -> tuple[dict[str, Any], list[Tensor], Tensor | None]:
        """``embed`` as the stack's stem (``GPT_STEM``): (the stem dict, its arrays, the attention mask),
        the ids checked as ``embed`` checks them."""
        cfg = self.cfg
        ids = np.asarray(check_token_ids(idx, type(self).__name__, "idx", cfg.block_size, cfg.vocab_size))
        B, T = ids.shape
        arrays = [self.wte.weight] + ([self.wpe.weight] if cfg.pos_encoding == "learned" else [])
        table = self.wpe_table.pe.data[:T].astype(self.wte.weight.dtype) if cfg.pos_encoding == "sinusoidal" else None
        stem = dict(impl=GPT_STEM.name, idx=ids, table=table, dropout_p=cfg.dropout if self.training else 0.0,
                    n_arrays=len(arrays))
        return stem, arrays, self._attention_mask(attention_mask, B, T, np)


def _block_parameters(block: Any, bias: bool) -> list[Tensor]:
    """A block's parameters in ``PARAM_NAMES`` order, read by attribute (cheaper than ``named_parameters``)."""
    a, m = block.attn, block.mlp
    params = [block.ln_1.weight, block.ln_1.bias, a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias,
              block.ln_2.weight, block.ln_2.bias, m.fc.weight, m.fc.bias, m.proj.weight, m.proj.bias]
    return params if bias else params[0::2]


COMPLEX_ROPE = True           # rotary as one complex multiply on NumPy (``complex_rope``); False: the real form


_REMOTE_KEYS = itertools.count()


class TransformerStack(Function):
    """A stack of GPT blocks, fused: x (B, T, C) and every block's parameters -> (B, T, C).

    Inputs: x, then for each block its parameters in ``PARAM_NAMES`` order (without the biases when
    ``has_bias`` is False). Options: n_head, causal, pre_norm, eps, rope ((cos, sin) each (T, D) or
    None; or ``rope_tables``, the same made by ``rotary_tables``), mask ((B, 1, T, T) bool, True = may
    attend, the causal mask folded in; or None), dropout_p and rng (the generator of the dropout masks),
    activation ('tanh': GELU's tanh form, as GPT-2; 'erf': the exact GELU, as BERT).
    ``head``: a dict (targets, its options, ``n_arrays``: how many of the last inputs are the head's
    arrays, ``impl``: "module:attr" of its protocol, by default the GPT's ``LM_HEAD``): then each chunk
    goes on through the head to its loss where it ran, and the op returns the mean loss (0-d).
    ``stem``: a dict (its inputs, options, ``n_arrays``: how many of the first inputs are the stem's
    arrays, which then stand where x would, ``impl``: "module:attr" of its protocol, see ``stem_impl``):
    each chunk's x is made where the chunk runs (the embeddings: ``GPT_STEM``, ``bert_fast.BERT_STEM``),
    and the op returns the stem arrays' gradients instead of x's.
    """

    def forward(self, x, *param_arrays, n_head: int = 1, causal: bool = True, pre_norm: bool = True,
                eps: float = 1e-5, rope: tuple[Any, Any] | None = None, mask: Any = None, dropout_p: float = 0.0,
                rng: Any = None, has_bias: bool = True, rope_tables: tuple[Any, Any] | None = None,
                head: dict[str, Any] | None = None, activation: str = "tanh", stem: dict[str, Any] | None = None):
        if activation not in ("tanh", "erf"):
            raise ValueError(f"TransformerStack: activation must be 'tanh' (GELU's tanh form) or 'erf' (exact), "
                             f"got {activation!r}")
        xp = array_module(x)
        names = PARAM_NAMES if has_bias else PARAM_NAMES[0::2]
        head_arrays = param_arrays[len(param_arrays) - head["n_arrays"]:] if head else ()
        param_arrays = param_arrays[:len(param_arrays) - len(head_arrays)]
        self.stem, stem_arrays = None, ()
        if stem:                                                                # x is the stem's first array
            impl = stem_impl(stem)
            stem_arrays, param_arrays = (x, *param_arrays)[:stem["n_arrays"]], (x, *param_arrays)[stem["n_arrays"]:]
            self.stem = dict(impl.setup(stem, stem_arrays, rng, xp), impl=impl)
            self.stem["saved"] = []
        B, T, C = x.shape if stem is None else self.stem["shape"]
        dtype = x.dtype if stem is None else self.stem["dtype"]
        if not param_arrays or len(param_arrays) % len(names):
            raise RuntimeError(f"TransformerStack: expected {len(names)} parameters per block, got {len(param_arrays)}")
        # NOTE: folding costs weight-sized work once per call, and saves row-sized work: it pays from
        # about 4 C rows (not for a generated token's forward)
        fold = pre_norm and B * T >= 4 * C
        layers = []
        for i in range(0, len(param_arrays), len(names)):
            params = dict.fromkeys(PARAM_NAMES)
            params.update(zip(names, param_arrays[i:i + len(names)]))
            layers.append(params)
            if fold:
                fold_layer_norm(params, "ln_1", "attn.qkv", "qkv")
                fold_layer_norm(params, "ln_2", "mlp.fc", "fc")
        tables = rope_tables if rope is None else rotary_tables(rope[0], rope[1], n_head)  # each (T, 2, H, D)
        rope_z = complex_rope(*tables) if tables is not None and xp is np and COMPLEX_ROPE else None
        if rope_z is not None:                                                  # q's, k's pairs side by side
            order = interleaved_rows(n_head, C)[0]
            w, b = ("qkv.folded", "qkv.folded_bias") if fold else ("attn.qkv.weight", "attn.qkv.bias")
            for params in layers:
                params[w] = params[w][order]
                params[b] = None if params[b] is None else params[b][order]
        opt = dict(n_head=n_head, pre_norm=pre_norm, fold=fold, eps=eps, rope=tables, has_bias=has_bias,
                   save=any(self.needs_input_grad), dropout_p=dropout_p, activation=activation, rope_z=rope_z)
        parts = chunks(B, on_cpu=xp is np)
        drops = draw_dropout((B, T, C), opt, len(layers), rng, dtype, xp)
        bias = K.attention_bias(mask, causal and mask is None, T, T, dtype, xp)   # (T, T), (B, 1, T, T) or None
        # rows that may see a key: every row under no mask or the causal one; else (B, 1, T) from the mask
        any_key = xp.isfinite(bias).any(axis=-1) if bias is not None and bias.ndim == 4 else True
        out = xp.empty((B, T, C), dtype=dtype)
        if self.stem:
            self.stem["saved"] = [None] * len(parts)

        def run(c: int) -> list[dict[str, Any]]:                                # chunk c through every block
            part = parts[c]
            b, keys = (bias[part], any_key[part]) if bias is not None and bias.ndim == 4 else (bias, any_key)
            if self.stem is None:
                xc = x[part]
            else:                                                               # the chunk's x, made here
                xc, self.stem["saved"][c] = self.stem["impl"].forward(
                    {n: a[part] for n, a in self.stem["inputs"].items()}, self.stem["params"], self.stem["meta"])
            return chunk_forward(xc, layers, opt, b, keys, [chunk_masks(m, part, T) for m in drops], out[part])

        self.remote, self.head = None, None
        if head:
            impl = head_impl(head)
            self.head = dict(impl.setup(head, head_arrays, (B, T, C)), impl=impl)
            out2, t, rows = out.reshape(B * T, C), self.head["targets"], [slice(p.start * T, p.stop * T) for p in parts]

            def run_head(i: int) -> tuple[float, int, dict[str, Any]]:
                return impl.forward(out2[rows[i]], self.head["params"], t[rows[i]], self.head["meta"])
        workers = worker_processes() if xp is np and len(parts) > 1 else []
        requests = (remote_requests(x, layers, opt, bias, any_key, drops, parts, self.head, self.stem)
                    if workers else None)
        if requests is not None and all(w.fits(r) for w, r in zip(workers, requests)):
            # chunks 1.. go to the worker processes, chunk 0 runs here meanwhile
            key = next(_REMOTE_KEYS)
            region = free_region(workers[0]) if opt["save"] else 2
            meta = {"key": key, "opt": {k: v for k, v in opt.items() if k not in ("rope", "rope_z")},
                    "n_layer": len(layers),
                    "param_keys": list(layers[0]), "copy": region == 2,
                    "head": head and {"impl": self.head["impl"].name, **self.head["meta"]},
                    "stem": stem and {"impl": self.stem["impl"].name, **self.stem["meta"]}}
            split_work()                                                        # the workers use the other cores
            for worker, request in zip(workers, requests):
                worker.submit(f"{workers_impl.__name__}:remote_forward", request, meta, region)
                if region < 2:
                    worker.__dict__.setdefault("gpt_regions", {})[region] = weakref.ref(self)
            chunk_saved = [run(0)] + [None] * len(requests)
            head_results = [run_head(0)] if head else []
            for worker, part in zip(workers, parts[1:]):
                res, res_meta = worker.result()
                if head:
                    head_results.append((res_meta["nll"], res_meta["count"], None))
                else:
                    out[part] = res["out"]
            self.remote = (workers, key) if opt["save"] else None
        else:
            chunk_saved = parallel_map(run, range(len(parts)))
            head_results = parallel_map(run_head, range(len(parts))) if head else []
        if head:
            count, total = sum(r[1] for r in head_results), sum(r[0] for r in head_results)
            self.head.update(count=count, saved=[r[2] for r in head_results])
            out = xp.asarray(total / count if count else float("nan"), dtype=dtype)
        # NOTE: the parameters are saved too, so that the engine catches an in-place update between
        # this forward and its backward; the engine releases ``saved`` after the backward.
        self.save_for_backward(*stem_arrays, *param_arrays, *head_arrays, chunk_saved)
        self.layers, self.opt, self.names, self.parts = layers, opt, names, parts
        return out

    def backward(self, gout):
        xp = array_module(gout)
        head, head_grads = self.head, []
        if head:                                                                # gout is d loss: first the head's
            scale = float(gout) / head["count"] if head["count"] else 0.0
            B, T, C = head["shape"]
            gout = xp.empty(head["shape"], dtype=gout.dtype)
            gout2, rows = gout.reshape(B * T, C), [slice(p.start * T, p.stop * T) for p in self.parts]

            def run_head(i: int) -> dict[str, Any]:
                return head["impl"].backward(scale, head["saved"][i], head["params"], head["meta"], gout2[rows[i]])
        gx = xp.empty_like(gout)
        stem, stem_grads = self.stem, [None] * len(self.parts)                  # per chunk, summed in order

        def run(c: int, saved: list[dict[str, Any]]) -> list[dict[str, Any]]:   # chunk c, last block to first
            part = self.parts[c]
            grads = chunk_backward(gout[part], saved, self.layers, self.opt, gx[part])
            if stem:                                                            # the chunk's gx on into the stem
                stem_grads[c] = stem["impl"].backward(gx[part], stem["saved"][c], stem["params"], stem["meta"])
            return grads

        if self.remote is not None:
            workers, key = self.remote
            split_work()                                                        # the workers use the other cores
            for worker, part in zip(workers, self.parts[1:]):
                request, meta = ({}, {"key": key, "scale": scale}) if head else ({"gout": gout[part]}, {"key": key})
                worker.submit(f"{workers_impl.__name__}:remote_backward", request, meta, 2)
            if head:
                head_grads.append(run_head(0))
            grads_list = [run(0, self.saved[-1][0])]
            for c, (worker, part) in enumerate(zip(workers, self.parts[1:]), start=1):
                res = worker.result()[0]                                        # views, valid until its next call
                regions = worker.__dict__.get("gpt_regions", {})
                for region in [r for r, ref in regions.items() if ref() is self]:
                    del regions[region]                                         # its inputs may be overwritten now
                if stem:
                    stem_grads[c] = {n[2:]: a for n, a in res.items() if n.startswith("S:")}
                else:
                    gx[part] = res["gx"]
                grads_list.append([{name: res.get(f"{i}:{name}") for name in PARAM_NAMES}
                                   for i in range(len(self.layers))])
                if head:
                    head_grads.append({name[2:]: a for name, a in res.items() if name.startswith("H:")})
        else:
            if head:
                head_grads = parallel_map(run_head, range(len(self.parts)))
            grads_list = parallel_map(run, range(len(self.parts)), self.saved[-1])

        def reduce(i: int) -> dict[str, Any]:                                   # layer i: the chunks' sum, unfolded
            layer_total = grads_list[0][i]
            for grads in grads_list[1:]:
                for name, g in grads[i].items():
                    if g is not None:
                        layer_total[name] += g
            if self.opt["rope_z"] is not None:                                  # qkv's rows back in their order
                inverse = interleaved_rows(self.opt["n_head"], self.layers[i]["attn.proj.weight"].shape[0])[1]
                for name in ("attn.qkv.weight", "attn.qkv.bias"):
                    if layer_total.get(name) is not None:
                        layer_total[name] = layer_total[name][inverse]
            if self.opt["fold"]:
                unfold_gradients(layer_total, self.layers[i], "ln_1", "attn.qkv")
                unfold_gradients(layer_total, self.layers[i], "ln_2", "mlp.fc")
            return layer_total

        total = parallel_map(reduce, range(len(self.layers)))                  # the layers shared out over the threads
        first = (gx,) if not stem else stem["impl"].finish(sum_dicts(stem_grads), stem)
        grads = (*first, *(layer[name] for layer in total for name in self.names))
        if not head:
            return grads
        return (*grads, *head["impl"].finish(sum_dicts(head_grads), head))


_SMALL_HEAD = 1 << 19         # logits (rows x vocabulary) below which the head runs in one thread


def _in_this_thread(fn: Any, *arg_lists: Any) -> list[Any]:
    """``parallel_map``'s contract in the calling thread, BLAS left as it is."""
    return [fn(*args) for args in zip(*arg_lists)]


class LMHeadLoss(Function):
    """Mean next-token cross-entropy of ``layer_norm(x) @ weight.T``: the final LayerNorm, the (tied)
    output projection and the loss in one op, split over the threads like the blocks.

    Inputs: x (B, T, C), the LayerNorm weight (and bias when ``has_bias``), weight (V, C). Options:
    targets (B, T) ints (``ignore_index`` rows do not count), eps. Returns a 0-d loss. Backward:
    dlogits = (softmax - onehot(target)) / count, dW = dlogits^T h, dh = dlogits W, then LayerNorm's
    (with the LayerNorm folded into W: ``fold_layer_norm``).
    """

    def forward(self, x, *arrays, targets: Any = None, eps: float = 1e-5, ignore_index: int = -100,
                has_bias: bool = True):
        xp = array_module(x)
        ln_w, ln_b, weight = (arrays[0], arrays[1], arrays[2]) if has_bias else (arrays[0], None, arrays[1])
        B, T, C = x.shape
        V = weight.shape[0]
        t = targets.reshape(B * T)
        bad = (t != ignore_index) & ((t < 0) | (t >= V))
        if bad.any():
            raise IndexError(f"cross_entropy: target {int(t[bad][0])} is out of range for {V} classes")
        x2 = x.reshape(B * T, C)                                                # (N, C)
        # NOTE: a small head (baby: 768 x 65 logits) runs faster in the calling thread than split
        # over the threads, whose hand-offs cost more than its work
        small = xp is np and B * T * V <= _SMALL_HEAD
        parts = [slice(p.start * T, p.stop * T) for p in chunks(B, on_cpu=xp is np and not small)]
        self.map = _in_this_thread if small else parallel_map
        params = {"ln.weight": ln_w, "ln.bias": ln_b, "head.weight": weight, "head.bias": None}
        fold_layer_norm(params, "ln", "head", "head")
        results = self.map(lambda p: head_forward(x2[p], params, t[p], eps, ignore_index), parts)
        count, total = sum(r[1] for r in results), sum(r[0] for r in results)
        self.save_for_backward(*arrays, [r[2] for r in results])
        self.parts, self.count, self.shape, self.has_bias = parts, count, x.shape, has_bias
        self.params = params
        return xp.asarray(total / count if count else float("nan"), dtype=x.dtype)

    def backward(self, gz):
        xp = array_module(gz)
        gx = xp.empty(self.shape, dtype=gz.dtype)
        gx2 = gx.reshape(-1, self.shape[-1])
        scale = float(gz) / self.count if self.count else 0.0
        grads_list = self.map(lambda p, s: head_backward(scale, s, self.params, self.has_bias, gx2[p]),
                              self.parts, self.saved[-1])
        total = grads_list[0]
        for grads in grads_list[1:]:
            for name, g in grads.items():
                if g is not None:
                    total[name] += g
        unfold_gradients(total, self.params, "ln", "head")
        if self.has_bias:
            return gx, total["ln.weight"], total["ln.bias"], total["head.weight"]
        return gx, total["ln.weight"], total["head.weight"]
