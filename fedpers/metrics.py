"""Metric helpers: anomaly-detection scores and summaries across clients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

#: Anomaly tasks: the evaluate-config key with the server's current global threshold,
#: and the reply metric of each device's F1 at it (next to ``f1`` at its own threshold).
GLOBAL_THRESHOLD = "global-threshold"
F1_GLOBAL_THRESHOLD = "f1-global-threshold"


def ranking_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC of ``scores`` (higher = more anomalous); empty if one class only."""
    if len(np.unique(y)) < 2:
        return {}
    return {"auroc": float(roc_auc_score(y, scores)),
            "auprc": float(average_precision_score(y, scores))}


def threshold_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """F1 and accuracy of the flag ``score > threshold``."""
    flags = (scores > threshold).astype(np.int64)
    return {"f1": float(f1_score(y, flags, zero_division=0.0)),
            "accuracy": float((flags == y).mean())}


def calibrate_threshold(normal_scores: np.ndarray, percentile: float) -> float:
    """The ``percentile``-th percentile of reconstruction errors on normal data."""
    if len(normal_scores) == 0:
        raise ValueError("no normal validation data to calibrate the threshold on")
    return float(np.percentile(normal_scores, percentile))


def summarize(values: Sequence[float]) -> dict[str, float]:
    """mean, std, 10th percentile and minimum of per-client values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {}
    return {"mean": float(v.mean()), "std": float(v.std()),
            "p10": float(np.percentile(v, 10)), "min": float(v.min())}
