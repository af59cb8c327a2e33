"""Fault injection for the end-to-end tests, as a Flower client mod.

``fault_mod({1: "raise", 2: "nan"})`` makes partition 1 raise in ``train`` and
partition 2 reply with NaN parameters. Kinds: ``raise`` (the ClientApp fails),
``nan`` (all parameters NaN), ``shape`` (the first parameter reshaped),
``hang`` (sleeps ``hang_seconds`` before replying).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

FAULT_KINDS = ("raise", "nan", "shape", "hang")


class InjectedFault(RuntimeError):
    """Raised by a client on purpose."""


def fault_mod(faults: Mapping[int, str], hang_seconds: float = 30.0
              ) -> Callable[[Message, Context, Callable[[Message, Context], Message]], Message]:
    unknown = set(faults.values()) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; valid: {FAULT_KINDS}")
    faults = dict(faults)

    def mod(msg: Message, context: Context,
            call_next: Callable[[Message, Context], Message]) -> Message:
        kind = faults.get(int(context.node_config.get("partition-id", -1)))
        if kind is None or msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        if kind == "raise":
            raise InjectedFault("injected client crash")
        if kind == "hang":
            time.sleep(hang_seconds)
            return call_next(msg, context)
        reply = call_next(msg, context)
        record = reply.content["arrays"]
        arrays = {k: a.numpy() for k, a in record.items()}
        if kind == "nan":
            arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
        elif kind == "shape":
            first = next(iter(arrays))
            arrays[first] = arrays[first].reshape(-1)[:-1].copy()
        reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply

    return mod
