"""An encoder-decoder transformer with the interface of ``groundup.models.seq2seq.Seq2Seq``.

    encoder:  src (B, S) --embed * sqrt(C) + pe--> (B, S, C) --N pre-norm encoder layers + LayerNorm--> memory (B, S, C)
    decoder:  tgt_in (B, T) --embed * sqrt(C) + pe--> (B, T, C)
                  --M pre-norm decoder layers (causal self-attention, cross-attention to memory) + LayerNorm-->
                  (B, T, C) --out--> logits (B, T, V_tgt)

Every layer is groundup's own ``nn.Transformer`` (torch.nn.Transformer's parameter names, batch_first,
norm_first=True), so a torch ``nn.Transformer`` with the same arguments loads ``transformer.*`` unchanged.
The source padding mask is the key padding mask of the encoder's self-attention and of the decoder's
cross-attention, so padded source positions get exactly zero attention weight and never change the
output; the decoder's self-attention is causal, so the logits at step t depend on ``tgt_in[:, :t + 1]``.

Positions: the fixed sinusoidal table of the paper (section 3.5), added after the embeddings are scaled
by sqrt(C). NOTE: the embeddings start as N(0, 1/C) (fairseq's and tensor2tensor's choice), so after the
scaling they are N(0, 1), the size of the position table; torch's N(0, 1) default would start them
sqrt(C) times larger and drown the positions.

Drop-in for Seq2Seq: ``forward(src, src_mask, tgt_in)``, ``loss(..., tgt_out)`` with ``IGNORE_INDEX``
targets skipped, ``greedy_decode(src, src_mask, max_len) -> (ids, weights)`` and an ``attn`` attribute
(the last decoder layer's cross-attention), so ``groundup.roadmap.stages.attention``'s ``train_seq2seq``
and ``evaluate_seq2seq`` run it unchanged. The attention weights returned by greedy decoding are those of
the last decoder layer's cross-attention, averaged over heads (see ``cross_attention_weights``).

References:
    Vaswani et al. 2017, "Attention Is All You Need", https://arxiv.org/abs/1706.03762
    Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture" (pre-norm),
        https://arxiv.org/abs/2002.04745
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup import functional as F
from groundup.backend import to_numpy
from groundup.models.seq2seq import IGNORE_INDEX
from groundup.nn import init
from groundup.nn.attention import MultiheadAttention
from groundup.nn.hooks import HookedModule
from groundup.nn.layers import Dropout, Embedding, Linear
from groundup.nn.positional import SinusoidalPositionalEncoding
from groundup.nn.transformer import Transformer, generate_square_subsequent_mask
from groundup.tensor import Tensor, no_grad

__all__ = ["TransformerSeq2SeqConfig", "TransformerSeq2Seq", "IGNORE_INDEX"]

ACTIVATIONS = ("relu", "gelu")


@dataclass(frozen=True)
class TransformerSeq2SeqConfig:
    """Sizes of an encoder-decoder transformer (field names of torch.nn.Transformer; the vocabulary and
    special-id fields are those of ``Seq2SeqConfig``).

    Attributes:
        src_vocab_size: source token ids (id ``pad_id`` is padding).
        tgt_vocab_size: target token ids, including ``bos_id`` and ``eos_id``.
        d_model: C, the width of embeddings and of every layer's input and output.
        nhead: H, attention heads per layer (d_model must be divisible by it).
        num_encoder_layers, num_decoder_layers: depth of the two stacks.
        dim_feedforward: hidden width of each layer's feed-forward network.
        dropout: on embeddings + positions, attention weights, residual branches and feed-forward hidden.
        max_len: longest source and longest decoder input (the size of the position table).
        activation: 'relu' (torch's default) or 'gelu' in the feed-forward networks.
        pad_id, bos_id, eos_id: special ids (pad in the source; bos/eos in the target).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 64
    nhead: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.0
    max_len: int = 64
    activation: str = "relu"
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "nhead", "num_encoder_layers",
                     "num_decoder_layers", "dim_feedforward", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerSeq2SeqConfig: {name} must be a positive int, got {value!r}")
        if self.d_model % self.nhead:
            raise ValueError(f"TransformerSeq2SeqConfig: d_model={self.d_model} must be divisible by "
                             f"nhead={self.nhead}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerSeq2SeqConfig: dropout must be a float in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TransformerSeq2SeqConfig: activation must be one of {ACTIVATIONS}, got "
                             f"{self.activation!r}")
        for name, vocab in (("pad_id", "src_vocab_size"), ("bos_id", "tgt_vocab_size"),
                            ("eos_id", "tgt_vocab_size")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < getattr(self, vocab):
                raise ValueError(f"TransformerSeq2SeqConfig: {name}={value!r} is not an id of {vocab}="
                                 f"{getattr(self, vocab)}")


class TransformerSeq2Seq(HookedModule):
    """Pre-norm encoder-decoder transformer with Seq2Seq's interface.

    Submodules: ``src_embed`` Embedding(V_src, C), ``tgt_embed`` Embedding(V_tgt, C), ``pos``
    SinusoidalPositionalEncoding(C, max_len) (a buffer ``pos.pe``), ``dropout``, ``transformer``
    nn.Transformer(C, H, N, M, F, batch_first=True, norm_first=True), ``out`` Linear(C, V_tgt).
    ``attn`` is the last decoder layer's cross-attention (``transformer.decoder.layers[-1].multihead_attn``),
    a read-only alias: it is not registered twice.
    """

    def __init__(self, cfg: TransformerSeq2SeqConfig):
        super().__init__()
        if not isinstance(cfg, TransformerSeq2SeqConfig):
            raise TypeError(f"TransformerSeq2Seq needs a TransformerSeq2SeqConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        width = cfg.d_model
        self.src_embed = Embedding(cfg.src_vocab_size, width)
        self.tgt_embed = Embedding(cfg.tgt_vocab_size, width)
        for table in (self.src_embed.weight, self.tgt_embed.weight):
            init.normal_(table, 0.0, width ** -0.5)                  # N(0, 1) after the sqrt(C) scaling
        self.pos = SinusoidalPositionalEncoding(width, cfg.max_len)
        self.dropout = Dropout(cfg.dropout)
        self.transformer = Transformer(width, cfg.nhead, cfg.num_encoder_layers, cfg.num_decoder_layers,
                                       cfg.dim_feedforward, cfg.dropout, activation=cfg.activation,
                                       batch_first=True, norm_first=True)
        self.out = Linear(width, cfg.tgt_vocab_size)

    @property
    def attn(self) -> MultiheadAttention:
        """The cross-attention whose weights ``greedy_decode`` returns (last decoder layer)."""
        return self.transformer.decoder.layers[-1].multihead_attn

    # ------------------------------------------------------------------ input checks
    def _device(self) -> str:
        return self.out.weight.device

    def _check_ids(self, ids: Any, name: str, vocab_size: int, allow: int | None = None) -> Tensor:
        """``ids`` (B, L) as an int64 Tensor on the model's device, after checking dtype, shape and range."""
        data = to_numpy(ids.data if isinstance(ids, Tensor) else np.asarray(ids))
        if data.dtype.kind not in "iu":
            raise TypeError(f"TransformerSeq2Seq: {name} must hold integer token ids, got dtype {data.dtype}")
        if data.ndim != 2 or 0 in data.shape:
            raise ValueError(f"TransformerSeq2Seq: {name} must have shape (B, L) with B, L >= 1, got "
                             f"{tuple(data.shape)}")
        if name != "tgt_out" and data.shape[1] > self.cfg.max_len:
            raise ValueError(f"TransformerSeq2Seq: {name} of shape {tuple(data.shape)} is longer than "
                             f"max_len={self.cfg.max_len}; build the model with a larger max_len")
        valid = (data >= 0) & (data < vocab_size)
        if allow is not None:
            valid |= data == allow
        if not valid.all():
            bad = data[~valid].flat[0]
            raise IndexError(f"TransformerSeq2Seq: {name} holds id {bad}, outside 0..{vocab_size - 1}"
                             + (f" (or {allow} to ignore)" if allow is not None else ""))
        if isinstance(ids, Tensor) and ids.dtype == np.int64 and ids.device == self._device():
            return ids
        return Tensor(data.astype(np.int64), device=self._device())

    def _check_source(self, src: Any, src_mask: Any) -> tuple[Tensor, np.ndarray]:
        """Source ids (B, S) as a Tensor, and the padding mask (B, S) as a bool array, True = padding."""
        src = self._check_ids(src, "src", self.cfg.src_vocab_size)
        mask = to_numpy(src_mask.data if isinstance(src_mask, Tensor) else np.asarray(src_mask))
        if tuple(mask.shape) != tuple(src.shape) or mask.dtype != bool:
            raise ValueError(f"TransformerSeq2Seq: src_mask must be bool of the source's shape {tuple(src.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        lengths = mask.sum(axis=1)
        if (lengths == 0).any():
            raise ValueError(f"TransformerSeq2Seq: source rows {np.flatnonzero(lengths == 0).tolist()} have no "
                             "real tokens")
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            # positions count from the row's start: left padding would shift them and change the result
            raise ValueError("TransformerSeq2Seq: src_mask must be right-padded (True for the first len tokens, "
                             "then False)")
        return src, ~mask

    def _check_target(self, tgt_in: Any, batch: int) -> Tensor:
        tgt_in = self._check_ids(tgt_in, "tgt_in", self.cfg.tgt_vocab_size)
        if tgt_in.shape[0] != batch:
            raise ValueError(f"TransformerSeq2Seq: tgt_in {tuple(tgt_in.shape)} and src have different batch "
                             f"sizes ({tgt_in.shape[0]} vs {batch})")
        return tgt_in

    # ------------------------------------------------------------------ the network
    def _embed(self, table: Embedding, ids: Tensor) -> Tensor:
        """ids (B, L) -> dropout(embed * sqrt(C) + pe[:L])   (B, L, C)"""
        return self.dropout(self.pos(table(ids) * math.sqrt(self.cfg.d_model)))

    def _causal_mask(self, steps: int) -> Tensor:
        return generate_square_subsequent_mask(steps, device=self._device(), dtype=self.out.weight.dtype)

    def encode(self, src: Any, src_mask: Any) -> Tensor:
        """Encoder output.

        Args:
            src: (B, S) source ids, right-padded.
            src_mask: (B, S) bool, True at real tokens.
        Returns:
            memory (B, S, C); rows at padded positions hold values that nothing attends to.
        """
        src, padding = self._check_source(src, src_mask)
        return self.transformer.encoder(self._embed(self.src_embed, src), src_key_padding_mask=padding)

    def _decode(self, tgt_in: Tensor, memory: Tensor, padding: np.ndarray) -> Tensor:
        """Checked tgt_in (B, T), memory (B, S, C), padding (B, S) True = pad -> logits (B, T, V)."""
        steps = tgt_in.shape[1]
        hidden = self.transformer.decoder(self._embed(self.tgt_embed, tgt_in), memory,
                                          tgt_mask=self._causal_mask(steps), tgt_is_causal=True,
                                          memory_key_padding_mask=padding)   # (B, T, C)
        return self.out(hidden)                                               # (B, T, V)

    def forward(self, src: Any, src_mask: Any, tgt_in: Any) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: (B, S) source ids; src_mask (B, S) bool, True at real tokens (right-padded).
            tgt_in: (B, T) decoder inputs: bos followed by the target shifted right.
        Returns:
            logits (B, T, V_tgt) for the next target token at every step; step t sees tgt_in[:, :t + 1].
        """
        src, padding = self._check_source(src, src_mask)
        tgt_in = self._check_target(tgt_in, src.shape[0])
        hidden = self.transformer(self._embed(self.src_embed, src), self._embed(self.tgt_embed, tgt_in),
                                  tgt_mask=self._causal_mask(tgt_in.shape[1]), tgt_is_causal=True,
                                  src_key_padding_mask=padding, memory_key_padding_mask=padding)   # (B, T, C)
        return self.out(hidden)                                                                     # (B, T, V)

    def loss(self, src: Any, src_mask: Any, tgt_in: Any, tgt_out: Any) -> Tensor:
        """Mean cross-entropy of the teacher-forced predictions; ``IGNORE_INDEX`` (-1) targets are skipped.

        Args:
            src, src_mask, tgt_in: as ``forward``.
            tgt_out: (B, T) target ids (tgt_in shifted left, ending with eos), -1 at padding.
        """
        logits = self(src, src_mask, tgt_in)                                   # (B, T, V)
        target = self._check_ids(tgt_out, "tgt_out", self.cfg.tgt_vocab_size, allow=IGNORE_INDEX)
        if tuple(target.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"TransformerSeq2Seq.loss: tgt_out of shape {tuple(target.shape)} does not match "
                             f"tgt_in {tuple(logits.shape[:2])}")
        return F.cross_entropy(logits.reshape(-1, self.cfg.tgt_vocab_size), target.reshape(-1),   # (B*T, V)
                               ignore_index=IGNORE_INDEX)

    # ------------------------------------------------------------------ inference
    @contextmanager
    def _inference(self) -> Iterator[None]:
        """no_grad and eval mode inside; every submodule's train/eval flag is restored afterwards."""
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            with no_grad():
                yield
        finally:
            for module, training in modes:
                module.training = training

    def _cross_weights(self, tgt_in: Tensor, memory: Tensor, padding: np.ndarray) -> Tensor:
        """Last decoder layer's cross-attention weights, averaged over heads.   -> (B, T, S)

        nn.TransformerDecoderLayer asks its attention for no weights (the fused path), so this re-runs
        the stack up to the last layer's cross-attention and calls that same MultiheadAttention with
        need_weights=True. The layers are pre-norm (x + sublayer(norm(x))), so its query is
        norm2(x + self_attn(norm1(x))) with x the last layer's input.
        """
        causal = self._causal_mask(tgt_in.shape[1])
        layers = self.transformer.decoder.layers
        x = self._embed(self.tgt_embed, tgt_in)                                    # (B, T, C)
        for i in range(len(layers) - 1):
            x = layers[i](x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=padding)
        last = layers[-1]
        h = last.norm1(x)
        x = x + last.dropout1(last.self_attn(h, h, h, attn_mask=causal, is_causal=True, need_weights=False)[0])
        _, weights = last.multihead_attn(last.norm2(x), memory, memory, key_padding_mask=padding,
                                         need_weights=True, average_attn_weights=True)   # (B, T, S)
        return weights

    def cross_attention_weights(self, src: Any, src_mask: Any, tgt_in: Any) -> np.ndarray:
        """Teacher-forced cross-attention weights of the last decoder layer, averaged over heads.

        Runs in eval mode without gradients (the mode is restored).

        Args:
            src, src_mask, tgt_in: as ``forward``.
        Returns:
            (B, T, S) float array; each row sums to 1 and is exactly 0 at padded source positions.
        """
        with self._inference():
            src, padding = self._check_source(src, src_mask)
            tgt_in = self._check_target(tgt_in, src.shape[0])
            memory = self.transformer.encoder(self._embed(self.src_embed, src), src_key_padding_mask=padding)
            return self._cross_weights(tgt_in, memory, padding).numpy()

    def greedy_decode(self, src: Any, src_mask: Any, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode by feeding back the most likely token, until every row has written eos or ``max_len`` tokens.

        No cache: every step re-runs the decoder on the whole prefix (bos + the tokens so far), all B rows
        at once; the encoder runs once. Runs in eval mode without gradients (the mode is restored).

        Args:
            src: (B, S) source ids; src_mask (B, S) bool, True at real tokens.
            max_len: U, most output tokens (eos included), at most ``cfg.max_len``.
        Returns:
            (ids (B, U) int64, with eos_id after a row's end; weights (B, U, S) float32, the last decoder
            layer's cross-attention averaged over heads for each output step, 0 for steps after every row
            has ended).
        """
        if not isinstance(max_len, (int, np.integer)) or isinstance(max_len, bool) \
                or not 1 <= max_len <= self.cfg.max_len:
            raise ValueError(f"TransformerSeq2Seq.greedy_decode: max_len must be an int in 1..{self.cfg.max_len} "
                             f"(cfg.max_len), got {max_len!r}")
        cfg = self.cfg
        with self._inference():
            src, padding = self._check_source(src, src_mask)
            batch = src.shape[0]
            memory = self.transformer.encoder(self._embed(self.src_embed, src),
                                              src_key_padding_mask=padding)                   # (B, S, C)
            prefix = np.full((batch, max_len + 1), cfg.eos_id, dtype=np.int64)                # (B, 1 + U)
            prefix[:, 0] = cfg.bos_id
            done = np.zeros(batch, dtype=bool)
            steps = 0
            while steps < max_len:
                tgt_in = Tensor(prefix[:, :steps + 1], device=self._device())                 # (B, t + 1)
                logits = self._decode(tgt_in, memory, padding)                               # (B, t + 1, V)
                nxt = to_numpy(logits.data[:, -1]).argmax(axis=-1)                           # (B,)
                nxt[done] = cfg.eos_id
                prefix[:, steps + 1] = nxt
                steps += 1
                done |= nxt == cfg.eos_id
                if done.all():
                    break
            weights = np.zeros((batch, max_len, src.shape[1]), dtype=np.float32)             # (B, U, S)
            # causal: the weights of step t on the final prefix are those it had when it was decoded
            tgt_in = Tensor(prefix[:, :steps], device=self._device())                        # (B, steps)
            weights[:, :steps] = to_numpy(self._cross_weights(tgt_in, memory, padding).data)
        return prefix[:, 1:], weights
