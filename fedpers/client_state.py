"""Client half of checkpoint and resume: a client's Flower Context state on its own disk.

A client's state across rounds (SCAFFOLD's ``c_i``, a personal head, an
error-feedback residual, ...) lives in its Flower Context state, which Flower keeps
in memory for one run: in simulation inside the simulation process, in deployment
inside the SuperNode. A crash of that process loses it, and a resumed run is a new
Flower run with empty Contexts. So when the server checkpoints round ``r``
(``checkpoint-every``), it asks every client to write its state to its own disk:

    <client-state-dir>/<state key>/partition-<id>/round-<r>.state

(the state key is the MLflow run id, given by the server). The file is the
RecordDict serialised exactly as Flower ships it (protobuf), written atomically
(temporary file, fsync, rename), and the client replies with its SHA-256 only:
private state never leaves the device. The server records the digests in its
checkpoint; on resume it sends each client the round and the digest, and the
client loads the file back into its Context state, refusing a file whose digest
differs. Older rounds are deleted once the server says which checkpoint it keeps.

``client-state-dir``: a SuperNode's node config key of that name, else the run
config key, else ``$XDG_CACHE_HOME/fedpers/client-state`` (``~/.cache/...``).
No network, no MLflow, no server code here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

from flwr.app import RecordDict

from fedpers.engine import recorddict_from_bytes, recorddict_to_bytes

STATE_DIR_KEY = "client-state-dir"  # node config (and run config) key
# ClientApp actions: message types "query.save_state", "query.load_state", "query.drop_state"
SAVE, LOAD, DROP = "save_state", "load_state", "drop_state"
SUFFIX = ".state"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ClientStateError(RuntimeError):
    """A client's checkpointed state is missing, corrupt or not the one asked for."""


def state_root(node_config: Mapping[str, object], run_dir: str) -> Path:
    """The folder of checkpointed client state (see the module docstring)."""
    node_dir = str(node_config.get(STATE_DIR_KEY, "") or "")
    if node_dir or run_dir:
        return Path(node_dir or run_dir).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fedpers" / "client-state"


def state_folder(root: Path, key: str, partition_id: int) -> Path:
    """``root/key/partition-<id>``; ``key`` must be a plain name (no path tricks)."""
    if not _KEY.match(key) or ".." in key:
        raise ClientStateError(f"invalid state key {key!r}: expected an MLflow run id "
                               f"(letters, digits, '_', '-', '.')")
    return root / key / f"partition-{int(partition_id)}"


def _round_file(folder: Path, server_round: int) -> Path:
    return folder / f"round-{int(server_round):06d}{SUFFIX}"


def serialize(state: RecordDict) -> bytes:
    """The RecordDict as Flower serialises it (deterministic field order)."""
    return recorddict_to_bytes(state)


def deserialize(blob: bytes) -> RecordDict:
    """The RecordDict :func:`serialize` wrote."""
    return recorddict_from_bytes(blob)


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    ``durable``: also fsync the file and the rename, so that both survive a power cut
    (checkpoints); without it a killed process still leaves a whole file (virtual
    clients' state between calls, ``fedpers.virtual``, which dies with the run anyway).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def save(state: RecordDict, folder: Path, server_round: int,
         keep: Collection[int] = ()) -> tuple[str, int]:
    """Write ``state`` as round ``server_round``; delete other rounds not in ``keep``.

    Returns (SHA-256 hex digest, size in bytes) of what was written.
    """
    blob = serialize(state)
    atomic_write(_round_file(folder, server_round), blob)
    keep_names = {_round_file(folder, r).name for r in (*keep, server_round)}
    for old in folder.glob(f"round-*{SUFFIX}"):
        if old.name not in keep_names:
            old.unlink(missing_ok=True)
    return hashlib.sha256(blob).hexdigest(), len(blob)


def load(folder: Path, server_round: int, sha256: str) -> RecordDict:
    """The state saved for ``server_round``, checked against the server's digest."""
    path = _round_file(folder, server_round)
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise ClientStateError(f"no checkpointed client state for round {server_round} at "
                               f"{path}") from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise ClientStateError(f"client state {path} has SHA-256 {digest[:12]}..., the "
                               f"server's checkpoint expects {sha256[:12]}...: not the state "
                               f"of that checkpoint")
    return deserialize(blob)


def replace_state(target: RecordDict, source: RecordDict) -> None:
    """Make ``target`` (a Context's state, changed in place) hold exactly ``source``."""
    for name in list(target.keys()):
        del target[name]
    for name, record in source.items():
        target[name] = record


def drop(root: Path, key: str, partition_id: int) -> None:
    """Delete this partition's saved state of run ``key`` (and the run's folder once
    no partition is left in it)."""
    folder = state_folder(root, key, partition_id)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # other partitions still there, or already gone
        pass


__all__ = ["ClientStateError", "DROP", "LOAD", "SAVE", "STATE_DIR_KEY", "atomic_write",
           "deserialize", "drop",
           "load", "replace_state", "save", "serialize", "state_folder", "state_root"]
