"""Seeded partitioning of labelled data over clients, and per-client splits.

Pure numpy plus the flwr-datasets partitioners, run on a local
``datasets.Dataset`` (no hub, no network). Every function takes an explicit
integer seed, so the same arguments give the same indices in any process.
All returned index arrays are sorted ``int64``.

Schemes:

- ``iid``: a seeded shuffle, then :class:`flwr_datasets.partitioner.IidPartitioner`
  (equal contiguous shards).
- ``dirichlet``: :class:`~flwr_datasets.partitioner.DirichletPartitioner`, label
  shares per client drawn from Dir(alpha) (Hsu et al., arXiv:1909.06335).
- ``pathological``: :class:`~flwr_datasets.partitioner.PathologicalPartitioner`
  in "first-deterministic" mode, each client holds exactly
  ``classes_per_client`` labels (Li et al., arXiv:2102.02079).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from fedpers.seeds import Stream, derive_seed

if TYPE_CHECKING:
    from fedpers.data.base import DataSpec

logger = logging.getLogger(__name__)

SCHEMES = ("iid", "dirichlet", "pathological")

__all__ = [
    "SCHEMES",
    "cap_indices",
    "client_splits",
    "partition_indices",
    "split_local",
]


def _as_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _label_dataset(order: np.ndarray, labels: np.ndarray):
    """A local in-memory ``datasets.Dataset`` with an ``idx`` and a ``label`` column."""
    import datasets

    # Arrow format: a column read (by us and inside the partitioners) is one vectorised
    # copy; the default Python format reads a column row by row (seconds for 60k rows).
    return datasets.Dataset.from_dict({"idx": order, "label": labels[order]}).with_format("arrow")


def _collect(partitioner, num_clients: int) -> list[np.ndarray]:
    # ``part[:]`` reads the column as one batch; ``part["idx"]`` would iterate row by row.
    return [np.sort(np.asarray(partitioner.load_partition(i)[:]["idx"], dtype=np.int64))
            for i in range(num_clients)]


def partition_indices(labels: np.ndarray, num_clients: int, scheme: str, alpha: float = 0.5,
                      classes_per_client: int = 2, seed: int = 0,
                      min_partition_size: int | None = None) -> list[np.ndarray]:
    """Split ``range(len(labels))`` over ``num_clients`` clients.

    Parameters
    ----------
    labels : np.ndarray
        One integer label per sample (what non-IID schemes partition by).
    num_clients : int
        Number of partitions.
    scheme : {"iid", "dirichlet", "pathological"}
        Partitioning scheme.
    alpha : float
        Dirichlet concentration (``dirichlet`` only); small = skewed.
    classes_per_client : int
        Exact number of labels per client (``pathological`` only).
    seed : int
        Seed of every random choice.
    min_partition_size : int, optional
        ``dirichlet`` only: redraw (at most 10 times) until every client has at
        least this many samples. Default ``min(10, n // (2 * num_clients))``, at least 1.

    Returns
    -------
    list of np.ndarray
        Sorted int64 indices of each client; pairwise disjoint. ``iid`` and
        ``dirichlet`` cover every sample; ``pathological`` leaves out the
        labels no client drew (a warning is logged).

    Raises
    ------
    ValueError
        Unknown scheme, or a setting the data cannot satisfy; the message names
        the run-config key to change (``num-clients``, ``alpha``, ``classes-per-client``).
    """
    y = _as_labels(labels)
    n = len(y)
    if scheme not in SCHEMES:
        raise ValueError(f"run-config key 'partition' = {scheme!r}: this task supports "
                         f"{', '.join(SCHEMES)}")
    if num_clients < 1:
        raise ValueError(f"run-config key 'num-clients' = {num_clients}: must be >= 1")
    if num_clients > n:
        raise ValueError(f"run-config key 'num-clients' = {num_clients}: more clients than "
                         f"samples to partition ({n})")

    if scheme == "iid":
        from flwr_datasets.partitioner import IidPartitioner

        order = np.random.default_rng(seed).permutation(n)
        iid = IidPartitioner(num_partitions=num_clients)
        iid.dataset = _label_dataset(order, y)
        return _collect(iid, num_clients)

    if scheme == "dirichlet":
        from flwr_datasets.partitioner import DirichletPartitioner

        if not alpha > 0:
            raise ValueError(f"run-config key 'alpha' = {alpha}: must be > 0")
        min_size = (max(1, min(10, n // (2 * num_clients))) if min_partition_size is None
                    else int(min_partition_size))
        dirichlet = DirichletPartitioner(num_partitions=num_clients, partition_by="label",
                                         alpha=float(alpha), min_partition_size=min_size,
                                         self_balancing=False, shuffle=True, seed=seed)
        dirichlet.dataset = _label_dataset(np.arange(n), y)
        with warnings.catch_warnings():
            # The partitioner warns on every redraw; we report the final outcome.
            warnings.simplefilter("ignore", UserWarning)
            try:
                return _collect(dirichlet, num_clients)
            except ValueError as exc:
                raise ValueError(
                    f"run-config keys 'alpha' = {alpha} and 'num-clients' = {num_clients}: "
                    f"11 Dirichlet draws over {n} samples all left some client with fewer "
                    f"than {min_size} samples; raise alpha or lower num-clients "
                    f"({exc})") from exc

    # pathological
    from flwr_datasets.partitioner import PathologicalPartitioner

    num_labels = len(np.unique(y))
    if not 1 <= classes_per_client <= num_labels:
        raise ValueError(f"run-config key 'classes-per-client' = {classes_per_client}: must be "
                         f"between 1 and the number of labels in this data ({num_labels})")
    patho = PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                    num_classes_per_partition=int(classes_per_client),
                                    class_assignment_mode="first-deterministic",
                                    shuffle=True, seed=seed)
    patho.dataset = _label_dataset(np.arange(n), y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            parts = _collect(patho, num_clients)
        except ValueError as exc:
            raise ValueError(
                f"run-config keys 'num-clients' = {num_clients} and 'classes-per-client' = "
                f"{classes_per_client}: some label has fewer samples than clients that "
                f"need it ({exc})") from exc
    covered = sum(len(p) for p in parts)
    if covered < n:
        logger.warning("pathological partition: %d of %d samples belong to labels no client "
                       "drew (num-clients=%d < number of labels)", n - covered, n, num_clients)
    return parts


def _round_half_up(x: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def split_local(indices: np.ndarray, labels: np.ndarray, test_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split of one client's samples.

    Each label contributes ``round(count * test_fraction)`` samples to the test
    part (a seeded per-label permutation), but always keeps at least one in
    train, so labels with a single sample go to train. If that leaves the test
    part empty while some label has two or more samples, one sample of the most
    frequent label moves to test, so every such client can be evaluated.

    Parameters
    ----------
    indices : np.ndarray
        The client's sample indices (into ``labels``).
    labels : np.ndarray
        Labels of the whole data set.
    test_fraction : float
        Share of each label that goes to the test part, in [0, 1).
    seed : int
        Seed of the permutations.

    Returns
    -------
    (train_idx, test_idx) : tuple of np.ndarray
        Sorted, disjoint int64 index arrays whose union is ``indices``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    idx = np.asarray(indices, dtype=np.int64)
    y = _as_labels(labels)[idx]
    rng = np.random.default_rng(seed)
    train, test = [], []
    classes, counts = np.unique(y, return_counts=True)
    for c, count in zip(classes, counts, strict=True):
        members = rng.permutation(idx[y == c])
        n_test = int(min(_round_half_up(count * test_fraction), count - 1))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_idx = np.sort(np.concatenate(train)) if train else np.zeros(0, np.int64)
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    if test_fraction > 0 and len(test_idx) == 0 and counts.max(initial=0) >= 2:
        c = classes[np.argmax(counts)]
        pick = rng.choice(train_idx[_as_labels(labels)[train_idx] == c])
        train_idx = train_idx[train_idx != pick]
        test_idx = np.array([pick], dtype=np.int64)
    return train_idx, test_idx


def cap_indices(indices: np.ndarray, labels: np.ndarray, max_samples: int,
                seed: int) -> np.ndarray:
    """A seeded stratified subsample of at most ``max_samples`` of ``indices``.

    ``max_samples == 0`` means no cap. Labels keep their proportions (largest
    remainder rounding, ties to the more frequent label), so the result has
    exactly ``min(max_samples, len(indices))`` samples.

    Returns
    -------
    np.ndarray
        Sorted int64 indices, a subset of ``indices``.
    """
    if max_samples < 0:
        raise ValueError(f"run-config key 'max-samples-per-client' = {max_samples}: "
                         f"must be >= 0")
    idx = np.asarray(indices, dtype=np.int64)
    if max_samples == 0 or len(idx) <= max_samples:
        return np.sort(idx)
    y = _as_labels(labels)[idx]
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (max_samples / len(idx))
    take = np.floor(quota).astype(np.int64)
    short = max_samples - int(take.sum())
    # largest remainder first; ties broken by larger class, then smaller label
    order = np.lexsort((classes, -counts, -(quota - take)))
    take[order[:short]] += 1
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(idx[y == c])[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(keep))


def client_splits(labels: np.ndarray, spec: DataSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Partition, cap and locally split ``labels`` as ``spec`` says.

    The standard pipeline of every partitioned task: :func:`partition_indices`
    with ``spec.partition``, then per client :func:`cap_indices` with
    ``spec.max_samples_per_client`` and :func:`split_local` with
    ``spec.local_test_fraction``. Seeds: ``spec.seed`` and the streams
    ``Stream.DATA_PARTITION``, ``DATA_CAP`` and ``DATA_LOCAL_SPLIT`` (fedpers.seeds).

    Returns
    -------
    list of (train_idx, test_idx)
        One pair per client, indices into ``labels``.
    """
    parts = partition_indices(labels, spec.num_clients, spec.partition, alpha=spec.alpha,
                              classes_per_client=spec.classes_per_client,
                              seed=derive_seed(spec.seed, Stream.DATA_PARTITION))
    out = []
    for cid, part in enumerate(parts):
        capped = cap_indices(part, labels, spec.max_samples_per_client,
                             derive_seed(spec.seed, Stream.DATA_CAP, cid))
        out.append(split_local(capped, labels, spec.local_test_fraction,
                               derive_seed(spec.seed, Stream.DATA_LOCAL_SPLIT, cid)))
    return out
