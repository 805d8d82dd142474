"""The speaker task (groundup.data.speakers) and BERT's masking (groundup.data.masking): speeches parsed
back exactly, no speech in both splits, the pretraining text free of test and gap speeches and of
headers, balanced labelled subsets, and the 15% / 80-10-10 statistics over many draws."""

from __future__ import annotations

import numpy as np
import pytest

from groundup.data import load_text
from groundup.data.masking import mask_tokens
from groundup.data.speakers import CLS, MASK, PAD, CharVocab, labelled_subset, parse_speeches, speaker_task

TOY = "A:\nhello there\nfriend\n\nB:\nyes\n\nA:\n\nB:\nno.\n\n\nC:\nbye\n"


def test_speeches_are_parsed_back_exactly():
    speeches = parse_speeches(TOY)
    assert [(s.speaker, s.text) for s in speeches] == [("A", "hello there\nfriend"), ("B", "yes"), ("B", "no."),
                                                       ("C", "bye")]
    assert [s.index for s in speeches] == [0, 1, 2, 3]
    assert all(TOY[s.start:].startswith(f"{s.speaker}:\n{s.text}") for s in speeches)
    text = load_text("shakespeare")
    every = parse_speeches(text)
    assert len(every) > 7000 and every[0].speaker == "First Citizen"
    assert all(text[s.start:].startswith(f"{s.speaker}:\n{s.text}") for s in every[::97])


@pytest.fixture(scope="module")
def task():
    return speaker_task(k=8)


def test_no_speech_sits_in_both_splits_and_test_blocks_are_kept_apart(task):
    assert len(task.speakers) == 8
    assert set(task.train_index).isdisjoint(task.test_index)
    assert set(task.pretrain_index).isdisjoint(task.test_index)
    gap = task.settings["gap"]
    distance = np.abs(task.pretrain_index[:, None] - task.test_index[None, :]).min()
    assert distance > gap                                              # the gap speeches went nowhere
    assert set(task.train_index) <= set(task.pretrain_index)
    assert len(task.train_texts) == len(task.train_labels) > 800 and len(task.test_texts) == len(task.test_labels) > 200
    counts_train, counts_test = task.class_counts("train"), task.class_counts("test")
    assert list(counts_train) == task.speakers and min(counts_train.values()) > 50 and min(counts_test.values()) > 10
    assert counts_train[task.speakers[0]] == max(counts_train.values())
    majority = np.mean(task.test_labels == 0)
    assert task.chance_accuracy == pytest.approx(majority) and 1 / 8 - 0.1 < task.chance_accuracy < 0.3


def test_pretraining_text_has_no_headers_and_no_test_speech(task):
    speeches = parse_speeches(load_text("shakespeare"))
    assert "ROMEO:\n" not in task.pretrain_text and "GLOUCESTER:\n" not in task.pretrain_text
    long_test = [speeches[i].text for i in task.test_index if len(speeches[i].text) > 300][:20]
    assert long_test and not any(t in task.pretrain_text for t in long_test)
    assert task.pretrain_text.startswith(speeches[task.pretrain_index[0]].text)


def test_encoding_puts_cls_first_and_pads(task):
    ids, mask = task.encode("test", max_len=16)
    assert ids.shape == mask.shape == (len(task.test_texts), 16) and ids.dtype == np.int64
    assert np.all(ids[:, 0] == CLS) and np.array_equal(mask, ids != PAD)
    assert task.vocab.decode(ids[0]).startswith("[CLS]" + task.test_texts[0][:15])
    assert task.vocab.vocab_size == 69 and task.vocab.first_char_id == 4
    assert CharVocab("ab").encode("ba") == [5, 4]
    with pytest.raises(KeyError, match="'z'"):
        CharVocab("ab").encode("z")


