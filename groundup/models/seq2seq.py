"""A GRU encoder-decoder, with or without additive (Bahdanau) attention.

    encoder:  src (B, S) --embed--> (B, S, C) --GRU--> enc (B, S, H); summary h_S = enc at the last real token
    decoder:  s_0 = h_S; for each output step t (teacher forcing: y_{t-1} is the true previous token)
                  c_t = h_S                                      (plain: one fixed-size summary)
                  c_t = sum_j a_tj enc_j,                         (attention)
                        a_t = softmax_j(v . tanh(W s_{t-1} + U enc_j))   over the real source tokens only
                  s_t = GRU([embed(y_{t-1}); c_t], s_{t-1})
                  logits_t = out([s_t; c_t])                      (B, V)

The two variants share every layer except the attention's W, U and v, so the only difference is
where the context comes from: one summary vector of the whole input, or a fresh weighted mix of
the encoder's states at every output step. The plain decoder's context does not depend on the
step, so teacher-forced training runs all steps in one fused GRU call; with attention the
context depends on s_{t-1}, so the decoder steps through time.

Source padding: the encoder is unidirectional and the source is right-padded, so real positions
never see padding; the summary is taken at each row's last real token and attention scores of
padding positions are set to -inf before the softmax (their weights are exactly 0).

References:
    Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder", https://arxiv.org/abs/1406.1078
    Sutskever et al. 2014, "Sequence to Sequence Learning with Neural Networks", https://arxiv.org/abs/1409.3215
    Bahdanau et al. 2015, "Neural Machine Translation by Jointly Learning to Align and Translate",
        https://arxiv.org/abs/1409.0473
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup import creation
from groundup import functional as F
from groundup.backend import to_device, to_numpy
from groundup.nn import GRU, Embedding, Linear, Module
from groundup.nn.scans import GRUScan
from groundup.ops import additive_attention
from groundup.tensor import Tensor, no_grad

__all__ = ["Seq2SeqConfig", "Seq2Seq", "AdditiveAttention", "IGNORE_INDEX"]

IGNORE_INDEX = -1  # target id of padding positions


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Sizes of a GRU encoder-decoder.

    Attributes:
        src_vocab_size: source token ids (id ``pad_id`` is padding).
        tgt_vocab_size: target token ids, including ``bos_id`` and ``eos_id``.
        n_embd: C, width of the source and target embeddings.
        hidden_size: H, width of the encoder and decoder states (and the fixed summary).
        attention: use additive attention (Bahdanau) instead of the fixed summary as the context.
        attn_size: A, width of the attention's hidden layer (default: hidden_size).
        pad_id, bos_id, eos_id: special ids (pad in the source; bos/eos in the target).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    n_embd: int = 32
    hidden_size: int = 64
    attention: bool = True
    attn_size: int | None = None
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "n_embd", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Seq2SeqConfig: {name} must be a positive int, got {value!r}")
        if self.attn_size is not None and self.attn_size < 1:
            raise ValueError(f"Seq2SeqConfig: attn_size must be a positive int or None, got {self.attn_size!r}")
        for name in ("bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.tgt_vocab_size:
                raise ValueError(f"Seq2SeqConfig: {name}={getattr(self, name)} is not a target id "
                                 f"(tgt_vocab_size={self.tgt_vocab_size})")


class AdditiveAttention(Module):
    """Bahdanau attention: a_j = softmax_j(v . tanh(W q + U k_j)) over the unmasked j; context = sum_j a_j k_j.

    Args:
        query_size: width of the query (the decoder state).
        key_size: width of the keys/values (the encoder states).
        attn_size: A, width of the hidden layer that scores each pair.
    """

    def __init__(self, query_size: int, key_size: int, attn_size: int):
        super().__init__()
        self.query_proj = Linear(query_size, attn_size, bias=False)   # W
        self.key_proj = Linear(key_size, attn_size)                   # U (its bias plays b_a)
        self.score = Linear(attn_size, 1, bias=False)                 # v

    def project_keys(self, keys: Tensor) -> Tensor:
        """U k_j for every source position, computed once per sequence.   (B, S, K) -> (B, S, A)"""
        return self.key_proj(keys)

    def forward(self, query: Tensor, keys: Tensor, projected_keys: Tensor, mask: Any) -> tuple[Tensor, Tensor]:
        """One decoder step's attention.

        Args:
            query: (B, Q) decoder state s_{t-1}.
            keys: (B, S, K) encoder states (also the values).
            projected_keys: (B, S, A) from ``project_keys(keys)``.
            mask: (B, S) bool (array or Tensor), True at real source tokens; every row needs one.
        Returns:
            (context (B, K), weights (B, S)); weights are 0 where mask is False and sum to 1.
        """
        hidden = (projected_keys + self.query_proj(query).unsqueeze(1)).tanh()   # (B, S, A)
        scores = self.score(hidden).squeeze(-1)                                     # (B, S)
        real = to_device(mask.data if isinstance(mask, Tensor) else mask, scores.device)
        scores = scores.masked_fill(~real, float("-inf"))
        weights = scores.softmax(dim=-1)                                            # (B, S)
        context = (weights.unsqueeze(1) @ keys).squeeze(1)                          # (B, 1, S) @ (B, S, K) -> (B, K)
        return context, weights

    def fused(self, query: Tensor, keys: Tensor, projected_keys: Tensor, mask: Any) -> Tensor:
        """The context of ``forward`` in one graph node (``groundup.ops.additive_attention``).   -> (B, K)

        The same maths as ``forward`` (tested equal in float64, values and gradients), without the
        weights; the teacher-forced decoder calls it at every step.
        """
        real = to_device(mask.data if isinstance(mask, Tensor) else mask, query.device)
        return additive_attention.AdditiveAttention.apply(query, keys, projected_keys, self.query_proj.weight,
                                                          self.score.weight, mask=real)


class Seq2Seq(Module):
    """GRU encoder-decoder; ``cfg.attention`` picks additive attention or the fixed summary.

    Submodules: ``src_embed`` Embedding(V_src, C), ``encoder`` GRU(C, H), ``tgt_embed`` Embedding(V_tgt, C),
    ``decoder`` GRU(C + H, H), ``attn`` AdditiveAttention(H, H, A) (only with attention), ``out`` Linear(2H, V_tgt).
    """

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_size
        self.src_embed = Embedding(cfg.src_vocab_size, cfg.n_embd)
        self.encoder = GRU(cfg.n_embd, hidden, batch_first=True)
        self.tgt_embed = Embedding(cfg.tgt_vocab_size, cfg.n_embd)
        self.decoder = GRU(cfg.n_embd + hidden, hidden, batch_first=True)
        self.attn = AdditiveAttention(hidden, hidden, cfg.attn_size or hidden) if cfg.attention else None
        self.out = Linear(2 * hidden, cfg.tgt_vocab_size)

    # ------------------------------------------------------------------ encoder
    def _check_source(self, src: Any, src_mask: Any) -> tuple[Tensor, np.ndarray]:
        device = self.out.weight.device
        src = src if isinstance(src, Tensor) else Tensor(np.asarray(src, dtype=np.int64), device=device)
        mask = to_numpy(src_mask.data if isinstance(src_mask, Tensor) else src_mask)
        if src.ndim != 2:
            raise ValueError(f"Seq2Seq: expected source ids of shape (B, S), got {src.shape}")
        if tuple(mask.shape) != tuple(src.shape) or mask.dtype != bool:
            raise ValueError(f"Seq2Seq: src_mask must be bool of the source's shape {src.shape}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        lengths = mask.sum(axis=1)
        if (lengths == 0).any():
            raise ValueError(f"Seq2Seq: source rows {np.flatnonzero(lengths == 0).tolist()} have no real tokens")
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("Seq2Seq: src_mask must be right-padded (True for the first len tokens, then False)")
        return src, mask

    def encode(self, src: Tensor, src_mask: Any) -> tuple[Tensor, Tensor]:
        """Encoder states and the fixed-size summary.

        Args:
            src: (B, S) source ids, right-padded.
            src_mask: (B, S) bool, True at real tokens.
        Returns:
            (enc (B, S, H), summary (B, H) = enc at each row's last real token).
        """
        enc, summary, _ = self._encode(src, src_mask)
        return enc, summary

    def _encode(self, src: Any, src_mask: Any) -> tuple[Tensor, Tensor, np.ndarray]:
        """``encode`` plus the checked mask as an array."""
        src, mask = self._check_source(src, src_mask)
        enc, _ = self.encoder(self.src_embed(src))                             # (B, S, H)
        last = mask.sum(axis=1) - 1                                              # (B,) last real position
        summary = enc[np.arange(src.shape[0]), last]                             # (B, H)
        return enc, summary, mask

    # ------------------------------------------------------------------ decoder
    def _step(self, y_prev: Tensor, state: Tensor, enc: Tensor, keys: Tensor | None, mask: np.ndarray,
              summary: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """One decoder step.   y_prev (B,) ids, state (B, H) -> (logits (B, V), new state (B, H), weights (B, S))"""
        if self.attn is not None:
            context, weights = self.attn(state, enc, keys, mask)                # (B, H), (B, S)
        else:
            context, weights = summary, None
        x = creation.cat([self.tgt_embed(y_prev), context], dim=-1)             # (B, C + H)
        out, _ = self.decoder(x.unsqueeze(1), state.unsqueeze(0))               # (B, 1, H)
        new_state = out.squeeze(1)                                               # (B, H)
        logits = self.out(creation.cat([new_state, context], dim=-1))           # (B, V)
        return logits, new_state, weights

    def forward(self, src: Tensor, src_mask: Any, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: (B, S) source ids; src_mask (B, S) bool, True at real tokens.
            tgt_in: (B, U) decoder inputs: bos followed by the target shifted right.
        Returns:
            logits (B, U, V_tgt) for the next target token at every step.
        """
        enc, summary, mask = self._encode(src, src_mask)
        tgt_in = tgt_in if isinstance(tgt_in, Tensor) else Tensor(np.asarray(tgt_in, dtype=np.int64),
                                                                  device=self.out.weight.device)
        steps = tgt_in.shape[1]
        if self.attn is None:
            # the context is the same at every step, so all steps run in one fused GRU call
            context = summary.unsqueeze(1).expand(summary.shape[0], steps, summary.shape[1])   # (B, U, H)
            x = creation.cat([self.tgt_embed(tgt_in), context], dim=-1)                        # (B, U, C + H)
            states, _ = self.decoder(x, summary.unsqueeze(0))                                  # (B, U, H)
            return self.out(creation.cat([states, context], dim=-1))                           # (B, U, V)
        return self._attention_decoder(tgt_in, enc, summary, mask)

    def _attention_decoder(self, tgt_in: Tensor, enc: Tensor, summary: Tensor, mask: np.ndarray) -> Tensor:
        """Teacher-forced logits (B, U, V) with attention: ``_step`` for every t, in fewer graph nodes.

        What does not depend on the previous state is computed for all steps at once: the target
        embeddings and their part of the decoder's input projection (W_ih = [W_embed | W_context], so
        W_ih [e; c] = W_embed e + W_context c), and the output layer over every [s_t; c_t]. Each step
        is then the fused attention, the context's projection and one fused GRU step: 7 nodes
        instead of about 30 (greedy decoding runs ``_step``; the two are tested equal).
        """
        cfg, dec = self.cfg, self.decoder
        keys = self.attn.project_keys(enc)                                       # (B, S, A)
        embedded = self.tgt_embed(tgt_in).transpose(0, 1)                        # (B, U, C) -> (U, B, C)
        weight_ih = dec.weight_ih_l0                                             # (3H, C + H)
        x_embed = F.linear(embedded, weight_ih[:, :cfg.n_embd], dec.bias_ih_l0)  # (U, B, 3H), one GEMM
        weight_context = weight_ih[:, cfg.n_embd:]                               # (3H, H)
        state, states, contexts = summary, [], []
        for t in range(tgt_in.shape[1]):
            context = self.attn.fused(state, enc, keys, mask)                   # (B, H)
            xi = (x_embed[t] + F.linear(context, weight_context)).unsqueeze(0)  # (1, B, 3H)
            state = GRUScan.apply(xi, state, dec.weight_hh_l0, dec.bias_hh_l0)[0]   # (B, H)
            states.append(state)
            contexts.append(context)
        both = creation.cat([creation.stack(states, dim=1), creation.stack(contexts, dim=1)], dim=-1)   # (B, U, 2H)
        return self.out(both)                                                    # (B, U, V)

    def loss(self, src: Tensor, src_mask: Any, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """Mean cross-entropy of the teacher-forced predictions; ``IGNORE_INDEX`` targets are skipped.

        Args:
            src, src_mask, tgt_in: as ``forward``.
            tgt_out: (B, U) target ids (tgt_in shifted left, ending with eos), -1 at padding.
        """
        logits = self(src, src_mask, tgt_in)                                    # (B, U, V)
        target = tgt_out.data if isinstance(tgt_out, Tensor) else np.asarray(tgt_out)
        if target.shape != tuple(logits.shape[:2]):
            raise ValueError(f"Seq2Seq.loss: tgt_out of shape {target.shape} does not match tgt_in "
                             f"{tuple(logits.shape[:2])}")
        return F.cross_entropy(logits.reshape(-1, self.cfg.tgt_vocab_size), target.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    @no_grad()
    def greedy_decode(self, src: Tensor, src_mask: Any, max_len: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode by feeding back the most likely token, until eos or ``max_len`` tokens.

        Args:
            src: (B, S) source ids; src_mask (B, S) bool.
            max_len: U, most output tokens (eos included).
        Returns:
            (ids (B, U) int64, with eos_id after a row's end; attention weights (B, U, S), or None
            without attention).
        """
        enc, summary, mask = self._encode(src, src_mask)
        keys = self.attn.project_keys(enc) if self.attn is not None else None
        batch = src.shape[0]
        y_prev = Tensor(np.full(batch, self.cfg.bos_id, dtype=np.int64), device=self.out.weight.device)
        ids = np.full((batch, max_len), self.cfg.eos_id, dtype=np.int64)        # (B, U)
        weights = np.zeros((batch, max_len, src.shape[1]), dtype=np.float32) if keys is not None else None
        done = np.zeros(batch, dtype=bool)
        state = summary
        for t in range(max_len):
            logits, state, step_weights = self._step(y_prev, state, enc, keys, mask, summary)
            nxt = logits.numpy().argmax(axis=-1)                                 # (B,)
            nxt[done] = self.cfg.eos_id
            ids[:, t] = nxt
            if weights is not None:
                weights[:, t] = step_weights.numpy()
            done |= nxt == self.cfg.eos_id
            if done.all():
                break
            y_prev = Tensor(nxt.astype(np.int64), device=self.out.weight.device)
        return ids, weights
