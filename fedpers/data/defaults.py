"""Per-task defaults: run-config values that replace the global defaults for one task.

The global defaults (``fedpers/config.py``, ``pyproject.toml``) suit Fashion-MNIST,
the default task. Where they do not suit a task (a first run that does not learn, or
a config that is refused), :data:`TASK_DEFAULTS` gives that task its own value.
:func:`fedpers.config.parse_run_config` applies them to the keys the user did not set:
a key set in a config file, with ``--set``, or in a benchmark's ``[base]`` and
variant tables always wins. ``fedpers keys`` lists them beside each global default.

Why each value (measured with ``fedpers run --set task=TASK`` and nothing else: the
default 20 clients and 10 rounds, on two busy cores; each figure is the global
model's on the global test set after the last round unless it says otherwise):

digits
    the 1,154 training rows of scikit-learn's digits over 20 clients are ~58 each: with the
    global ``batch-size = 32``, ``local-epochs = 1`` and ``lr = 0.05`` a client takes two
    SGD steps per round, and the global model ends at 0.114 (chance) after 10 rounds.
    ``batch-size = 16``, ``local-epochs = 10``, ``lr = 0.1`` (40 steps per round, still
    under a second per round) ends at 0.925 (``tests/test_task_defaults.py``).
fmnist-ad
    The convolutional autoencoder under plain SGD at the global ``lr = 0.05`` drifts to
    the mean image, which ranks the dark footwear anomalies as the most normal: global
    AUROC 0.77 after round 1, 0.450 after round 10 (below chance), F1 0.014, as
    ``benchmarks/anomaly/README.md`` found (``lr_check.py``, central SGD: 0.45 at lr
    0.05, 0.82 at 0.5). ``lr = 0.5``, the anomaly benchmark's value, ends at AUROC
    0.850, F1 0.591 (training loss 0.036, below the mean image's 0.077).
shakespeare
    Its clients are the speakers the data comes with; the global ``partition =
    "dirichlet"`` is refused for it (``natural`` or ``iid`` only), so
    ``fedpers run --set task=shakespeare`` failed before any work. ``partition =
    "natural"``: one client per (play, role). At the global ``lr = 0.05`` the LSTM
    then predicts the most frequent character (a space) for every window: global
    accuracy 0.186 after rounds 1 and 2 (rounds take minutes here), and 0.186 after
    round 3 in a quick in-process FedAvg of the same data, model and local training;
    ``lr = 1.0`` (LEAF uses 0.8) gives 0.261, 0.314, 0.347 after rounds 1-3 there.

The other tasks keep the global defaults: ``fmnist`` ends at global accuracy 0.749
(client mean 0.762; 19 minutes on two busy cores), ``shuttle-ad`` at global AUROC
0.998 and F1 0.753. ``fmnist-bn`` (``fmnist`` with BatchNorm) was not measured;
``npz`` is the user's own data.

This module imports nothing from fedpers (config, keydoc and tests read it).
"""

from __future__ import annotations

from typing import Any

#: {task: {run-config key: value}}; the values have the key's type.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"lr": 0.1, "local-epochs": 10, "batch-size": 16},
    "fmnist-ad": {"lr": 0.5},
    "shakespeare": {"partition": "natural", "lr": 1.0},
}


def task_defaults(task: str) -> dict[str, Any]:
    """The keys whose default differs for ``task`` (a copy; empty for most tasks)."""
    return dict(TASK_DEFAULTS.get(task, {}))


def tasks_with_default(key: str) -> dict[str, Any]:
    """{task: value} for every task whose default of ``key`` differs from the global one."""
    return {task: values[key] for task, values in TASK_DEFAULTS.items() if key in values}
