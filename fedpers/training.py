"""Plain PyTorch training and evaluation loops shared by every client half.

No Flower import here. Local update rules (plain SGD, proximal, SCAFFOLD-
corrected, ...) reuse :func:`train_local` and change one thing through
``grad_hook``: a callable run after ``backward()`` and before the optimiser step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpers.engine import custom_torch_backend

logger = logging.getLogger(__name__)

GradHook = Callable[[nn.Module], None]


def seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)``, at a fraction of its cost on a machine without an
    accelerator: there only the CPU generator can ever draw, but ``torch.manual_seed``
    still queues a seed for CUDA, MPS, XPU and MTIA, formatting a stack trace for each
    (0.4 ms, in every client call; benchmarks/overhead/README.md)."""
    if _accelerator_present():
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(int(seed))


@lru_cache(maxsize=1)
def _accelerator_present() -> bool:
    checks: list[Callable[[], Any]] = [torch.cuda.is_available,
                                       torch.backends.mps.is_available]
    for name in ("xpu", "mtia"):
        available = getattr(getattr(torch, name, None), "is_available", None)
        if available is not None:
            checks.append(available)
    return custom_torch_backend() or any(bool(check()) for check in checks)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run-config key 'device' = 'cuda' but no CUDA device is available")
    return torch.device(name)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, generator: torch.Generator | None,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches as tensors; shuffled with ``generator`` when given."""
    n = len(x)
    order = (torch.randperm(n, generator=generator) if generator is not None
             else torch.arange(n))
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield xt[idx].to(device), yt[idx].to(device)


def batch_loss(model: nn.Module, kind: str, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """The task's training objective on one batch."""
    out = model(xb)
    if kind == "anomaly":
        return nn.functional.mse_loss(out, xb)
    return nn.functional.cross_entropy(out, yb)


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean training loss over the steps taken
    steps: int
    num_examples: int


def effective_steps(steps: int, momentum: float) -> float:
    """How many plain-SGD steps ``steps`` steps of heavy-ball SGD amount to.

    With momentum ``rho`` and a constant gradient ``g``, step ``k`` moves the model by
    ``lr * g * (1 - rho**k) / (1 - rho)``; the sum over ``k = 1..steps`` is this
    factor (FedNova's ``||a_i||_1``, arXiv 2007.07481). It equals ``steps`` when
    ``momentum`` is 0.
    """
    if momentum == 0.0:
        return float(steps)
    rho = float(momentum)
    return float(sum((1.0 - rho ** k) / (1.0 - rho) for k in range(1, steps + 1)))


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, *, kind: str, epochs: int,
                batch_size: int, lr: float, momentum: float, seed: int,
                device: torch.device, grad_hook: GradHook | None = None,
                max_steps: int | None = None) -> TrainResult:
    """Run ``epochs`` epochs of mini-batch SGD (at most ``max_steps`` steps)."""
    if len(x) == 0:
        raise ValueError("this client has no training data")
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    total, steps = 0.0, 0
    for _ in range(epochs):
        for xb, yb in batches(x, y, batch_size, gen, device):
            if max_steps is not None and steps >= max_steps:
                break
            opt.zero_grad(set_to_none=True)
            loss = batch_loss(model, kind, xb, yb)
            loss.backward()
            if grad_hook is not None:
                grad_hook(model)
            opt.step()
            total += float(loss.detach())
            steps += 1
    return TrainResult(loss=total / max(steps, 1), steps=steps, num_examples=int(len(x)))


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, device: torch.device,
            batch_size: int = 1024) -> np.ndarray:
    """Raw model outputs for ``x`` (logits or reconstructions), as numpy."""
    model.to(device).eval()
    outs = [model(torch.from_numpy(x[i:i + batch_size]).to(device)).cpu().numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def anomaly_scores(model: nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    """Per-row mean squared reconstruction error."""
    if len(x) == 0:
        return np.zeros((0,), np.float64)
    rec = predict(model, x, device)
    return ((rec - x) ** 2).reshape(len(x), -1).mean(axis=1).astype(np.float64)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, kind: str,
             device: torch.device, threshold: float | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``(x, y)``.

    Classification: ``loss`` and ``accuracy``. Anomaly detection: ``loss`` (mean
    reconstruction error), ``auroc`` and ``auprc`` (need both labels present) and,
    given a ``threshold``, ``f1`` and ``accuracy`` of the flag ``score > threshold``.
    """
    from fedpers import metrics as m

    if len(x) == 0:
        return {}
    if kind == "anomaly":
        scores = anomaly_scores(model, x, device)
        out = {"loss": float(scores.mean())}
        out.update(m.ranking_metrics(y, scores))
        if threshold is not None:
            out.update(m.threshold_metrics(y, scores, threshold))
        return out
    logits = predict(model, x, device)
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
    return {"loss": loss, "accuracy": float((logits.argmax(axis=1) == y).mean())}
