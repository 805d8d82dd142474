"""Seeded synthetic tasks: date-format translation, copy/reverse sequences, and induction sequences.

- `date_pairs`: human-written dates in 14 surface formats ("3/7/99", "Mar 7, 1999", "sunday, the
  seventh of march, nineteen ninety-nine") -> ISO "1999-03-07": a small sequence-to-sequence task
  with inputs of 6 to ~55 characters (the date-translation exercise of Andrew Ng's sequence-models
  course, after Bahdanau et al. 2015).
- `copy_sequences`: x -> x or reversed x (Sutskever et al. 2014 reversed inputs; a classic RNN test).
- `induction_sequences`: random tokens followed by the same tokens again; a model that learns to
  copy from context shows the "induction head" signature (Olsson et al. 2022, "In-context Learning
  and Induction Heads").
- `DateCodec`: the date task's model inputs: two character tokenizers (``CharTokenizer``), one for
  the written dates (padding = 0) and one for "YYYY-MM-DD" (padding, begin and end markers).

Every function takes a `seed` and gives the same data for the same arguments.
"""

from __future__ import annotations

import datetime
import string
from collections.abc import Sequence

import numpy as np

from groundup.data.batching import pad_sequences
from groundup.tokenizers.char import CharTokenizer

__all__ = ["DATE_FORMATS", "DateCodec", "copy_sequences", "date_pairs", "format_date", "induction_sequences",
           "year_words"]

MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
# In date.weekday() order.
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINAL_ONES = (
    "zeroth", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
    "eighteenth", "nineteenth",
)  # fmt: skip
_ORDINAL_TENS = ("", "", "twentieth", "thirtieth")

# Each format: a name -> a template over the fields below (str.format syntax).
#   m/mm: month 3/03; d/dd: day 7/07; yy/yyyy: year 99/1999; mon/month: "mar"/"march";
#   dow/weekday: "sun"/"sunday"; dth: "7th"; dword: "seventh"; yword: "nineteen ninety-nine".
_TEMPLATES = {
    "m/d/yy": "{m}/{d}/{yy}",
    "mm/dd/yyyy": "{mm}/{dd}/{yyyy}",
    "d.m.yyyy": "{d}.{m}.{yyyy}",
    "d mon yyyy": "{d} {mon} {yyyy}",
    "mon d, yyyy": "{mon} {d}, {yyyy}",
    "month d, yyyy": "{month} {d}, {yyyy}",
    "d month yyyy": "{d} {month} {yyyy}",
    "dow d mon yyyy": "{dow} {d} {mon} {yyyy}",
    "dow, mon d, yy": "{dow}, {mon} {d}, '{yy}",
    "weekday, month d, yyyy": "{weekday}, {month} {d}, {yyyy}",
    "weekday dth of month yyyy": "{weekday} {dth} of {month} {yyyy}",
    "the dth of month, yyyy": "the {dth} of {month}, {yyyy}",
    "the dword of month yword": "the {dword} of {month} {yword}",
    "weekday, the dword of month, yword": "{weekday}, the {dword} of {month}, {yword}",
}
DATE_FORMATS: tuple[str, ...] = tuple(_TEMPLATES)


def _number_words(n: int) -> str:
    """0..99 in words: 7 -> "seven", 42 -> "forty-two"."""
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def _ordinal_words(n: int) -> str:
    """1..31 as an ordinal in words: 3 -> "third", 21 -> "twenty-first"."""
    if n < 20:
        return _ORDINAL_ONES[n]
    tens, ones = divmod(n, 10)
    return f"{_TENS[tens]}-{_ORDINAL_ONES[ones]}" if ones else _ORDINAL_TENS[tens]


def _ordinal_suffix(n: int) -> str:
    """1 -> "st", 2 -> "nd", 3 -> "rd", 11..13 -> "th", 21 -> "st"..."""
    if 11 <= n % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def year_words(year: int) -> str:
    """A year 1900..2099 as spoken: 1999 -> "nineteen ninety-nine", 1905 -> "nineteen oh five",
    1900 -> "nineteen hundred", 2000 -> "two thousand", 2024 -> "two thousand twenty-four"."""
    if not 1900 <= year <= 2099:
        raise ValueError(f"year_words covers 1900..2099, got {year}")
    rest = year % 100
    if year >= 2000:
        return "two thousand" + (f" {_number_words(rest)}" if rest else "")
    if rest == 0:
        return "nineteen hundred"
    return "nineteen " + (f"oh {_ONES[rest]}" if rest < 10 else _number_words(rest))


