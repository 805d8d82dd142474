"""A character-level recurrent language model: embedding -> RNN / GRU / LSTM -> linear head.

    idx (B, T) --wte--> (B, T, C) --rnn--> (B, T, H) --lm_head--> logits (B, T, V)

The model reads a sequence one character at a time while carrying a memory, the hidden state
h_t (and, for an LSTM, the cell state c_t), and predicts the next character from it. The cell is
a config field, so a vanilla RNN, a GRU and an LSTM of the same size differ in one word. The
recurrent layer is ``groundup.nn.RNN`` / ``GRU`` / ``LSTM`` (torch semantics, fused scans over
time), so a whole padded batch trains with one call per layer.

Tokens follow makemore: id 0 is the separator "." that starts and ends a name, and padding
positions carry the target ``IGNORE_INDEX`` so they add nothing to the loss.

References:
    Karpathy, makemore (the RNN / GRU models and the names task): https://github.com/karpathy/makemore
    Elman 1990 (RNN); Hochreiter & Schmidhuber 1997 (LSTM); Cho et al. 2014 (GRU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup import functional as F
from groundup.nn import GRU, LSTM, RNN, Embedding, Linear, Module
from groundup.nn.utils import eval_mode
from groundup.tensor import Tensor, no_grad

__all__ = ["RNNLMConfig", "RNNLM", "IGNORE_INDEX", "CELLS"]

IGNORE_INDEX = -1  # target id of padding positions (F.cross_entropy's ignore_index)
CELLS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}

State = Any  # h (L, B, H) for rnn / gru, (h, c) for lstm


@dataclass(frozen=True)
class RNNLMConfig:
    """Size of a character-level recurrent language model.

    Attributes:
        vocab_size: V, number of token ids (27 for names: "." and a-z).
        cell: "rnn" (Elman, tanh), "gru" or "lstm".
        n_embd: C, width of the character embedding.
        hidden_size: H, width of the hidden state.
        num_layers: stacked recurrent layers.
    """

    vocab_size: int = 27
    cell: str = "gru"
    n_embd: int = 64
    hidden_size: int = 128
    num_layers: int = 1

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"RNNLMConfig: cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        for name in ("vocab_size", "n_embd", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RNNLMConfig: {name} must be a positive int, got {value!r}")


class RNNLM(Module):
    """Embedding -> recurrent layer(s) -> linear head over the vocabulary.

    Submodules: ``wte`` Embedding(V, C); ``rnn`` nn.RNN / GRU / LSTM(C, H, num_layers, batch_first=True);
    ``lm_head`` Linear(H, V).

    ``lookup_projection`` (default True) picks how the first recurrent layer gets its input projection
    x_t W_ih^T, the same numbers either way: False runs the readable ``rnn(wte(idx))``; True projects the
    embedding table once, wte W_ih^T (V, G*H), and looks its rows up by token id, which trades the
    (B*T, C) x (C, G*H) GEMM forward and two such GEMMs backward for a (V, C) one and a (V, B*T) one.
    """

    lookup_projection: bool = True

    def __init__(self, cfg: RNNLMConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = Embedding(cfg.vocab_size, cfg.n_embd)
        self.rnn = CELLS[cfg.cell](cfg.n_embd, cfg.hidden_size, num_layers=cfg.num_layers, batch_first=True)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)

    def _check_ids(self, idx: Tensor) -> Tensor:
        if not isinstance(idx, Tensor):
            idx = Tensor(np.asarray(idx, dtype=np.int64), device=self.lm_head.weight.device)
        if idx.ndim != 2:
            raise ValueError(f"RNNLM: expected token ids of shape (B, T), got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"RNNLM: token ids must be integers, got dtype {idx.dtype}")
        if idx.numel() and (int(idx.data.min()) < 0 or int(idx.data.max()) >= self.cfg.vocab_size):
            raise ValueError(f"RNNLM: token ids must lie in [0, {self.cfg.vocab_size}), got "
                             f"[{int(idx.data.min())}, {int(idx.data.max())}]")
        return idx

    def hidden_states(self, idx: Tensor, state: State = None) -> tuple[Tensor, State]:
        """The last layer's hidden state at every step, and the final state to continue from.

        Args:
            idx: (B, T) token ids.
            state: the state returned by a previous call (None: zeros).
        Returns:
            (states (B, T, H), final state: h_n (L, B, H), or (h_n, c_n) for an LSTM).
        """
        idx = self._check_ids(idx)
        if not self.lookup_projection:
            x = self.wte(idx)                                       # (B, T, C)
            out, final = self.rnn(x, state)                         # (B, T, H)
            return out, final
        table = F.linear(self.wte.weight, self.rnn.weight_ih_l0)    # (V, G*H): wte[v] W_ih^T for every token v
        return self.rnn.forward_lookup([table], idx.data.T, state)  # ids (B, T) -> (T, B): (B, T, H), final state

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits.   idx (B, T) int -> (B, T, V)"""
        states, _ = self.hidden_states(idx)
        return self.lm_head(states)                                 # (B, T, V)

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over the positions whose target is not ``IGNORE_INDEX``.

        Args:
            idx: (B, T) input ids.
            targets: (B, T) next-token ids, ``IGNORE_INDEX`` (-1) at padding.
        """
        logits = self(idx)                                          # (B, T, V)
        target = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if target.shape != tuple(logits.shape[:2]):
            raise ValueError(f"RNNLM.loss: targets of shape {target.shape} do not match idx of shape "
                             f"{tuple(logits.shape[:2])}")
        return F.cross_entropy(logits.reshape(-1, self.cfg.vocab_size), target.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    @no_grad()
    def generate(self, n: int, rng: np.random.Generator, max_len: int = 30, stop_id: int = 0,
                 temperature: float = 1.0) -> list[list[int]]:
        """Sample ``n`` sequences, each started from ``stop_id`` and ended at the next ``stop_id``.

        All n are sampled in one batch, one step at a time, carrying the recurrent state.

        Args:
            n: number of sequences.
            rng: NumPy generator for the sampling (reproducible).
            max_len: longest sequence (without the stop token).
            stop_id: the separator id ("." = 0 for names).
            temperature: divides the logits before the softmax (< 1: more conservative).
        Returns:
            n lists of token ids, without the start and stop tokens.
        """
        with eval_mode(self):
            device = self.lm_head.weight.device
            idx = np.full((n, 1), stop_id, dtype=np.int64)              # (n, 1)
            state: State = None
            out = np.zeros((n, max_len), dtype=np.int64)
            done = np.zeros(n, dtype=bool)
            lengths = np.full(n, max_len)
            for t in range(max_len):
                states, state = self.hidden_states(Tensor(idx, device=device), state)
                logits = self.lm_head(states[:, -1]).numpy().astype(np.float64) / temperature   # (n, V)
                probs = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
                cumulative = probs.cumsum(axis=1)                       # inverse-CDF sampling, one draw per row
                draws = rng.random((n, 1)) * cumulative[:, -1:]
                nxt = np.minimum((cumulative < draws).sum(axis=1), self.cfg.vocab_size - 1)   # (n,)
                finished = (nxt == stop_id) & ~done
                lengths[finished] = t
                done |= nxt == stop_id
                out[:, t] = nxt
                idx = nxt[:, None]                                      # (n, 1)
                if done.all():
                    break
        return [out[i, :lengths[i]].tolist() for i in range(n)]
