"""Character-level tokenizer: one token per distinct character of a corpus, ids in sorted order.

The vocabulary is `sorted(set(text))`, as in nanoGPT's shakespeare_char/prepare.py and makemore,
so Tiny Shakespeare gives 65 tokens with "\\n" = 0 and " " = 1. Special tokens, when given, take the
first ids, before the characters: the roadmap's names use "." (id 0) to start and end a name, as
makemore does, and its dates a padding token and begin/end markers:

    names = CharTokenizer("emmaolivia", specials=(".",))       # "." = 0, "a" = 1, ...
    target = CharTokenizer("0123456789-", specials=("<pad>", "<bos>", "<eos>"))

Reference: https://github.com/karpathy/nanoGPT/blob/master/data/shakespeare_char/prepare.py
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["CharTokenizer", "UnknownTokenError", "token_ids", "write_text_atomic", "read_json"]

TOKENIZER_FILE = "tokenizer.json"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically: a temporary file in the same directory, fsynced, then
    ``os.replace``. A crash or a full disk leaves the old file whole, and a symlink at ``path`` is replaced,
    not written through."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; ValueError naming the file when it is not UTF-8 JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a {what} (not UTF-8 JSON: {str(err)[:120]})") from None


class UnknownTokenError(KeyError):
    """A character (when encoding) or an id (when decoding) that is not in the vocabulary."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


def token_ids(ids: Any, where: str) -> list[int]:
    """``ids`` as a list of Python ints: one sequence (a list, a 1-D array or Tensor) of integers.

    Raises:
        ValueError: for an array or Tensor that is not 1-D (a batch: decode each row).
        TypeError: for an id that is not an integer (a float, a string of digits ...), as Hugging Face's
            decode; ``int()`` would have truncated 1.7 to 1 and read the string "12" as the ids 1 and 2.
    """
    shape = getattr(ids, "shape", None)
    if shape is not None and len(shape) != 1:
        raise ValueError(f"{where}: ids must be one sequence of token ids (1-D), got shape {tuple(shape)}; "
                         f"decode each row of a batch")
    if isinstance(ids, str | bytes):
        raise TypeError(f"{where}: ids must be a sequence of integer token ids, got {type(ids).__name__} {ids!r:.40}")
    out = []
    for i in ids:
        try:
            out.append(operator.index(i))
        except TypeError:
            raise TypeError(f"{where}: token ids must be integers, got {i!r:.40} ({type(i).__name__})") from None
    return out


class CharTokenizer:
    """Maps each character of a fixed alphabet to an integer id and back.

    Args:
        text: the corpus (or just its alphabet, as a str or single characters); every distinct character
            becomes a token.
        specials: special tokens with the first ids (``"<pad>"``, or a single character such as ``"."``);
            a special that is one character is also what ``encode`` maps that character to.

    Example:
        >>> tok = CharTokenizer("hello world")
        >>> tok.encode("hello")
        [3, 2, 4, 4, 5]
        >>> tok.decode([3, 2, 4, 4, 5])
        'hello'
    """

    def __init__(self, text: str, specials: Iterable[str] = ()):
        if not isinstance(text, str):  # an alphabet given as characters: ['a', 'b'] or a set of them
            chars = list(text) if isinstance(text, Iterable) and not isinstance(text, bytes | bytearray) else None
            if chars is None or any(not isinstance(c, str) or len(c) != 1 for c in chars):
                raise TypeError(f"CharTokenizer: text must be a str (the corpus or its alphabet) or single "
                                f"characters, got {type(text).__name__} {text!r:.60}")
            text = "".join(chars)
        if isinstance(specials, str):
            raise TypeError(f"CharTokenizer: specials must be a list of tokens, got the string {specials!r} "
                            f"(its characters would each become a special); write [{specials!r}]")
        self.specials: list[str] = list(specials)
        if any(not isinstance(t, str) or not t for t in self.specials):
            raise ValueError(f"CharTokenizer: every special token must be a non-empty str, got {self.specials}")
        if len(set(self.specials)) != len(self.specials):
            raise ValueError(f"CharTokenizer: repeated special tokens {self.specials}")
        self.chars: list[str] = sorted(set(text) - set(self.specials))
        self.tokens: list[str] = self.specials + self.chars           # id -> token
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        """Number of tokens: the specials and the distinct characters."""
        return len(self.tokens)

    def __repr__(self) -> str:
        extra = f", specials={self.specials}" if self.specials else ""
        return f"CharTokenizer(vocab_size={self.vocab_size}{extra})"

    def id_of(self, token: str) -> int:
        """The id of a character or a special token."""
        try:
            return self.stoi[token]
        except KeyError:
            raise UnknownTokenError(f"token {token!r} is not in the vocabulary") from None

    def encode(self, text: str) -> list[int]:
        """Text -> list of ids, one per character.

        Raises:
            UnknownTokenError (a KeyError): naming the first character not in the vocabulary and where it is.
        """
        try:
            return [self.stoi[char] for char in text]
        except KeyError:
            position, char = next((i, c) for i, c in enumerate(text) if c not in self.stoi)
            raise UnknownTokenError(
                f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the vocabulary "
                f"of {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Iterable[int], skip_specials: bool = False) -> str:
        """List of ids -> text (``skip_specials``: leave the special tokens out).

        Raises:
            UnknownTokenError (a KeyError): naming the first id outside 0..vocab_size-1.
            TypeError, ValueError: for ids that are not integers, or not one sequence (see ``token_ids``).
        """
        chars = []
        for i in token_ids(ids, "CharTokenizer.decode"):
            if not 0 <= i < self.vocab_size:
                raise UnknownTokenError(f"token id {i} is out of range: ids are 0..{self.vocab_size - 1}")
            if not (skip_specials and i < len(self.specials)):
                chars.append(self.tokens[i])
        return "".join(chars)

    def save(self, directory: str | os.PathLike) -> None:
        """Write `tokenizer.json` ({"type": "char", "chars": [...]}, and "specials" if any) into `directory`,
        atomically (a crash leaves the previous file whole)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload: dict = {"type": "char", "chars": self.chars}
        if self.specials:
            payload["specials"] = self.specials
        write_text_atomic(directory / TOKENIZER_FILE, json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory}")
        payload = read_json(path, "character tokenizer file")
        if not isinstance(payload, dict) or payload.get("type") != "char" or not isinstance(payload.get("chars"), list):
            raise ValueError(f"{path} is not a character tokenizer file (want type 'char', a 'chars' list)")
        chars = payload["chars"]
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or chars != sorted(set(chars)):
            raise ValueError(f"{path}: 'chars' must be sorted, distinct, single characters")
        specials = payload.get("specials", [])
        if not isinstance(specials, list) or any(not isinstance(t, str) or not t for t in specials):
            raise ValueError(f"{path}: 'specials' must be a list of non-empty strings")
        if set(specials) & set(chars) or len(set(specials)) != len(specials):
            raise ValueError(f"{path}: 'specials' repeat a token or one of 'chars' "
                             f"({sorted(set(specials) & set(chars)) or specials}); the ids would shift")
        return cls("".join(chars), specials=specials)
