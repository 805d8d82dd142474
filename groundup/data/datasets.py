"""Datasets: the shipped text corpora, scikit-learn's 8x8 digits, and MNIST downloaded with a checksum.

- Tiny Shakespeare and names ship in `groundup/data/files/` (see its README.md for attribution).
  Splits follow nanoGPT (first 90% train / last 10% val) and makemore (seeded shuffle, min(1000, 10%)
  names held out as test; we hold out as many again for validation).
- `load_digits` wraps `sklearn.datasets.load_digits` (bundled with scikit-learn, no network).
- `load_mnist` downloads the four IDX files once into a cache directory, verifies their SHA-256,
  writes atomically (temp file + rename), and raises `DatasetUnavailableError` when it cannot.

References:
    nanoGPT data/shakespeare_char/prepare.py: https://github.com/karpathy/nanoGPT
    makemore: https://github.com/karpathy/makemore
    MNIST and the IDX format: LeCun, Cortes & Burges, http://yann.lecun.com/exdb/mnist/
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.resources
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "MNIST_FILES",
    "MNIST_URL",
    "ChecksumError",
    "DatasetUnavailableError",
    "MNIST",
    "NameSplits",
    "load_digits",
    "load_mnist",
    "load_text",
    "names_splits",
    "read_idx",
    "shakespeare_splits",
    "train_test_split",
]

_SHIPPED_TEXTS = {"shakespeare": "tinyshakespeare.txt", "names": "names.txt"}

# torchvision's primary MNIST mirror; the files are the original ones from yann.lecun.com.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {  # file name -> SHA-256
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be downloaded (offline, HTTP error...); the message says how to get it."""


class ChecksumError(ValueError):
    """A downloaded file's SHA-256 does not match the expected one."""


# ---------------------------------------------------------------------------- text corpora
def load_text(name_or_path: str | os.PathLike) -> str:
    """Read a shipped corpus ("shakespeare" or "names") or any UTF-8 text file.

    Args:
        name_or_path: "shakespeare", "names", or a path to a text file.

    Returns:
        the whole text.
    """
    if isinstance(name_or_path, str) and name_or_path in _SHIPPED_TEXTS:
        resource = importlib.resources.files("groundup.data") / "files" / _SHIPPED_TEXTS[name_or_path]
        return resource.read_text(encoding="utf-8")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no text named {str(name_or_path)!r}: give one of {sorted(_SHIPPED_TEXTS)} or a text file's path"
        )
    return path.read_text(encoding="utf-8-sig")   # a byte-order mark (Windows editors) is not text


