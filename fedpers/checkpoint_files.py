"""The checkpoint files of an MLflow run (folder, names, listing, pruning) and the
checkpointing keys (:class:`CheckpointParams`).

A run's checkpoints are the artifacts ``checkpoints/round-<r>.ckpt``; the newest
:data:`KEEP` are kept. Shared by the checkpoint store (:mod:`fedpers.checkpoint`)
and the replay of a tracking outage's fallback files, which prunes a run that got
its checkpoints late (:mod:`fedpers.tracking_fallback`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpers.registry import Params
from fedpers.tracking_records import short
from fedpers.tracking_store import TrackingError

logger = logging.getLogger(__name__)

FOLDER = "checkpoints"  # artifact folder of the run
KEEP = 2  # checkpoints kept: the newest and the one before (should the newest be torn)
_NAME = re.compile(r"^round-(\d+)\.ckpt$")


@dataclass(frozen=True)
class CheckpointParams(Params):
    """The run-config keys of checkpointing (``fedpers keys``, group Checkpointing).

    Attributes
    ----------
    checkpoint_every : int
        ``checkpoint-every``: rounds between checkpoints (0 = off).
    client_state_dir : str
        ``client-state-dir``: where clients keep their checkpointed state ('' = the
        default place).
    num_server_rounds : int
        ``num-server-rounds``: no checkpoint after the last round.
    """

    checkpoint_every: int
    client_state_dir: str
    num_server_rounds: int

    def due(self, server_round: int) -> bool:
        """Whether the server checkpoints after ``server_round``."""
        return bool(self.checkpoint_every) and server_round % self.checkpoint_every == 0 \
            and server_round < self.num_server_rounds


def file_name(server_round: int) -> str:
    return f"round-{server_round:06d}.ckpt"


def list_rounds(client: Any, run_id: str, tracking_uri: str) -> list[int]:
    """Rounds with a checkpoint file in run ``run_id`` (verified or not), oldest first.

    A run without checkpoints lists none; a store that fails raises
    :class:`~fedpers.tracking_store.TrackingError` naming it and the cause.
    """
    try:
        infos = client.list_artifacts(run_id, FOLDER)
    except Exception as exc:
        raise store_error(f"cannot list the checkpoints of MLflow run {run_id}",
                          tracking_uri, exc) from exc
    found = (_NAME.match(Path(i.path).name) for i in infos if not i.is_dir)
    return sorted(int(m.group(1)) for m in found if m)


def prune(client: Any, run_id: str, tracking_uri: str, keep: int = KEEP) -> list[int]:
    """Delete all but the newest ``keep`` checkpoints of run ``run_id``.

    Never raises: a checkpoint that cannot be listed or deleted is logged as a
    warning and stays for the next prune (each save prunes). Returns the rounds
    still kept beyond ``keep``.
    """
    try:
        old = list_rounds(client, run_id, tracking_uri)[:-keep]
        artifact_uri = client.get_run(run_id).info.artifact_uri if old else ""
    except Exception as exc:  # noqa: BLE001 - pruning never stops training
        text = str(exc) if isinstance(exc, TrackingError) else f"{type(exc).__name__}: {exc}"
        logger.warning("old checkpoints of MLflow run %s not pruned (%s); tried again at the "
                       "next checkpoint", run_id, text)
        return []
    left = []
    for rnd in old:
        try:
            from mlflow.store.artifact.artifact_repository_registry import (
                get_artifact_repository,
            )

            get_artifact_repository(artifact_uri).delete_artifacts(f"{FOLDER}/{file_name(rnd)}")
        except Exception as exc:  # noqa: BLE001 - e.g. an artifact store that cannot delete
            left.append(rnd)
            logger.warning("old checkpoint of round %d of MLflow run %s not deleted from %s "
                           "(%s: %s); tried again at the next checkpoint", rnd, run_id,
                           artifact_uri, type(exc).__name__, short(exc, 300))
    return left


def store_error(what: str, tracking_uri: str, exc: BaseException) -> Exception:
    """A :class:`~fedpers.tracking_store.TrackingError`: ``what`` failed in the store."""
    return TrackingError(f"{what}: the MLflow store at {tracking_uri} failed "
                         f"({type(exc).__name__}: {short(exc, 300)})")

