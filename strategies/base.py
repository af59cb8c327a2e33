"""What a strategy entry declares, and helpers shared by the server halves."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedpers.registry import Params

# fedpers does client selection itself (seeded, see fedpers.selection) and hands the
# strategy a grid that shows only the selected nodes, so every strategy is built to
# take all nodes it is shown.
TAKE_ALL: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1,
            "min_evaluate_nodes": 1, "min_available_nodes": 1}


@dataclass(frozen=True)
class StrategyParams(Params):
    """The run-config keys the server halves read (``fedpers keys``, group Strategy).

    Attributes
    ----------
    strategy : str
        ``strategy``: the strategy's name.
    proximal_mu : float
        ``proximal-mu``: FedProx's proximal weight.
    server_lr : float
        ``server-lr``: the server step size (0 = the strategy's default).
    server_momentum : float
        ``server-momentum``: FedAvgM's momentum, FedAdam's and FedYogi's beta_1.
    lr : float
        ``lr``: the clients' learning rate (FedAdam's and FedYogi's ``eta_l``).
    momentum : float
        ``momentum``: the clients' SGD momentum (FedNova's step normalisation).
    num_clients : int
        ``num-clients``: all clients (SCAFFOLD's control-variate average).
    """

    strategy: str
    proximal_mu: float
    server_lr: float
    server_momentum: float
    lr: float
    momentum: float
    num_clients: int


@dataclass(frozen=True)
class StrategySpec:
    """A ``strategy=`` entry: a Flower strategy factory plus its client half.

    ``extra_records`` names the ArrayRecords a training reply carries besides the
    model (e.g. SCAFFOLD's ``"control"``). The round loop checks each of them like
    the model (names it knows, shapes, finite values) and passes them on to the
    strategy; a reply without one of them is rejected.

    ``partial_work``: under a round deadline (``round-deadline``, fedpers.devices)
    the server gives each client the local steps that fit the deadline (``max-steps``)
    and aggregates that partial work, instead of dropping clients that are too slow.

    What a strategy carries from one round to the next is the built strategy's own
    ``state_dict()`` / ``load_state_dict()`` (:class:`StrategyState`), or it is
    declared stateless (:class:`Stateless`); ``fedpers.state`` checks one or the other.

    ``build`` receives the strategy's own keys (:class:`StrategyParams`), never the
    whole run config.

    ``normalises_steps``: the strategy divides each client's update by its effective
    local steps (the reply's ``steps`` metric, FedNova). Robust aggregation
    (``fedpers.robust``) then acts on the normalised updates and hands the strategy
    one common step count.
    """

    build: Callable[[StrategyParams], Strategy]
    local_update: str = "sgd"  # key in clients.LOCAL_UPDATES
    paper: str = ""
    extra_records: tuple[str, ...] = ()
    partial_work: bool = False
    normalises_steps: bool = False


def reply_keys(replies: Sequence[Message], record: str = "arrays") -> list[str]:
    """The parameter names the replies carry (the shared part of the model), in order."""
    for msg in replies:
        if msg.has_content() and record in msg.content.array_records:
            return list(msg.content.array_records[record].keys())
    return []


class SharedPart:
    """Mixin for Flower strategies that step from the arrays they sent
    (``current_arrays``: FedOpt's dict, FedAvgM's ArrayRecord): fedpers sends the
    whole global model but replies carry only its shared part, so the strategy
    steps only the names the replies carry and the round loop keeps the rest."""

    arrayrecord_key: str
    current_arrays: Any

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        keys = reply_keys(replies, self.arrayrecord_key)
        current = self.current_arrays
        if current is not None and keys:
            kept = {k: current[k] for k in keys}
            self.current_arrays = ArrayRecord(kept) if isinstance(current, ArrayRecord) \
                else kept
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]


class Stateless:
    """Mixin: the strategy keeps nothing from one round to the next (``fedpers.state``)."""

    stateless = True


class StrategyState:
    """Mixin: ``state_dict()`` / ``load_state_dict()`` over the attributes named in
    ``state_attrs``, the ones that carry state from one round to the next (Flower's
    or fedpers' own names, e.g. FedAdam's moments). Each is ``None``, a dict of numpy
    arrays, an ArrayRecord or a list of arrays; its kind and order survive a
    checkpoint."""

    state_attrs: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr in self.state_attrs:
            value = getattr(self, attr)
            if value is None:
                out[attr] = None
            elif isinstance(value, ArrayRecord):
                out[attr] = {"kind": "record", "names": list(value.keys()),
                             "values": [a.numpy() for a in value.values()]}
            elif isinstance(value, Mapping):
                out[attr] = {"kind": "dict", "names": list(value.keys()),
                             "values": [np.asarray(v) for v in value.values()]}
            elif isinstance(value, (list, tuple)):
                out[attr] = {"kind": "list", "values": [np.asarray(v) for v in value]}
            else:
                raise TypeError(f"{type(self).__name__}.{attr} is a {type(value).__name__}; "
                                f"strategy state is None, dicts or lists of arrays, or "
                                f"ArrayRecords")
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = [a for a in self.state_attrs if a not in state]
        if missing:
            raise KeyError(f"{type(self).__name__}: no saved state for {missing}")
        for attr in self.state_attrs:
            saved = state[attr]
            if saved is None:
                setattr(self, attr, None)
                continue
            values = [np.array(v) for v in saved["values"]]
            kind = saved["kind"]
            if kind == "record":
                setattr(self, attr, ArrayRecord({k: Array(v) for k, v in
                                                 zip(saved["names"], values, strict=True)}))
            elif kind == "dict":
                setattr(self, attr, dict(zip(saved["names"], values, strict=True)))
            elif kind == "list":
                setattr(self, attr, values)
            else:
                raise KeyError(f"{type(self).__name__}.{attr}: unknown state kind {kind!r}")
