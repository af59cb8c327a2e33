"""A watchdog that kills what a dead run leaves behind (run as a script, stdlib only).

``fedpers.simulation`` starts it, in its own session, with a pipe on its stdin whose
other end only the run's process holds. Every ``POLL_S`` seconds it records the run
process's descendants (Ray's GCS, raylet, dashboard and runtime-env agents, workers),
by pid and start time, from ``/proc``. When the pipe reaches end-of-file without the
word ``done`` first, the run process has died (SIGKILL, the OOM killer, a crash): the
watchdog kills every recorded process that is still the same process, with their own
descendants, and exits. Without it Ray's agents outlive a killed driver by about two
minutes (they try to report the raylet's death to the dead GCS for 60 s each).

Linux only (``/proc``); elsewhere :func:`fedpers.simulation.start_reaper` does not
start it.

Usage: ``python reaper.py PID``.
"""

from __future__ import annotations

import os
import select
import signal
import sys

POLL_S = 0.5
DONE = b"done"


def process_table() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, start time in clock ticks)}`` of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = data[data.rindex(b")") + 2:].split()
        table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """``{pid: start time}`` of every descendant of ``roots`` (roots excluded)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child not in roots:
                found[child] = table[child][1]
                todo.append(child)
    return found


def kill_left(tracked: dict[int, int], own: int) -> list[int]:
    """SIGKILL each ``tracked`` process that is still the one recorded (same start
    time: not a reused pid), and their descendants; return the pids signalled."""
    table = process_table()
    alive = {p for p, start in tracked.items() if p != own and table.get(p, (0, -1))[1] == start}
    victims = (alive | set(descendants(alive, table))) - {own}
    for pid in sorted(victims):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return sorted(victims)


def watch(pid: int, fd: int = 0) -> int:
    """Record ``pid``'s descendants until ``fd`` says ``done`` (0: nothing killed) or
    reaches end-of-file (kill them; return how many were killed)."""
    own = os.getpid()
    tracked: dict[int, int] = {}
    received = b""
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready:
            data = os.read(fd, 64)
            received += data
            if DONE in received:
                return 0
            if not data:  # the run process is gone
                return len(kill_left(tracked, own))
        tracked.update(descendants({pid}, process_table()))


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stop only by the pipe
    watch(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
