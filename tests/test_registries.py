"""Contract of the one registry idiom, run over every component registry.

Each registry (``fedpers.components.registries()``) maps the names of one run-config key to
its entries; an unknown name is a ConfigError naming the key and listing every valid
name, in the same words for each registry; every name builds from the default config
(plus the keys that name needs); ``fedpers keys`` lists the names. Families with their
own parameters (codec, selection, aggregation, attack, dp) build from a frozen
parameter dataclass holding exactly their keys, never from the whole RunConfig.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.serverapp.strategy import Strategy

from fedpers.aggregation import AGGREGATORS, AggregationParams, build_aggregator
from fedpers.attacks import ATTACKS, AttackParams, build_attack
from fedpers.cli import main
from fedpers.codecs import CODECS, CodecParams, build_codec
from fedpers.components import registries
from fedpers.config import ConfigError, RunConfig, parse_run_config
from fedpers.errors import ConfigError as LeafConfigError
from fedpers.keydoc import KEY_GROUPS, describe_keys
from fedpers.privacy import DP_MODES, DpFedAvg, DpParams
from fedpers.registry import Params, Registry
from fedpers.selection import SELECTORS, SelectionParams, build_selector

KEYS = ("task", "strategy", "personalization", "codec", "selection", "aggregation",
        "attack", "dp")
REGISTRIES = registries()
ENTRIES = [(key, name) for key, reg in REGISTRIES.items() for name in reg]

# What a name needs besides itself to parse (the combination checks of fedpers.config).
NEEDS: dict[tuple[str, str], dict[str, Any]] = {
    ("task", "npz"): {"data-dir": "/nonexistent/npz"},  # checked when data loads
    ("task", "shakespeare"): {"partition": "natural"},
    ("selection", "deadline"): {"device-profile": "lognormal", "round-deadline": 10.0},
    **{("attack", name): {"attack-fraction": 0.2} for name in ATTACKS if name != "none"},
}

# The families whose entries take parameters: run-config key -> (params class, builder
# from a RunConfig).
PARAMS: dict[str, tuple[type[Params], Any]] = {
    "codec": (CodecParams, build_codec),
    "selection": (SelectionParams, build_selector),
    "aggregation": (AggregationParams, build_aggregator),
    "attack": (AttackParams, build_attack),
    "dp": (DpParams, lambda cfg: DP_MODES.build(cfg.dp, DpParams.from_config(cfg))),
}


def config_for(key: str, name: str) -> RunConfig:
    return parse_run_config({key: name, **NEEDS.get((key, name), {})})


def test_every_component_key_has_one_registry():
    assert tuple(REGISTRIES) == KEYS
    for key, reg in REGISTRIES.items():
        assert isinstance(reg, Registry)
        assert reg.key == key
        assert len(reg) == len(reg.names()) > 0


@pytest.mark.parametrize("key", KEYS)
def test_unknown_name_is_a_config_error_naming_the_key_and_every_name(key):
    reg = REGISTRIES[key]
    expected = (f"run-config key '{key}': unknown name 'no-such-name'; valid names: "
                f"{', '.join(sorted(reg.names()))}")
    for lookup in (reg.get, reg.__getitem__, lambda n: reg.build(n, None),
                   lambda n: parse_run_config({key: n})):
        with pytest.raises(ConfigError) as info:
            lookup("no-such-name")
        assert str(info.value) == expected
        assert isinstance(info.value, LeafConfigError)
    assert "no-such-name" not in reg
    assert reg.get("no-such-name", None) is None  # dict.get's default, for mapping tools


@pytest.mark.parametrize(("key", "name"), ENTRIES)
def test_every_name_parses_and_resolves(key, name):
    cfg = config_for(key, name)
    assert getattr(cfg, key) == name
    entry = REGISTRIES[key].get(name)
    assert entry is REGISTRIES[key][name]
    if key == "task":
        assert entry.name == name and entry.kind in ("classification", "anomaly")
    if key == "personalization":
        for method in ("private_keys", "prepare", "train", "eval_model"):
            assert callable(getattr(entry, method)), (name, method)


@pytest.mark.parametrize(("key", "name"), [(k, n) for k, n in ENTRIES if k in PARAMS])
def test_every_name_builds_from_its_params_alone(key, name):
    cfg = config_for(key, name)
    params_cls, build_from_config = PARAMS[key]
    params = params_cls.from_config(cfg)
    # Only the family's own keys, as plain attributes: a factory that reached for any
    # other run-config key would fail here.
    alone = SimpleNamespace(**dataclasses.asdict(params))
    built = REGISTRIES[key].build(name, alone)
    again = build_from_config(cfg)
    if key == "dp":
        assert (built is None) == (name == "none")
        assert isinstance(again, DpFedAvg) or (again is None and name == "none")
    else:
        assert built is not None and type(built) is type(again)
        assert built == again  # frozen dataclasses: the same parameters
    if key == "codec":
        assert built.name == name


@pytest.mark.parametrize("name", list(REGISTRIES["strategy"]))
def test_every_strategy_builds_from_the_default_config(name):
    cfg = config_for("strategy", name)
    assert isinstance(REGISTRIES["strategy"].build(name, cfg), Strategy)


@pytest.mark.parametrize("key", sorted(PARAMS))
def test_params_hold_exactly_declared_run_config_keys(key):
    params_cls, _ = PARAMS[key]
    assert dataclasses.is_dataclass(params_cls)
    assert params_cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    names = [f.name for f in dataclasses.fields(params_cls)]
    config_names = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(names) <= config_names, set(names) - config_names
    assert key in names  # the name key itself travels with its parameters
    cfg = parse_run_config({})
    params = params_cls.from_config(cfg)
    assert {n: getattr(params, n) for n in names} == {n: getattr(cfg, n) for n in names}
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(params, names[0], None)


def test_codec_params_are_the_compression_group():
    group = next(g for g in KEY_GROUPS if g.title == "Compression")
    keys = {f.name.replace("_", "-") for f in dataclasses.fields(CodecParams)}
    assert keys == set(group.keys)


def test_build_codec_uses_the_configured_parameters():
    cfg = parse_run_config({"codec": "qsgd", "qsgd-levels": 3, "quant-block-size": 64})
    codec = build_codec(cfg)
    assert (codec.levels, codec.block) == (3, 64)
    assert CODECS["qsgd"].levels == 7  # the registry's entry is not changed
    assert build_codec(cfg, "q8").block == 64


def test_build_selector_and_aggregator_use_the_configured_parameters():
    sel = build_selector(parse_run_config({"selection": "pow-d", "pow-d": 7}))
    assert sel.d == 7 and SELECTORS["pow-d"].d == 0
    agg = build_aggregator(parse_run_config({"aggregation": "trimmed-mean",
                                             "trim-fraction": 0.2}))
    assert agg.beta == 0.2 and AGGREGATORS["trimmed-mean"] is type(agg)


def test_keys_lists_every_registry(capsys):
    listed = {i.key: i.choices for i in describe_keys()}
    for key, reg in REGISTRIES.items():
        assert listed[key] == reg.names()
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    for key, reg in REGISTRIES.items():
        row = out.index(f"\n  {key} = ")
        choices = re.search(r"choices: (.*)", out[row:])
        assert choices is not None and choices.group(1) == ", ".join(reg.names()), key


def test_registry_reads_like_a_mapping_and_changes_only_by_hand():
    reg: Registry[int] = Registry("codec", {"b": 2, "a": 1})
    assert list(reg) == ["b", "a"] == list(reg.keys()) and reg.names() == ("b", "a")
    assert dict(reg) == {"b": 2, "a": 1} and reg.items() == [("b", 2), ("a", 1)]
    assert "a" in reg and 3 not in reg and reg.values() == [2, 1]
    reg["c"] = 3
    assert reg.get("c") == 3
    del reg["c"]
    with pytest.raises(ConfigError, match=r"'codec': unknown name 'c'; valid names: a, b$"):
        reg.get("c")
    with pytest.raises(ConfigError, match="unknown name"):
        reg.get(["unhashable"])  # type: ignore[arg-type]
