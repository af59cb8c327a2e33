"""Attacks on a tiny update, label flipping, and the seeded attacker set."""

from __future__ import annotations

import numpy as np
import pytest

from fedpers.attacks import (
    ATTACKS,
    AttackParams,
    attackers,
    build_attack,
    poison_labels,
    poison_update,
)
from fedpers.attacks.label_flip import LabelFlip
from fedpers.attacks.noise import Noise
from fedpers.attacks.scale import Scale
from fedpers.attacks.sign_flip import SignFlip
from fedpers.config import parse_run_config
from fedpers.data.base import ClientData

U = {"w": np.array([1.0, -2.0], np.float32), "b": np.array([[0.5]], np.float32)}


_params = AttackParams.from_config  # the attack keys of a run config


def _cfg(**kw):
    base = {"task": "digits", "num-clients": 8, "attack": "scale", "attack-fraction": 0.25}
    return parse_run_config({**base, **kw})


def test_sign_flip_and_scale_golden():
    rng = np.random.default_rng(0)
    out = SignFlip(scale=1.0).update(U, rng)
    np.testing.assert_array_equal(out["w"], [-1.0, 2.0])
    np.testing.assert_array_equal(SignFlip(scale=3.0).update(U, rng)["b"], [[-1.5]])
    out = Scale(scale=10.0).update(U, rng)
    np.testing.assert_array_equal(out["w"], [10.0, -20.0])
    assert out["w"].dtype == np.float32


def test_noise_has_the_stated_norm_and_is_seeded():
    norm_u = np.sqrt(1 + 4 + 0.25)
    a = Noise(scale=2.0).update(U, np.random.default_rng(1))
    b = Noise(scale=2.0).update(U, np.random.default_rng(1))
    c = Noise(scale=2.0).update(U, np.random.default_rng(2))
    got = np.sqrt(sum(float(np.square(v).sum()) for v in a.values()))
    assert got == pytest.approx(2.0 * norm_u, rel=1e-6)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])
    zero = Noise(scale=2.0).update({"w": np.zeros(3)}, np.random.default_rng(0))
    np.testing.assert_array_equal(zero["w"], np.zeros(3))


def test_label_flip_maps_y_to_c_minus_1_minus_y():
    y = np.array([0, 1, 9, 4], np.int64)
    np.testing.assert_array_equal(LabelFlip().labels(y, 10), [9, 8, 0, 5])
    np.testing.assert_array_equal(LabelFlip().update(U, None)["w"], U["w"])


def test_poison_update_acts_on_the_update_of_float_tensors_only():
    cfg = _cfg(**{"attack-scale": 10.0})
    bad = sorted(attackers(_params(cfg)))[0]
    received = {"w": np.array([1.0, 1.0], np.float32), "n": np.array(7, np.int64)}
    shared = {"w": np.array([1.5, 0.0], np.float32), "n": np.array(8, np.int64)}
    out = poison_update(_params(cfg), bad, 1, shared, received)
    np.testing.assert_array_equal(out["w"], [6.0, -9.0])  # 1 + 10 * (0.5, -1)
    assert out["w"].dtype == np.float32 and int(out["n"]) == 8  # integer buffer as sent
    honest = next(p for p in range(8) if p not in attackers(_params(cfg)))
    assert poison_update(_params(cfg), honest, 1, shared, received) is shared


def test_poison_labels_only_for_attackers():
    cfg = _cfg(attack="label-flip")
    data = ClientData(x_train=np.zeros((3, 2), np.float32), y_train=np.array([0, 1, 2]),
                      x_test=np.zeros((1, 2), np.float32), y_test=np.array([0]))
    bad = sorted(attackers(_params(cfg)))[0]
    honest = next(p for p in range(8) if p not in attackers(_params(cfg)))
    np.testing.assert_array_equal(poison_labels(_params(cfg), bad, data, 10).y_train, [9, 8, 7])
    np.testing.assert_array_equal(poison_labels(_params(cfg), bad, data, 10).y_test, [0])
    assert poison_labels(_params(cfg), honest, data, 10) is data
    assert poison_labels(_params(_cfg()), bad, data, 10) is data  # 'scale' leaves labels alone


def test_attacker_set_is_reproducible_from_the_seed():
    a = attackers(_params(_cfg(seed=3)))
    assert len(a) == 2 and a <= set(range(8))
    assert attackers(_params(_cfg(seed=3))) == a
    assert attackers(_params(_cfg(seed=3, attack="sign-flip"))) == a  # the attack does not pick
    others = {attackers(_params(_cfg(seed=s))) for s in range(10)}
    assert len(others) > 1  # it does depend on the seed
    assert len(attackers(_params(_cfg(**{"attack-fraction": 0.5})))) == 4
    assert attackers(_params(parse_run_config({"task": "digits"}))) == frozenset()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_keeps_names_shapes_and_dtypes(name):
    kw = {"attack": name, "attack-fraction": 0.25} if name != "none" else {}
    attack = build_attack(_params(parse_run_config({"task": "digits", **kw})))
    assert attack.name == name
    out = attack.update(U, np.random.default_rng(0))
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == \
        {k: (v.shape, v.dtype) for k, v in U.items()}