def test_labelled_subsets_are_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [10, 3, 20, 7])
    picked = labelled_subset(labels, 12, np.random.default_rng(0))
    assert len(set(picked)) == 12 and np.bincount(labels[picked], minlength=4).tolist() == [3, 3, 3, 3]
    picked = labelled_subset(labels, 20, np.random.default_rng(0))
    assert np.bincount(labels[picked], minlength=4).tolist() == [6, 3, 6, 5]     # class 1 runs out
    np.testing.assert_array_equal(picked, labelled_subset(labels, 20, np.random.default_rng(0)))
    assert sorted(labelled_subset(labels, 100, np.random.default_rng(0))) == list(range(40))


def test_masking_statistics_over_many_draws():
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 60, (64, 128))
    ids[:, 0] = CLS
    ids[:, 100:] = PAD
    chosen = mask_n = random_n = kept = 0
    specials_chosen = 0
    for _ in range(40):
        inputs, labels = mask_tokens(ids, rng, mask_id=MASK, vocab_size=60, special_ids=(0, 1, 2, 3), random_low=4)
        sel = labels != -100
        np.testing.assert_array_equal(labels[sel], ids[sel])          # labels are the original tokens
        np.testing.assert_array_equal(inputs[~sel], ids[~sel])        # unchosen positions are untouched
        specials_chosen += int(sel[:, 0].sum() + sel[:, 100:].sum())
        chosen += int(sel.sum())
        mask_n += int((inputs[sel] == MASK).sum())
        random_n += int(((inputs[sel] != MASK) & (inputs[sel] != ids[sel])).sum())
        kept += int((inputs[sel] == ids[sel]).sum())
        assert inputs[sel & (inputs != MASK)].min() >= 4 and inputs.max() < 60   # random tokens are ordinary ones
    ordinary = 40 * 64 * 99
    assert specials_chosen == 0
    assert abs(chosen / ordinary - 0.15) < 0.005
    assert abs(mask_n / chosen - 0.8) < 0.01
    # a random replacement equal to the original token counts as kept: 1/56 of the random share
    assert abs(random_n / chosen - 0.1 * 55 / 56) < 0.008 and abs(kept / chosen - (0.1 + 0.1 / 56)) < 0.008


def test_masking_is_redrawn_and_always_gives_a_target():
    rng = np.random.default_rng(1)
    ids = np.array([[CLS, 7, 8, 9, 10, 11, PAD]])
    draws = {mask_tokens(ids, rng, MASK, 20, (0, 1, 2, 3), 4)[1].tobytes() for _ in range(20)}
    assert len(draws) > 3                                              # a new mask every call
    for _ in range(50):
        _, labels = mask_tokens(ids, rng, MASK, 20, (0, 1, 2, 3), 4, mask_prob=0.0)
        assert (labels != -100).sum() == 1 and labels[0, 0] == -100 and labels[0, 6] == -100
    with pytest.raises(ValueError, match="special"):
        mask_tokens(np.array([[PAD, CLS]]), rng, MASK, 20, (0, 1, 2, 3), 4)


@pytest.mark.parametrize("ids, mask_id, rng, error, message", [
    ([[CLS, 7, 25]], MASK, 0, ValueError, r"ids hold 25, outside the vocabulary 0..19 \(vocab_size=20\)"),
    ([[CLS, -1, 7]], MASK, 0, ValueError, "ids hold -1, outside the vocabulary"),
    ([[CLS, 7, 8]], 20, 0, ValueError, r"mask_id=20 is not a token id of the vocabulary \(0..19\)"),
    (np.zeros((0, 5), dtype=np.int64), MASK, 0, ValueError, r"ids of shape \(0, 5\) hold no position to mask"),
    ([[CLS, 7, 8]], MASK, None, TypeError, "rng must be a numpy.random.Generator"),
])
def test_masking_refuses_ids_outside_the_vocabulary(ids, mask_id, rng, error, message):
    """An id past vocab_size, or a mask_id outside it, was kept (an IndexError later in the embedding, or a
    label no output scores); an empty batch said 'every position holds a special token'; an int seed for rng
    was an AttributeError."""
    generator = np.random.default_rng(0) if rng == 0 else rng
    with pytest.raises(error, match=f"mask_tokens: {message}"):
        mask_tokens(np.asarray(ids), generator, mask_id, 20, (0, 1, 2, 3), 4)
