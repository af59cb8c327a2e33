"""Attacks through the real ClientApp train handler: they act on the update of the
shared part and are applied before the codec encodes the upload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedpers.attacks import AttackParams, attackers
from fedpers.client_app import train
from fedpers.codecs import build_codec
from fedpers.config import parse_run_config
from fedpers.data import TASKS
from fedpers.screening import check_train_reply
from strategies import STRATEGIES, StrategyParams

NODE = 5


pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [NODE]


def _update(overrides: dict, personalization: str = "none") -> dict[str, np.ndarray]:
    """(decoded upload - global) of the attacker's partition for one train call."""
    raw = {"task": "digits", "num-clients": 2, "partition": "iid", "batch-size": 16,
           "local-epochs": 1, "max-samples-per-client": 60, "lr": 0.1, "attack": "sign-flip",
           "attack-fraction": 0.5, "personalization": personalization, **overrides}
    cfg = parse_run_config(raw)
    bad = parse_run_config({**raw, "attack": "sign-flip", "attack-fraction": 0.5})
    pid = sorted(attackers(AttackParams.from_config(bad)))[0]
    torch.manual_seed(0)
    model = TASKS["digits"].build_model((64,), 10)
    x0 = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    (msg,) = STRATEGIES[cfg.strategy].build(StrategyParams.from_config(cfg)).configure_train(
        1, ArrayRecord({k: Array(v) for k, v in x0.items()}), ConfigRecord(), _Grid())
    ctx = Context(run_id=1, node_id=NODE, state=RecordDict(), run_config=cfg.to_dict(),
                  node_config={"partition-id": pid, "num-partitions": 2})
    arrays, _ = check_train_reply(train(msg, ctx), x0, build_codec(cfg))
    return {k: arrays[k].astype(np.float64) - x0[k] for k in arrays}


def _flat(d: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([d[k].ravel() for k in sorted(d)])


def test_sign_flip_sends_minus_s_times_the_honest_update():
    honest = _flat(_update({"attack": "none", "attack-fraction": 0.0}))
    flipped = _flat(_update({"attack-scale": 2.0}))
    assert np.linalg.norm(honest) > 0.01
    np.testing.assert_allclose(flipped, -2.0 * honest, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("codec", ["q8", "sign", "topk"])
def test_attack_survives_a_lossy_codec(codec):
    """Applied before encoding: what the server decodes is the codec's image of the
    attacked update, pointing against the honest one."""
    extra = {"codec": codec, "sparse-fraction": 0.5}
    honest = _flat(_update({"attack": "none", "attack-fraction": 0.0, **extra}))
    scaled = _flat(_update({"attack": "scale", "attack-scale": 5.0, **extra}))
    flipped = _flat(_update({"attack-scale": 1.0, **extra}))
    cos = flipped @ honest / (np.linalg.norm(flipped) * np.linalg.norm(honest))
    # sign sends an entry whose update is 0 as +scale in both uploads (about a quarter of
    # this model's entries: digits pixels that are always 0), so only the rest flips: its
    # cosine lies between -0.74 and -0.84 over seeds 0-5
    assert cos < (-0.6 if codec == "sign" else -0.8)
    ratio = np.linalg.norm(scaled) / np.linalg.norm(honest)
    assert 4.0 < ratio < 6.0


def test_attack_never_touches_private_parameters():
    up = _update({"attack": "scale", "attack-scale": 5.0}, personalization="fedper")
    torch.manual_seed(0)
    model = TASKS["digits"].build_model((64,), 10)
    head = {k for k in model.state_dict() if k.startswith(tuple(model.head_prefixes))}
    assert head and not (head & set(up))  # never uploaded, so never attacked
