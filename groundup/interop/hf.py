"""groundup's GPT to and from Hugging Face transformers, with NumPy, JSON and safetensors alone.

``export_hf(run_dir, out_dir)`` writes a directory that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline; ``import_hf(hf_dir, out_dir)`` turns such a directory
(or any GPT2LMHeadModel one written by ``save_pretrained``) into a groundup run directory that
``groundup sample`` and the explorer read. Neither imports torch or transformers; ``verify_hf``
does (lazily), to check an export's logits against groundup's.

Which transformers class (the maths must be identical, not just similar):

    pos_encoding  class                 how
    learned       GPT2LMHeadModel       wpe = groundup's table
    sinusoidal    GPT2LMHeadModel       wpe = the fixed sin/cos table (added to the embeddings like
                                        a learned one; HF may then train it, groundup keeps it fixed)
    none          GPT2LMHeadModel       wpe = zeros
    rotary        GPTNeoXForCausalLM    rotary_pct 1.0 (the whole head dim), base 10000, rotate-half
                                        (NeoX's convention is groundup's), use_parallel_residual False
Both use GELU's tanh approximation (``gelu_new``), LayerNorm eps 1e-5, 4C hidden units, 1/sqrt(D)
attention scaling. ``bias=False`` becomes zero biases (GPT-2 always has them; NeoX's MLP and
LayerNorms too), which changes nothing in the forward. Refused, with the reason: ``norm='post'``
(both classes are pre-norm: LayerNorm inside the residual branch), ``causal=False`` (a causal LM
class masks the future). The exported config.json carries the GPTConfig under ``"groundup"`` so that
an import restores it exactly (bias, fixed positions); without it an import infers the config.

Key map, GPT2LMHeadModel (Conv1D layers store weight as (in, out): every Linear weight is transposed):

    wte.weight                     transformer.wte.weight
    wpe.weight                     transformer.wpe.weight            (the table, see above)
    blocks.{i}.ln_1.weight|bias    transformer.h.{i}.ln_1.weight|bias
    blocks.{i}.attn.qkv.weight     transformer.h.{i}.attn.c_attn.weight   (3C, C) -> (C, 3C), q|k|v
    blocks.{i}.attn.qkv.bias       transformer.h.{i}.attn.c_attn.bias
    blocks.{i}.attn.proj.weight    transformer.h.{i}.attn.c_proj.weight   transposed
    blocks.{i}.ln_2.weight|bias    transformer.h.{i}.ln_2.weight|bias
    blocks.{i}.mlp.fc.weight       transformer.h.{i}.mlp.c_fc.weight      (4C, C) -> (C, 4C)
    blocks.{i}.mlp.proj.weight     transformer.h.{i}.mlp.c_proj.weight    transposed
    ln_f.weight|bias               transformer.ln_f.weight|bias
    lm_head.weight                 lm_head.weight                    (left out when tied)

Key map, GPTNeoXForCausalLM (nn.Linear layout, no transposes; qkv rows regrouped per head):

    wte.weight                     gpt_neox.embed_in.weight
    blocks.{i}.ln_1.*              gpt_neox.layers.{i}.input_layernorm.*
    blocks.{i}.attn.qkv.weight     gpt_neox.layers.{i}.attention.query_key_value.weight
                                   rows (part, head, d) -> (head, part, d): NeoX splits its
                                   (B, T, 3C) output per head into [q_h | k_h | v_h]
    blocks.{i}.attn.proj.*         gpt_neox.layers.{i}.attention.dense.*
    blocks.{i}.ln_2.*              gpt_neox.layers.{i}.post_attention_layernorm.*
    blocks.{i}.mlp.fc.*            gpt_neox.layers.{i}.mlp.dense_h_to_4h.*
    blocks.{i}.mlp.proj.*          gpt_neox.layers.{i}.mlp.dense_4h_to_h.*
    ln_f.*                         gpt_neox.final_layer_norm.*
    lm_head.weight                 embed_out.weight (transformers 5 reads it as lm_head.weight;
                                   both are accepted on import; left out when tied)

Tokenizers: a byte-level BPE run becomes GPT-2's vocab.json + merges.txt with a tokenizer_config.json
naming GPT2Tokenizer (no special tokens added, so ids and vocabulary size stay as trained); a
character run becomes a ``tokenizers`` tokenizer.json: a BPE model whose vocabulary is the characters
and which has no merges and no pre-tokenizer (so every character is one token, whitespace included)
and a Fuse decoder (tokens joined with nothing between them). Encodings are identical; a character
outside the vocabulary is an error in groundup and dropped by ``tokenizers`` (it has no unknown token).

References: Radford et al. 2019 (GPT-2); Black et al. 2022 (GPT-NeoX-20B); Su et al. 2021 (RoPE);
the transformers model files modeling_gpt2.py and modeling_gpt_neox.py (read, not copied).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExportError", "ImportRefused", "hf_architecture", "to_hf", "from_hf", "export_hf", "import_hf",
           "export_tokenizer", "import_tokenizer", "load_run", "read_hf_weights", "verify_hf",
           "sinusoidal_table"]

GPT2 = "GPT2LMHeadModel"
NEOX = "GPTNeoXForCausalLM"
LN_EPS = 1e-5                      # groundup's LayerNorm eps (the GPT has no field for it)
ROPE_BASE = 10000.0                # groundup's rotary base (likewise fixed)
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")   # names transformers gives GELU's tanh approximation
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
# tokenizer files of either kind: removed before writing one kind, so a stale file of the other
# kind (say vocab.json beside a new character tokenizer.json) can never be the one that gets loaded
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class ExportError(ValueError):
    """The model (or run directory) cannot be written as a transformers model; the message says why."""


class ImportRefused(ValueError):
    """A transformers directory that does not map exactly onto groundup's GPT; the message says why."""


