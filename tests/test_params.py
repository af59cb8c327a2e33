"""Per-component parameters: every key has an owner, components are built from their
family's keys, never from the whole run config."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing

import pytest

import clients
import fedpers.aggregation
import fedpers.attacks
import fedpers.codecs
import fedpers.privacy
import fedpers.selection
import strategies
from fedpers.codecs import CodecParams
from fedpers.components import LOOP_KEYS, PARAM_FAMILIES, registries
from fedpers.config import FIELDS, RunConfig, parse_run_config
from fedpers.registry import Params

KEY_OF = {f.name: key for key, f in FIELDS.items()}

# The families' entry points: they take the run config and hand each component its
# family's params (``build_codec(cfg)`` -> ``CODECS.build(name, CodecParams...)``), or
# check combinations of keys across families.
ENTRY_POINTS = {
    "strategies.build_strategy",
    "fedpers.codecs.build_codec",
    "fedpers.selection.build_selector",
    "fedpers.aggregation.build_aggregator",
    "fedpers.privacy.build_privacy",
    "fedpers.privacy.sampling_rate",
    "fedpers.privacy.check_dp_config",
    "clients.base.LocalContext.from_config",
}
COMPONENT_PACKAGES = (strategies, clients, fedpers.codecs, fedpers.selection,
                      fedpers.aggregation, fedpers.attacks, fedpers.privacy)
COMPONENT_MODULES = ("fedpers.devices", "fedpers.virtual")


def _family_names(family: type) -> set[str]:
    return {f.name for f in dataclasses.fields(family)}


def test_every_key_belongs_to_a_family_or_to_the_round_loop():
    in_families = {KEY_OF[n] for fam in PARAM_FAMILIES for n in _family_names(fam)}
    assert not LOOP_KEYS - set(FIELDS), "LOOP_KEYS names a key RunConfig lacks"
    assert not in_families & LOOP_KEYS, "a key is both a family's and the loop's own"
    missing = set(FIELDS) - in_families - LOOP_KEYS
    assert not missing, f"keys with no owner (add them to a family or LOOP_KEYS): {missing}"


@pytest.mark.parametrize("family", PARAM_FAMILIES, ids=lambda f: f.__name__)
def test_a_family_is_frozen_and_names_run_config_fields_with_their_types(family):
    assert dataclasses.is_dataclass(family) and family.__dataclass_params__.frozen
    run_types = typing.get_type_hints(RunConfig)
    names = _family_names(family)
    assert names <= set(run_types), f"{family.__name__}: {names - set(run_types)}"
    if issubclass(family, Params):  # DataSpec parses anomaly-classes into a tuple
        hints = typing.get_type_hints(family)
        for name in names:
            assert hints[name] == run_types[name], (family.__name__, name)


@pytest.mark.parametrize("family", [f for f in PARAM_FAMILIES if issubclass(f, Params)],
                         ids=lambda f: f.__name__)
def test_params_copies_the_family_values_out_of_a_config(family):
    cfg = parse_run_config({"task": "digits", "num-clients": 7, "seed": 5, "lr": 0.3,
                            "codec": "q8", "quant-block-size": 64, "strategy": "fedprox",
                            "proximal-mu": 0.5, "attack": "scale", "attack-fraction": 0.3,
                            "device-profile": "lognormal", "checkpoint-every": 2})
    params = cfg.params(family)
    assert isinstance(params, family)
    for name in _family_names(family):
        assert getattr(params, name) == getattr(cfg, name), name
    assert params == family.from_config(cfg)


def test_params_of_a_family_ignore_other_keys():
    a = parse_run_config({"task": "digits", "codec": "q8", "lr": 0.1})
    b = parse_run_config({"task": "digits", "codec": "q8", "lr": 0.2})
    assert a.params(CodecParams) == b.params(CodecParams)


def _first_param_annotation(func) -> str:
    """The first parameter's annotation as written (``from __future__ import
    annotations``: a string; families imported for type checking only stay names)."""
    params = [p for name, p in inspect.signature(func).parameters.items()
              if name not in ("self", "cls")]
    ann = params[0].annotation
    return ann if isinstance(ann, str) else ann.__name__


@pytest.mark.parametrize("key", ["strategy", "codec", "selection", "aggregation", "attack",
                                 "dp"])
def test_registry_factories_take_their_family_params(key):
    families = {f.__name__ for f in PARAM_FAMILIES}
    for name, entry in registries()[key].items():
        assert _first_param_annotation(entry.build) in families, (key, name)


def _component_modules():
    for package in COMPONENT_PACKAGES:
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield importlib.import_module(info.name)
    for name in COMPONENT_MODULES:
        yield importlib.import_module(name)


def _takes_run_config(obj) -> list[str]:
    annotations = getattr(obj, "__annotations__", {}) or {}
    return [name for name, ann in annotations.items() if "RunConfig" in str(ann)]


def test_no_component_takes_or_keeps_the_whole_run_config():
    offenders = []
    for module in _component_modules():
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            qual = f"{module.__name__}.{name}"
            if inspect.isfunction(obj) and qual not in ENTRY_POINTS:
                offenders += [f"{qual}({p})" for p in _takes_run_config(obj)]
            elif inspect.isclass(obj):
                offenders += [f"{qual}.{p}" for p in _takes_run_config(obj)]  # fields
                for attr, member in vars(obj).items():
                    func = getattr(member, "__func__", member)
                    if inspect.isfunction(func) and f"{qual}.{attr}" not in ENTRY_POINTS:
                        offenders += [f"{qual}.{attr}({p})" for p in _takes_run_config(func)]
    assert not offenders, f"components that take the whole RunConfig: {offenders}"


def test_the_guard_sees_a_component_that_takes_the_run_config(monkeypatch):
    def build_bad(cfg: RunConfig) -> None: ...

    build_bad.__module__ = "fedpers.devices"
    monkeypatch.setattr("fedpers.devices.build_bad", build_bad, raising=False)
    with pytest.raises(AssertionError, match="build_bad"):
        test_no_component_takes_or_keeps_the_whole_run_config()
