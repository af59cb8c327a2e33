"""The command line documents itself: ``--version``, and a description and working
examples in the ``--help`` of ``fedpers`` and of every subcommand."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from importlib.metadata import version

import pytest

from fedpers.cli import main
from fedpers.cli_parser import build_parser

COMMANDS = ["run", "bench", "report", "detect", "keys", "sync-tracking"]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def _examples(text: str) -> list[str]:
    """The ``fedpers ...`` lines under ``examples:`` in a help text."""
    if "\nexamples:\n" not in text:
        return []
    tail = text.split("\nexamples:\n", 1)[1]
    return [line.strip() for line in tail.splitlines() if line.startswith("  fedpers ")]


def test_version_names_fedpers_and_its_dependencies(capsys):
    out = _help(["--version"], capsys)
    assert out.startswith(f"fedpers {version('fedpers')} (")
    for dep in ("torch", "flwr", "mlflow"):
        assert f"{dep} {version(dep)}" in out


def test_version_of_the_installed_command():
    exe = f"{sys.prefix}/bin/fedpers"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"fedpers {version('fedpers')} (torch ")


def test_top_level_help_describes_fedpers_and_lists_every_command(capsys):
    assert sorted(_subparsers()) == sorted(COMMANDS)
    action = next(a for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in action._choices_actions}
    out = _help(["--help"], capsys)
    assert "federated learning" in out.split("\n\n")[1]
    flat = " ".join(out.split())
    for name in COMMANDS:
        assert helps[name] and len(helps[name]) > 15, name
        assert f" {name} {helps[name]} " in flat, f"{name}: its help line is not listed"
    assert _examples(out)


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help_has_a_description_and_examples(name, capsys):
    parser = _subparsers()[name]
    assert parser.description and len(parser.description) > 40
    out = _help([name, "--help"], capsys)
    assert parser.description in out  # kept verbatim (RawDescriptionHelpFormatter)
    examples = _examples(out)
    assert examples, f"fedpers {name} --help shows no example"
    assert all(line.split()[1] == name for line in examples)


@pytest.mark.parametrize("name", COMMANDS)
def test_examples_parse(name, capsys):
    """Every example is a valid command line for the parser (options and arguments)."""
    for line in _examples(_help([name, "--help"], capsys)):
        args = build_parser().parse_args(shlex.split(line, comments=True)[1:])
        assert args.command == name, line


def test_keys_examples_run(capsys):
    for line in _examples(_help(["keys", "--help"], capsys)):
        assert main(shlex.split(line, comments=True)[1:]) == 0, line
        assert capsys.readouterr().out.strip()