# ----------------------------------------------------------------------------- helpers
def sinusoidal_table(length: int, dim: int) -> np.ndarray:
    """Vaswani et al.'s fixed positions (length, dim), float32: sin on even dims, cos on odd dims."""
    pos = np.arange(length, dtype=np.float64)[:, None]                          # (T, 1)
    inv_freq = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)      # (C/2,)
    table = np.zeros((length, dim), dtype=np.float64)
    table[:, 0::2] = np.sin(pos * inv_freq)
    table[:, 1::2] = np.cos(pos * inv_freq[: dim // 2])
    return table.astype(np.float32)


def _remove(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _f32(array: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array, dtype=np.float32))


def _qkv_to_neox(array: np.ndarray, n_head: int) -> np.ndarray:
    """groundup's q|k|v rows (3, H, D, ...) -> NeoX's per-head rows (H, 3, D, ...): (3C, ...) both."""
    rest = array.shape[1:]
    three_c = array.shape[0]
    head_dim = three_c // (3 * n_head)
    grouped = array.reshape(3, n_head, head_dim, *rest)                         # (3, H, D, *)
    return np.ascontiguousarray(grouped.swapaxes(0, 1).reshape(three_c, *rest))  # (H, 3, D, *) -> (3C, *)


def _qkv_from_neox(array: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of ``_qkv_to_neox``: (H, 3, D, ...) rows -> (3, H, D, ...) rows."""
    rest = array.shape[1:]
    three_c = array.shape[0]
    head_dim = three_c // (3 * n_head)
    grouped = array.reshape(n_head, 3, head_dim, *rest)                         # (H, 3, D, *)
    return np.ascontiguousarray(grouped.swapaxes(0, 1).reshape(three_c, *rest))  # (3, H, D, *) -> (3C, *)


def hf_architecture(cfg: Any) -> str:
    """The transformers class a GPTConfig exports to, or ExportError naming what cannot be exported and why."""
    if cfg.norm != "pre":
        raise ExportError(f"norm={cfg.norm!r} cannot be exported: GPT2LMHeadModel and GPTNeoXForCausalLM are "
                          "pre-norm (LayerNorm inside each residual branch); post-norm blocks normalise the "
                          "residual stream itself, which neither class can express")
    if not cfg.causal:
        raise ExportError("causal=False cannot be exported: transformers' causal-LM classes always mask "
                          "future positions, so a bidirectional GPT would give different logits")
    if cfg.pos_encoding == "rotary":
        return NEOX
    if cfg.pos_encoding in ("learned", "sinusoidal", "none"):
        return GPT2
    raise ExportError(f"pos_encoding={cfg.pos_encoding!r} has no transformers equivalent")


# ----------------------------------------------------------------------------- groundup -> HF
def _hf_config(cfg: Any, arch: str) -> dict[str, Any]:
    C = cfg.n_embd
    common = {"architectures": [arch], "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_weights,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "initializer_range": 0.02,
              "use_cache": True, "torch_dtype": "float32", "groundup": cfg.to_dict()}
    if arch == GPT2:
        return {**common, "model_type": "gpt2", "n_positions": cfg.block_size, "n_embd": C, "n_layer": cfg.n_layer,
                "n_head": cfg.n_head, "n_inner": 4 * C, "activation_function": "gelu_new",
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "layer_norm_epsilon": LN_EPS, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "add_cross_attention": False}
    return {**common, "model_type": "gpt_neox", "max_position_embeddings": cfg.block_size, "hidden_size": C,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "intermediate_size": 4 * C,
            "hidden_act": "gelu_new", "attention_dropout": cfg.dropout, "hidden_dropout": cfg.dropout,
            "layer_norm_eps": LN_EPS, "use_parallel_residual": False, "attention_bias": cfg.bias,
            # transformers >= 5 reads rope_parameters; 4.x reads rotary_pct / rotary_emb_base
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE, "partial_rotary_factor": 1.0},
            "rotary_pct": 1.0, "rotary_emb_base": ROPE_BASE}


def to_hf(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A groundup GPT as (transformers config.json dict, float32 state dict in transformers' names).

    Raises:
        ExportError: for a config no transformers class computes identically (see ``hf_architecture``).
    """
    cfg = model.cfg
    arch = hf_architecture(cfg)
    sd = {name: np.asarray(value) for name, value in model.state_dict().items()}
    C = cfg.n_embd

    def bias(key: str, size: int) -> np.ndarray:
        return _f32(sd[key]) if key in sd else np.zeros(size, dtype=np.float32)

    out: dict[str, np.ndarray] = {}
    if arch == GPT2:
        out["transformer.wte.weight"] = _f32(sd["wte.weight"])
        if cfg.pos_encoding == "learned":
            out["transformer.wpe.weight"] = _f32(sd["wpe.weight"])
        elif cfg.pos_encoding == "sinusoidal":
            out["transformer.wpe.weight"] = sinusoidal_table(cfg.block_size, C)
        else:
            out["transformer.wpe.weight"] = np.zeros((cfg.block_size, C), dtype=np.float32)
        for i in range(cfg.n_layer):
            g, h = f"blocks.{i}.", f"transformer.h.{i}."
            for ours, theirs, width in (("ln_1", "ln_1", C), ("ln_2", "ln_2", C)):
                out[f"{h}{theirs}.weight"] = _f32(sd[f"{g}{ours}.weight"])
                out[f"{h}{theirs}.bias"] = bias(f"{g}{ours}.bias", width)
            for ours, theirs, width in (("attn.qkv", "attn.c_attn", 3 * C), ("attn.proj", "attn.c_proj", C),
                                        ("mlp.fc", "mlp.c_fc", 4 * C), ("mlp.proj", "mlp.c_proj", C)):
                out[f"{h}{theirs}.weight"] = _f32(sd[f"{g}{ours}.weight"].T)   # Linear (out, in) -> Conv1D (in, out)
                out[f"{h}{theirs}.bias"] = bias(f"{g}{ours}.bias", width)
        out["transformer.ln_f.weight"] = _f32(sd["ln_f.weight"])
        out["transformer.ln_f.bias"] = bias("ln_f.bias", C)
        if not cfg.tie_weights:
            out["lm_head.weight"] = _f32(sd["lm_head.weight"])
    else:
        H = cfg.n_head
        out["gpt_neox.embed_in.weight"] = _f32(sd["wte.weight"])
        for i in range(cfg.n_layer):
            g, h = f"blocks.{i}.", f"gpt_neox.layers.{i}."
            for ours, theirs in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
                out[f"{h}{theirs}.weight"] = _f32(sd[f"{g}{ours}.weight"])
                out[f"{h}{theirs}.bias"] = bias(f"{g}{ours}.bias", C)
            out[f"{h}attention.query_key_value.weight"] = _qkv_to_neox(_f32(sd[f"{g}attn.qkv.weight"]), H)
            out[f"{h}attention.dense.weight"] = _f32(sd[f"{g}attn.proj.weight"])
            if cfg.bias:   # attention_bias follows cfg.bias; NeoX's MLP always has biases
                out[f"{h}attention.query_key_value.bias"] = _qkv_to_neox(_f32(sd[f"{g}attn.qkv.bias"]), H)
                out[f"{h}attention.dense.bias"] = _f32(sd[f"{g}attn.proj.bias"])
            out[f"{h}mlp.dense_h_to_4h.weight"] = _f32(sd[f"{g}mlp.fc.weight"])
            out[f"{h}mlp.dense_h_to_4h.bias"] = bias(f"{g}mlp.fc.bias", 4 * C)
            out[f"{h}mlp.dense_4h_to_h.weight"] = _f32(sd[f"{g}mlp.proj.weight"])
            out[f"{h}mlp.dense_4h_to_h.bias"] = bias(f"{g}mlp.proj.bias", C)
        out["gpt_neox.final_layer_norm.weight"] = _f32(sd["ln_f.weight"])
        out["gpt_neox.final_layer_norm.bias"] = bias("ln_f.bias", C)
        if not cfg.tie_weights:
            out["embed_out.weight"] = _f32(sd["lm_head.weight"])
    return _hf_config(cfg, arch), out


# ----------------------------------------------------------------------------- HF -> groundup
class _Reads(dict):
    """A file's tensors by name, recording which the mapping read (``read``): what is left over is a
    tensor groundup's GPT would silently drop (a classification head, say), so the import refuses it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)  # type: ignore[arg-type]
        return super().__contains__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def unread(self) -> list[str]:
        """Names never read, less the buffers transformers saves that hold no weights (causal masks,
        rotary frequencies)."""
        return sorted(k for k in self if k not in self.read and not k.endswith(_BUFFERS))


_BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq")
LM_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model", "GPTNeoXForCausalLM")


def _strip(tensors: dict[str, np.ndarray], prefix: str) -> _Reads:
    """Drop the base-model prefix (``transformer.`` / ``gpt_neox.``), which older files lack."""
    return _Reads({(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()})


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ImportRefused(message)


def _gpt2_state(hf: dict[str, Any], t: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray], _Reads]:
    C, L = int(hf.get("n_embd", 768)), int(hf.get("n_layer", 12))
    _need(hf.get("activation_function", "gelu_new") in TANH_GELUS,
          f"activation_function={hf.get('activation_function')!r}: groundup's GELU is the tanh approximation "
          f"({' or '.join(TANH_GELUS)})")
    _need(hf.get("n_inner") in (None, 4 * C), f"n_inner={hf.get('n_inner')}: groundup's MLP has 4 * n_embd = "
                                              f"{4 * C} hidden units")
    _need(hf.get("scale_attn_weights", True), "scale_attn_weights=false: groundup scales scores by 1/sqrt(D)")
    _need(not hf.get("scale_attn_by_inverse_layer_idx", False),
          "scale_attn_by_inverse_layer_idx=true: groundup does not scale scores by layer")
    _need(not hf.get("add_cross_attention", False), "add_cross_attention=true: groundup's GPT is decoder-only")
    t = _strip(t, "transformer.")
    sd: dict[str, np.ndarray] = {"wte.weight": t["wte.weight"], "wpe.weight": t["wpe.weight"]}
    for i in range(L):
        g, h = f"blocks.{i}.", f"h.{i}."
        for name in ("ln_1", "ln_2"):
            sd[f"{g}{name}.weight"], sd[f"{g}{name}.bias"] = t[f"{h}{name}.weight"], t[f"{h}{name}.bias"]
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                             ("mlp.proj", "mlp.c_proj")):
            sd[f"{g}{ours}.weight"] = np.ascontiguousarray(t[f"{h}{theirs}.weight"].T)   # Conv1D -> Linear
            sd[f"{g}{ours}.bias"] = t[f"{h}{theirs}.bias"]
    sd["ln_f.weight"], sd["ln_f.bias"] = t["ln_f.weight"], t["ln_f.bias"]
    if "lm_head.weight" in t:
        sd["lm_head.weight"] = t["lm_head.weight"]
    fields = {"vocab_size": int(hf.get("vocab_size", t["wte.weight"].shape[0])),
              "block_size": int(hf.get("n_positions", t["wpe.weight"].shape[0])), "n_layer": L,
              "n_head": int(hf.get("n_head", 12)), "n_embd": C, "dropout": float(hf.get("resid_pdrop", 0.1)),
              "pos_encoding": "learned", "eps": float(hf.get("layer_norm_epsilon", 1e-5))}
    return fields, sd, t


def _neox_rope(hf: dict[str, Any]) -> tuple[float, float, str]:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    factor = rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
    theta = rope.get("rope_theta", hf.get("rotary_emb_base", ROPE_BASE))
    kind = rope.get("rope_type", rope.get("type", "default"))
    return float(factor), float(theta), str(kind)


def _neox_state(hf: dict[str, Any], t: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray], _Reads]:
    C, L, H = int(hf["hidden_size"]), int(hf["num_hidden_layers"]), int(hf["num_attention_heads"])
    factor, theta, kind = _neox_rope(hf)
    _need(not hf.get("use_parallel_residual", True),
          "use_parallel_residual=true: groundup's blocks add attention, then the MLP, in sequence")
    _need(factor == 1.0, f"rotary_pct={factor}: groundup rotates the whole head dim (rotary_pct 1.0)")
    _need(theta == ROPE_BASE, f"rotary base {theta}: groundup's rotary base is {ROPE_BASE:g}")
    _need(kind == "default", f"rope_type={kind!r}: groundup has plain (unscaled) rotary positions")
    _need(hf.get("hidden_act", "gelu") in TANH_GELUS,
          f"hidden_act={hf.get('hidden_act', 'gelu')!r}: groundup's GELU is the tanh approximation "
          f"({' or '.join(TANH_GELUS)}), not the exact erf form")
    _need(int(hf.get("intermediate_size", 4 * C)) == 4 * C,
          f"intermediate_size={hf.get('intermediate_size')}: groundup's MLP has 4 * hidden_size = {4 * C} units")
    t = _strip(t, "gpt_neox.")
    sd: dict[str, np.ndarray] = {"wte.weight": t["embed_in.weight"]}
    zeros = np.zeros(C, dtype=np.float32)
    for i in range(L):
        g, h = f"blocks.{i}.", f"layers.{i}."
        for ours, theirs in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            sd[f"{g}{ours}.weight"], sd[f"{g}{ours}.bias"] = t[f"{h}{theirs}.weight"], t[f"{h}{theirs}.bias"]
        sd[f"{g}attn.qkv.weight"] = _qkv_from_neox(t[f"{h}attention.query_key_value.weight"], H)
        sd[f"{g}attn.qkv.bias"] = _qkv_from_neox(t.get(f"{h}attention.query_key_value.bias",
                                                       np.zeros(3 * C, dtype=np.float32)), H)
        sd[f"{g}attn.proj.weight"] = t[f"{h}attention.dense.weight"]
        sd[f"{g}attn.proj.bias"] = t.get(f"{h}attention.dense.bias", zeros)
        sd[f"{g}mlp.fc.weight"] = t[f"{h}mlp.dense_h_to_4h.weight"]
        sd[f"{g}mlp.fc.bias"] = t[f"{h}mlp.dense_h_to_4h.bias"]
        sd[f"{g}mlp.proj.weight"] = t[f"{h}mlp.dense_4h_to_h.weight"]
        sd[f"{g}mlp.proj.bias"] = t[f"{h}mlp.dense_4h_to_h.bias"]
    sd["ln_f.weight"], sd["ln_f.bias"] = t["final_layer_norm.weight"], t["final_layer_norm.bias"]
    for head in ("lm_head.weight", "embed_out.weight"):
        if head in t:
            sd["lm_head.weight"] = t[head]
    fields = {"vocab_size": int(hf.get("vocab_size", t["embed_in.weight"].shape[0])),
              "block_size": int(hf.get("max_position_embeddings", 2048)), "n_layer": L, "n_head": H, "n_embd": C,
              "dropout": float(hf.get("hidden_dropout", 0.0)), "pos_encoding": "rotary",
              "eps": float(hf.get("layer_norm_eps", 1e-5))}
    return fields, sd, t


def from_hf(hf_config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Any:
    """A groundup GPT from a transformers config.json dict and its tensors (names as in the file).

    The config comes from the ``"groundup"`` entry when the directory was written by ``export_hf``
    and the weights still fit it (zero biases for ``bias=False``, the fixed table for sinusoidal or
    no positions); otherwise it is inferred: learned positions for GPT-2, rotary for GPT-NeoX, biases.

    Raises:
        ImportRefused: naming the setting that groundup's GPT cannot compute identically.
    """
    from groundup.models.gpt import GPT, GPTConfig

    model_type = hf_config.get("model_type")
    architectures = hf_config.get("architectures") or []
    other = [a for a in architectures if a not in LM_ARCHITECTURES]
    _need(not other, f"architectures {other}: groundup imports language models ({', '.join(LM_ARCHITECTURES)}); "
                     f"another head (classification, question answering) has no place in its GPT")
    try:
        if model_type == "gpt2":
            fields, sd, reads = _gpt2_state(hf_config, tensors)
        elif model_type == "gpt_neox":
            fields, sd, reads = _neox_state(hf_config, tensors)
        else:
            raise ImportRefused(f"model_type={model_type!r}: groundup imports gpt2 (GPT2LMHeadModel) and gpt_neox "
                                f"(GPTNeoXForCausalLM, rotary_pct 1.0, sequential residual)")
    except KeyError as err:
        raise ImportRefused(f"the weights lack tensor {err.args[0]!r} that a {model_type} model has") from None
    left = reads.unread()
    _need(not left, f"tensors groundup's GPT has no place for: {', '.join(left[:5])}"
                    f"{f' and {len(left) - 5} more' if len(left) > 5 else ''}")
    eps = fields.pop("eps")
    _need(math.isclose(eps, LN_EPS, rel_tol=1e-6), f"layer norm eps {eps}: groundup's LayerNorm uses {LN_EPS}")
    sd = {k: _f32(v) for k, v in sd.items()}
    tied = bool(hf_config.get("tie_word_embeddings", model_type == "gpt2")) or "lm_head.weight" not in sd
    if tied:
        sd["lm_head.weight"] = sd["wte.weight"]
    fields.update(tie_weights=tied, bias=True, norm="pre", causal=True)
    hint = hf_config.get("groundup")
    if isinstance(hint, dict):
        biases = [v for k, v in sd.items() if k.endswith(".bias")]
        if hint.get("bias") is False and not any(b.any() for b in biases):
            fields["bias"] = False
        if model_type == "gpt2" and hint.get("pos_encoding") == "sinusoidal" \
                and np.array_equal(sd["wpe.weight"], sinusoidal_table(fields["block_size"], fields["n_embd"])):
            fields["pos_encoding"] = "sinusoidal"
        if model_type == "gpt2" and hint.get("pos_encoding") == "none" and not sd["wpe.weight"].any():
            fields["pos_encoding"] = "none"
    if not fields["bias"]:
        sd = {k: v for k, v in sd.items() if not k.endswith(".bias")}
    if fields["pos_encoding"] != "learned":
        sd.pop("wpe.weight", None)
    try:
        cfg = GPTConfig(**fields)
    except ValueError as err:
        raise ImportRefused(str(err)) from None
    model = GPT(cfg)
    expected = set(model.state_dict())
    unknown = sorted(set(sd) - expected)
    _need(not unknown, f"tensors groundup's GPT has no place for: {', '.join(unknown[:5])}")
    missing = sorted(expected - set(sd))
    _need(not missing, f"the weights lack: {', '.join(missing[:5])}")
    model.load_state_dict(sd)
    return model


# ----------------------------------------------------------------------------- files
def read_hf_weights(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a transformers directory (model.safetensors, or shards listed in its index)."""
    from safetensors.numpy import load_file

    folder = Path(directory)
    if (folder / HF_WEIGHTS).is_file():
        files = [folder / HF_WEIGHTS]
    elif (folder / HF_INDEX).is_file():
        index = json.loads((folder / HF_INDEX).read_text())
        files = [folder / name for name in sorted(set(index["weight_map"].values()))]
    elif (folder / "pytorch_model.bin").is_file():
        raise ImportRefused(f"{folder} holds pytorch_model.bin, a pickle (loading one can run code): re-save it "
                            f"with save_pretrained(..., safe_serialization=True) to get model.safetensors")
    else:
        raise FileNotFoundError(f"no {HF_WEIGHTS} (or {HF_INDEX}) in {folder}")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        try:
            tensors.update(load_file(str(path)))
        except Exception as err:   # safetensors' own error (corrupt file), or bfloat16, which NumPy lacks
            raise ImportRefused(f"{path}: cannot read as NumPy arrays ({err}); "
                                f"save it in float32 with save_pretrained") from None
    return tensors


def _read_tokenizer(directory: Path) -> Any:
    """groundup's tokenizer of a run directory (char tokenizer.json, or BPE vocab.json + merges.txt), or None."""
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer

    if (directory / "tokenizer.json").is_file():
        return CharTokenizer.load(directory)
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return ByteLevelBPE.load(directory)
    return None


def load_run(run_dir: str | os.PathLike) -> tuple[Any, Any]:
    """(GPT, tokenizer or None) of a directory written by ``groundup train gpt`` (or ``GPT.save``)."""
    from groundup.models.gpt import GPT

    folder = Path(run_dir)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds no model.safetensors (is it a run directory of `groundup train gpt`?)")
    return GPT.load(folder), _read_tokenizer(folder)


def export_tokenizer(tokenizer: Any, out_dir: str | os.PathLike, model_max_length: int) -> list[str]:
    """Write ``tokenizer`` in Hugging Face's formats into ``out_dir``; returns the file names written."""
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _remove(folder, TOKENIZER_FILES)
    settings = {"model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
                "bos_token": None, "eos_token": None, "unk_token": None, "pad_token": None}
    if isinstance(tokenizer, ByteLevelBPE):
        tokenizer.save(folder)
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, **settings}
        written = ["vocab.json", "merges.txt"]
    elif isinstance(tokenizer, CharTokenizer):
        spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                          "ignore_merges": False, "vocab": {c: i for i, c in enumerate(tokenizer.chars)},
                          "merges": []}}
        (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **settings}
        written = ["tokenizer.json"]
    else:
        raise ExportError(f"no Hugging Face format for a {type(tokenizer).__name__}")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return [*written, "tokenizer_config.json"]


