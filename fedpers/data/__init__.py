"""Tasks: data set + model family + kind of metrics, and the federated data they load.

``TASKS`` maps each run-config ``task`` name to its :class:`~fedpers.data.base.Task`.
Importing this package is cheap: torch, datasets and river are imported only
when data is loaded or a model is built.
"""

from __future__ import annotations

import functools
import logging
import time

from fedpers.data.base import ClientData, DataError, DataSpec, FederatedData, Task
from fedpers.data.digits import DigitsTask
from fedpers.data.fmnist import FmnistBNTask, FmnistTask
from fedpers.data.fmnist_ad import FmnistAdTask
from fedpers.data.npz import NpzTask
from fedpers.data.shakespeare import ShakespeareTask
from fedpers.data.shuttle_ad import ShuttleAdTask
from fedpers.registry import Registry

logger = logging.getLogger(__name__)

# A task takes no parameters of its own: its data is described by a DataSpec
# (DataSpec.from_config) and loaded by load_federated; entries are used through get.
TASKS: Registry[Task] = Registry("task", {
    "digits": DigitsTask(),
    "fmnist": FmnistTask(),
    "fmnist-bn": FmnistBNTask(),
    "npz": NpzTask(),
    "shuttle-ad": ShuttleAdTask(),
    "fmnist-ad": FmnistAdTask(),
    "shakespeare": ShakespeareTask(),
})


def get_task(name: str) -> Task:
    """The registered task called ``name`` (``TASKS.get(name)``).

    Raises
    ------
    ConfigError
        For an unknown name; the message names the key ``task`` and lists the valid
        names.
    """
    return TASKS.get(name)


@functools.lru_cache(maxsize=4)
def load_federated(spec: DataSpec) -> FederatedData:
    """Load, preprocess and partition the data ``spec`` describes (cached per process).

    The same spec gives byte-identical arrays in any process. The result is
    shared between callers: treat its arrays as read-only.

    Raises
    ------
    DataError
        For missing or unreadable files, values no model can use, or a split the
        data cannot give (what the tasks raise as ``ValueError`` or ``OSError``);
        the message names the file or the run-config key.
    """
    task = get_task(spec.task)
    start = time.perf_counter()
    try:
        data = task.load(spec)
    except DataError:
        raise
    except (ValueError, OSError) as exc:
        raise DataError(str(exc)) from exc
    if len(data.clients) != spec.num_clients:
        raise RuntimeError(f"task {spec.task!r} built {len(data.clients)} clients, "
                           f"expected {spec.num_clients}")
    logger.info("loaded task %r: %d clients, %d train rows, %d global test rows in %.2fs",
                spec.task, len(data.clients), sum(c.num_train for c in data.clients),
                len(data.y_test), time.perf_counter() - start)
    return data


__all__ = [
    "TASKS",
    "ClientData",
    "DataError",
    "DataSpec",
    "FederatedData",
    "Task",
    "get_task",
    "load_federated",
]
