"""Models for every rung of the roadmap, each an ``XConfig`` dataclass plus an ``X(Module)`` whose
``forward`` returns logits and whose ``loss`` is separate.

    mlp       MLPConfig, MLP              feedforward classifier (digits, MNIST)
    cnn       CNNConfig, CNN              small convolutional classifier
    rnn_lm    RNNLMConfig, RNNLM          character language model on RNN / GRU / LSTM
    seq2seq   Seq2SeqConfig, Seq2Seq      GRU encoder-decoder with optional additive attention
    transformer_seq2seq  TransformerSeq2SeqConfig, TransformerSeq2Seq   encoder-decoder transformer (Seq2Seq's API)
    deep_stack  DeepStackConfig, DeepStackLM  GPT-style stack with switchable residuals and layer norm
    attn_only   AttnOnlyConfig, AttnOnlyLM    attention-only transformer (no MLPs) for induction heads
    gpt       GPTConfig, GPT              decoder-only transformer, readable, with hook points
    gpt_fast  FastGPT                     its fused twin for training (same parameters and state_dict)
    bert      BERTConfig, BERT            bidirectional encoder: masked-LM and [CLS] classification heads
    bert_fast FastBERT                    its fused twin for training (same parameters and state_dict)
    efficient_attention  (functions)   causal attention: full, sliding-window, linear, chunked exact

Submodules are imported on first use, so ``import groundup.models`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MLPConfig": "mlp", "MLP": "mlp", "CNNConfig": "cnn", "CNN": "cnn", "RNNLMConfig": "rnn_lm",
    "RNNLM": "rnn_lm", "Seq2SeqConfig": "seq2seq", "Seq2Seq": "seq2seq", "GPTConfig": "gpt", "GPT": "gpt",
    "TransformerSeq2SeqConfig": "transformer_seq2seq", "TransformerSeq2Seq": "transformer_seq2seq",
    "DeepStackConfig": "deep_stack", "DeepStackLM": "deep_stack",
    "AttnOnlyConfig": "attn_only", "AttnOnlyLM": "attn_only", "FastGPT": "gpt_fast",
    "BERTConfig": "bert", "BERT": "bert", "FastBERT": "bert_fast",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'groundup.models' has no attribute {name!r}")
    return getattr(import_module(f"groundup.models.{_EXPORTS[name]}"), name)
