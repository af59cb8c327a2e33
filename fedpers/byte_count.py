"""Exact byte accounting of what crosses the wire.

A message's size is the size of its content as Flower serialises it for
transport: Flower splits a :class:`~flwr.app.RecordDict` into inflatable
objects (the dict, each record, each array) and ships each object's
``deflate()`` bytes, once per object ID. We sum exactly those bytes. Message
metadata (ids, timestamps, routing) is not counted: it is the same for every
method and carries no model information.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from flwr.app import Message, RecordDict

from fedpers.engine import wire_size


def content_bytes(content: RecordDict) -> int:
    """Serialized size in bytes of a RecordDict, as Flower sends it
    (:func:`fedpers.engine.wire_size`).

    Sizing leaves nothing behind in the content: the chunk cache Flower's ``Array``
    builds while sizing is dropped, or the Simulation Engine's Ray backend would send
    every array twice to the worker (benchmarks/overhead/README.md, suspect 5).
    """
    return wire_size(content)


def messages_bytes(messages: Iterable[Message]) -> int:
    """Total content bytes of several messages (shared contents sized once, counted each time)."""
    return ReplySizes().total(messages)


class ReplySizes:
    """:func:`content_bytes` of each reply, computed once however often it is asked.

    Sizing a reply deflates and hashes its whole payload, and a training reply is sized
    by the byte counter, the compression ratio and the simulated clock: on the server's
    one thread, while the clients wait for the next round. Use one instance per call of
    received replies, which nobody changes (``fedpers.screening.clean_reply`` gives a reply
    a new content); the instance keeps each sized content alive, so its ``id`` cannot be
    reused while it is cached.
    """

    def __init__(self) -> None:
        self._sizes: dict[int, tuple[RecordDict, int]] = {}

    def __call__(self, content: RecordDict) -> int:
        hit = self._sizes.get(id(content))
        if hit is not None and hit[0] is content:
            return hit[1]
        size = content_bytes(content)
        self._sizes[id(content)] = (content, size)
        return size

    def total(self, messages: Iterable[Message]) -> int:
        """Like :func:`messages_bytes` (one message after another, each counted)."""
        return sum(self(m.content) for m in messages if m.has_content())


#: what sizes a content: :func:`content_bytes` or a :class:`ReplySizes`
Sizer = Callable[[RecordDict], int]


@dataclass
class ByteCounter:
    """Running totals of bytes sent down (server to clients) and up (clients to server)."""

    down: int = 0
    up: int = 0
    down_total: int = 0
    up_total: int = 0

    def start_round(self) -> None:
        self.down = 0
        self.up = 0

    def add_down(self, n: int) -> None:
        self.down += n
        self.down_total += n

    def add_up(self, n: int) -> None:
        self.up += n
        self.up_total += n

    def state_dict(self) -> dict[str, int]:
        """The run's totals (the round's counts start again every round)."""
        return {"up_total": self.up_total, "down_total": self.down_total}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.up_total = int(state["up_total"])
        self.down_total = int(state["down_total"])

    def metrics(self) -> dict[str, float]:
        return {
            "comm/bytes_up": float(self.up),
            "comm/bytes_down": float(self.down),
            "comm/bytes_up_total": float(self.up_total),
            "comm/bytes_down_total": float(self.down_total),
        }
