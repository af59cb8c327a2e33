"""The robust-aggregation layer of the round loop: norm clipping and a robust
aggregator (``fedpers.aggregation``) applied to a round's checked replies *before*
the strategy's own ``aggregate_train``, so that it composes with every strategy.

What the strategy sees
----------------------
Let ``x`` be the global model, ``u_i = y_i - x`` client ``i``'s update over the
shared floating-point parameters (private parameters never reach the server;
integer buffers are left as each client sent them) and ``v_i`` the update the
layer works on: ``v_i = u_i``, except for strategies that normalise by local
steps (below). In order:

1. ``clip-update-norm = B > 0``: ``v_i <- v_i min(1, B / ||v_i||)``.
2. ``aggregation``:

   - ``mean`` (default): every reply goes on. With ``B = 0`` the layer is off and
     the strategy runs exactly as without it.
   - ``krum``, ``multi-krum``: *selection*. Only the replies Krum keeps go on,
     unchanged (clipped, if ``B > 0``); the strategy aggregates them with its own
     rule: FedAvg/FedProx their example-weighted mean, FedAvgM/FedAdam/FedYogi
     their server optimiser step on that mean.
   - ``median``, ``trimmed-mean``: *robust update*. Every reply goes on, each with
     its update replaced by the one coordinate-wise robust update ``r``:
     ``y_i <- x + r``. A strategy's (weighted) mean of identical models is
     ``x + r``, so its own step acts on ``r``: FedAvg/FedProx set ``x + r``,
     FedAvgM and FedAdam/FedYogi feed the pseudo-gradient ``-r`` to the server
     momentum / adaptive optimiser, SCAFFOLD steps ``x + server_lr r``. Client
     weights (``num-examples``) no longer matter: the robust estimators are
     unweighted, as in their papers, and a client cannot buy influence by
     claiming many examples.

Strategies with more than the model in a reply
----------------------------------------------
* SCAFFOLD (any strategy with ``extra_records``): the control update ``Δc_i`` is a
  second vector each client chooses freely and SCAFFOLD sums it into ``c``, which
  every client then adds to each gradient. With ``median``/``trimmed-mean`` the same
  coordinate-wise rule is applied to the ``Δc_i`` and every reply's ``Δc_i`` is
  replaced by it, so ``c <- c + |S|/N robust(Δc)``: the robust counterpart of the
  paper's ``c <- c + |S|/N mean(Δc)``. ``krum``/``multi-krum`` select on the
  model update only and would let an arbitrary ``Δc_i`` through, and clipping
  bounds the model update only: config parsing refuses those combinations
  (``aggregation`` or ``clip-update-norm`` with ``strategy``), except clipping
  together with ``median``/``trimmed-mean``.
* FedNova (``StrategySpec.normalises_steps``): it averages normalised updates
  ``d_i = u_i / a_i`` (``a_i`` the effective steps from the client's ``steps``
  metric) and rescales by ``tau_eff = sum p_i a_i``, both of which a client
  controls through the ``steps`` it reports. Here the layer works on
  ``v_i = a* d_i`` with ``a* = a(K*)``, ``K*`` the lower median of the reported
  steps, and sets every passed reply's ``steps`` to ``K*`` and its model to
  ``x + v_i'`` (the clipped / selected / robust ``v``). FedNova then computes
  ``x + a* sum_i p_i d_i'``: its normalised average, made robust, rescaled by a
  robust ``tau_eff``. Clipping bounds ``a* ||d_i||``.

``check_robust_config`` (called by config parsing) refuses the combinations that
cannot be made sound and checks Krum's ``n >= 2f + 3`` for the round size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from fedpers.aggregation import Aggregator, build_aggregator, clip_updates, min_clients
from fedpers.attacks import AttackParams, attackers
from fedpers.config_checks import clients_per_round
from fedpers.data import TASKS
from fedpers.errors import ConfigError
from fedpers.training import effective_steps
from strategies import STRATEGIES

if TYPE_CHECKING:
    from fedpers.config import RunConfig
    from fedpers.screening import CheckedReply

logger = logging.getLogger(__name__)

STEPS = "steps"  # the reply metric FedNova normalises by (strategies/fednova.py)
COORDINATE_WISE = ("median", "trimmed-mean")


def check_robust_config(cfg: RunConfig) -> None:
    """Refuse combinations of ``aggregation``, ``clip-update-norm``, ``attack`` and the
    strategy or task that cannot work; ConfigError naming both keys."""
    spec = STRATEGIES.get(cfg.strategy)
    if spec.extra_records and cfg.aggregation in ("krum", "multi-krum"):
        raise ConfigError(
            f"run-config key 'aggregation' = {cfg.aggregation!r} cannot be used with "
            f"'strategy' = {cfg.strategy!r}: Krum selects clients by their model update "
            f"only, but the strategy also sums each client's {', '.join(spec.extra_records)} "
            f"record (e.g. SCAFFOLD's control update), which a Byzantine client sets freely; "
            f"use aggregation = 'median' or 'trimmed-mean', which aggregate those robustly too")
    if (spec.extra_records and cfg.clip_update_norm > 0
            and cfg.aggregation not in COORDINATE_WISE):
        raise ConfigError(
            f"run-config key 'clip-update-norm' = {cfg.clip_update_norm} with 'strategy' = "
            f"{cfg.strategy!r} needs 'aggregation' = 'median' or 'trimmed-mean': clipping "
            f"bounds the model update only, and the strategy's "
            f"{', '.join(spec.extra_records)} record would still move its state without "
            f"bound; got aggregation = {cfg.aggregation!r}")
    if cfg.aggregation in ("krum", "multi-krum"):
        per_round = clients_per_round(cfg)[0]
        need = min_clients(cfg.krum_f)
        if per_round < need:
            raise ConfigError(
                f"run-config key 'aggregation' = {cfg.aggregation!r} with 'krum-f' = "
                f"{cfg.krum_f} needs at least 2f + 3 = {need} clients per round; "
                f"num-clients x fraction-train gives {per_round}")
        if cfg.aggregation == "multi-krum" and cfg.multi_krum_m > per_round:
            raise ConfigError(
                f"run-config key 'multi-krum-m' = {cfg.multi_krum_m} exceeds the "
                f"{per_round} clients per round (num-clients x fraction-train)")
    if cfg.attack == "none" and cfg.attack_fraction > 0:
        raise ConfigError(f"run-config key 'attack-fraction' = {cfg.attack_fraction} needs "
                          f"an attack; 'attack' is 'none'")
    if cfg.attack != "none" and cfg.attack_fraction == 0:
        raise ConfigError(f"run-config key 'attack' = {cfg.attack!r} needs "
                          f"'attack-fraction' > 0 (the share of clients that attack)")
    if cfg.attack == "label-flip" and TASKS[cfg.task].kind != "classification":
        raise ConfigError(f"run-config key 'attack' = 'label-flip' needs a classification "
                          f"task; 'task' = {cfg.task!r} is {TASKS[cfg.task].kind}")


@dataclass(frozen=True)
class RobustOutcome:
    """What the layer hands on: ``(index into the input, reply)`` pairs and metrics."""

    passed: list[tuple[int, CheckedReply]]
    metrics: dict[str, float]


class RobustLayer:
    """Clipping + robust aggregation of one round's checked replies (module docstring).

    Parameters
    ----------
    cfg : RunConfig
        ``aggregation`` and its parameters, ``clip-update-norm``, ``momentum`` (for
        effective steps) and, for the ``attack/*`` metrics, the attack settings.
    normalises_steps : bool
        The strategy divides updates by local steps (FedNova).
    """

    stateless = True  # a function of each round's replies (fedpers.state)

    def __init__(self, cfg: RunConfig, normalises_steps: bool = False) -> None:
        self.aggregator = build_aggregator(cfg)
        self.clip = float(cfg.clip_update_norm)
        self.momentum = float(cfg.momentum)
        self.f = int(cfg.krum_f)
        self.normalises_steps = normalises_steps
        self.active = cfg.aggregation != "mean" or self.clip > 0
        self.attackers = attackers(AttackParams.from_config(cfg))

    def apply(self, checked: list[CheckedReply], reference: dict[str, np.ndarray]
              ) -> RobustOutcome:
        """The replies the strategy aggregates, with their (possibly replaced) updates.

        ``checked`` must share one set of parameter names (``consistent_key_sets``).
        """
        metrics: dict[str, float] = {}
        if self.attackers:
            metrics["attack/received"] = float(sum(c.partition_id in self.attackers
                                                   for c in checked))
        if not self.active or not checked:
            if self.attackers:
                metrics["attack/passed"] = metrics["attack/received"]
            return RobustOutcome(list(enumerate(checked)), metrics)
        keys = [k for k in sorted(checked[0].arrays) if checked[0].arrays[k].dtype.kind == "f"]
        shapes = [reference[k].shape for k in keys]
        u = np.stack([_flat(c.arrays, keys, reference) for c in checked])
        steps_star = None
        if self.normalises_steps:
            steps = [int(c.metrics[STEPS]) for c in checked]
            steps_star = int(sorted(steps)[(len(steps) - 1) // 2])  # lower median
            a_star = effective_steps(steps_star, self.momentum)
            a = np.array([effective_steps(s, self.momentum) for s in steps])
            u = u * (a_star / a)[:, None]
        if self.clip > 0:
            u, clipped = clip_updates(u, self.clip)
            metrics["robust/clipped"] = float(clipped.sum())
        if (self.aggregator.selects_clients and len(checked) < min_clients(self.f)):
            logger.warning("%s with krum-f = %d needs %d updates for its guarantee; this "
                           "round has %d", self.aggregator.name, self.f, min_clients(self.f),
                           len(checked))
        agg = self.aggregator.aggregate(u)
        extra_robust = {}
        if agg.update is not None:
            extra_robust = {name: _robust_record([c.extra[name] for c in checked],
                                                 self.aggregator)
                            for name in checked[0].extra}
        passed = []
        for i in agg.selected:
            c = checked[i]
            row = agg.update if agg.update is not None else u[i]
            arrays = dict(c.arrays)
            arrays.update(_unflat(row, keys, shapes, reference))
            extra = {name: {**c.extra[name], **extra_robust.get(name, {})}
                     for name in c.extra}
            new_metrics = dict(c.metrics)
            if steps_star is not None:
                new_metrics[STEPS] = steps_star
            passed.append((i, replace(c, arrays=arrays, metrics=new_metrics, extra=extra)))
        metrics["robust/passed"] = float(len(passed))
        if self.attackers:
            metrics["attack/passed"] = float(sum(c.partition_id in self.attackers
                                                 for _, c in passed))
        return RobustOutcome(passed, metrics)


def _flat(arrays: dict[str, np.ndarray], keys: list[str],
          reference: dict[str, np.ndarray]) -> np.ndarray:
    if not keys:
        return np.zeros(0)
    return np.concatenate([(arrays[k].astype(np.float64)
                            - reference[k].astype(np.float64)).ravel() for k in keys])


def _unflat(row: np.ndarray, keys: list[str], shapes: list[tuple[int, ...]],
            reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for k, shape in zip(keys, shapes, strict=True):
        size = int(np.prod(shape, dtype=np.int64))
        value = reference[k].astype(np.float64) + row[start:start + size].reshape(shape)
        out[k] = value.astype(reference[k].dtype)
        start += size
    return out


def _robust_record(records: list[dict[str, np.ndarray]], aggregator: Aggregator
                   ) -> dict[str, np.ndarray]:
    """A coordinate-wise robust aggregate of one extra record, parameter by parameter
    (over the replies that carry it): identical to aggregating the flattened record."""
    out = {}
    for k in records[0]:
        values = [r[k] for r in records if k in r and r[k].shape == records[0][k].shape]
        mat = np.stack([v.astype(np.float64).ravel() for v in values])
        robust = aggregator.aggregate(mat).update
        assert robust is not None, "called only for coordinate-wise aggregators"
        out[k] = robust.reshape(records[0][k].shape).astype(records[0][k].dtype)
    return out