def format_date(date: datetime.date, fmt: str, capitalize: bool = False) -> str:
    """Write a date in one of `DATE_FORMATS`.

    Args:
        date: the date (year 1900..2099).
        fmt: a name from `DATE_FORMATS`, e.g. "month d, yyyy".
        capitalize: capitalize month and weekday names ("March" instead of "march").

    Returns:
        the text; format_date(date(1999, 3, 7), "weekday dth of month yyyy") is "sunday 7th of march 1999".
    """
    if fmt not in _TEMPLATES:
        raise ValueError(f"unknown date format {fmt!r}; choose one of {list(DATE_FORMATS)}")
    month, weekday = MONTHS[date.month - 1], WEEKDAYS[date.weekday()]
    if capitalize:
        month, weekday = month.capitalize(), weekday.capitalize()
    return _TEMPLATES[fmt].format(
        m=date.month, mm=f"{date.month:02d}", d=date.day, dd=f"{date.day:02d}",
        yy=f"{date.year % 100:02d}", yyyy=f"{date.year:04d}",
        mon=month[:3], month=month, dow=weekday[:3], weekday=weekday,
        dth=f"{date.day}{_ordinal_suffix(date.day)}", dword=_ordinal_words(date.day),
        yword=year_words(date.year),
    )  # fmt: skip


