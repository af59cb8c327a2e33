"""A Grid that wraps another: the base of the views fedpers puts in front of Flower's grid.

``SelectedGrid`` (the round's selected nodes only), ``StoppableGrid`` (stops waiting on a
stop request) and ``VirtualGrid`` (clients dealt over a few SuperNodes) each change one
or two methods; every other part of Flower's ``Grid`` goes to the wrapped grid. Being a
``Grid`` subclass, a view can be handed to a Flower strategy as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class GridView(Grid):
    """Every ``Grid`` method delegated to ``grid``; subclasses override what they change.

    Attributes that are not part of ``Grid`` (e.g. the in-memory grid's
    ``pull_interval``) are read from the wrapped grid too.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    @property
    def inner(self) -> Grid:
        """The wrapped grid."""
        return self._grid

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        if name == "_grid":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._grid, name)
