"""``fedpers keys`` and ``docs/configuration.md``: every run-config key has a meaning, a
group, a TOML default and, for a name key, exactly the names its registry accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fedpers.cli import main
from fedpers.config import FIELDS, PARTITIONS, config_keys
from fedpers.config_files import toml_literal
from fedpers.config_values import OneOf
from fedpers.keydoc import KEY_GROUPS, MARKDOWN_BEGIN, MARKDOWN_END, describe_keys, keys_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def infos():
    return describe_keys()


def test_every_key_has_a_meaning():
    empty = [key for key, f in FIELDS.items() if not f.metadata["doc"].strip()]
    assert not empty, f"run-config keys without a doc in fedpers/config.py: {empty}"


def test_every_key_is_in_exactly_one_group():
    listed = [key for group in KEY_GROUPS for key in group.keys]
    assert sorted(set(listed)) == sorted(listed), "a key is listed in two groups"
    assert not set(listed) - set(FIELDS), "KEY_GROUPS names a key RunConfig lacks"
    missing = sorted(set(FIELDS) - set(listed))
    assert not missing, f"run-config keys in no KEY_GROUPS group: {missing}"
    assert all(group.keys and group.title for group in KEY_GROUPS)


def test_every_checked_number_states_its_valid_values(infos):
    # a check with no rule text would leave `fedpers keys` silent about a limit
    no_rule = [i.key for i in infos if FIELDS[i.key].metadata["check"] is not None
               and not isinstance(FIELDS[i.key].metadata["check"], OneOf) and not i.rule]
    assert not no_rule


@pytest.mark.parametrize("value, text", [
    ("fmnist", '"fmnist"'), ("", '""'), (False, "false"), (True, "true"), (0.05, "0.05"),
    (600.0, "600.0"), (1e-5, "1e-05"), (20, "20"), (0, "0"), ("5,7,9", '"5,7,9"'),
    ('say "hi"\\now', '"say \\"hi\\"\\\\now"'), ("a\tb\n", '"a\\tb\\n"'),
])
def test_toml_literal(value, text):
    assert toml_literal(value) == text
    back = tomllib.loads(f"v = {text}")["v"]
    assert back == value and type(back) is type(value)


def test_toml_literal_of_odd_strings_reads_back():
    for value in ("\x7f", "\x00\x1f", "é ü 中", "'single'", "back\\slash"):
        assert tomllib.loads(f"v = {toml_literal(value)}")["v"] == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, [1, 2]])
def test_toml_literal_refuses_what_a_key_cannot_hold(value):
    with pytest.raises(ValueError):
        toml_literal(value)


def test_every_default_reads_back_from_its_toml(infos):
    for info in infos:
        back = tomllib.loads(f"v = {info.toml_default}")["v"]
        assert back == info.default and type(back) is type(info.default), info.key
        assert info.type == {bool: "boolean", int: "integer", float: "float",
                              str: "string"}[type(info.default)]


def test_name_keys_list_their_registry():
    from clients import PERSONALIZERS
    from fedpers.aggregation import AGGREGATORS
    from fedpers.attacks import ATTACKS
    from fedpers.codecs import CODECS, DOWN_CODECS, SPARSE_VALUES
    from fedpers.data import TASKS
    from fedpers.data.partition import SCHEMES
    from fedpers.privacy import DP_MODES
    from fedpers.selection import SELECTORS
    from strategies import STRATEGIES

    expected = {
        "task": tuple(TASKS), "strategy": tuple(STRATEGIES),
        "personalization": tuple(PERSONALIZERS), "codec": tuple(CODECS),
        "selection": tuple(SELECTORS), "aggregation": tuple(AGGREGATORS),
        "attack": tuple(ATTACKS), "dp": tuple(DP_MODES), "partition": PARTITIONS,
        "codec-down": DOWN_CODECS, "sparse-values": SPARSE_VALUES,
        "device-profile": ("none", "lognormal", "trace"),  # fedpers.devices.build_clock
        "device": ("auto", "cpu", "cuda"), "packing": ("auto", "off"),
    }
    assert set(SCHEMES) | {"natural"} == set(PARTITIONS)
    listed = {i.key: i.choices for i in describe_keys() if i.choices}
    assert listed == expected


def test_fixed_choices_are_what_the_check_accepts(infos):
    for info in infos:
        check = FIELDS[info.key].metadata["check"]
        if isinstance(check, OneOf):
            assert all(check(c) is None for c in info.choices)
            assert check("no-such-name") is not None


def test_keys_prints_every_key_under_its_group(capsys, infos):
    assert main(["keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    titles = [g.title for g in KEY_GROUPS]
    heading = {i: line.split("  (")[0] for i, line in enumerate(lines)
               if line.split("  (")[0] in titles}
    assert list(heading.values()) == titles
    for info in infos:
        row = f"  {info.key} = {info.toml_default}  ("
        at = [i for i, line in enumerate(lines) if line.startswith(row)]
        assert len(at) == 1, f"{info.key}: {row!r} not printed once"
        above = max(i for i in heading if i < at[0])
        assert heading[above] == info.group
    strategy = next(i for i, line in enumerate(lines) if line.startswith("  strategy = "))
    choices = next(line for line in lines[strategy:] if "choices:" in line)
    assert "fedavg, fedprox, scaffold" in choices
    assert '  tracking-uri = ""  (string)' in lines
    assert "  error-feedback = false  (boolean)" in lines
    assert "  lr = 0.05  (float, > 0)" in lines


def test_keys_name_prints_one_key(capsys):
    assert main(["keys", "sparse-values"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sparse-values\n")
    assert 'default: sparse-values = "fp32"' in out
    assert "choices: fp32, fp16, q8, sign" in out
    assert "Compression (docs/compression.md)" in out
    assert "topk, randk: how the kept values are coded" in out


@pytest.mark.parametrize("name, close", [("krum", "krum-f, multi-krum-m"),
                                         ("num-clinets", "num-clients"),
                                         ("learning-rate", "`fedpers keys` lists")])
def test_keys_unknown_name_is_an_error_with_close_matches(capsys, name, close):
    assert main(["keys", name]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: unknown run-config key '{name}'")
    assert close in err and "\n" not in err


def _doc_block() -> str:
    text = DOC.read_text()
    start, end = text.index(MARKDOWN_BEGIN), text.index(MARKDOWN_END) + len(MARKDOWN_END)
    return text[start:end]


def test_configuration_doc_lists_every_key_with_its_default():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| `(.*?)` \|", _doc_block(), re.MULTILINE)
    documented = {key: tomllib.loads(f"v = {text}")["v"] for key, text in rows}
    assert len(rows) == len(documented), "a key is documented twice"
    assert documented == config_keys()


def test_configuration_doc_is_what_fedpers_keys_markdown_prints(infos):
    assert _doc_block() == keys_markdown(infos), (
        "docs/configuration.md's key tables are stale: paste the output of "
        "`fedpers keys --markdown` between its markers")
