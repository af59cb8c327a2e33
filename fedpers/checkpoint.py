"""Server half of checkpoint and resume: the round loop's state as MLflow artifacts.

Every ``checkpoint-every`` rounds the ServerApp writes one file to its MLflow run,
``checkpoints/round-<r>.ckpt``: the ``state_dict()`` of every stateful server
component by name (``fedpers.state``: the round loop with the global model, the
strategy with SCAFFOLD's ``c`` or FedAdam's moments, the selection statistics and
the simulated clock, the byte counters, the reject-reason counters), the round, the
run config, and the SHA-256 of each client's checkpointed Context state
(``fedpers.client_state``: the state itself stays on the clients). Resuming needs
only the run id and the tracking store (``fedpers run --resume RUN_ID``).

Random state: none is saved because none is carried over between rounds; every
draw (selection, batches, codec noise, the clock) comes from a generator seeded by
``derive_seed(seed, ..., round)``, so a resumed round draws what it would have drawn.

Crash safety: each checkpoint is a new file, never an overwrite, and carries a
SHA-256 of its content in its header; older checkpoints are deleted only after the
new one is stored, and resume takes the newest that verifies, so a crash mid-write
leaves the previous checkpoint usable. A checkpoint that cannot be deleted (the
store failed meanwhile) is reported and deleted at the next save; checkpoints sent
late, after a tracking outage, are pruned once they are stored. A store that fails
while the checkpoints are listed or read raises
:class:`~fedpers.tracking.TrackingError`: it is never taken for "no checkpoint".

File layout: ``MAGIC``, 32 bytes of SHA-256 of the payload, the payload: an ``.npz``
archive (no pickles) whose ``meta`` entry is the JSON metadata and whose other
entries are the arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpers.checkpoint_files import FOLDER, file_name, list_rounds, prune
from fedpers.checkpoint_files import store_error as _store_error
from fedpers.state import flatten, unflatten

if TYPE_CHECKING:
    from fedpers.config import RunConfig
    from fedpers.tracking import Tracker

logger = logging.getLogger(__name__)

MAGIC = b"FEDPERS-CKPT-1\n"
# 2: components' state_dicts under "state" (1: the round loop's attributes, by hand)
FORMAT = 2
# keys that do not change what a run computes: a resumed run may differ in them
RESUME_EXCLUDE = ("tracking-uri", "experiment", "mlflow-run-id", "checkpoint-every",
                  "client-state-dir")
# a metric the round loop logs every round: its history says which rounds are logged
ROUND_METRIC = "comm/bytes_up"


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not belong to this run or config."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint written in another format version (an older fedpers): refused,
    never skipped for an older file."""


@dataclass
class Checkpoint:
    """One checkpoint: JSON-able ``meta`` and named numpy ``arrays``."""

    round: int
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta["config"])

    @classmethod
    def of_states(cls, round: int, meta: Mapping[str, Any],
                  states: Mapping[str, Any]) -> Checkpoint:
        """A checkpoint of ``meta`` plus the components' state dicts by name
        (``fedpers.state.collect``): their arrays stored as ``state/<name>/...``."""
        flat, arrays = flatten(dict(states), "state")
        return cls(round=round, meta={**meta, "state": flat}, arrays=arrays)

    def states(self) -> dict[str, Any]:
        """The components' state dicts that :meth:`of_states` stored."""
        if "state" not in self.meta:
            raise CheckpointError(f"the checkpoint of round {self.round} holds no "
                                  f"component state")
        return unflatten(self.meta["state"], self.arrays)


# ------------------------------------------------------------------ the file format
def encode(ckpt: Checkpoint) -> bytes:
    """The checkpoint as bytes: ``MAGIC``, SHA-256 of the payload, the payload."""
    names = sorted(ckpt.arrays)
    meta = {**ckpt.meta, "format": FORMAT, "round": ckpt.round, "arrays": names}
    entries = {f"a{i}": np.asarray(ckpt.arrays[n], order="C")  # 0-d stays 0-d
               for i, n in enumerate(names)}
    # insertion order kept: a state dict's order is part of it (parameter order)
    text = json.dumps(meta, default=_json_scalar)
    entries["meta"] = np.frombuffer(text.encode(), dtype=np.uint8)
    buf = io.BytesIO()
    # numpy's stub types **kwds like its allow_pickle flag; the entries are arrays
    np.savez(buf, **entries)  # type: ignore[arg-type]
    payload = buf.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def decode(blob: bytes) -> Checkpoint:
    """Parse and verify :func:`encode`'s bytes; raises :class:`CheckpointError`."""
    if not blob.startswith(MAGIC):
        raise CheckpointError("not a fedpers checkpoint (bad header)")
    digest, payload = blob[len(MAGIC):len(MAGIC) + 32], blob[len(MAGIC) + 32:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint is corrupt or incomplete (SHA-256 mismatch)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes().decode())
        if meta.get("format") != FORMAT:
            raise CheckpointFormatError(f"checkpoint format {meta.get('format')!r} (written by an "
                                  f"older fedpers); this fedpers reads format {FORMAT} only: "
                                  f"start the run again instead of resuming it")
        arrays = {name: npz[f"a{i}"] for i, name in enumerate(meta.pop("arrays"))}
    return Checkpoint(round=int(meta["round"]), meta=meta, arrays=arrays)


# ------------------------------------------------------------------ config
def check_compatible(saved: Mapping[str, Any], cfg: RunConfig) -> None:
    """Raise unless ``cfg`` computes what the run that wrote the checkpoint computed."""
    now = cfg.to_dict()
    differ = sorted(k for k in set(saved) | set(now)
                    if k not in RESUME_EXCLUDE and saved.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k} = {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                           for k in differ)
        raise CheckpointError(f"the checkpoint was written by a run with a different "
                              f"config ({detail}); resume with the run's own config "
                              f"(fedpers run --resume RUN_ID)")


