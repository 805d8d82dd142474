"""Batching: random LM windows (nanoGPT's get_batch), seeded minibatches over arrays, and padding.

References:
    nanoGPT train.py get_batch: https://github.com/karpathy/nanoGPT/blob/master/train.py
    torch.utils.data.DataLoader (shuffle, drop_last semantics) and torch.nn.utils.rnn.pad_sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["DataLoader", "batches", "get_batch", "pad_sequences"]


def get_batch(
    data: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample random windows of a token stream for next-token prediction.

    Args:
        data: 1-D array of token ids, length N > block_size.
        batch_size: B, number of windows.
        block_size: T, window length.
        rng: NumPy generator that picks the window starts (uniform over 0..N-T-1).

    Returns:
        (x, y) int64 of shape (B, T), with y[b, t] = x[b, t + 1] = data[start_b + t + 1].
    """
    data = np.asarray(data)
    if data.ndim != 1:
        raise ValueError(f"get_batch: data must be 1-D token ids, got shape {data.shape}")
    if data.dtype.kind not in "iu":
        raise TypeError(f"get_batch: data must hold integer token ids, got dtype {data.dtype}")
    for name, value in (("batch_size", batch_size), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"get_batch: {name} must be a positive int, got {value!r}")
    if len(data) <= block_size:
        raise ValueError(f"data has {len(data)} tokens; need more than block_size={block_size}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"get_batch: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    starts = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,)
    index = starts[:, None] + np.arange(block_size)  # (B, T)
    x = data[index].astype(np.int64)  # (B, T)
    y = data[index + 1].astype(np.int64)  # (B, T)
    return x, y


def _check_batch_size(batch_size: object, where: str) -> int:
    """``batch_size`` if it is a positive int (not a bool), else the ValueError torch's DataLoader raises."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"{where}: batch_size should be a positive integer value, but got batch_size={batch_size!r}")
    return int(batch_size)


def _as_arrays(arrays: np.ndarray | Sequence[np.ndarray]) -> tuple[list[np.ndarray], bool]:
    single = isinstance(arrays, np.ndarray)
    arrays = [arrays] if single else [np.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("need at least one array")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"arrays must have the same first dimension, got {lengths}")
    return arrays, single


def batches(
    arrays: np.ndarray | Sequence[np.ndarray],
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = 0,
    drop_last: bool = False,
) -> Iterator[np.ndarray | tuple[np.ndarray, ...]]:
    """One pass (epoch) over the rows of some arrays, in minibatches.

    Args:
        arrays: one array, or a sequence of arrays with the same first dimension N (e.g. (X, y)).
        batch_size: rows per batch.
        shuffle: visit rows in a random order drawn from `seed`; else in order.
        seed: seed of the permutation (use e.g. `seed + epoch` for a new order each epoch).
        drop_last: drop the final batch if it has fewer than `batch_size` rows.

    Yields:
        a batch of the single array, or a tuple with one batch per array, each (batch_size, ...).
    """
    batch_size = _check_batch_size(batch_size, "batches")
    arrays, single = _as_arrays(arrays)
    n = len(arrays[0])
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        rows = order[start : start + batch_size]
        parts = tuple(a[rows] for a in arrays)
        yield parts[0] if single else parts


class DataLoader:
    """Re-iterable minibatches over arrays, reshuffled each epoch with seed + epoch (reproducible).

    Args:
        arrays, batch_size, shuffle, drop_last: as in `batches`.
        seed: base seed; the k-th iteration over the loader (k = 0, 1, ...) uses seed + k; None draws a
            fresh order every epoch.

    Raises:
        ValueError: at construction, for a batch_size that is not a positive int (as torch's DataLoader).

    Example:
        >>> loader = DataLoader((np.arange(10), np.arange(10) * 2), batch_size=4, shuffle=False)
        >>> len(loader), [len(x) for x, y in loader]
        (3, [4, 4, 2])
    """

    def __init__(
        self,
        arrays: np.ndarray | Sequence[np.ndarray],
        batch_size: int,
        shuffle: bool = True,
        seed: int | None = 0,
        drop_last: bool = False,
    ):
        batch_size = _check_batch_size(batch_size, "DataLoader")
        self.arrays, _ = _as_arrays(arrays)
        self._single = isinstance(arrays, np.ndarray)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.arrays[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray | tuple[np.ndarray, ...]]:
        arrays = self.arrays[0] if self._single else self.arrays
        epoch_seed = None if self.seed is None else self.seed + self.epoch
        self.epoch += 1
        return batches(arrays, self.batch_size, self.shuffle, epoch_seed, self.drop_last)


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int = 0, max_len: int | None = None, truncate: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad variable-length id sequences into one array, with a mask of the real tokens.

    Args:
        seqs: B sequences of integer token ids (lists or 1-D arrays; floats and strings are refused).
        pad_id: id written in the padding positions.
        max_len: T; default the longest sequence.
        truncate: cut sequences longer than `max_len` (keeping the start) instead of raising.

    Returns:
        (padded, mask): padded int64 (B, T); mask bool (B, T), True at real tokens.
    """
    arrays = []
    for row, seq in enumerate(seqs):
        array = np.asarray(seq)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise TypeError(f"pad_sequences: sequence {row} must be a 1-D sequence of integer token ids, got "
                            f"{array.dtype} of shape {array.shape}")
        arrays.append(array)
    for name, value in (("pad_id", pad_id), ("max_len", max_len)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
            raise TypeError(f"pad_sequences: {name} must be an int, got {value!r}")
    lengths = [len(a) for a in arrays]
    width = max(lengths, default=0) if max_len is None else int(max_len)
    if width < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    too_long = [i for i, length in enumerate(lengths) if length > width]
    if too_long and not truncate:
        i = too_long[0]
        raise ValueError(f"sequence {i} has length {lengths[i]} > max_len={width}; truncate=True cuts")
    padded = np.full((len(seqs), width), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(seqs), width), dtype=bool)  # (B, T)
    for row, array in enumerate(arrays):
        length = min(len(array), width)
        padded[row, :length] = array[:length]
        mask[row, :length] = True
    return padded, mask
