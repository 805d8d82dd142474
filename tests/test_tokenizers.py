"""Tests for groundup.tokenizers: character tokenizer, byte-level BPE, parity with Hugging Face tokenizers.

The oracle for the BPE is the Hugging Face `tokenizers` library (skipped when it is not installed):
same pre-tokens, same ids from the same vocab.json/merges.txt, and the same merges when training.
"""

import json
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import groundup as gu
from groundup.data import load_text
from groundup.tokenizers import ByteLevelBPE, CharTokenizer, UnknownTokenError, bytes_to_unicode, pre_tokenize

TRICKY = [
    "",
    " ",
    "Hello world",
    "Hello  world's   three spaces\tand a tab",
    "don't won't I'm you're we've they'll he'd DON'T It'S",
    "'s 't 're 've 'm 'll 'd ''s",
    "numbers 123 4567 3.14159 1,000,000 42nd 2² ½ Ⅻ ٣٤ ０１２",
    "line one\nline two\n\n\nafter blank lines\r\nwindows\rold mac",
    "trailing spaces   \n   leading spaces",
    "accents: café naïve résumé Ångström; decomposed: cafe\u0301 n\u0303",
    "emoji: 🙂 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ and 🙂🙂🙂",
    "CJK 日本語のテキスト 中文 한국어",
    "Ελληνικά Русский עברית العربية हिन्दी",
    "punctuation!!! ??? ... --- *** ((nested)) [brackets] {braces} <tags/>",
    "whitespace zoo: \u00a0nbsp \u2003em \u3000ideo \u2028line \u2029para \x85nel \x1cfs \x1fus \x0bvt",
    "controls \x00\x01\x7f and zero width \u200b\u200c\u200d\ufeff",
    "newer letters \u1c89\ua7cb\U00010d4a\U00013460 and digits \U00010d40\U0001e5f1",
    "mixed123abc abc123 _underscore_ snake_case CamelCase",
    "    \n    \n",
]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return load_text("shakespeare")


@pytest.fixture(scope="module")
def bpe(shakespeare) -> ByteLevelBPE:
    return ByteLevelBPE.train(shakespeare[:200_000], vocab_size=512)


# ---------------------------------------------------------------------------- CharTokenizer
def test_char_tokenizer_shakespeare_vocab_and_round_trip(shakespeare):
    tok = CharTokenizer(shakespeare)
    assert tok.vocab_size == 65
    assert tok.encode("\n") == [0] and tok.encode(" ") == [1]  # sorted order, as nanoGPT
    ids = tok.encode(shakespeare[:5000])
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == shakespeare[:5000]


def test_char_tokenizer_unknown_character_error():
    tok = CharTokenizer("abc")
    with pytest.raises(KeyError) as info:
        tok.encode("abcz")
    assert isinstance(info.value, UnknownTokenError)
    message = str(info.value)
    assert "'z'" in message and "U+007A" in message and "position 3" in message
    with pytest.raises(KeyError, match="token id 3 is out of range"):
        tok.decode([0, 3])
    with pytest.raises(KeyError, match="token id -1"):
        tok.decode([-1])


@pytest.mark.parametrize("make, error, message", [
    (lambda: CharTokenizer("abc", specials="<pad>"), TypeError, r"specials must be a list of tokens, got the string "
                                                                 r"'<pad>'.*write \['<pad>'\]"),
    (lambda: CharTokenizer("abc", specials=[""]), ValueError, "every special token must be a non-empty str"),
    (lambda: CharTokenizer(b"abc"), TypeError, "text must be a str"),
    (lambda: CharTokenizer(["ab", "cd"]), TypeError, "text must be a str .* or single characters, got list"),
    (lambda: ByteLevelBPE.train("low lower", vocab_size="300"), TypeError, "vocab_size must be an int, got '300'"),
    (lambda: ByteLevelBPE.train("low lower", vocab_size=300.0), TypeError, "vocab_size must be an int, got 300.0"),
    (lambda: ByteLevelBPE.train("low", 300, special_tokens="<eos>"), TypeError,
     "special_tokens must be a list of tokens, got the string '<eos>'"),
    (lambda: ByteLevelBPE.train("low", 300, special_tokens=[""]), ValueError,
     "every special token must be a non-empty str"),
    (lambda: ByteLevelBPE.train(["low", 7], 300), TypeError, "an iterable of str; item 1 is int"),
])
def test_tokenizers_refuse_arguments_they_would_misread(make, error, message):
    """specials="<pad>" made each of '<', 'p', 'a', 'd', '>' a special token, and the same string as BPE
    special_tokens gave '<' and '>' two ids each; an empty special, bytes (ids 97, 98 ... as 'characters') or
    multi-character 'characters' were kept; a vocab_size of "300" was a bare '<' TypeError."""
    with pytest.raises(error, match=message):
        make()


