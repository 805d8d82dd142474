"""Tests for groundup.data: shipped corpora, digits, MNIST download and cache, synthetic tasks, batching.

MNIST is tested against a local HTTP server on 127.0.0.1 serving small generated IDX files; the tests
never touch the network.
"""

import datetime
import gzip
import hashlib
import http.server
import re
import socket
import threading
from functools import partial

import numpy as np
import pytest

from groundup.data import (
    DATE_FORMATS,
    MNIST_FILES,
    ChecksumError,
    DataLoader,
    DatasetUnavailableError,
    batches,
    copy_sequences,
    date_pairs,
    format_date,
    get_batch,
    induction_sequences,
    load_digits,
    load_mnist,
    load_text,
    names_splits,
    pad_sequences,
    read_idx,
    shakespeare_splits,
    train_test_split,
)
from groundup.data.synthetic import year_words


# ---------------------------------------------------------------------------- text corpora
def test_load_text_shipped_and_path(tmp_path):
    shakespeare = load_text("shakespeare")
    assert len(shakespeare) == 1_115_394 and shakespeare.startswith("First Citizen:")
    assert len(set(shakespeare)) == 65
    names = load_text("names").splitlines()
    assert len(names) == 32_033 and names[:3] == ["emma", "olivia", "ava"]
    path = tmp_path / "corpus.txt"
    path.write_text("héllo\n", encoding="utf-8")
    assert load_text(path) == "héllo\n" and load_text(str(path)) == "héllo\n"
    with pytest.raises(FileNotFoundError, match="'shakespear'.*names.*shakespeare"):
        load_text("shakespear")


def test_shakespeare_splits():
    train, val = shakespeare_splits()
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert train + val == load_text("shakespeare")


def test_names_splits_sizes_disjoint_and_seeded():
    splits = names_splits()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30_033, 1_000, 1_000)
    everything = splits.train + splits.val + splits.test
    assert sorted(everything) == sorted(load_text("names").splitlines())
    assert names_splits(seed=42) == splits
    assert names_splits(seed=7).test != splits.test
    train, val, test = splits  # a NamedTuple unpacks
    assert test == splits.test


# ---------------------------------------------------------------------------- digits and splits
def test_load_digits():
    pytest.importorskip("sklearn")
    x, y = load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    flat, _ = load_digits(flatten=True)
    np.testing.assert_array_equal(flat, x.reshape(1797, 64))