def shakespeare_splits(train_fraction: float = 0.9) -> tuple[str, str]:
    """Tiny Shakespeare split as nanoGPT does: the first 90% of characters train, the rest validate.

    Returns:
        (train_text, val_text); 1,003,854 and 111,540 characters.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    text = load_text("shakespeare")
    cut = int(len(text) * train_fraction)
    return text[:cut], text[cut:]


class NameSplits(NamedTuple):
    """The names corpus split into train, validation and test lists."""

    train: list[str]
    val: list[str]
    test: list[str]


def names_splits(seed: int = 42) -> NameSplits:
    """Shuffle the 32,033 names with a fixed seed and hold out min(1000, 10%) as test, as many as val.

    Args:
        seed: seed of the NumPy generator that permutes the names.

    Returns:
        NameSplits(train, val, test): 30,033 / 1,000 / 1,000 names.
    """
    names = [line.strip() for line in load_text("names").splitlines() if line.strip()]
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    held_out = min(1000, len(names) // 10)
    test = shuffled[:held_out]
    val = shuffled[held_out : 2 * held_out]
    train = shuffled[2 * held_out :]
    return NameSplits(train, val, test)


# ---------------------------------------------------------------------------- arrays
def train_test_split(*arrays: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> list[np.ndarray]:
    """Shuffle rows with a seeded permutation and split every array the same way.

    Args:
        *arrays: arrays with the same first dimension N.
        test_fraction: share of rows for the test part (rounded to the nearest row, at least 1).
        seed: seed of the NumPy generator.

    Returns:
        [a_train, a_test, b_train, b_test, ...], like scikit-learn's `train_test_split`.
    """
    if not arrays:
        raise ValueError("train_test_split needs at least one array")
    n = len(arrays[0])
    for array in arrays:
        if len(array) != n:
            raise ValueError(f"arrays have different lengths: {[len(a) for a in arrays]}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test_rows, train_rows = order[:n_test], order[n_test:]
    return [part for array in arrays for part in (array[train_rows], array[test_rows])]


def load_digits(flatten: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten 8x8 digits (bundled with scikit-learn: no download).

    Args:
        flatten: return X as (N, 64) instead of (N, 8, 8).

    Returns:
        X float32 in [0, 1] (pixel counts 0..16 divided by 16), shape (N, 8, 8) or (N, 64);
        y int64 labels 0..9, shape (N,).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as err:
        raise ImportError(
            "load_digits needs scikit-learn: pip install scikit-learn (or pip install 'groundup[train]')"
        ) from err
    bunch = sklearn_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # (N, 8, 8)
    labels = bunch.target.astype(np.int64)
    return (images.reshape(len(images), -1) if flatten else images), labels  # (N, 64) or (N, 8, 8)


# ---------------------------------------------------------------------------- MNIST
class MNIST(NamedTuple):
    """MNIST arrays: images float32 in [0, 1], (N, 28, 28) or (N, 784); labels int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in .gz), the format MNIST ships in.

    The header is two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then
    each dimension as a big-endian uint32; the data follow in C order.

    Returns:
        the array, with the dtype and shape from the header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), {len(data) - offset} follow")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, destination: Path, sha256: str, timeout: float) -> None:
    """Download `url` to `destination` through a temp file in the same directory, checking SHA-256."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    file_descriptor, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    temp_path = Path(temp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(file_descriptor, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                raise DatasetUnavailableError(
                    f"could not download {url} ({err}). If this machine is offline, download the file "
                    f"elsewhere and copy it to {destination} (SHA-256 {sha256}), or pass url= a mirror."
                ) from err
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {actual}. The download is "
                f"corrupt or the mirror serves a different file; nothing was written to {destination}."
            )
        os.replace(temp_path, destination)  # atomic: readers see the old file or the whole new one
    finally:
        temp_path.unlink(missing_ok=True)


def _default_cache_dir() -> Path:
    return Path(os.environ.get("GROUNDUP_CACHE", Path.home() / ".cache" / "groundup"))


def load_mnist(
    cache_dir: str | os.PathLike | None = None,
    url: str = MNIST_URL,
    checksums: dict[str, str] | None = None,
    flatten: bool = False,
    timeout: float = 60.0,
) -> MNIST:
    """MNIST's 60,000 train and 10,000 test digits, downloaded once and cached.

    Cached files are checked against their SHA-256 on every load; a file that does not match is
    downloaded again.

    Args:
        cache_dir: where the .gz files live; default `$GROUNDUP_CACHE` or ~/.cache/groundup, plus "mnist/".
        url: base URL holding the four files (a trailing "/" is added if missing).
        checksums: file name -> SHA-256; default `MNIST_FILES`.
        flatten: images as (N, 784) instead of (N, 28, 28).
        timeout: seconds to wait on the network per request.

    Returns:
        MNIST(x_train, y_train, x_test, y_test): images float32 in [0, 1], labels int64.

    Raises:
        DatasetUnavailableError: a file is not cached and cannot be downloaded (message names the URL).
        ChecksumError: a downloaded file has the wrong SHA-256.
    """
    checksums = MNIST_FILES if checksums is None else checksums
    missing = set(MNIST_FILES) - set(checksums)
    if missing:
        raise ValueError(f"checksums lacks entries for {sorted(missing)}")
    directory = Path(cache_dir) if cache_dir is not None else _default_cache_dir() / "mnist"
    base = url if url.endswith("/") else url + "/"
    arrays = {}
    for name in MNIST_FILES:
        path = directory / name
        if not (path.is_file() and _sha256(path) == checksums[name]):
            _download(base + name, path, checksums[name], timeout)
        arrays[name] = read_idx(path)

    def images(name: str) -> np.ndarray:
        x = arrays[name].astype(np.float32) / 255.0  # (N, 28, 28)
        return x.reshape(len(x), -1) if flatten else x  # (N, 784) or (N, 28, 28)

    return MNIST(
        images("train-images-idx3-ubyte.gz"),
        arrays["train-labels-idx1-ubyte.gz"].astype(np.int64),
        images("t10k-images-idx3-ubyte.gz"),
        arrays["t10k-labels-idx1-ubyte.gz"].astype(np.int64),
    )