def test_char_tokenizer_takes_an_alphabet_as_characters():
    """What the str check above keeps working: an alphabet as a list or set of single characters."""
    assert CharTokenizer(["b", "a", "b"]).tokens == CharTokenizer({"a", "b"}).tokens == CharTokenizer("ab").tokens


def test_char_tokenizer_save_load(tmp_path):
    tok = CharTokenizer("hello wörld 🙂\n")
    tok.save(tmp_path / "tok")
    loaded = CharTokenizer.load(tmp_path / "tok")
    assert loaded.chars == tok.chars
    assert loaded.encode("wörld 🙂") == tok.encode("wörld 🙂")
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text(encoding="utf-8"))["type"] == "char"
    with pytest.raises(FileNotFoundError):
        CharTokenizer.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="not a character tokenizer"):
        CharTokenizer.load(tmp_path / "bad")


@pytest.mark.parametrize("content, message", [
    (b"{bad", "not UTF-8 JSON"), (b"\xff\xfe", "not UTF-8 JSON"), (b"[]", "not a character tokenizer file"),
    (b'{"type": "char", "chars": ["a", "b"], "specials": ["a"]}', "'specials' repeat a token or one of 'chars'"),
])
def test_char_tokenizer_load_names_the_file_it_refuses(tmp_path, content, message):
    """Bad JSON, bad UTF-8 and a JSON list were a bare JSONDecodeError, UnicodeDecodeError and AttributeError
    without the file; a special also listed among the chars shifted every id after it."""
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match=f"{tmp_path / 'tokenizer.json'}.*{message}"):
        CharTokenizer.load(tmp_path)


@pytest.mark.parametrize("vocab, message", [
    (b"{bad", "not UTF-8 JSON"), (b"[1, 2]", "must be an object of token -> id"),
    (b'{"a": "0"}', "must be an object of token -> id"), (b'{"a": 0, "b": 0}', "id 0 is given to more than one token"),
    (b'{"a": true}', "must be an object of token -> id"),
])
def test_bpe_load_names_the_vocab_file_it_refuses(tmp_path, vocab, message):
    """A list was a bare 'dictionary update sequence' TypeError; string ids were kept (encode returned
    strings); two tokens with one id broke the round trip (decode gave the other one)."""
    (tmp_path / "vocab.json").write_bytes(vocab)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{tmp_path / 'vocab.json'}: .*{message}"):
        ByteLevelBPE.load(tmp_path)


def test_tokenizer_saves_are_atomic_and_never_write_through_a_symlink(tmp_path, monkeypatch, bpe):
    """A save writes a temporary file and renames it: a symlink in the directory is replaced (write_text
    wrote through it, into the file it pointed at), and a failed save leaves the previous file whole."""
    import os

    outside = tmp_path / "outside.txt"
    outside.write_text("keep me", encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (run / name).symlink_to(outside)
    CharTokenizer("abc").save(run)
    bpe.save(run)
    assert outside.read_text(encoding="utf-8") == "keep me"
    assert not (run / "tokenizer.json").is_symlink() and CharTokenizer.load(run).tokens == ["a", "b", "c"]
    assert ByteLevelBPE.load(run).vocab == bpe.vocab

    before = (run / "tokenizer.json").read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        CharTokenizer("xyz").save(run)
    assert (run / "tokenizer.json").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]


@settings(max_examples=200)
@given(st.text())
def test_char_tokenizer_round_trip_property(text):
    tok = CharTokenizer(text)
    assert tok.decode(tok.encode(text)) == text


# ---------------------------------------------------------------------------- byte table and pre-tokenizer
def test_bytes_to_unicode_table():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert all(not ch.isspace() and ch.isprintable() for ch in table.values())


def test_pre_tokenize_examples():
    assert pre_tokenize("Hello  world's") == ["Hello", " ", " world", "'s"]
    assert pre_tokenize("I'm 42!!") == ["I", "'m", " 42", "!!"]
    # \s+(?!\S) stops before the last whitespace character, leaving " " to join "b"; "\n" joins nothing
    assert pre_tokenize("a   b\n\nc ") == ["a", "  ", " b", "\n", "\n", "c", " "]
    assert pre_tokenize("x\x1c!") == ["x", "\x1c!"]  # U+001C is a symbol for Oniguruma (\s for Python's re)


