"""Tokenizers: character-level and byte-level BPE (GPT-2 style, Hugging Face file format).

from groundup.tokenizers import CharTokenizer, ByteLevelBPE
"""

from groundup.tokenizers.bpe import ByteLevelBPE, bytes_to_unicode, gpt2_pattern, pre_tokenize
from groundup.tokenizers.char import CharTokenizer, UnknownTokenError

__all__ = [
    "ByteLevelBPE",
    "CharTokenizer",
    "UnknownTokenError",
    "bytes_to_unicode",
    "gpt2_pattern",
    "pre_tokenize",
]
