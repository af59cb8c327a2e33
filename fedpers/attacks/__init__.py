"""Simulated Byzantine clients (``attack=``), one attack per file, pure numpy.

``ATTACKS`` maps each name to its class, whose ``build`` classmethod makes it from the
:class:`AttackParams`. Which clients attack depends only on the
run seed and the partition id (:func:`attackers`): ``round(attack-fraction *
num-clients)`` of them, the same in every round, on every machine, and known to
the server's metrics (``attack/*``) but not to its aggregation. The ClientApp
calls :func:`poison_labels` before training and :func:`poison_update` after it,
before the codec encodes the upload.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from fedpers.attacks.base import Attack, AttackParams, global_norm
from fedpers.attacks.label_flip import LabelFlip
from fedpers.attacks.noise import Noise
from fedpers.attacks.none import NoAttack
from fedpers.attacks.scale import Scale
from fedpers.attacks.sign_flip import SignFlip
from fedpers.registry import Registry
from fedpers.seeds import Stream, derive_seed

ATTACKS: Registry[type] = Registry("attack", {
    "none": NoAttack,
    "sign-flip": SignFlip,
    "scale": Scale,
    "noise": Noise,
    "label-flip": LabelFlip,
})


def build_attack(params: AttackParams) -> Attack:
    """The attack named by ``attack``, built from the attack keys.

    Raises
    ------
    ConfigError
        For an unknown name (naming ``attack`` and listing the valid names).
    """
    attack: Attack = ATTACKS.build(params.attack, params)
    return attack


def attackers(params: AttackParams) -> frozenset[int]:
    """Partition ids of the Byzantine clients (empty with ``attack = "none"``)."""
    count = int(round(params.attack_fraction * params.num_clients))
    if params.attack == "none" or count == 0:
        return frozenset()
    rng = np.random.default_rng(derive_seed(params.seed, Stream.ATTACKERS))
    return frozenset(int(p) for p in rng.permutation(params.num_clients)[:count])


def poison_labels(params: AttackParams, partition_id: int, data: Any, num_classes: int) -> Any:
    """``data`` (a ClientData) with poisoned training labels for an attacker."""
    attack = build_attack(params)
    if not attack.poisons_labels or partition_id not in attackers(params):
        return data
    return replace(data, y_train=attack.labels(data.y_train, num_classes))


def poison_update(params: AttackParams, partition_id: int, server_round: int,
                  shared: dict[str, np.ndarray], received: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
    """The shared weights an attacker uploads: ``received + attack(shared - received)``.

    Only floating-point tensors present in ``received`` are attacked; integer
    buffers go as they are. Honest clients get ``shared`` back unchanged.
    """
    if partition_id not in attackers(params):
        return shared
    attack = build_attack(params)
    keys = [k for k, v in shared.items() if v.dtype.kind == "f" and k in received]
    update = {k: shared[k].astype(np.float64) - received[k].astype(np.float64) for k in keys}
    rng = np.random.default_rng(derive_seed(params.seed, Stream.ATTACK_DRAWS, server_round,
                                            partition_id))
    bad = attack.update(update, rng)
    out = dict(shared)
    for k in keys:
        out[k] = (received[k].astype(np.float64) + bad[k]).astype(shared[k].dtype)
    return out


__all__ = ["ATTACKS", "Attack", "AttackParams", "attackers", "build_attack", "global_norm",
           "poison_labels", "poison_update"]
