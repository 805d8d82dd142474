"""Who is speaking? A labelled task cut from Tiny Shakespeare, with nothing to download.

Tiny Shakespeare is a string of speeches, each a header line naming the speaker ("ROMEO:") and
the lines spoken, separated by blank lines. ``parse_speeches`` reads them back; ``speaker_task``
removes the headers, keeps the speeches of the K speakers with the most speeches (K = 8) and
labels each with its speaker.

The split must not leak: consecutive speeches belong to one scene and share its words, so a
random split would put pieces of the same conversation on both sides. Instead the speeches are
cut into ``n_blocks`` contiguous blocks of equal size (about a scene each) and every
``test_every``-th block is held out as test; the ``gap`` speeches next to a test block are
dropped from training, so a scene that straddles a block boundary still cannot sit on both
sides. The unlabelled pretraining text is made of the training-side speeches of every speaker,
without their headers (so pretraining never sees a label) and never any test or gap speech.

The vocabulary (``CharVocab``) is Tiny Shakespeare's 65 characters after four special tokens,
[PAD] = 0, [CLS] = 1, [SEP] = 2, [MASK] = 3, so one id space serves BERT (which reads [CLS] first)
and a GPT pretrained on the same text.

    task = speaker_task(k=8)
    task.speakers, task.class_counts("train"), task.chance_accuracy
    ids, mask = task.encode("test", max_len=64)        # (N, 64) int64 with [CLS] first, (N, 64) bool
    picked = labelled_subset(task.train_labels, 64, rng)

References: Karpathy, char-rnn / nanoGPT (the Tiny Shakespeare corpus); Devlin et al. 2019
(https://arxiv.org/abs/1810.04805) for the special tokens and the [CLS] classifier.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from groundup.data.datasets import load_text

__all__ = ["PAD", "CLS", "SEP", "MASK", "SPECIAL_TOKENS", "CharVocab", "Speech", "SpeakerTask", "parse_speeches",
           "speaker_task", "labelled_subset"]

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")


class CharVocab:
    """Characters of a corpus (sorted) after the four special tokens: id = 4 + the character's rank."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.stoi = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        """Special tokens plus characters (69 for Tiny Shakespeare)."""
        return len(SPECIAL_TOKENS) + len(self.chars)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(range(len(SPECIAL_TOKENS)))

    @property
    def first_char_id(self) -> int:
        return len(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        """Text -> ids; a character outside the vocabulary raises KeyError naming it."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise KeyError(f"CharVocab: character {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: list[int] | np.ndarray) -> str:
        """Ids -> text; special tokens are written by name ([MASK]), padding is dropped."""
        n = len(SPECIAL_TOKENS)
        return "".join(self.chars[i - n] if i >= n else ("" if i == PAD else SPECIAL_TOKENS[i]) for i in map(int, ids))


@dataclass(frozen=True)
class Speech:
    """One speech: its speaker (the header without the colon), the spoken text, its place in the corpus."""

    speaker: str
    text: str
    start: int          # character offset of the header line in the corpus
    index: int          # position among all speeches, 0-based


def parse_speeches(text: str) -> list[Speech]:
    """Every speech of a Tiny-Shakespeare-style text, in order: blocks separated by blank lines, whose
    first line ends with ':' (the speaker). A header with no lines after it is skipped."""
    speeches: list[Speech] = []
    for match in re.finditer(r"[^\n](?:.|\n(?!\s*\n))*", text):       # maximal runs without a blank line
        header, _, body = match.group(0).partition("\n")
        if header.endswith(":") and body.strip():
            speeches.append(Speech(header[:-1].strip(), body.rstrip("\n"), match.start(), len(speeches)))
    return speeches


@dataclass
class SpeakerTask:
    """The speaker-identification task: labelled train and test speeches and the pretraining text.

    Attributes:
        speakers: the K speaker names; label i is ``speakers[i]``.
        train_texts, train_labels: the labelled training pool (speeches of the K speakers).
        test_texts, test_labels: the held-out speeches of the K speakers.
        pretrain_text: training-side speeches of all speakers, headers removed, joined by blank lines.
        train_index, test_index, pretrain_index: which speeches (``Speech.index``) went where.
        vocab: the character vocabulary with the special tokens.
        settings: how the split was made (n_blocks, test_every, gap, k).
    """

    speakers: list[str]
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    pretrain_text: str
    train_index: np.ndarray
    test_index: np.ndarray
    pretrain_index: np.ndarray
    vocab: CharVocab
    settings: dict[str, int] = field(default_factory=dict)

    def class_counts(self, split: str) -> dict[str, int]:
        """Speeches per speaker in ``"train"`` or ``"test"``."""
        labels = self.train_labels if split == "train" else self.test_labels
        counts = np.bincount(labels, minlength=len(self.speakers))
        return {name: int(n) for name, n in zip(self.speakers, counts)}

    @property
    def chance_accuracy(self) -> float:
        """Test accuracy of always answering the most common training speaker (the majority baseline)."""
        majority = int(np.bincount(self.train_labels, minlength=len(self.speakers)).argmax())
        return float(np.mean(self.test_labels == majority))

    def encode(self, split: str, max_len: int, cls: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The split's speeches as (N, max_len) ids ([CLS] first when ``cls``, truncated, right-padded with
        [PAD]) and the (N, max_len) bool mask of real tokens."""
        texts = self.train_texts if split == "train" else self.test_texts
        return encode_texts(texts, self.vocab, max_len, cls)


def encode_texts(texts: list[str], vocab: CharVocab, max_len: int, cls: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (N, max_len) int64 ids ([CLS] + the first characters, then [PAD]) and a (N, max_len) bool mask."""
    if max_len < 2:
        raise ValueError(f"encode_texts: max_len must be >= 2, got {max_len}")
    ids = np.full((len(texts), max_len), PAD, dtype=np.int64)                   # (N, T)
    for row, text in enumerate(texts):
        tokens = ([CLS] if cls else []) + vocab.encode(text[: max_len - int(cls)])
        ids[row, : len(tokens)] = tokens
    return ids, ids != PAD


def speaker_task(k: int = 8, n_blocks: int = 200, test_every: int = 5, gap: int = 4, text: str | None = None
                 ) -> SpeakerTask:
    """Build the speaker task from Tiny Shakespeare (or ``text``).

    Args:
        k: number of speakers (classes): the K with the most training-side speeches.
        n_blocks: the speeches are cut into this many contiguous blocks of equal size.
        test_every: block b is a test block when b % test_every == test_every // 2 (20% for 5).
        gap: speeches within this distance of a test speech are dropped from training and pretraining.
        text: the corpus; default Tiny Shakespeare.
    """
    corpus = load_text("shakespeare") if text is None else text
    speeches = parse_speeches(corpus)
    n = len(speeches)
    if not 1 <= test_every <= n_blocks <= n or gap < 0 or k < 2:
        raise ValueError(f"speaker_task: need 1 <= test_every <= n_blocks <= speeches ({n}), gap >= 0, k >= 2; "
                         f"got test_every={test_every}, n_blocks={n_blocks}, gap={gap}, k={k}")
    block = np.arange(n) * n_blocks // n                                        # (n,) block of each speech
    is_test = block % test_every == test_every // 2
    test_pos = np.flatnonzero(is_test)
    # distance from each speech to the nearest test speech (0 for test speeches)
    nearest = np.abs(np.arange(n)[:, None] - test_pos[None, :]).min(axis=1) if len(test_pos) else np.full(n, n)
    is_train = nearest > gap
    counts = Counter(speeches[i].speaker for i in np.flatnonzero(is_train))
    speakers = [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
    if len(speakers) < k:
        raise ValueError(f"speaker_task: only {len(speakers)} speakers in the training blocks, asked for k={k}")
    label_of = {name: i for i, name in enumerate(speakers)}

    def pick(mask: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        chosen = [s for s, m in zip(speeches, mask) if m and s.speaker in label_of]
        return ([s.text for s in chosen], np.array([label_of[s.speaker] for s in chosen], dtype=np.int64),
                np.array([s.index for s in chosen], dtype=np.int64))

    train_texts, train_labels, train_index = pick(is_train)
    test_texts, test_labels, test_index = pick(is_test)
    pretrain_index = np.flatnonzero(is_train)
    pretrain_text = "\n\n".join(speeches[i].text for i in pretrain_index)
    return SpeakerTask(speakers, train_texts, train_labels, test_texts, test_labels, pretrain_text, train_index,
                       test_index, pretrain_index, CharVocab(corpus),
                       {"k": k, "n_blocks": n_blocks, "test_every": test_every, "gap": gap, "speeches": n})


def labelled_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` labelled examples with the classes as balanced as the pool allows.

    Classes are visited in turn, each giving its next example from its own shuffled list, until
    ``n`` are picked (a class that runs out is skipped). ``n >= len(labels)`` returns everything.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return rng.permutation(len(labels))
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in rng.permutation(int(labels.max()) + 1)]
    picked: list[int] = []
    while len(picked) < n:
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(int(pool.pop()))
    return np.array(picked, dtype=np.int64)
