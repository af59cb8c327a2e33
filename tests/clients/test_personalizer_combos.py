"""Every personaliser composes with every strategy and with lossy codecs: the real
train handler's reply passes the server's checks, carries only the shared part, and
a strategy's extra records (SCAFFOLD's control variate) cover only shared names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from personal_helpers import (  # noqa: F401 - bn_task: a fixture
    BN_TASK,
    bn_task,
    call_train,
    context,
    initial_arrays,
    numpy,
    run_config,
    state_arrays,
)

from clients import PERSONALIZERS
from fedpers.codecs import build_codec
from fedpers.config import parse_run_config
from fedpers.data import TASKS
from fedpers.screening import check_extra_records, check_train_reply
from strategies import STRATEGIES

pytestmark = pytest.mark.usefixtures("bn_task", "task_identity")


def _private(name: str) -> set[str]:
    torch.manual_seed(0)
    return PERSONALIZERS[name].private_keys(TASKS[BN_TASK].build_model((64,), 10))


def _checked(cfg_dict, x0, rnd, ctx):
    cfg = parse_run_config(cfg_dict)
    extra = STRATEGIES[cfg.strategy].extra_records
    reply = call_train(ctx, x0, rnd)
    arrays, metrics = check_train_reply(reply, x0, build_codec(cfg), extra)
    return arrays, metrics, check_extra_records(reply, x0, extra)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("name", sorted(PERSONALIZERS))
def test_personaliser_x_strategy(name, strategy):
    cfg = run_config(personalization=name, strategy=strategy, **{"proximal-mu": 0.5})
    ctx = context(cfg)
    x0 = initial_arrays(cfg)
    shared = set(x0) - _private(name)
    for rnd in (1, 2):
        arrays, metrics, extra = _checked(cfg, x0, rnd, ctx)
        assert set(arrays) == shared
        assert metrics["num-examples"] > 0 and metrics["steps"] > 0
        for rec in extra.values():  # SCAFFOLD: delta c_i of shared parameters only
            assert set(rec) <= shared and set(rec)
    if strategy == "scaffold":
        ci = state_arrays(ctx.state)["scaffold-ci"]
        assert set(ci) <= shared  # no control variate for private parameters


@pytest.mark.parametrize(("name", "codec"), [
    ("fedper", "q8"), ("fedrep", "topk"), ("fedbn", "sign"), ("ditto", "fp16"),
    ("apfl", "qsgd"), ("local", "q4"), ("finetune", "randk")])
def test_personaliser_x_codec(name, codec):
    """Only the shared part is encoded; the server decodes it against its global."""
    cfg = run_config(personalization=name, codec=codec, **{"error-feedback": True})
    ctx = context(cfg)
    x0 = initial_arrays(cfg)
    shared = set(x0) - _private(name)
    for rnd in (1, 2):
        arrays, metrics, _ = _checked(cfg, x0, rnd, ctx)
        assert set(arrays) == shared
        assert 0.0 <= metrics["codec-distortion"] <= 2.0
    residual = state_arrays(ctx.state)["ef-residual"]
    assert set(residual) <= shared


def test_fedrep_x_scaffold_corrects_the_body_only():
    """The control variate the client keeps and returns has no head entry, and the
    head moved only in the head phase (it gets no correction)."""
    cfg = run_config(personalization="fedrep", strategy="scaffold")
    ctx = context(cfg)
    x0 = initial_arrays(cfg)
    _checked(cfg, x0, 1, ctx)
    ci = state_arrays(ctx.state)["scaffold-ci"]
    assert not any(k.startswith("head.") for k in ci)
    assert any(np.abs(v).sum() > 0 for v in ci.values())