def test_train_test_split_is_seeded_partition():
    x = np.arange(100).reshape(50, 2)
    y = np.arange(50)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.2, seed=3)
    assert len(x_test) == 10 and len(x_train) == 40
    np.testing.assert_array_equal(x_train[:, 0] // 2, y_train)  # rows stay aligned across arrays
    assert sorted(np.concatenate([y_train, y_test]).tolist()) == list(range(50))
    again = train_test_split(x, y, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[3], y_test)
    with pytest.raises(ValueError, match="different lengths"):
        train_test_split(x, y[:10])


# ---------------------------------------------------------------------------- MNIST over a local server
def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_server(tmp_path):
    """Serve four small MNIST-format files on 127.0.0.1; yields (url, checksums, arrays, request log)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, size=6, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, size=3, dtype=np.uint8),
    }
    served = tmp_path / "served"
    served.mkdir()
    checksums = {}
    for name, array in arrays.items():
        data = _idx_bytes(array)
        (served / name).write_bytes(data)
        checksums[name] = hashlib.sha256(data).hexdigest()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", checksums, arrays, requests
    finally:
        server.shutdown()
        server.server_close()


def test_load_mnist_downloads_verifies_and_caches(mnist_server, tmp_path):
    url, checksums, arrays, requests = mnist_server
    cache = tmp_path / "cache"
    mnist = load_mnist(cache_dir=cache, url=url, checksums=checksums)
    assert mnist.x_train.shape == (6, 28, 28) and mnist.x_train.dtype == np.float32
    assert mnist.y_train.dtype == np.int64 and mnist.y_test.shape == (3,)
    np.testing.assert_allclose(mnist.x_train, arrays["train-images-idx3-ubyte.gz"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(mnist.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_FILES)  # no temp files left behind
    assert len(requests) == 4

    again = load_mnist(cache_dir=cache, url=url.rstrip("/"), checksums=checksums, flatten=True)
    assert len(requests) == 4  # served from the cache
    assert again.x_test.shape == (3, 784)

    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupt")  # a bad cached file is fetched again
    load_mnist(cache_dir=cache, url=url, checksums=checksums)
    assert requests[4:] == ["/t10k-labels-idx1-ubyte.gz"]


def test_load_mnist_checksum_mismatch(mnist_server, tmp_path):
    url, checksums, _, _ = mnist_server
    wrong = dict(checksums, **{"train-labels-idx1-ubyte.gz": "0" * 64})
    cache = tmp_path / "cache"
    with pytest.raises(
        ChecksumError, match="checksum mismatch for .*train-labels-idx1-ubyte.gz.*expected SHA-256 0000"
    ):
        load_mnist(cache_dir=cache, url=url, checksums=wrong)
    assert not (cache / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # temp file removed


def test_load_mnist_missing_file_on_server(mnist_server, tmp_path):
    url, checksums, _, _ = mnist_server
    with pytest.raises(DatasetUnavailableError, match="404"):
        load_mnist(cache_dir=tmp_path / "cache", url=url + "nothing-here/", checksums=checksums)


def test_load_mnist_offline_error(tmp_path):
    with socket.socket() as sock:  # a port with nothing listening: connection refused, like being offline
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mnist/"
    with pytest.raises(DatasetUnavailableError) as info:
        load_mnist(cache_dir=tmp_path / "cache", url=url, timeout=5)
    message = str(info.value)
    assert url + "train-images-idx3-ubyte.gz" in message and "offline" in message and "SHA-256" in message


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + np.array([5], dtype=">u4").tobytes() + b"abc"))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        read_idx(short)
    good = tmp_path / "good.gz"
    good.write_bytes(_idx_bytes(np.arange(6).reshape(2, 3)))
    np.testing.assert_array_equal(read_idx(good), np.arange(6).reshape(2, 3))


# ---------------------------------------------------------------------------- synthetic tasks
# Formats Python's strptime can read back: an independent check of the generated text.
_STRPTIME = {
    "mm/dd/yyyy": "%m/%d/%Y",
    "d.m.yyyy": "%d.%m.%Y",
    "d mon yyyy": "%d %b %Y",
    "mon d, yyyy": "%b %d, %Y",
    "month d, yyyy": "%B %d, %Y",
    "d month yyyy": "%d %B %Y",
    "dow d mon yyyy": "%a %d %b %Y",
    "weekday, month d, yyyy": "%A, %B %d, %Y",
}


def _parses(text: str, pattern: str) -> bool:
    try:
        datetime.datetime.strptime(text, pattern)
    except ValueError:
        return False
    return True


def test_date_pairs_targets_are_correct():
    pairs = date_pairs(600, seed=1)
    assert pairs == date_pairs(600, seed=1) and pairs != date_pairs(600, seed=2)
    lengths = [len(text) for text, _ in pairs]
    assert min(lengths) <= 8 and max(lengths) >= 45  # short and long inputs
    for fmt in DATE_FORMATS:
        for capitalize in (False, True):
            for date in [datetime.date(1999, 3, 3), datetime.date(2003, 12, 31), datetime.date(1950, 1, 1)]:
                text = format_date(date, fmt, capitalize)
                if fmt in _STRPTIME:  # strptime is case-insensitive and checks the weekday name too
                    assert datetime.datetime.strptime(text, _STRPTIME[fmt]).date() == date, text
    checked = 0
    for text, iso in date_pairs(600, seed=1, formats=list(_STRPTIME)):
        fmt = next(f for f in _STRPTIME if _parses(text, _STRPTIME[f]))
        assert datetime.datetime.strptime(text, _STRPTIME[fmt]).date().isoformat() == iso, text
        checked += 1
    assert checked == 600
    assert (
        format_date(datetime.date(1999, 3, 3), "weekday dth of month yyyy") == "wednesday 3rd of march 1999"
    )
    assert format_date(datetime.date(1999, 3, 3), "m/d/yy") == "3/3/99"
    assert format_date(
        datetime.date(2021, 11, 22), "weekday, the dword of month, yword", capitalize=True
    ) == ("Monday, the twenty-second of November, two thousand twenty-one")


def test_date_pairs_weekdays_and_ordinals_are_consistent():
    for text, iso in date_pairs(300, seed=5, formats=["weekday dth of month yyyy"]):
        date = datetime.date.fromisoformat(iso)
        weekday, dth, _, month, year = text.lower().split()
        assert weekday == date.strftime("%A").lower() and month == date.strftime("%B").lower()
        assert int(dth[:-2]) == date.day and int(year) == date.year
        assert dth[-2:] == (
            "th" if 11 <= date.day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(date.day % 10, "th")
        )


def test_year_words_and_errors():
    assert year_words(1999) == "nineteen ninety-nine"
    assert year_words(1905) == "nineteen oh five"
    assert year_words(1900) == "nineteen hundred"
    assert year_words(2000) == "two thousand"
    assert year_words(2040) == "two thousand forty"
    with pytest.raises(ValueError, match="unknown date format"):
        date_pairs(3, formats=["dd-mm-yyyy"])
    with pytest.raises(ValueError, match="two-digit years"):
        date_pairs(3, start_year=1900, end_year=2020)


def test_copy_and_reverse_sequences():
    source, target = copy_sequences(8, 5, vocab_size=7, seed=3)
    assert source.shape == (8, 5) and source.dtype == np.int64 and 0 <= source.min() and source.max() < 7
    np.testing.assert_array_equal(source, target)
    rsource, rtarget = copy_sequences(8, 5, vocab_size=7, seed=3, reverse=True)
    np.testing.assert_array_equal(rsource, source)
    np.testing.assert_array_equal(rtarget, source[:, ::-1])


def test_induction_sequences():
    seqs = induction_sequences(16, 10, vocab_size=50, seed=0)
    assert seqs.shape == (16, 20) and seqs.dtype == np.int64
    np.testing.assert_array_equal(seqs[:, :10], seqs[:, 10:])
    np.testing.assert_array_equal(seqs, induction_sequences(16, 10, vocab_size=50, seed=0))
    with_bos = induction_sequences(200, 10, vocab_size=5, seed=1, bos=2)
    assert with_bos.shape == (200, 21) and (with_bos[:, 0] == 2).all()
    assert not (with_bos[:, 1:] == 2).any() and set(np.unique(with_bos[:, 1:])) == {0, 1, 3, 4}


# ---------------------------------------------------------------------------- batching
def test_get_batch_shifted_windows():
    data = np.arange(100, dtype=np.uint16)
    x, y = get_batch(data, batch_size=4, block_size=8, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    x2, _ = get_batch(data, batch_size=4, block_size=8, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    x_all, y_all = get_batch(data, batch_size=2000, block_size=8, rng=np.random.default_rng(1))
    assert x_all[:, 0].min() == 0 and y_all.max() == 99  # every start can be drawn, the last one too
    with pytest.raises(ValueError, match="need more than block_size"):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))


@pytest.mark.parametrize("rng", [0, None, np.random.RandomState(0)])
def test_get_batch_refuses_an_rng_that_is_not_a_generator(rng):
    """An int seed was "'int' object has no attribute 'integers'"; a legacy RandomState has no .integers."""
    with pytest.raises(TypeError, match="get_batch: rng must be a numpy.random.Generator"):
        get_batch(np.arange(50), 2, 8, rng)


def test_batches_cover_rows_once():
    x, y = np.arange(10) * 10, np.arange(10)
    seen = [(bx, by) for bx, by in batches((x, y), batch_size=4, shuffle=True, seed=0)]
    assert [len(by) for _, by in seen] == [4, 4, 2]
    assert sorted(np.concatenate([by for _, by in seen]).tolist()) == list(range(10))
    for bx, by in seen:
        np.testing.assert_array_equal(bx, by * 10)
    again = [by for _, by in batches((x, y), batch_size=4, shuffle=True, seed=0)]
    assert all(np.array_equal(a, b) for a, b in zip(again, [by for _, by in seen]))
    assert [b.tolist() for b in batches(y, 4, shuffle=False, drop_last=True)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="same first dimension"):
        next(batches((x, y[:5]), 2))


def test_data_loader_reshuffles_each_epoch():
    loader = DataLoader((np.arange(20), np.arange(20)), batch_size=8, seed=0)
    assert len(loader) == 3 and len(DataLoader(np.arange(20), 8, drop_last=True)) == 2
    first = np.concatenate([by for _, by in loader])
    second = np.concatenate([by for _, by in loader])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(20))
    assert not np.array_equal(first, second)
    replay = DataLoader((np.arange(20), np.arange(20)), batch_size=8, seed=0)
    np.testing.assert_array_equal(np.concatenate([by for _, by in replay]), first)
    single = next(iter(DataLoader(np.arange(5), 2, shuffle=False)))
    np.testing.assert_array_equal(single, [0, 1])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "4"])
def test_data_loader_refuses_a_batch_size_at_construction_as_torch(batch_size):
    """torch's DataLoader refuses these when it is built; here len() was a ZeroDivisionError, a negative size
    a bare '__len__() should return >= 0', a float a TypeError from range() on the first iteration and True
    a batch of one."""
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="batch_size should be a positive integer value, but got batch_size="):
        torch.utils.data.DataLoader(list(range(10)), batch_size=batch_size)
    with pytest.raises(ValueError, match=rf"DataLoader: batch_size should be a positive integer value, but got "
                                         rf"batch_size={re.escape(repr(batch_size))}"):
        DataLoader((np.arange(10), np.arange(10)), batch_size=batch_size)
    with pytest.raises(ValueError, match="batches: batch_size should be a positive integer value"):
        next(batches(np.arange(10), batch_size))


def test_data_loader_without_a_seed_draws_each_epoch_afresh():
    loader = DataLoader(np.arange(50), batch_size=50, seed=None)
    first, second = next(iter(loader)), next(iter(loader))
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
    assert not np.array_equal(first, second)


def test_pad_sequences_and_mask():
    padded, mask = pad_sequences([[5, 6, 7], [8], []], pad_id=-1)
    np.testing.assert_array_equal(padded, [[5, 6, 7], [8, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False], [False, False, False]])
    assert padded.dtype == np.int64 and mask.dtype == bool
    np.testing.assert_array_equal(padded[mask], [5, 6, 7, 8])
    wide, wide_mask = pad_sequences([np.array([1, 2])], pad_id=0, max_len=4)
    assert wide.shape == (1, 4) and wide_mask.sum() == 2
    with pytest.raises(ValueError, match="sequence 0 has length 3 > max_len=2"):
        pad_sequences([[1, 2, 3]], max_len=2)
    cut, cut_mask = pad_sequences([[1, 2, 3]], max_len=2, truncate=True)
    np.testing.assert_array_equal(cut, [[1, 2]])
    assert cut_mask.all()


@pytest.mark.parametrize("call, error, message", [
    (lambda: pad_sequences([[1, 2], [1.5, 2.7]]), TypeError, "sequence 1 must be a 1-D sequence of integer token "
                                                            "ids, got float64"),
    (lambda: pad_sequences(["abc"]), TypeError, "sequence 0 must be a 1-D sequence of integer token ids, got <U3"),
    (lambda: pad_sequences([[[1, 2]]]), TypeError, r"sequence 0 .* of shape \(1, 2\)"),
    (lambda: pad_sequences([[1, 2]], max_len=2.5), TypeError, "max_len must be an int, got 2.5"),
    (lambda: pad_sequences([[1, 2]], pad_id=0.5), TypeError, "pad_id must be an int, got 0.5"),
])
def test_pad_sequences_refuses_what_is_not_token_ids(call, error, message):
    """Floats were truncated to ints without a word (1.5 -> 1, 2.7 -> 2), a pad_id of 0.5 became 0, and a
    string was NumPy's "invalid literal for int()"."""
    with pytest.raises(error, match=f"pad_sequences: {message}"):
        call()
    padded, mask = pad_sequences([np.array([3, 4], dtype=np.int32), [], (5,)], pad_id=np.int64(9))
    np.testing.assert_array_equal(padded, [[3, 4], [9, 9], [5, 9]])
