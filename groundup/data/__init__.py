"""Data: shipped corpora and their splits, digits and MNIST, synthetic tasks, and batching helpers.

Depends only on NumPy and the standard library (scikit-learn is imported lazily by `load_digits`).

    from groundup.data import load_text, shakespeare_splits, get_batch
"""

from groundup.data.batching import DataLoader, batches, get_batch, pad_sequences
from groundup.data.datasets import (
    MNIST,
    MNIST_FILES,
    MNIST_URL,
    ChecksumError,
    DatasetUnavailableError,
    NameSplits,
    load_digits,
    load_mnist,
    load_text,
    names_splits,
    read_idx,
    shakespeare_splits,
    train_test_split,
)
from groundup.data.masking import mask_tokens  # noqa: F401
from groundup.data.speakers import SpeakerTask, labelled_subset, speaker_task  # noqa: F401
from groundup.data.synthetic import DATE_FORMATS, copy_sequences, date_pairs, format_date, induction_sequences

__all__ = [
    "DATE_FORMATS",
    "MNIST",
    "MNIST_FILES",
    "MNIST_URL",
    "ChecksumError",
    "DataLoader",
    "DatasetUnavailableError",
    "NameSplits",
    "batches",
    "copy_sequences",
    "date_pairs",
    "format_date",
    "get_batch",
    "induction_sequences",
    "load_digits",
    "load_mnist",
    "load_text",
    "names_splits",
    "pad_sequences",
    "read_idx",
    "shakespeare_splits",
    "train_test_split",
]