@settings(max_examples=200)
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_pre_tokenize_covers_text(text):
    assert "".join(pre_tokenize(text)) == text


# ---------------------------------------------------------------------------- BPE on its own
def test_bpe_train_basics(bpe):
    assert bpe.vocab_size == 512 and len(bpe.merges) == 256
    assert sorted(bpe.vocab.values()) == list(range(512))
    assert bpe.merges[0] == ("Ġ", "t")  # the most frequent pair in Shakespeare
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode()) / 2  # merges compress
    assert bpe.decode(ids) == text


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trip_tricky(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_round_trip_property(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_bpe_round_trip_with_lone_surrogates(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_save_load_same_encoding(bpe, tmp_path, shakespeare):
    bpe.save(tmp_path)
    header = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[0]
    assert header == "#version: 0.2"
    loaded = ByteLevelBPE.load(tmp_path)
    assert loaded.vocab == bpe.vocab and loaded.merges == bpe.merges
    sample = shakespeare[-20_000:] + "".join(TRICKY)
    assert loaded.encode(sample) == bpe.encode(sample)
    again = ByteLevelBPE.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert again.encode(sample) == bpe.encode(sample)


def test_bpe_special_tokens_and_errors():
    tok = ByteLevelBPE.train(
        ["low lower lowest " * 20], vocab_size=270, special_tokens=["<|endoftext|>", "<pad>"]
    )
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<pad>") == 1
    ids = tok.encode("lowest") + [tok.token_to_id("<|endoftext|>")]
    assert tok.decode(ids) == "lowest<|endoftext|>"
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.token_to_id("<unk>")
    with pytest.raises(KeyError, match="token id 99999"):
        tok.decode([99999])
    with pytest.raises(ValueError, match="smaller than the 257 base tokens"):
        ByteLevelBPE.train("abc", vocab_size=200, special_tokens=["<s>"])


@pytest.mark.parametrize("ids, error, message", [
    ([1.7], TypeError, r"token ids must be integers, got 1.7 \(float\)"),
    ([np.float64(2.0)], TypeError, "token ids must be integers, got"),
    ("12", TypeError, "ids must be a sequence of integer token ids, got str '12'"),
    (np.array([[1, 2]]), ValueError, r"ids must be one sequence of token ids \(1-D\), got shape \(1, 2\)"),
])
def test_decode_refuses_ids_that_are_not_integers(bpe, ids, error, message):
    """int() truncated 1.7 to 1 and read the string "12" as the ids 1 and 2; a (1, T) batch was NumPy's
    'only 0-dimensional arrays can be converted'. Hugging Face's decode refuses floats and strings too."""
    char = CharTokenizer("abcdef")
    for tok, name in ((char, "CharTokenizer.decode"), (bpe, "ByteLevelBPE.decode")):
        with pytest.raises(error, match=f"{name}: {message}"):
            tok.decode(ids)


def test_decode_takes_ints_of_any_kind(bpe):
    """Python ints, NumPy integers, a 1-D int array, a 1-D Tensor (and bools, as int subclasses)."""
    char = CharTokenizer("abcdef")
    for tok in (char, bpe):
        ids = tok.encode("face")
        assert tok.decode(np.array(ids)) == tok.decode([np.int32(i) for i in ids]) == "face"
        assert tok.decode(gu.tensor(ids)) == tok.decode(tuple(ids)) == "face"
    assert char.decode([True, False]) == "ba"
    with pytest.raises(UnknownTokenError, match="token id 99999 is not in the vocabulary"):
        bpe.decode([99999])


def test_bpe_decode_invalid_utf8(bpe):
    lone_continuation_byte = bpe.vocab[bytes_to_unicode()[0x80]]
    assert bpe.decode([lone_continuation_byte]) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        bpe.decode([lone_continuation_byte], errors="strict")


def test_bpe_from_files_validation(tmp_path):
    table = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(table.values())}
    vocab["ab"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\r\na b\r\n", encoding="utf-8")  # CRLF tolerated
    tok = ByteLevelBPE.load(tmp_path)
    assert tok.encode("abab") == [vocab["ab"], vocab["ab"]]
    (tmp_path / "merges.txt").write_text("a b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        ByteLevelBPE.load(tmp_path)
    (tmp_path / "merges.txt").write_text("b c\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'bc' is not in the vocab"):
        ByteLevelBPE.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        ByteLevelBPE.load(tmp_path / "nowhere")


def test_bpe_merge_order_follows_rank_then_position(tmp_path):
    # "aaa" with merges [a a] -> "aa a" (leftmost first); then "aa a" only if that merge exists.
    table = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(table.values())}
    vocab["aa"], vocab["aaa"] = 256, 257
    tok = ByteLevelBPE(vocab, [("a", "a")])
    assert tok.encode("aaa") == [256, vocab["a"]]
    tok = ByteLevelBPE(vocab, [("a", "a"), ("aa", "a")])
    assert tok.encode("aaa") == [257]
    assert tok.encode("aaaa") == [256, 256]


# ---------------------------------------------------------------------------- parity with Hugging Face
@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("tokenizers")


def _hf_pre_tokens(hf, text):
    pre = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


def _byte_level(piece):
    table = bytes_to_unicode()
    return "".join(table[b] for b in piece.encode("utf-8"))


def test_pre_tokenize_matches_hf_on_tricky_strings(hf):
    for text in TRICKY:
        assert [_byte_level(p) for p in pre_tokenize(text)] == _hf_pre_tokens(hf, text), text


def test_pre_tokenize_matches_hf_on_code_point_sweep(hf):
    # Every 61st code point (plus the known edge cases) in letter, number, space and symbol contexts.
    code_points = [*range(0, 0x110000, 61), 0x1C, 0x1F, 0x85, 0xA0, 0x2028, 0x3000, 0x1C89, 0x10D40, 0xB2]
    for cp in code_points:
        if unicodedata.category(chr(cp)) == "Cs":
            continue
        c = chr(cp)
        text = f"a{c}b 1{c}2 {c}{c}x ,{c}. {c} \n"
        assert [_byte_level(p) for p in pre_tokenize(text)] == _hf_pre_tokens(hf, text), hex(cp)


def _hf_from_files(hf, directory):
    return hf.ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))


def test_bpe_encodes_like_hf(hf, bpe, tmp_path, shakespeare):
    bpe.save(tmp_path)
    reference = _hf_from_files(hf, tmp_path)
    names = load_text("names")
    for text in [shakespeare[:200_000], shakespeare[-50_000:], names[:100_000], *TRICKY]:
        assert bpe.encode(text) == reference.encode(text).ids
    ids = bpe.encode(shakespeare[:2000])
    assert bpe.decode(ids) == reference.decode(ids)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_bpe_encodes_like_hf_property(hf, bpe, tmp_path_factory, text):
    reference = _hf_cached(hf, bpe, tmp_path_factory)
    assert bpe.encode(text) == reference.encode(text).ids


_HF_CACHE = {}


def _hf_cached(hf, bpe, tmp_path_factory):
    if id(bpe) not in _HF_CACHE:
        directory = tmp_path_factory.mktemp("hf_bpe")
        bpe.save(directory)
        _HF_CACHE[id(bpe)] = _hf_from_files(hf, directory)
    return _HF_CACHE[id(bpe)]


def _hf_train(hf, corpus, vocab_size, min_frequency=2, special_tokens=()):
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


@pytest.mark.parametrize("corpus_name", ["shakespeare", "names"])
def test_bpe_training_matches_hf_trainer(hf, tmp_path, corpus_name):
    text = load_text(corpus_name)[:200_000]
    corpus = text.splitlines(keepends=True)
    ours = ByteLevelBPE.train(corpus, vocab_size=600, special_tokens=["<|endoftext|>"])
    theirs = _hf_train(hf, corpus, vocab_size=600, special_tokens=["<|endoftext|>"])
    ours.save(tmp_path / "ours")
    (tmp_path / "theirs").mkdir()
    theirs.model.save(str(tmp_path / "theirs"))
    for name in ["vocab.json", "merges.txt"]:  # byte-identical files
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name


def test_bpe_loads_hf_trained_files(hf, tmp_path, shakespeare):
    theirs = _hf_train(hf, [shakespeare[:100_000], "é日本🙂 " * 50], vocab_size=400, min_frequency=1)
    theirs.model.save(str(tmp_path))
    ours = ByteLevelBPE.load(tmp_path)
    reference = _hf_from_files(hf, tmp_path)
    for text in [shakespeare[100_000:150_000], *TRICKY]:
        assert ours.encode(text) == reference.encode(text).ids