# ------------------------------------------------------------------ the store

class CheckpointStore:
    """The checkpoints of one MLflow run (its ``checkpoints/`` artifact folder)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint file (verified or not), oldest first; raises
        :class:`~fedpers.tracking.TrackingError` when the store fails."""
        return list_rounds(self.tracker.client, self.tracker.run_id,
                           self.tracker.tracking_uri)

    def save(self, ckpt: Checkpoint) -> None:
        """Store ``ckpt`` as a new artifact, then delete all but the newest ``KEEP``.

        While the store is away the file is queued; the checkpoints are pruned once
        the queue has gone through (:meth:`prune`).
        """
        with tempfile.TemporaryDirectory(prefix="fedpers-ckpt-") as tmp:
            path = Path(tmp) / file_name(ckpt.round)
            path.write_bytes(encode(ckpt))
            self.tracker.log_file(path, FOLDER)
        if self.tracker.buffering:
            # the store is away: prune when the queued files are stored
            self.tracker.outbox.when_sent(self.prune)
            return
        self.prune()

    def prune(self) -> None:
        """Delete all but the newest ``KEEP`` checkpoints; failures are warnings, and
        what is left is deleted at the next save."""
        with self.tracker.quick_requests():  # a store that just went away costs seconds
            prune(self.tracker.client, self.tracker.run_id, self.tracker.tracking_uri)

    def load(self, server_round: int) -> Checkpoint:
        """The checkpoint of ``server_round``: :class:`CheckpointError` when the file
        is torn or corrupt, :class:`~fedpers.tracking.TrackingError` when the store
        fails."""
        with tempfile.TemporaryDirectory(prefix="fedpers-ckpt-") as tmp:
            try:
                local = self.tracker.client.download_artifacts(
                    self.tracker.run_id, f"{FOLDER}/{file_name(server_round)}", tmp)
                blob = Path(local).read_bytes()
            except Exception as exc:
                raise _store_error(f"cannot read the checkpoint of round {server_round} of "
                                   f"MLflow run {self.tracker.run_id}",
                                   self.tracker.tracking_uri, exc) from exc
        ckpt = decode(blob)
        if ckpt.round != server_round:
            raise CheckpointError(f"file of round {server_round} holds round {ckpt.round}")
        return ckpt

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies (``None`` when there is none).

        A torn or corrupt file is skipped for the one before; a store that fails
        raises :class:`~fedpers.tracking.TrackingError`.
        """
        for rnd in reversed(self.rounds()):
            try:
                ckpt = self.load(rnd)
            except CheckpointFormatError as exc:
                raise CheckpointFormatError(f"checkpoint of round {rnd} of MLflow run "
                                            f"{self.tracker.run_id}: {exc}") from exc
            except (CheckpointError, ValueError, KeyError, OSError) as exc:
                # a torn or corrupt file (decode's own checks, or numpy's on the payload)
                logger.warning("checkpoint of round %d is unusable (%s); trying the one "
                               "before", rnd, exc)
                continue
            run_id = ckpt.meta.get("mlflow_run_id")
            if run_id != self.tracker.run_id:
                raise CheckpointError(f"checkpoint of round {rnd} belongs to MLflow run "
                                      f"{run_id!r}, not {self.tracker.run_id!r}")
            return ckpt
        return None

    def resume_point(self, cfg: RunConfig) -> Checkpoint | None:
        """The checkpoint to resume from (``None``: start at round 1); raises when it was
        written by a run with a config that computes something else."""
        ckpt = self.latest()
        if ckpt is not None:
            check_compatible(ckpt.config, cfg)
        return ckpt

    def logged_rounds(self) -> set[int]:
        """The rounds whose metrics are in the run."""
        history = self.tracker.client.get_metric_history(self.tracker.run_id, ROUND_METRIC)
        return {int(m.step) for m in history}

    def logged_metrics(self, server_round: int, keys: list[str]) -> dict[str, float]:
        """The values of ``keys`` the run holds for ``server_round`` (missing keys left out)."""
        out = {}
        for key in keys:
            for m in self.tracker.client.get_metric_history(self.tracker.run_id, key):
                if m.step == server_round:
                    out[key] = float(m.value)
        return out


def resume_config(tracking_uri: str, run_id: str) -> RunConfig:
    """The config to resume MLflow run ``run_id`` with: its newest checkpoint's.

    Raises :class:`~fedpers.tracking.TrackingError` for an unknown run and
    :class:`CheckpointError` for a finished run or one without a checkpoint.
    """
    from fedpers.config import parse_run_config
    from fedpers.tracking import Tracker
    from fedpers.tracking_store import TrackingError, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = Tracker.connect(uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"MLflow run {run_id!r} not found at {uri}") from exc
    if run.info.status == "FINISHED":
        raise CheckpointError(f"MLflow run {run_id} has FINISHED; there is nothing to resume")
    ckpt = CheckpointStore(Tracker(uri, run_id)).latest()
    if ckpt is None:
        raise CheckpointError(f"MLflow run {run_id} has no usable checkpoint (it ran with "
                              f"checkpoint-every = 0, or stopped before its first "
                              f"checkpoint); start it again instead")
    return parse_run_config({**ckpt.config, "tracking-uri": uri, "mlflow-run-id": run_id})


__all__ = ["Checkpoint", "CheckpointError", "CheckpointFormatError", "CheckpointStore",
           "check_compatible", "decode", "encode", "resume_config"]
