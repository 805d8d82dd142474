"""PyTorch twins of groundup's model families, for ``benchmarks/bench_families.py``.

Each twin has the architecture of the groundup model and the same parameter names (so
``load_state_dict`` copies groundup's initial weights with no transposes), and uses PyTorch's
fastest CPU path for the same maths: ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` for whole sequences,
``nn.GRUCell`` for the attention decoder's steps, ``nn.Conv2d``, ``nn.Transformer`` (whose
attention calls ``F.scaled_dot_product_attention``) and ``F.scaled_dot_product_attention`` in BERT.

    groundup model                          twin here
    models.mlp.MLP                          MLP            net.{i}.weight/bias
    models.cnn.CNN                          CNN            features.{i}.weight/bias, head
    models.rnn_lm.RNNLM                     RNNLM          wte, rnn.weight_ih_l0.., lm_head
    models.seq2seq.Seq2Seq (attention)      Seq2Seq        src_embed, encoder, tgt_embed, decoder (a GRUCell:
                                                           ``decoder.weight_ih`` <- ``decoder.weight_ih_l0``), attn, out
    models.transformer_seq2seq              TransformerSeq2Seq  src_embed, tgt_embed, pos.pe, transformer, out
    models.bert.BERT (MLM loss)             BERT           wte, wpe, wse, ln_embd, blocks.{i}.., mlm_head,
                                                           pooler, classifier
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "CNN", "RNNLM", "Seq2Seq", "TransformerSeq2Seq", "BERT", "load_from_groundup"]

IGNORE_INDEX = -1


def load_from_groundup(twin: nn.Module, state: dict[str, np.ndarray], rename: dict[str, str] | None = None) -> None:
    """Copy a groundup ``state_dict()`` into ``twin`` (strict: every name must match, after ``rename``)."""
    rename = rename or {}
    tensors = {rename.get(k, k): torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    twin.load_state_dict(tensors, strict=True)


class MLP(nn.Module):
    """Linear -> activation -> ... -> Linear, as ``groundup.models.mlp.MLP`` (``net`` is a Sequential)."""

    def __init__(self, in_features: int, hidden_sizes: tuple[int, ...], num_classes: int, activation: str = "relu"):
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}[activation]
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), act()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(x.reshape(x.shape[0], -1)), y)      # (N, in) -> (N, classes)


class CNN(nn.Module):
    """[Conv2d -> ReLU -> MaxPool2d(2)] x L -> Linear, as ``groundup.models.cnn.CNN``."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], kernel_size: int, feature_size: int,
                 num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [nn.Conv2d(width, c, kernel_size, padding=kernel_size // 2), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * feature_size ** 2, num_classes)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1) if x.ndim == 3 else x)            # (N, C, s, s)
        return F.cross_entropy(self.head(h.flatten(1)), y)                  # (N, C*s*s) -> (N, classes)


class RNNLM(nn.Module):
    """Embedding -> nn.RNN / GRU / LSTM (batch_first) -> Linear, as ``groundup.models.rnn_lm.RNNLM``."""

    def __init__(self, vocab_size: int, cell: str, n_embd: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell](n_embd, hidden_size, num_layers=num_layers,
                                                                       batch_first=True)
        self.lm_head = nn.Linear(hidden_size, vocab_size)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(self.wte(idx))                                 # (B, T, H)
        logits = self.lm_head(states)                                       # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class AdditiveAttention(nn.Module):
    def __init__(self, query_size: int, key_size: int, attn_size: int):
        super().__init__()
        self.query_proj = nn.Linear(query_size, attn_size, bias=False)
        self.key_proj = nn.Linear(key_size, attn_size)
        self.score = nn.Linear(attn_size, 1, bias=False)


class Seq2Seq(nn.Module):
    """GRU encoder (nn.GRU) and a GRUCell decoder with additive attention, as ``groundup.models.seq2seq``."""

    # groundup's decoder is a one-layer nn.GRU; here it is the GRUCell that torch steps fastest
    RENAME = {f"decoder.{w}_l0": f"decoder.{w}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, n_embd: int, hidden_size: int, attn_size: int):
        super().__init__()
        self.tgt_vocab_size = tgt_vocab_size
        self.src_embed = nn.Embedding(src_vocab_size, n_embd)
        self.encoder = nn.GRU(n_embd, hidden_size, batch_first=True)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, n_embd)
        self.decoder = nn.GRUCell(n_embd + hidden_size, hidden_size)
        self.attn = AdditiveAttention(hidden_size, hidden_size, attn_size)
        self.out = nn.Linear(2 * hidden_size, tgt_vocab_size)

    def loss(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
             tgt_out: torch.Tensor) -> torch.Tensor:
        enc, _ = self.encoder(self.src_embed(src))                          # (B, S, H)
        last = src_mask.sum(1) - 1
        state = enc[torch.arange(src.shape[0]), last]                       # (B, H) summary at the last real token
        keys = self.attn.key_proj(enc)                                      # (B, S, A)
        pad = ~src_mask
        embedded = self.tgt_embed(tgt_in)                                   # (B, U, C)
        logits = []
        for t in range(tgt_in.shape[1]):
            hidden = torch.tanh(keys + self.attn.query_proj(state).unsqueeze(1))    # (B, S, A)
            scores = self.attn.score(hidden).squeeze(-1).masked_fill(pad, float("-inf"))   # (B, S)
            weights = torch.softmax(scores, dim=-1)
            context = torch.bmm(weights.unsqueeze(1), enc).squeeze(1)               # (B, 1, S) @ (B, S, H) -> (B, H)
            state = self.decoder(torch.cat([embedded[:, t], context], dim=-1), state)   # (B, H)
            logits.append(self.out(torch.cat([state, context], dim=-1)))            # (B, V)
        out = torch.stack(logits, dim=1)                                    # (B, U, V)
        return F.cross_entropy(out.reshape(-1, self.tgt_vocab_size), tgt_out.reshape(-1), ignore_index=IGNORE_INDEX)


class _Positions(nn.Module):
    def __init__(self, pe: np.ndarray):
        super().__init__()
        self.register_buffer("pe", torch.from_numpy(np.ascontiguousarray(pe)))


class TransformerSeq2Seq(nn.Module):
    """Pre-norm nn.Transformer encoder-decoder, as ``groundup.models.transformer_seq2seq``."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int, nhead: int, num_encoder_layers: int,
                 num_decoder_layers: int, dim_feedforward: int, activation: str, pe: np.ndarray):
        super().__init__()
        self.d_model, self.tgt_vocab_size = d_model, tgt_vocab_size
        self.src_embed = nn.Embedding(src_vocab_size, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model)
        self.pos = _Positions(pe)
        with warnings.catch_warnings():          # "enable_nested_tensor is True, but ... norm_first was True"
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(d_model, nhead, num_encoder_layers, num_decoder_layers,
                                              dim_feedforward, dropout=0.0, activation=activation, batch_first=True,
                                              norm_first=True)
        self.out = nn.Linear(d_model, tgt_vocab_size)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        return table(ids) * math.sqrt(self.d_model) + self.pos.pe[:ids.shape[1]]   # (B, L, C)

    def loss(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
             tgt_out: torch.Tensor) -> torch.Tensor:
        pad = ~src_mask
        steps = tgt_in.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(steps)
        hidden = self.transformer(self._embed(self.src_embed, src), self._embed(self.tgt_embed, tgt_in),
                                  tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=pad,
                                  memory_key_padding_mask=pad)              # (B, T, C)
        logits = self.out(hidden)                                           # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, self.tgt_vocab_size), tgt_out.reshape(-1), ignore_index=IGNORE_INDEX)


class _BertAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query, self.key = nn.Linear(n_embd, n_embd), nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q = self.query(x).view(B, T, H, D).transpose(1, 2)                  # (B, H, T, D)
        k = self.key(x).view(B, T, H, D).transpose(1, 2)                    # (B, H, T, D)
        v = self.value(x).view(B, T, H, D).transpose(1, 2)                  # (B, H, T, D)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)     # (B, H, T, D)
        return self.proj(z.transpose(1, 2).reshape(B, T, C))                # (B, T, C)


class _BertMLP(nn.Module):
    def __init__(self, n_embd: int, inner: int, approximate: str):
        super().__init__()
        self.fc, self.proj, self.approximate = nn.Linear(n_embd, inner), nn.Linear(inner, n_embd), approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate=self.approximate))


class _BertBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, inner: int, eps: float, approximate: str, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn, self.ln_1 = _BertAttention(n_embd, n_head), nn.LayerNorm(n_embd, eps=eps)
        self.mlp, self.ln_2 = _BertMLP(n_embd, inner, approximate), nn.LayerNorm(n_embd, eps=eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), key_mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, key_mask))
        return self.ln_2(x + self.mlp(x))


class _MLMHead(nn.Module):
    def __init__(self, n_embd: int, vocab_size: int, eps: float, approximate: str):
        super().__init__()
        self.dense, self.ln = nn.Linear(n_embd, n_embd), nn.LayerNorm(n_embd, eps=eps)
        self.decoder, self.approximate = nn.Linear(n_embd, vocab_size), approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(F.gelu(self.dense(x), approximate=self.approximate)))   # (N, V)


class BERT(nn.Module):
    """A BERT encoder with the MLM loss of ``groundup.models.bert.BERT`` (labels -100 are skipped)."""

    def __init__(self, cfg: Any):
        super().__init__()
        approximate = {"gelu": "none", "gelu_tanh": "tanh"}[cfg.activation]
        eps, C = cfg.layer_norm_eps, cfg.n_embd
        self.vocab_size = cfg.vocab_size
        self.wte, self.wpe = nn.Embedding(cfg.vocab_size, C), nn.Embedding(cfg.block_size, C)
        self.wse = nn.Embedding(cfg.type_vocab_size, C) if cfg.type_vocab_size else None
        self.ln_embd = nn.LayerNorm(C, eps=eps)
        self.blocks = nn.ModuleList([_BertBlock(C, cfg.n_head, cfg.inner, eps, approximate, cfg.norm == "pre")
                                     for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(C, eps=eps) if cfg.norm == "pre" else nn.Identity()
        self.mlm_head = _MLMHead(C, cfg.vocab_size, eps, approximate)
        self.mlm_head.decoder.weight = self.wte.weight                      # tied, as in BERT
        self.pooler, self.classifier = nn.Linear(C, C), nn.Linear(C, cfg.num_labels)

    def loss(self, idx: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))                       # (B, T, C)
        if self.wse is not None:
            x = x + self.wse(torch.zeros_like(idx))
        x = self.ln_embd(x)
        key_mask = attention_mask[:, None, None, :]                         # (B, 1, 1, T) True = attend
        for block in self.blocks:
            x = block(x, key_mask)                                          # (B, T, C)
        x = self.ln_f(x)
        flat = labels.reshape(-1)
        chosen = torch.nonzero(flat != -100).squeeze(1)
        logits = self.mlm_head(x.reshape(B * T, -1)[chosen])                # (N, V)
        return F.cross_entropy(logits, flat[chosen])
