"""What the round loop shows and leaves behind: the progress line of each round and
the run's artifacts (config, final global model, last client metrics, participation
table), functions of the round loop ``fedpers.server_loop.Experiment``."""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fedpers.server_loop import Experiment

logger = logging.getLogger("fedpers")


def fmt_bytes(n: float) -> str:
    """Decimal units (1 kB = 1000 B), as in ``fedpers report``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def log_progress(loop: Experiment, rnd: int, m: dict[str, float], seconds: float) -> None:
    parts = [f"round {rnd}/{loop.cfg.num_server_rounds}"]
    if "eval/global_accuracy" in m:
        parts.append(f"global acc {m['eval/global_accuracy']:.4f}")
    if "eval/global_auroc" in m:
        parts.append(f"global AUROC {m['eval/global_auroc']:.4f}")
    if "eval/client_accuracy_mean" in m:
        parts.append(f"client acc {m['eval/client_accuracy_mean']:.4f}"
                     f"±{m['eval/client_accuracy_std']:.4f}")
    if "train/loss" in m:
        parts.append(f"loss {m['train/loss']:.4f}")
    parts.append(f"clients {m.get('clients/trained', 0):.0f} ok "
                 f"{m.get('clients/failed', 0):.0f} failed "
                 f"{m.get('clients/rejected', 0):.0f} rejected")
    parts.append(f"up {fmt_bytes(m['comm/bytes_up'])} "
                 f"down {fmt_bytes(m['comm/bytes_down'])}")
    if "time/round_s" in m:  # the simulated clock (device-profile)
        parts.append(f"simulated {m['time/round_s']:.1f}s (total {m['time/total_s']:.0f}s, "
                     f"{m['clients/dropped']:.0f} dropped)")
    parts.append(f"{seconds:.1f}s")
    logger.info(" | ".join(parts))

def log_artifacts(loop: Experiment) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "config.json").write_text(json.dumps(loop.cfg.to_dict(), indent=2,
                                                  sort_keys=True))
        loop.tracker.log_file(d / "config.json")
        model_dir = d / "model"
        model_dir.mkdir()
        torch.save({k: torch.from_numpy(v) for k, v in loop.global_arrays.items()},
                   model_dir / "global_model.pt")
        meta = {"task": loop.cfg.task, "kind": loop.fed.kind,
                "input_shape": list(loop.fed.input_shape),
                "num_classes": loop.fed.num_classes, "threshold": loop.threshold,
                "threshold_percentile": loop.cfg.threshold_percentile,
                "config": loop.cfg.to_dict()}
        (model_dir / "model_meta.json").write_text(json.dumps(meta, indent=2))
        loop.tracker.log_file(model_dir / "global_model.pt", "model")
        loop.tracker.log_file(model_dir / "model_meta.json", "model")
        if loop.last_clients:
            keys = sorted({k for r in loop.last_clients for k in r},
                          key=lambda k: (k != "partition-id", k))
            with open(d / "client_metrics.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=keys)
                writer.writeheader()
                writer.writerows(loop.last_clients)
            loop.tracker.log_file(d / "client_metrics.csv")
        rows = loop.participation.table()
        if rows:
            with open(d / "participation.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            loop.tracker.log_file(d / "participation.csv")