def import_tokenizer(hf_dir: str | os.PathLike) -> Any:
    """groundup's tokenizer from a transformers directory, or None when it has none groundup can run.

    vocab.json + merges.txt -> ByteLevelBPE; a tokenizer.json with a BPE model -> CharTokenizer when
    it has no merges and single-character tokens numbered in sorted order (what ``export_tokenizer``
    writes), ByteLevelBPE when it has a ByteLevel pre-tokenizer. Anything else raises ImportRefused.
    """
    from groundup.tokenizers import ByteLevelBPE, CharTokenizer

    folder = Path(hf_dir)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return ByteLevelBPE.load(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    vocab, merges = model.get("vocab"), model.get("merges") or []
    _need(model.get("type") == "BPE" and isinstance(vocab, dict),
          f"{path}: a {model.get('type')} tokenizer; groundup runs byte-level BPE and character tokenizers")
    chars = sorted(vocab, key=vocab.get)
    if not merges and spec.get("pre_tokenizer") is None and all(len(c) == 1 for c in chars) \
            and chars == sorted(chars) and [vocab[c] for c in chars] == list(range(len(chars))):
        return CharTokenizer("".join(chars))
    pre = spec.get("pre_tokenizer") or {}
    kinds = [pre.get("type")] + [p.get("type") for p in pre.get("pretokenizers", [])]
    _need("ByteLevel" in kinds, f"{path}: a BPE tokenizer without a ByteLevel pre-tokenizer; groundup's BPE is "
                                f"GPT-2's byte-level one")
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return ByteLevelBPE(vocab, pairs)


def export_hf(source: Any, out_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a GPT (or a run directory's) as a transformers directory: config.json, model.safetensors, tokenizer.

    Args:
        source: a run directory (its tokenizer comes along) or a ``GPT``.
        out_dir: created if needed; files of the same names are replaced.
        tokenizer: the tokenizer to write, when ``source`` is a model.

    Raises:
        ExportError: for a model no transformers class computes identically (the message says why).
    """
    from safetensors.numpy import save_file

    if isinstance(source, str | os.PathLike):
        model, run_tokenizer = load_run(source)
        tokenizer = tokenizer if tokenizer is not None else run_tokenizer
    else:
        model = source
    config, tensors = to_hf(model)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _remove(folder, (HF_INDEX, *TOKENIZER_FILES))   # an older export's index or tokenizer must not shadow this one
    save_file(tensors, str(folder / HF_WEIGHTS), metadata={"format": "pt", "producer": "groundup"})
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    if tokenizer is not None:
        export_tokenizer(tokenizer, folder, model.cfg.block_size)
    return folder


def _check_import_target(out: Path) -> None:
    """Refuse an ``out`` that holds anything but an earlier import: a training run would lose its model,
    optimizer and checkpoint, and other files (an export, say) would be mixed with the run's."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        earlier = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and "imported_from" in earlier:
        return
    what = "a training run" if (out / "state.json").exists() else "files that are not an earlier import"
    raise FileExistsError(f"{out} holds {what}, which the import would overwrite or mix with its own files; "
                          f"choose a new or empty directory")


def import_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Turn a transformers directory into a groundup run directory (model, config.json, tokenizer).

    The result loads with ``GPT.load(out_dir)`` and runs with ``groundup sample out_dir``. ``out_dir``
    must be new, empty, or the output of an earlier import (which is replaced).

    Raises:
        ImportRefused: for a model that groundup's GPT cannot compute identically, or a directory with
            no tokenizer groundup can run (``groundup sample`` needs one) or with more token ids than
            the model has embedding rows.
        FileNotFoundError: for a directory without config.json or weights.
        FileExistsError: for an ``out_dir`` that holds a training run or other files.
    """
    from groundup.tokenizers import ByteLevelBPE

    folder = Path(hf_dir)
    _check_import_target(Path(out_dir))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {folder} (is it a directory written by save_pretrained?)")
    hf_config = json.loads((folder / "config.json").read_text())
    if "model_type" not in hf_config:
        hint = " (it looks like a groundup run directory)" if "pos_encoding" in hf_config else ""
        raise ImportRefused(f"{folder / 'config.json'} is not a transformers config: it has no model_type{hint}")
    tokenizer = import_tokenizer(folder)
    if tokenizer is None:
        raise ImportRefused(f"{folder} has no tokenizer (vocab.json + merges.txt, or tokenizer.json); save one "
                            f"there with tokenizer.save_pretrained({str(folder)!r})")
    model = from_hf(hf_config, read_hf_weights(folder))
    ids = max(tokenizer.vocab.values()) + 1 if isinstance(tokenizer, ByteLevelBPE) else tokenizer.vocab_size
    _need(ids <= model.cfg.vocab_size,
          f"the tokenizer has {ids} token ids, more than the model's vocab_size={model.cfg.vocab_size} "
          f"embedding rows (they do not belong together)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove(out, TOKENIZER_FILES)
    tokenizer.save(out)
    (out / "run.json").write_text(json.dumps({"imported_from": str(folder.resolve()), "model": model.cfg.to_dict(),
                                              "hf_architecture": (hf_config.get("architectures") or [None])[0]},
                                             indent=1) + "\n")
    model.save(out)   # last: its state.json records the digests of the tokenizer and run.json just written
    return out


# ----------------------------------------------------------------------------- checking an export
def verify_hf(model: Any, hf_dir: str | os.PathLike, seed: int = 0) -> float:
    """Max |groundup logits - transformers logits| on a random batch (2, block_size), float32.

    Loads ``hf_dir`` with ``transformers.AutoModelForCausalLM`` (eager attention), so it needs torch
    and transformers; raises groundup.interop.MissingDependency naming them when they are missing.
    """
    from groundup.interop import require

    torch = require("torch", "checking an export against transformers")
    transformers = require("transformers", "checking an export against transformers")
    cfg = model.cfg
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(2, cfg.block_size))
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()                      # a one-line check: no loading bar in the command's output
    try:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager")
    finally:
        if shown:
            bars.enable_progress_bar()
    hf_model.eval()
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(ids)).logits.float().numpy()
    from groundup.nn.utils import eval_mode
    from groundup.tensor import no_grad

    with eval_mode(model), no_grad():
        ours = np.asarray(model(ids).numpy(), dtype=np.float32)
    return float(np.abs(ours - theirs).max())
