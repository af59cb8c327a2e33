"""Progress of a sweep: a bar over every round on a terminal, a line per run elsewhere."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fedpers import console
from fedpers.bench_plan import PlannedRun

logger = logging.getLogger(__name__)


@contextmanager
def watch_rounds(client: Any, run_id: str, on_round: Callable[[int], None],
                  every_s: float = 2.0) -> Iterator[None]:
    """Report the last logged round of ``run_id`` every ``every_s`` seconds."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every_s):
            try:
                hist = client.get_metric_history(run_id, "comm/bytes_up_total")
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            if hist:
                on_round(max(m.step for m in hist))

    thread = threading.Thread(target=poll, name="fedpers-bench-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 1)


class Progress:
    """The sweep's progress: on a terminal, a tqdm bar over every round (its rate gives
    the time left); elsewhere (a log file, a pipe) or with the bar off, one plain line
    per finished run, with the time left."""

    def __init__(self, runs: tuple[PlannedRun, ...], done: set[int], enabled: bool) -> None:
        from tqdm.auto import tqdm

        total = sum(r.cfg.num_server_rounds for r in runs)
        initial = sum(runs[i].cfg.num_server_rounds for i in done)
        self.shown = enabled and console.interactive()
        self.bar = tqdm(total=total, initial=initial, unit="round", disable=not self.shown,
                        desc=f"sweep ({len(done)}/{len(runs)} runs done)", dynamic_ncols=True)
        self.total_rounds = total
        self.finished_rounds = initial
        self.finished_runs = len(done)
        self.num_runs = len(runs)
        self._start = (time.perf_counter(), initial)
        self._lock = threading.Lock()

    def time_left(self) -> str:
        """The time left at this session's rate of rounds ('' before any round)."""
        t0, rounds0 = self._start
        done = self.finished_rounds - rounds0
        left = self.total_rounds - self.finished_rounds
        if done <= 0 or left <= 0:
            return ""
        secs = (time.perf_counter() - t0) / done * left
        return f", about {secs / 60:.0f} min left" if secs >= 90 else f", about {secs:.0f} s left"

    def at_round(self, rnd: int) -> None:
        with self._lock:
            target = self.finished_rounds + rnd
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)

    def run_done(self, run: PlannedRun) -> None:
        with self._lock:
            self.finished_rounds += run.cfg.num_server_rounds
            self.finished_runs += 1
            self.bar.update(self.finished_rounds - self.bar.n)
            self.bar.set_description(f"sweep ({self.finished_runs}/{self.num_runs} runs done)")
            if not self.shown:
                logger.info("sweep: %d/%d runs done (%s)%s", self.finished_runs, self.num_runs,
                            run.run_name, self.time_left())

    def close(self) -> None:
        self.bar.close()



@contextmanager
def redirect_logging(enabled: bool) -> Iterator[None]:
    """Route console log lines through tqdm so they do not break the bar (only where
    :class:`Progress` draws one: ``enabled`` on a terminal)."""
    if not (enabled and console.interactive()):
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    def to_console(h: logging.Handler) -> bool:
        return (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                and h.stream in (sys.stdout, sys.stderr))

    # only loggers that print: a handler added to the root would print Flower's lines twice
    loggers = [lg for lg in map(logging.getLogger, ("", "fedpers", "flwr"))
               if any(map(to_console, lg.handlers))]
    with logging_redirect_tqdm(loggers):
        yield
