"""Byte-level byte-pair encoding (BPE), GPT-2 style, trained from scratch or loaded from files.

Text is split into "words" by the GPT-2 pre-tokenization regex, each word is turned into its UTF-8
bytes, and each byte is written as one printable Unicode character (the GPT-2 byte->unicode table),
so every string, in any script, is representable with a 256-symbol base alphabet and decodes back
exactly. Merges then join adjacent symbols, lowest rank first.

`save(dir)` writes `vocab.json` + `merges.txt` in the Hugging Face / GPT-2 format, and files in that
format load back with `load(dir)` or `from_files(vocab_path, merges_path)`. Encoding follows the
Hugging Face `tokenizers` library (`models.BPE` + `pre_tokenizers.ByteLevel(add_prefix_space=False)`)
exactly, including its merge order inside a word; training follows its `BpeTrainer` (most frequent
pair first, ties to the smallest pair of ids).

References:
    Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units".
    Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2), and its
        encoder.py: https://github.com/openai/gpt-2/blob/master/src/encoder.py
    Hugging Face tokenizers: https://github.com/huggingface/tokenizers (models/bpe, pre_tokenizers/byte_level)
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from groundup.tokenizers.char import UnknownTokenError, read_json, token_ids, write_text_atomic

__all__ = ["ByteLevelBPE", "bytes_to_unicode", "gpt2_pattern", "pre_tokenize"]

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
_MERGES_HEADER = "#version: 0.2"
_CACHE_LIMIT = 100_000  # words kept in the per-tokenizer encode cache

# Letters and numbers assigned in Unicode 15.0-16.0, which Python 3.11's `unicodedata` (Unicode 14.0)
# reports as unassigned but Hugging Face tokenizers (Oniguruma, Unicode 16.0) matches as \p{L} / \p{N}.
# Found by comparing both pre-tokenizers on every code point; inclusive (first, last) ranges.
_NEWER_LETTERS = (
    (0x1C89, 0x1C8A),
    (0xA7CB, 0xA7CD),
    (0xA7DA, 0xA7DC),
    (0x105C0, 0x105F3),
    (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85),
    (0x10EC2, 0x10EC4),
    (0x1123F, 0x11240),
    (0x11380, 0x11389),
    (0x1138B, 0x1138B),
    (0x1138E, 0x1138E),
    (0x11390, 0x113B5),
    (0x113B7, 0x113B7),
    (0x113D1, 0x113D1),
    (0x113D3, 0x113D3),
    (0x11BC0, 0x11BE0),
    (0x11F02, 0x11F02),
    (0x11F04, 0x11F10),
    (0x11F12, 0x11F33),
    (0x1342F, 0x1342F),
    (0x13441, 0x13446),
    (0x13460, 0x143FA),
    (0x16100, 0x1611D),
    (0x16D40, 0x16D6C),
    (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132),
    (0x1B155, 0x1B155),
    (0x1DF25, 0x1DF2A),
    (0x1E030, 0x1E06D),
    (0x1E4D0, 0x1E4EB),
    (0x1E5D0, 0x1E5ED),
    (0x1E5F0, 0x1E5F0),
    (0x2B739, 0x2B739),
    (0x2EBF0, 0x2EE5D),
    (0x31350, 0x323AF),
)
_NEWER_NUMBERS = (
    (0x10D40, 0x10D49),
    (0x116D0, 0x116E3),
    (0x11BF0, 0x11BF9),
    (0x11F50, 0x11F59),
    (0x16130, 0x16139),
    (0x16D70, 0x16D79),
    (0x1CCF0, 0x1CCF9),
    (0x1D2C0, 0x1D2D3),
    (0x1E4F0, 0x1E4F9),
    (0x1E5F1, 0x1E5FA),
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 table from each byte value to a printable Unicode character.

    Bytes that are already printable and not whitespace ('!'..'~', '¡'..'¬', '®'..'ÿ') map to the
    character with the same code point; the other 68 bytes (controls, space, soft hyphen...) map to
    U+0100, U+0101, ... in byte order. So a space becomes 'Ġ' (U+0120) and a newline 'Ċ' (U+010A).

    Returns:
        dict of 256 entries, byte value (0..255) -> one-character string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(table.items()))


@functools.cache
def _byte_decoder() -> dict[str, int]:
    return {char: b for b, char in bytes_to_unicode().items()}


def _class_ranges(codepoints: Iterable[int]) -> str:
    """Write sorted code points as the inside of a regex character class, e.g. '\\x41-\\x5a\\x61'."""
    parts = []
    for _, run in itertools.groupby(enumerate(codepoints), key=lambda pair: pair[1] - pair[0]):
        run = list(run)
        lo, hi = run[0][1], run[-1][1]
        parts.append(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}")
    return "".join(parts)


@functools.cache
def gpt2_pattern() -> re.Pattern[str]:
    """The GPT-2 pre-tokenization regex, written for Python's `re` (which has no \\p{...} classes).

    The original pattern (as used by GPT-2 and Hugging Face's ByteLevel pre-tokenizer) is
        's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    Here \\p{L} (letters: Lu Ll Lt Lm Lo) and \\p{N} (numbers: Nd Nl No) are spelled out as explicit
    code-point ranges built from `unicodedata`, and \\s as the Unicode White_Space set that Oniguruma
    (the regex engine behind Hugging Face tokenizers) uses: tab..carriage return, U+0085, and the
    Zs/Zl/Zp categories. NOTE: Python's own \\s would also match U+001C..U+001F, which Oniguruma does
    not, so we cannot use it. Letters and numbers assigned after Python's Unicode version come from a
    table (`_NEWER_LETTERS`, `_NEWER_NUMBERS`). The classes are built once, on first use.

    Returns:
        the compiled pattern; `pattern.findall(text)` gives the pre-tokens of `text`.
    """
    letters, numbers, spaces = [], [], [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85]
    # NOTE: planes 4-13 are unassigned and planes 15-16 are private use: no letters, numbers or spaces.
    for cp in itertools.chain(range(0x40000), range(0xE0000, 0xF0000)):
        category = unicodedata.category(chr(cp))
        if category[0] == "L":
            letters.append(cp)
        elif category[0] == "N":
            numbers.append(cp)
        elif category in ("Zs", "Zl", "Zp"):
            spaces.append(cp)
    for ranges, members in ((_NEWER_LETTERS, letters), (_NEWER_NUMBERS, numbers)):
        members.extend(cp for lo, hi in ranges for cp in range(lo, hi + 1))
    letters, numbers = sorted(set(letters)), sorted(set(numbers))
    L, N, S = _class_ranges(letters), _class_ranges(numbers), _class_ranges(sorted(spaces))
    pattern = rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
    return re.compile(pattern)


def pre_tokenize(text: str) -> list[str]:
    """Split text into GPT-2 pre-tokens (words with their leading space, digit runs, punctuation runs...).

    Args:
        text: any string.

    Returns:
        substrings whose concatenation is `text`: "Hello  world's" -> ["Hello", " ", " world", "'s"].
    """
    return gpt2_pattern().findall(text)


def _to_byte_symbols(word: str) -> str:
    """A pre-token written in the byte-level alphabet: one character per UTF-8 byte."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in word.encode("utf-8", errors="surrogatepass"))


class ByteLevelBPE:
    """A byte-level BPE tokenizer: a vocabulary (token string -> id) plus ranked merges.

    Args:
        vocab: token (in the byte-level alphabet, e.g. "Ġthe") -> id. Should hold all 256 byte symbols,
            or bytes outside it are dropped when encoding (as Hugging Face does with no unk token).
        merges: ranked pairs (left, right); rank = position in the list. Each pair and its
            concatenation must be in `vocab`.

    Example:
        >>> tok = ByteLevelBPE.train("low lower lowest " * 10, vocab_size=262)
        >>> tok.decode(tok.encode("lowest 🙂"))
        'lowest 🙂'
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab: dict[str, int] = dict(vocab)
        self.merges: list[tuple[str, str]] = [tuple(pair) for pair in merges]
        self.id_to_token: dict[int, str] = {i: token for token, i in self.vocab.items()}
        # (left id, right id) -> (rank, merged id). A repeated pair keeps its last rank, as in HF.
        self._merge_table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(self.merges):
            for token in (left, right, left + right):
                if token not in self.vocab:
                    raise ValueError(f"merge #{rank} {left!r} {right!r}: token {token!r} is not in the vocab")
            self._merge_table[self.vocab[left], self.vocab[right]] = (rank, self.vocab[left + right])
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ basics
    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.vocab)

    def token_to_id(self, token: str) -> int:
        """The id of a vocabulary token (e.g. a special token such as "<|endoftext|>")."""
        if token not in self.vocab:
            raise KeyError(f"token {token!r} is not in the vocabulary of {self.vocab_size} tokens")
        return self.vocab[token]

    def __repr__(self) -> str:
        return f"ByteLevelBPE(vocab_size={self.vocab_size}, merges={len(self.merges)})"

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Encode text to token ids (same ids as Hugging Face tokenizers with these vocab/merges files).

        Args:
            text: any string (lone surrogates too: they are written as their 'surrogatepass' UTF-8 bytes).

        Returns:
            list of token ids.
        """
        ids: list[int] = []
        for word in gpt2_pattern().findall(text):
            word_ids = self._cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word)
                if len(self._cache) < _CACHE_LIMIT:
                    self._cache[word] = word_ids
            ids.extend(word_ids)
        return ids

    def _encode_word(self, word: str) -> list[int]:
        """Apply the merges to one pre-token, in Hugging Face's order (see `_apply_merges`)."""
        ids = [self.vocab[s] for s in _to_byte_symbols(word) if s in self.vocab]
        return self._apply_merges(ids)

    def _apply_merges(self, ids: list[int]) -> list[int]:
        """Merge adjacent symbols, always taking the lowest (rank, position) pair next.

        The symbols form a doubly linked list; a heap holds candidate merges (rank, position, new id).
        An entry is stale when its left symbol was merged away or the pair at its position no longer
        produces the same new id; stale entries are skipped. This mirrors `Word::merge_all` in
        Hugging Face tokenizers, which differs from GPT-2's encoder.py only for unusual merge files.
        """
        n = len(ids)
        if n < 2:
            return ids
        table = self._merge_table
        symbols = list(ids)
        prev = list(range(-1, n - 1))
        next_ = [*range(1, n), -1]
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            merge = table.get((symbols[i], symbols[i + 1]))
            if merge is not None:
                heap.append((merge[0], i, merge[1]))
        heapq.heapify(heap)
        while heap:
            _, pos, new_id = heapq.heappop(heap)
            right = next_[pos]
            if not alive[pos] or right == -1:
                continue
            merge = table.get((symbols[pos], symbols[right]))
            if merge is None or merge[1] != new_id:
                continue  # stale entry
            symbols[pos] = new_id
            alive[right] = False
            next_[pos] = next_[right]
            if next_[pos] != -1:
                prev[next_[pos]] = pos
            if prev[pos] != -1:
                merge = table.get((symbols[prev[pos]], new_id))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], prev[pos], merge[1]))
            if next_[pos] != -1:
                merge = table.get((new_id, symbols[next_[pos]]))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], pos, merge[1]))
        return [symbol for symbol, keep in zip(symbols, alive) if keep]

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode token ids back to text; `decode(encode(s)) == s` for every string s.

        Args:
            ids: token ids.
            errors: how to handle byte sequences that are not valid UTF-8 (possible for arbitrary id
                lists, never for the output of `encode`): "replace" (U+FFFD, as Hugging Face does)
                or "strict" (raise UnicodeDecodeError).

        Returns:
            the text.

        Raises:
            UnknownTokenError (a KeyError): for an id not in the vocabulary.
            TypeError, ValueError: for ids that are not integers, or not one sequence (1-D).
        """
        decoder = _byte_decoder()
        data = bytearray()
        for i in token_ids(ids, "ByteLevelBPE.decode"):
            token = self.id_to_token.get(i)
            if token is None:
                raise UnknownTokenError(f"token id {i} is not in the vocabulary (ids are 0..{self.vocab_size - 1})")
            if all(char in decoder for char in token):
                data.extend(decoder[char] for char in token)
            else:  # e.g. an added token outside the byte alphabet: its UTF-8 bytes, as HF's ByteLevel decoder
                data.extend(token.encode("utf-8"))
        try:  # surrogatepass: lone surrogates in the input survive the round trip
            return data.decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            return data.decode("utf-8", errors=errors)

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        text_or_iter: str | Iterable[str],
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: Iterable[str] = (),
    ) -> ByteLevelBPE:
        """Learn merges from a corpus, as Hugging Face's `BpeTrainer` does with a ByteLevel pre-tokenizer.

        Ids: special tokens first, then the 256 byte symbols sorted by code point, then one new token
        per merge. Each step merges the most frequent adjacent pair over the unique pre-tokenized words
        (weighted by word count), ties going to the smallest (left id, right id). Pair counts are
        updated incrementally from the words that contain the merged pair, with a lazy max-heap, so a
        step costs time proportional to those words, not to the corpus.

        Args:
            text_or_iter: one string, or an iterable of strings (e.g. lines or documents), each
                pre-tokenized separately.
            vocab_size: final vocabulary size, counting special tokens and the 256 byte symbols.
            min_frequency: stop when the best pair occurs fewer times than this.
            special_tokens: tokens given the first ids (e.g. "<|endoftext|>"); `encode` never produces
                them from text, so add them by id (`token_to_id`).

        Returns:
            the trained tokenizer.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"ByteLevelBPE.train: vocab_size must be an int, got {vocab_size!r}")
        if isinstance(special_tokens, str):
            raise TypeError(f"ByteLevelBPE.train: special_tokens must be a list of tokens, got the string "
                            f"{special_tokens!r} (each of its characters would become a token); "
                            f"write [{special_tokens!r}]")
        special_tokens = list(special_tokens)
        if any(not isinstance(t, str) or not t for t in special_tokens):
            raise ValueError(f"ByteLevelBPE.train: every special token must be a non-empty str, got {special_tokens}")
        base_size = len(dict.fromkeys(special_tokens)) + 256
        if vocab_size < base_size:
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than the {base_size} base tokens "
                f"(256 byte symbols + {len(special_tokens)} special tokens)"
            )
        texts = [text_or_iter] if isinstance(text_or_iter, str) else text_or_iter
        pattern = gpt2_pattern()
        word_counts: Counter[str] = Counter()
        for number, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"ByteLevelBPE.train: the corpus must be a str or an iterable of str; item {number} "
                                f"is {type(text).__name__}")
            word_counts.update(pattern.findall(text))

        id_to_token: list[str] = []
        vocab: dict[str, int] = {}
        for token in [*special_tokens, *sorted(bytes_to_unicode().values())]:
            if token not in vocab:
                vocab[token] = len(id_to_token)
                id_to_token.append(token)

        words = [[vocab[s] for s in _to_byte_symbols(word)] for word in word_counts]
        counts = list(word_counts.values())
        pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words it occurs in
        for index, (word, count) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
                where[pair].add(index)

        # Max-heap on (count, smallest pair) via negated counts; a tie counter keeps sets uncompared.
        tie = itertools.count()
        heap = [(-pair_counts[pair], pair, next(tie), positions) for pair, positions in where.items()]
        heapq.heapify(heap)
        merges: list[tuple[str, str]] = []
        while len(vocab) < vocab_size and heap:
            neg_count, pair, _, positions = heapq.heappop(heap)
            if -neg_count != pair_counts[pair]:  # stale count: re-queue with the current one
                heapq.heappush(heap, (-pair_counts[pair], pair, next(tie), positions))
                continue
            if -neg_count < 1 or -neg_count < min_frequency:
                break
            left, right = id_to_token[pair[0]], id_to_token[pair[1]]
            new_token = left + right
            if new_token not in vocab:
                vocab[new_token] = len(id_to_token)
                id_to_token.append(new_token)
            new_id = vocab[new_token]
            merges.append((left, right))

            new_where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
            for index in positions:
                for changed, delta in _merge_pair_in_word(words[index], pair, new_id):
                    pair_counts[changed] += delta * counts[index]
                    if delta > 0:
                        new_where[changed].add(index)
            for changed, changed_positions in new_where.items():
                if pair_counts[changed] > 0:
                    heapq.heappush(heap, (-pair_counts[changed], changed, next(tie), changed_positions))
        return cls(vocab, merges)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike) -> None:
        """Write `vocab.json` (token -> id, in id order) and `merges.txt` ("#version: 0.2" then "left right"),
        each atomically (a crash leaves the previous file whole).

        Args:
            directory: created if missing.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ordered = dict(sorted(self.vocab.items(), key=lambda item: item[1]))
        write_text_atomic(directory / VOCAB_FILE, json.dumps(ordered, ensure_ascii=False, separators=(",", ":")))
        lines = [_MERGES_HEADER, *(f"{left} {right}" for left, right in self.merges)]
        write_text_atomic(directory / MERGES_FILE, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ByteLevelBPE:
        """Load `vocab.json` + `merges.txt` from a directory (ours, GPT-2's or a Hugging Face one)."""
        directory = Path(directory)
        return cls.from_files(directory / VOCAB_FILE, directory / MERGES_FILE)

    @classmethod
    def from_files(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> ByteLevelBPE:
        """Load a tokenizer from a GPT-2 / Hugging Face `vocab.json` and `merges.txt`.

        Args:
            vocab_path: JSON object token -> id.
            merges_path: one merge "left right" per line, best first; lines starting with "#version"
                and blank lines are skipped.

        Returns:
            the tokenizer.
        """
        for path in (vocab_path, merges_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"tokenizer file not found: {path}")
        vocab = read_json(Path(vocab_path), "vocab.json")
        if not isinstance(vocab, dict) or any(type(i) is not int or i < 0 for i in vocab.values()):
            raise ValueError(f"{vocab_path}: a vocab.json must be an object of token -> id (an int >= 0)")
        if len(set(vocab.values())) != len(vocab):
            repeated = next(i for i in vocab.values() if list(vocab.values()).count(i) > 1)
            raise ValueError(f"{vocab_path}: id {repeated} is given to more than one token")
        try:
            text = Path(merges_path).read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{merges_path}: not a merges.txt (not UTF-8: {err})") from None
        merges = []
        for number, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_path}, line {number}: expected 'left right', got {line!r}")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges)


def _merge_pair_in_word(
    word: list[int], pair: tuple[int, int], new_id: int
) -> list[tuple[tuple[int, int], int]]:
    """Replace each occurrence of `pair` in `word` (in place, left to right, non-overlapping) by `new_id`.

    Returns:
        the pair-count changes ((left, right), +1 or -1) for the neighbouring pairs; the merged pair
        itself is not reported (its entry has just been consumed), as in Hugging Face's `Word::merge`.
    """
    left, right = pair
    changes: list[tuple[tuple[int, int], int]] = []
    i = 0
    while i < len(word) - 1:
        if word[i] == left and word[i + 1] == right:
            if i > 0:
                changes.append(((word[i - 1], left), -1))
                changes.append(((word[i - 1], new_id), 1))
            word[i : i + 2] = [new_id]
            if i < len(word) - 1:
                changes.append(((right, word[i + 1]), -1))
                changes.append(((new_id, word[i + 1]), 1))
        i += 1
    return changes
