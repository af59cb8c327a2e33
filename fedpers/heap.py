"""Short garbage collections in long-lived FL processes.

A process that has imported torch, Flower, Ray and MLflow tracks millions of objects,
and each of Python's automatic full (generation 2) collections walks them all: 0.2-0.3
s on the development VM, every few rounds, in the ServerApp between the last reply and
the next round, and in each simulated client's worker in the middle of its training
(benchmarks/overhead/README.md). Objects that live for the whole run (modules, the data
set, the model, the framework's own state) need never be collected:
``gc.freeze()`` moves every object alive now to a permanent generation that later
collections skip. Objects created afterwards are collected as before.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_frozen_once = False


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave the objects alive now out of collections until the block ends."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def freeze_once() -> None:
    """Leave the objects alive now out of every later collection in this process (a
    worker that keeps its data and imports until it exits); later calls do nothing."""
    global _frozen_once
    if not _frozen_once:
        gc.freeze()
        _frozen_once = True


__all__ = ["freeze_once", "frozen_heap"]
