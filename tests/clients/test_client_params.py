"""Client halves receive their own parameters, never the whole run config.

Every function, method and class of the ``clients`` package is inspected: a parameter,
return value or class field annotated with ``RunConfig`` fails, as does a parameter
called ``cfg`` or ``config`` with no annotation (a run config passed untyped). The one
adapter from a run config, ``LocalContext.from_config``, is named below.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import sys
import textwrap
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

import clients
from clients.base import LocalContext, PersonalizationParams, TrainingParams
from fedpers.config import RunConfig, parse_run_config
from fedpers.data.base import ClientData

# The one place a client half's params are made from a run config.
ADAPTERS = {"clients.base.LocalContext.from_config"}
CONFIG_NAMES = {"cfg", "config", "run_config"}


def _modules(package: ModuleType) -> Iterator[ModuleType]:
    yield package
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        yield importlib.import_module(info.name)


def _mentions_run_config(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return False
    if isinstance(annotation, str):  # postponed annotations (from __future__ import ...)
        return "RunConfig" in annotation
    return annotation is RunConfig or "RunConfig" in repr(annotation)


def _function_uses(name: str, func: Any) -> list[str]:
    if name in ADAPTERS:
        return []
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature
        return []
    found = []
    for param in sig.parameters.values():
        if _mentions_run_config(param.annotation):
            found.append(f"{name}({param.name}: {param.annotation})")
        elif param.annotation is inspect.Parameter.empty and param.name in CONFIG_NAMES:
            found.append(f"{name}({param.name}) without annotation")
    if _mentions_run_config(sig.return_annotation):
        found.append(f"{name} -> {sig.return_annotation}")
    return found


def _class_uses(name: str, cls: type) -> list[str]:
    found = [f"{name}.{field}: {ann}"
             for field, ann in vars(cls).get("__annotations__", {}).items()
             if _mentions_run_config(ann)]
    if dataclasses.is_dataclass(cls):
        found += [f"{name}.{f.name}: {f.type}" for f in dataclasses.fields(cls)
                  if _mentions_run_config(f.type)]
    for attr, value in vars(cls).items():
        func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if inspect.isfunction(func):
            found += _function_uses(f"{name}.{attr}", func)
    return found


def run_config_uses(package: ModuleType) -> list[str]:
    """Every place in ``package`` whose functions or classes take, return or keep a
    RunConfig (as ``module.qualname``)."""
    found: list[str] = []
    for module in _modules(package):
        for attr, value in vars(module).items():
            if getattr(value, "__module__", None) != module.__name__:
                continue  # imported from elsewhere: checked where it is defined
            name = f"{module.__name__}.{attr}"
            if inspect.isclass(value):
                found += _class_uses(name, value)
            elif inspect.isfunction(value):
                found += _function_uses(name, value)
    return sorted(set(found))


def test_no_client_half_takes_or_keeps_a_run_config():
    assert run_config_uses(clients) == []


def test_the_check_finds_a_run_config_field_parameter_or_untyped_cfg(tmp_path, monkeypatch):
    package = tmp_path / "fake_clients"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "halves.py").write_text(textwrap.dedent('''
        from __future__ import annotations

        from dataclasses import dataclass
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from fedpers.config import RunConfig


        @dataclass
        class Context:
            cfg: RunConfig
            seed: int


        def steps(cfg: RunConfig, n: int) -> int:
            return n


        def untyped(cfg, n: int) -> int:
            return n


        class Half:
            def train(self, model: object, run: RunConfig | None) -> None:
                return None

            @classmethod
            def make(cls) -> RunConfig:
                raise NotImplementedError


        def fine(n: int) -> int:
            return n
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = run_config_uses(importlib.import_module("fake_clients"))
    finally:
        for name in ("fake_clients", "fake_clients.halves"):
            sys.modules.pop(name, None)
    assert found == ["fake_clients.halves.Context.__init__(cfg: RunConfig)",
                     "fake_clients.halves.Context.cfg: RunConfig",
                     "fake_clients.halves.Half.make -> RunConfig",
                     "fake_clients.halves.Half.train(run: RunConfig | None)",
                     "fake_clients.halves.steps(cfg: RunConfig)",
                     "fake_clients.halves.untyped(cfg) without annotation"]


def test_params_are_frozen_and_hold_only_run_config_keys():
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    for params in (TrainingParams, PersonalizationParams):
        assert params.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert {f.name for f in dataclasses.fields(params)} <= run_fields


def test_from_config_copies_exactly_the_run_config_values():
    cfg = parse_run_config({"local-epochs": 3, "batch-size": 7, "lr": 0.125, "momentum": 0.5,
                            "straggler-fraction": 0.25, "straggler-work": 0.75,
                            "num-clients": 9, "seed": 11, "personalization": "ditto",
                            "finetune-epochs": 4, "finetune-lr": 0.01,
                            "fedrep-head-epochs": 6, "ditto-lambda": 0.3, "apfl-alpha": 0.6})
    x = np.zeros((2, 1), np.float32)
    y = np.zeros(2, np.int64)
    data = ClientData(x_train=x, y_train=y, x_test=x, y_test=y)
    state = RecordDict()
    local = LocalContext.from_config(cfg, data=data, kind="anomaly", server_round=2,
                                     partition_id=5, seed=13, device=torch.device("cpu"),
                                     state=state, server_config={"server-round": 2})
    assert local.training == TrainingParams(local_epochs=3, batch_size=7, lr=0.125,
                                            momentum=0.5, straggler_fraction=0.25,
                                            straggler_work=0.75, num_clients=9, seed=11)
    assert local.personal == PersonalizationParams(personalization="ditto", finetune_epochs=4,
                                                   finetune_lr=0.01, fedrep_head_epochs=6,
                                                   ditto_lambda=0.3, apfl_alpha=0.6)
    for params in (local.training, local.personal):
        for f in dataclasses.fields(params):
            assert getattr(params, f.name) == getattr(cfg, f.name), f.name
    assert local.data is data and local.state is state
    assert (local.kind, local.server_round, local.partition_id, local.seed,
            local.server_config) == ("anomaly", 2, 5, 13, {"server-round": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        local.training.lr = 1.0  # type: ignore[misc]