def date_pairs(
    n: int,
    seed: int = 0,
    start_year: int = 1950,
    end_year: int = 2049,
    formats: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """Random dates written in random human formats, paired with their ISO 8601 form.

    Dates are uniform over [start_year-01-01, end_year-12-31]; the format is uniform over `formats`;
    month and weekday names are capitalized half the time. Two-digit years are unambiguous because
    the range spans at most 100 years ("99" -> 1999 and "03" -> 2003 for the default 1950..2049).
    Slashes always mean month/day/year and dots day.month.year.

    Args:
        n: number of pairs.
        seed: seed of the NumPy generator.
        start_year, end_year: inclusive year range, inside 1900..2099 and at most 100 years long.
        formats: names from `DATE_FORMATS` to draw from; default all.

    Returns:
        list of (human_text, "YYYY-MM-DD") pairs, e.g. ("Saturday 3rd of March 1999", "1999-03-03").
    """
    if not 1900 <= start_year <= end_year <= 2099:
        raise ValueError(f"need 1900 <= start_year <= end_year <= 2099, got {start_year}..{end_year}")
    if end_year - start_year >= 100:
        raise ValueError(f"years {start_year}..{end_year} span > 100 years: two-digit years are ambiguous")
    formats = tuple(DATE_FORMATS if formats is None else formats)
    unknown = [fmt for fmt in formats if fmt not in _TEMPLATES]
    if unknown or not formats:
        raise ValueError(f"unknown date formats {unknown}; choose from {list(DATE_FORMATS)}")
    rng = np.random.default_rng(seed)
    first, last = datetime.date(start_year, 1, 1).toordinal(), datetime.date(end_year, 12, 31).toordinal()
    ordinals = rng.integers(first, last + 1, size=n)
    format_ids = rng.integers(len(formats), size=n)
    capitalize = rng.random(n) < 0.5
    pairs = []
    for ordinal, format_id, cap in zip(ordinals, format_ids, capitalize):
        date = datetime.date.fromordinal(int(ordinal))
        pairs.append((format_date(date, formats[format_id], bool(cap)), date.isoformat()))
    return pairs


def copy_sequences(
    n: int, seq_len: int, vocab_size: int, seed: int = 0, reverse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Random token sequences and their copies (or reversals): a sequence-to-sequence sanity task.

    Args:
        n: number of sequences.
        seq_len: length T of each sequence.
        vocab_size: tokens are drawn uniformly from 0..vocab_size-1.
        seed: seed of the NumPy generator.
        reverse: target is the sequence reversed instead of copied.

    Returns:
        (source, target), both int64 of shape (n, T).
    """
    if seq_len < 1 or vocab_size < 1:
        raise ValueError(f"need seq_len >= 1 and vocab_size >= 1, got {seq_len}, {vocab_size}")
    source = np.random.default_rng(seed).integers(vocab_size, size=(n, seq_len), dtype=np.int64)  # (n, T)
    target = source[:, ::-1].copy() if reverse else source.copy()  # (n, T)
    return source, target


def induction_sequences(
    n: int, half_len: int, vocab_size: int, seed: int = 0, bos: int | None = None
) -> np.ndarray:
    """Random tokens followed by an exact repeat: [bos] t_1 .. t_L t_1 .. t_L.

    In the second half every next token is predictable by finding the previous occurrence of the
    current token and copying what followed it, which is what induction heads do.

    Args:
        n: number of sequences.
        half_len: length L of the random half.
        vocab_size: tokens come from 0..vocab_size-1 (never `bos`, if given).
        seed: seed of the NumPy generator.
        bos: optional beginning-of-sequence id prepended to each sequence.

    Returns:
        int64 array of shape (n, 2L) or (n, 2L + 1) with `bos`.
    """
    if half_len < 1:
        raise ValueError(f"half_len must be >= 1, got {half_len}")
    choices = vocab_size - (1 if bos is not None and 0 <= bos < vocab_size else 0)
    if choices < 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no tokens to draw (bos={bos})")
    first = np.random.default_rng(seed).integers(choices, size=(n, half_len), dtype=np.int64)  # (n, L)
    if bos is not None and 0 <= bos < vocab_size:
        first = first + (first >= bos)  # skip the bos id
    parts = [first, first]
    if bos is not None:
        parts.insert(0, np.full((n, 1), bos, dtype=np.int64))
    return np.concatenate(parts, axis=1)  # (n, 2L) or (n, 2L + 1)


class DateCodec:
    """The date task's tokens: written dates -> ids (0 = padding); "YYYY-MM-DD" <-> ids (pad 0, bos 1, eos 2).

    Attributes:
        source: the ``CharTokenizer`` of the written dates (special ``"<pad>"`` = 0).
        target: the ``CharTokenizer`` of ISO dates (specials ``"<pad>"``, ``"<bos>"``, ``"<eos>"`` = 0, 1, 2).
    """

    SOURCE_ALPHABET = " ',-./" + string.digits + string.ascii_letters
    TARGET_ALPHABET = "0123456789-"
    PAD, BOS, EOS = 0, 1, 2

    def __init__(self) -> None:
        self.source = CharTokenizer(self.SOURCE_ALPHABET, specials=("<pad>",))
        self.target = CharTokenizer(self.TARGET_ALPHABET, specials=("<pad>", "<bos>", "<eos>"))
        self.src_vocab_size, self.tgt_vocab_size = self.source.vocab_size, self.target.vocab_size

    def batch(self, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        """Model inputs for a list of (written date, "YYYY-MM-DD") pairs.

        Returns:
            src (B, S) int64 right-padded with 0, src_mask (B, S) bool, tgt_in (B, 11) = bos + target,
            tgt_out (B, 11) = target + eos.
        """
        unknown = {c for text, _ in pairs for c in text if c not in self.source.stoi}
        if unknown:
            raise ValueError(f"DateCodec: source characters outside the alphabet: {sorted(unknown)}")
        src, mask = pad_sequences([self.source.encode(text) for text, _ in pairs])           # (B, S)
        tgt = np.array([self.target.encode(iso) for _, iso in pairs], dtype=np.int64)        # (B, 10)
        bos, eos = np.full((len(pairs), 1), self.BOS), np.full((len(pairs), 1), self.EOS)
        return {"src": src, "src_mask": mask, "tgt_in": np.concatenate([bos, tgt], 1),
                "tgt_out": np.concatenate([tgt, eos], 1)}

    def decode(self, ids: np.ndarray) -> str:
        """Target ids up to the first eos -> text ("?" for a padding or begin marker)."""
        out = []
        for i in ids:
            if i == self.EOS:
                break
            out.append(self.target.tokens[i] if i > self.EOS else "?")
        return "".join(out)
