"""Norm clipping of each client update before aggregation.

Each update ``u_i`` becomes ``u_i * min(1, B / ||u_i||_2)`` (``B`` =
``clip-update-norm``): its direction is kept and its L2 norm bounded by ``B``, so
no single client moves the aggregate by more than its weight times ``B``. This is
the clipping step of "norm bounding" against model-replacement backdoors (Sun,
Kairouz, Suresh and McMahan, "Can You Really Backdoor Federated Learning?",
arXiv 1911.07963) and of DP-FedAvg (McMahan et al., arXiv 1710.06963), without
noise. It composes with every aggregator: clipping first, then aggregation.
"""

from __future__ import annotations

import numpy as np

from fedpers.aggregation.base import as_matrix


def clip_updates(updates: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip every row of ``updates`` to L2 norm at most ``bound``.

    Returns
    -------
    clipped : numpy.ndarray
        A new float64 matrix; rows already within the bound are unchanged.
    was_clipped : numpy.ndarray of bool
        Which rows were scaled down.
    """
    if not bound > 0:
        raise ValueError(f"clip bound must be > 0, got {bound}")
    u = as_matrix(updates).copy()
    norms = np.linalg.norm(u, axis=1)
    was_clipped = norms > bound
    u[was_clipped] *= (bound / norms[was_clipped])[:, None]
    return u, was_clipped
