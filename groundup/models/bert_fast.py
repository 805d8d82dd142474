"""FastBERT: the readable ``BERT``'s twin for training, its encoder blocks run as one fused op.

Same parameters, same ``state_dict`` keys (and Hugging Face key map), same maths as
``groundup.models.bert.BERT`` (tested equal in float64, padding and dropout included); a checkpoint
loads into either class, and ``model.as_class(BERT)`` gives the readable one back. Hooks and
interpretability use ``BERT`` (``FastBERT`` refuses hooks rather than skip them).

What is fused: the blocks, through the GPT twin's ``TransformerStack`` (``groundup/models/gpt_fast.py``)
with BERT's options: no causal mask, the padding mask, post-norm (or pre-norm), LayerNorm eps 1e-12
and the exact GELU. BERT keeps query, key and value as three Linear layers (Hugging Face's layout,
and LoRA wraps query and value alone), so each call joins their weights into the stack's (3C, C)
qkv layout; the join is an ordinary op, so the three get their gradients. ``loss`` takes each chunk's
labelled rows through the MLM head (ln_f, dense, GELU, ln, decoder) and the loss inside the same op
(``MLM_HEAD``), so that each worker process does its chunk's share and sends no activations back.
The embeddings (wte, wpe, wse, ln_embd, dropout) run per chunk inside the op too (``BERT_STEM``), for
``loss`` and ``features`` (so ``classify`` and fine-tuning); the classifier is the readable model's
own code. A LoRA-wrapped attention, or a head that is not the plain MLMHead, runs the readable code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from groundup import random
from groundup.backend import array_module
from groundup.creation import cat
from groundup.models.bert import BERT, MLMHead, _check_mlm_labels, _mlm_labels
from groundup.models.gpt_fast import TransformerStack
from groundup.models.gpt_fast_block import fold_layer_norm, softmax_nll_, unfold_gradients
from groundup.models.gpt_fast_workers import EmbeddingStem
from groundup.models.shared import check_token_ids
from groundup.nn.hooks import HookPoint
from groundup.nn.layers import Dropout, Embedding, Identity, LayerNorm, Linear
from groundup.ops import kernels as K
from groundup.tensor import Tensor

__all__ = ["FastBERT", "MLM_HEAD", "BERT_STEM"]


class FastBERT(BERT):
    """``BERT`` whose ``encode`` (the blocks) is one fused op: the readable model's numbers, faster."""

    splits_work = True                      # its stack splits the batch (see ``FastGPT.splits_work``)

    def hooks(self, fns: Any):  # type: ignore[override]
        raise TypeError("FastBERT runs fused kernels and has no hook points; use the readable twin: "
                        "model.as_class(BERT)")

    def run_with_cache(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self.hooks({})

    def features(self, idx: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tensor:
        """``BERT.features``, the embeddings made per chunk inside the stack (``BERT_STEM``)."""
        stem = None
        if self._blocks_fuse() and array_module(self.wte.weight.data) is np:
            stem, stem_arrays, key_mask = self._stem(idx, attention_mask, token_type_ids)
        if stem is None:
            return super().features(idx, attention_mask, token_type_ids)
        return self.ln_f(self.encode(None, key_mask, stem=stem, stem_arrays=stem_arrays))   # (B, T, C)

    def loss(self, idx: Any, labels: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Tensor:
        """``BERT.loss``, with the MLM head and the loss fused into the stack (see the module docstring)."""
        target = _mlm_labels(labels)
        head = self.mlm_head
        if not (self._blocks_fuse() and array_module(self.wte.weight.data) is np and type(head) is MLMHead
                and type(head.dense) is Linear and type(head.decoder) is Linear and type(head.ln) is LayerNorm
                and type(self.ln_f) in (Identity, LayerNorm)
                and all(getattr(m, n, None) is not None for m in (head.dense, head.ln, head.decoder)
                        for n in ("weight", "bias"))):
            return super().loss(idx, labels, attention_mask, token_type_ids)
        stem, stem_arrays, key_mask = self._stem(idx, attention_mask, token_type_ids)
        if stem is None:                                                        # embeddings in this process
            x, key_mask = self.embed(idx, attention_mask, token_type_ids)      # (B, T, C)
            B, T, _ = x.shape
        else:
            x, (B, T) = None, stem["idx"].shape
        _check_mlm_labels(target, B, T)
        pre = type(self.ln_f) is LayerNorm
        arrays = ([self.ln_f.weight, self.ln_f.bias] if pre else []) + [
            head.dense.weight, head.dense.bias, head.ln.weight, head.ln.bias, head.decoder.weight, head.decoder.bias]
        spec = dict(impl=MLM_HEAD.name, targets=target, eps=head.ln.eps, eps_f=self.ln_f.eps if pre else None,
                    pre=pre, activation="tanh" if head.approximate == "tanh" else "erf", n_arrays=len(arrays))
        return self.encode(x, key_mask, head=spec, head_arrays=arrays, stem=stem, stem_arrays=stem_arrays)

    def _stem(self, idx: Any, attention_mask: Any, token_type_ids: Any) -> tuple[dict | None, list[Tensor], Any]:
        """The embeddings as the stack's stem (``BERT_STEM``), where the plain layers allow it: (the stem
        dict, its arrays, the key mask), the ids checked as ``embed`` checks them; else (None, [], None)."""
        cfg = self.cfg
        plain = (type(self.wte) is Embedding and type(self.wpe) is Embedding and type(self.ln_embd) is LayerNorm
                 and type(self.dropout) is Dropout and type(self.hook_embed) is HookPoint
                 and self.ln_embd.weight is not None and self.ln_embd.bias is not None
                 and all(e is None or (type(e) is Embedding and e.padding_idx is None)
                         for e in (self.wte, self.wpe, self.wse)))
        if not plain:
            return None, [], None
        data = check_token_ids(idx, "BERT", "idx", cfg.block_size, cfg.vocab_size)
        B, T = data.shape
        segments = None
        if self.wse is not None:
            segments = np.zeros((B, T), dtype=np.int64) if token_type_ids is None else np.asarray(
                check_token_ids(token_type_ids, "BERT", "token_type_ids", cfg.block_size, cfg.type_vocab_size))
        arrays = [self.wte.weight, self.wpe.weight] + ([self.wse.weight] if segments is not None else []) + [
            self.ln_embd.weight, self.ln_embd.bias]
        stem = dict(impl=BERT_STEM.name, idx=np.asarray(data), segments=segments, eps=self.ln_embd.eps,
                    dropout_p=self.dropout.p if self.training else 0.0, n_arrays=len(arrays))
        return stem, arrays, self._key_mask(attention_mask, B, T, np)

    def _blocks_fuse(self) -> bool:
        return all(type(layer) is Linear for block in self.blocks
                   for layer in (block.attn.query, block.attn.key, block.attn.value))

    def encode(self, x: Tensor | None, key_mask: Any = None, head: dict[str, Any] | None = None,
               head_arrays: list[Tensor] = (), stem: dict[str, Any] | None = None,
               stem_arrays: list[Tensor] = ()) -> Tensor:
        """Every block at once: x (B, T, C), key_mask (B, 1, 1, T) bool or None -> (B, T, C).
        With ``head`` (``loss``): the MLM loss after them; with ``stem`` (``loss``, x None): the
        embeddings before them, made per chunk."""
        cfg = self.cfg
        params: list[Tensor] = []
        if not self._blocks_fuse():
            if stem is not None:
                raise ValueError("FastBERT.encode: the embeddings as a stem need the fused blocks "
                                 "(query, key and value plain Linear layers, no LoRA); call embed() first")
            return super().encode(x, key_mask)                                  # e.g. LoRA on query, value
        first = [x] if stem is None else list(stem_arrays)
        for block in self.blocks:
            a, m = block.attn, block.mlp
            params += [block.ln_1.weight, block.ln_1.bias,
                       cat([a.query.weight, a.key.weight, a.value.weight], dim=0),   # (3C, C)
                       cat([a.query.bias, a.key.bias, a.value.bias], dim=0),         # (3C,)
                       a.proj.weight, a.proj.bias, block.ln_2.weight, block.ln_2.bias,
                       m.fc.weight, m.fc.bias, m.proj.weight, m.proj.bias]
        B, T = x.shape[:2] if stem is None else stem["idx"].shape
        mask = None if key_mask is None else array_module(first[0].data).broadcast_to(key_mask, (B, 1, T, T))
        p = cfg.dropout if self.training else 0.0
        drawn = p > 0 or (stem is not None and stem["dropout_p"] > 0)         # the stem's own p: its Dropout's
        return TransformerStack.apply(
            *first, *params, *head_arrays, head=head, stem=stem, n_head=cfg.n_head, causal=False,
            pre_norm=cfg.norm == "pre", eps=cfg.layer_norm_eps, mask=mask, dropout_p=p,
            rng=random.generator() if drawn else None, has_bias=True,
            activation="erf" if cfg.activation == "gelu" else "tanh")          # (B, T, C)


# ----------------------------------------------------------------------------- the MLM head, fused
_MLM_NAMES = ("dense.weight", "dense.bias", "ln.weight", "ln.bias", "decoder.weight", "decoder.bias")


class _MLMHead:
    """``TransformerStack``'s BERT head (the protocol of ``gpt_fast_workers._LMHead``): a chunk's labelled rows
    (label != -100) through ln_f (pre-norm; folded into dense), dense, GELU, ln (folded into the
    decoder), the decoder, and the sum of their cross-entropies.

    Backward: dlogits = (softmax - onehot) * scale; the decoder's folded weight gets dlogits^T ghat,
    ghat = layer_norm_stats(g); d ghat = dlogits W', then the LayerNorm's and GELU's backward give dh,
    the dense's folded weight dh^T h_in, and dh W_dense is the labelled rows' gradient (the others 0).
    """

    name = f"{__name__}:MLM_HEAD"

    @staticmethod
    def setup(head: dict[str, Any], arrays: tuple[Any, ...], shape: tuple[int, int, int]) -> dict[str, Any]:
        names = (("ln_f.weight", "ln_f.bias") if head["pre"] else ()) + _MLM_NAMES
        params = dict(zip(names, arrays))
        B, T, _ = shape
        V = params["decoder.weight"].shape[0]
        t = np.asarray(head["targets"]).reshape(B * T)
        bad = (t != -100) & ((t < 0) | (t >= V))
        if bad.any():
            raise IndexError(f"cross_entropy: target {int(t[bad][0])} is out of range for {V} classes")
        if head["pre"]:
            fold_layer_norm(params, "ln_f", "dense", "dense")
        else:
            params["dense.folded"], params["dense.folded_bias"] = params["dense.weight"], params["dense.bias"]
        fold_layer_norm(params, "ln", "decoder", "decoder")
        meta = {k: head[k] for k in ("eps", "eps_f", "pre", "activation")}
        return {"params": params, "targets": t, "shape": shape, "meta": meta}

    @staticmethod
    def shipped(params: dict[str, Any]) -> dict[str, Any]:
        return {n: params[n] for n in ("dense.folded", "dense.folded_bias", "decoder.folded", "decoder.folded_bias")}

    @staticmethod
    def forward(x: Any, params: dict[str, Any], targets: Any, meta: dict[str, Any]) -> tuple[float, int, Any]:
        """x (n, C), targets (n,) -> (sum of -log p(label) over the labelled rows, their number, saved)."""
        rows = np.flatnonzero(targets != -100)
        saved: dict[str, Any] = {"rows": rows}
        if len(rows) == 0:
            return 0.0, 0, saved
        h_in = x[rows]                                                          # (m, C) a copy
        if meta["pre"]:
            h_in, saved["rstd_f"] = K.layer_norm_stats(h_in, meta["eps_f"])      # ln_f's xhat
        h = K.linear(h_in, params["dense.folded"], params["dense.folded_bias"])  # (m, C)
        gelu = K.gelu_erf_with_slope if meta["activation"] == "erf" else K.gelu_tanh_with_slope
        g, slope = gelu(h, slope_into_f=True)                                   # h is spent: its slope there
        ghat, rstd = K.layer_norm_stats(g, meta["eps"])                         # (m, C)
        logits = K.linear(ghat, params["decoder.folded"], params["decoder.folded_bias"])   # (m, V)
        t = targets[rows]
        nll = softmax_nll_(logits, t)                                           # logits -> probs, in place
        saved.update(h_in=h_in, slope=slope, ghat=ghat, rstd=rstd, probs=logits, t=t)
        return float(nll.sum()), len(rows), saved

    @staticmethod
    def backward(scale: float, saved: Any, params: dict[str, Any], meta: dict[str, Any], gx_out: Any) -> dict:
        """Writes the chunk's gradient gx_out (n, C); returns the folded weights' and the biases' gradients."""
        gx_out[...] = 0.0
        rows, (V, C) = saved["rows"], params["decoder.folded"].shape
        if len(rows) == 0:
            zeros = np.zeros
            return {"decoder.weight": zeros((V, C), gx_out.dtype), "decoder.bias": zeros(V, gx_out.dtype),
                    "dense.weight": zeros((C, C), gx_out.dtype), "dense.bias": zeros(C, gx_out.dtype)}
        d = saved["probs"].copy()                                               # softmax - onehot
        d[np.arange(len(rows)), saved["t"]] -= 1.0
        d *= scale
        grads = {"decoder.weight": K.matmul_tn(d, saved["ghat"]), "decoder.bias": K.column_sums(d)}
        dh = K.layer_norm_backward_xhat(d @ params["decoder.folded"], saved["ghat"], saved["rstd"])   # d g (m, C)
        dh *= saved["slope"]                                                    # d h
        grads["dense.weight"], grads["dense.bias"] = K.matmul_tn(dh, saved["h_in"]), K.column_sums(dh)
        dx = dh @ params["dense.folded"]                                        # (m, C)
        if meta["pre"]:
            dx = K.layer_norm_backward_xhat(dx, saved["h_in"], saved["rstd_f"])
        gx_out[rows] = dx
        return grads

    @staticmethod
    def finish(total: dict[str, Any], state: dict[str, Any]) -> list[Any]:
        params = state["params"]
        unfold_gradients(total, params, "ln", "decoder")
        names = _MLM_NAMES
        if state["meta"]["pre"]:
            unfold_gradients(total, params, "ln_f", "dense")
            names = ("ln_f.weight", "ln_f.bias") + names
        return [total[n] for n in names]


MLM_HEAD = _MLMHead()


# ----------------------------------------------------------------------------- the embeddings, fused
class _BERTStem(EmbeddingStem):
    """``TransformerStack``'s BERT stem (the protocol of ``gpt_fast_workers.stem_impl``): a chunk's token ids
    (b, T) -> wte(idx) + wpe(0..T-1) [+ wse(segments)] -> ln_embd -> dropout, the blocks' input x.

    Backward: d = ln_embd's backward of (gx * dropout mask); wte's and wse's gradients are d summed
    per id (``K.embedding_grad``), wpe's the sum of d over the chunk's sequences, in its first T rows.
    """

    name = f"{__name__}:BERT_STEM"

    @classmethod
    def setup(cls, stem: dict[str, Any], arrays: tuple[Any, ...], rng: Any, xp: Any) -> dict[str, Any]:
        names = ("wte", "wpe") + (("wse",) if stem["segments"] is not None else ()) + ("ln.weight", "ln.bias")
        extra = {} if stem["segments"] is None else {"segments": stem["segments"]}
        return cls.state(stem, dict(zip(names, arrays)), names, rng, xp, **extra)

    @staticmethod
    def forward(inputs: dict[str, Any], params: dict[str, Any], meta: dict[str, Any]) -> tuple[Any, dict]:
        idx = inputs["idx"]
        b, T = idx.shape
        C = params["wte"].shape[1]
        e = params["wte"][idx]                                                  # (b, T, C) a copy
        e += params["wpe"][:T]
        if "segments" in inputs:
            e += params["wse"][inputs["segments"]]
        x, xhat, rstd = K.layer_norm(e.reshape(b * T, C), params["ln.weight"], params["ln.bias"], meta["eps"])
        if "drop" in inputs:
            x *= inputs["drop"].reshape(b * T, C)
        return x.reshape(b, T, C), {"xhat": xhat, "rstd": rstd, **inputs}

    @staticmethod
    def backward(gx: Any, saved: dict[str, Any], params: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        idx = saved["idx"]
        b, T = idx.shape
        C = params["wte"].shape[1]
        g = gx.reshape(b * T, C)                                                # (N, C)
        if "drop" in saved:
            g = g * saved["drop"].reshape(b * T, C)
        d, dw, db = K.layer_norm_backward(g, saved["xhat"], saved["rstd"], params["ln.weight"], True)
        wpe = np.zeros_like(params["wpe"])
        wpe[:T] = d.reshape(b, T, C).sum(axis=0)                                # (T, C)
        grads = {"wte": K.embedding_grad(idx.reshape(-1), d, params["wte"].shape[0]), "wpe": wpe,
                 "ln.weight": dw, "ln.bias": db}
        if "segments" in saved:
            grads["wse"] = K.embedding_grad(saved["segments"].reshape(-1), d, params["wse"].shape[0])
        return grads


BERT_STEM = _BERTStem()
