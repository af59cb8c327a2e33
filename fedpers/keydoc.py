"""Run-config keys as text: ``fedpers keys`` and the key tables of ``docs/configuration.md``.

The facts (meaning, type, default, group, valid values) come from
:func:`fedpers.config.describe_keys`, i.e. from each key's declaration in
``fedpers/config.py``; this module only lays them out.
"""

from __future__ import annotations

import difflib
import shlex
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedpers.config import FIELDS
from fedpers.config_files import toml_literal
from fedpers.config_values import RULES, TYPE_NAMES, OneOf
from fedpers.data.defaults import tasks_with_default
from fedpers.errors import ConfigError


@dataclass(frozen=True)
class KeyGroup:
    """The run-config keys of one component, in the order ``fedpers keys`` lists them.

    Attributes
    ----------
    title : str
        Heading, e.g. ``"Strategy"``.
    see : str
        The page of ``docs/`` that explains the component ('' for none).
    keys : tuple of str
        Its keys; every key is in exactly one group.
    """

    title: str
    see: str
    keys: tuple[str, ...]


KEY_GROUPS: tuple[KeyGroup, ...] = (
    KeyGroup("Task and data", "tasks.md",
             ("task", "data-dir", "num-clients", "partition", "alpha", "classes-per-client",
              "local-test-fraction", "max-samples-per-client", "feature-shift", "seed")),
    KeyGroup("Rounds and training", "running.md",
             ("num-server-rounds", "fraction-train", "fraction-evaluate", "min-train-clients",
              "local-epochs", "batch-size", "lr", "momentum", "eval-every", "round-timeout",
              "device", "straggler-fraction", "straggler-work")),
    KeyGroup("Strategy", "methods.md#strategies",
             ("strategy", "proximal-mu", "server-lr", "server-momentum")),
    KeyGroup("Personalisation", "methods.md#personalisation",
             ("personalization", "finetune-epochs", "finetune-lr", "fedrep-head-epochs",
              "ditto-lambda", "apfl-alpha")),
    KeyGroup("Compression", "compression.md",
             ("codec", "codec-down", "error-feedback", "quant-block-size", "qsgd-levels",
              "sparse-fraction", "sparse-values")),
    KeyGroup("Selection and devices", "devices-and-selection.md",
             ("selection", "pow-d", "device-profile", "device-trace", "round-deadline",
              "device-availability", "device-dropout")),
    KeyGroup("Robustness and attacks", "privacy-and-robustness.md",
             ("max-update-norm", "clip-update-norm", "aggregation", "trim-fraction", "krum-f",
              "multi-krum-m", "attack", "attack-fraction", "attack-scale")),
    KeyGroup("Differential privacy", "privacy-and-robustness.md#differential-privacy",
             ("dp", "dp-clip-norm", "dp-noise-multiplier", "dp-delta")),
    KeyGroup("Anomaly detection", "anomaly-detection.md",
             ("anomaly-classes", "threshold-percentile", "client-model-dir")),
    KeyGroup("Checkpointing", "checkpointing.md", ("checkpoint-every", "client-state-dir")),
    KeyGroup("Simulation (virtual nodes)", "running.md#many-clients-in-simulation",
             ("virtual-nodes", "packing", "clients-per-call")),
    KeyGroup("Tracking", "tracking.md", ("tracking-uri", "experiment", "mlflow-run-id")),
)


@dataclass(frozen=True)
class KeyInfo:
    """What ``fedpers keys`` and ``docs/configuration.md`` say about one run-config key.

    Attributes
    ----------
    key : str
        The kebab-case key.
    default : Any
        Its default (the same as in ``pyproject.toml``).
    type : str
        ``"string"``, ``"integer"``, ``"float"`` or ``"boolean"``.
    doc : str
        Its meaning.
    group : str
        The title of its :class:`KeyGroup` ('' if it has none: a test fails).
    rule : str
        The valid values of a number or path ('' when any value of the type goes).
    choices : tuple of str
        The valid names of a name key (a registry's, or a fixed list); empty otherwise.
    """

    key: str
    default: Any
    type: str
    doc: str
    group: str
    rule: str = ""
    choices: tuple[str, ...] = ()

    @property
    def toml_default(self) -> str:
        """The default as a TOML literal (see :func:`toml_literal`)."""
        return toml_literal(self.default)


def key_group(key: str) -> KeyGroup | None:
    """The :class:`KeyGroup` that lists ``key`` (None if none does)."""
    return next((g for g in KEY_GROUPS if key in g.keys), None)


def describe_keys(with_names: bool = True) -> list[KeyInfo]:
    """Every run-config key with its meaning, type, default, group and valid values,
    in declaration order.

    Parameters
    ----------
    with_names : bool
        List the valid names of the component keys (``strategy``, ``codec``, ...) from
        their registries; this imports torch and Flower. Keys with a fixed list of
        choices (``partition``, ``device``, ...) always have them.
    """
    if with_names:
        from fedpers.components import registries  # torch and Flower: only when asked

        names = {k: r.names() for k, r in registries().items()}
    else:
        names = {}
    out = []
    for key, f in FIELDS.items():
        check = f.metadata["check"]
        group = key_group(key)
        choices = check.choices if isinstance(check, OneOf) else names.get(key, ())
        out.append(KeyInfo(key=key, default=f.default, type=TYPE_NAMES[type(f.default)],
                           doc=f.metadata["doc"], group=group.title if group else "",
                           rule=RULES.get(check, ""), choices=choices))
    return out


WIDTH = 88
INDENT = "      "

LIST_HEADER = """\
Run-config keys, by component. Set them in a TOML file (fedpers run --config FILE),
with fedpers run --set KEY=VALUE, or in a benchmark's [base] and [variants.NAME] tables.
Defaults are shown as TOML (key = default); "task default:" under a key gives the
default a task uses instead (a key you set always wins). `fedpers keys KEY` shows one
key in full."""

MARKDOWN_BEGIN = "<!-- BEGIN generated by `fedpers keys --markdown`: edit fedpers/config.py -->"
MARKDOWN_END = "<!-- END generated by `fedpers keys --markdown` -->"


def _kind(info: KeyInfo) -> str:
    return f"{info.type}, {info.rule}" if info.rule else info.type


def task_default_text(key: str, code: str = "") -> str:
    """The tasks whose default of ``key`` differs from the global one, as
    ``digits = 0.1, fmnist-ad = 0.5`` ('' for none); values as TOML, each wrapped in
    ``code`` (a Markdown backtick, say)."""
    return ", ".join(f"{task} = {code}{toml_literal(value)}{code}"
                     for task, value in tasks_with_default(key).items())


def format_keys(infos: Sequence[KeyInfo]) -> str:
    """Every key, grouped by component: ``key = default  (type, rule)``, then its
    meaning and valid names, indented."""
    by_key = {i.key: i for i in infos}
    lines = [LIST_HEADER]
    for group in KEY_GROUPS:
        lines += ["", f"{group.title}" + (f"  (docs/{group.see})" if group.see else "")]
        for key in group.keys:
            info = by_key[key]
            lines.append(f"  {key} = {info.toml_default}  ({_kind(info)})")
            if per_task := task_default_text(key):
                lines += textwrap.wrap(f"task default: {per_task}", WIDTH,
                                       initial_indent=INDENT, subsequent_indent=INDENT + "  ")
            lines += textwrap.wrap(info.doc, WIDTH, initial_indent=INDENT,
                                   subsequent_indent=INDENT)
            if info.choices:
                lines += textwrap.wrap("choices: " + ", ".join(info.choices), WIDTH,
                                       initial_indent=INDENT,
                                       subsequent_indent=INDENT + "  ")
    grouped = {k for g in KEY_GROUPS for k in g.keys}
    stray = [i for i in infos if i.key not in grouped]
    if stray:  # a key missing from KEY_GROUPS still shows (and a test fails)
        lines += ["", "Other"] + [f"  {i.key} = {i.toml_default}  ({_kind(i)})  {i.doc}"
                                  for i in stray]
    return "\n".join(lines)


def format_key(info: KeyInfo) -> str:
    """One key in full: group, type, default, valid values, meaning, how to set it."""
    group = key_group(info.key)
    where = f"{group.title} (docs/{group.see})" if group and group.see else info.group
    toml_line = f"{info.key} = {info.toml_default}"
    rows = [("group", where), ("type", _kind(info)), ("default", toml_line)]
    if per_task := task_default_text(info.key):
        rows.append(("by task", f"{per_task} (where the key is not set)"))
    if info.choices:
        rows.append(("choices", ", ".join(info.choices)))
    rows += [("meaning", info.doc),
             ("set it", f"fedpers run --set {shlex.quote(f'{info.key}={info.toml_default}')}"
                        f"  (or the line `{toml_line}` in a --config file)")]
    lines = [info.key]
    for label, text in rows:
        head = f"  {label + ':':9s}"
        lines += textwrap.wrap(text, WIDTH, initial_indent=head,
                               subsequent_indent=" " * len(head)) or [head]
    return "\n".join(lines)


def find_key(name: str, infos: Sequence[KeyInfo]) -> KeyInfo:
    """The key called ``name``.

    Raises
    ------
    ConfigError
        ``name`` is not a key; the message lists close matches (by spelling, or keys
        that contain ``name``).
    """
    by_key = {i.key: i for i in infos}
    if name in by_key:
        return by_key[name]
    close = difflib.get_close_matches(name, list(by_key), n=5, cutoff=0.6)
    close += [k for k in by_key if name and name in k and k not in close]
    hint = (f"close matches: {', '.join(close[:8])}" if close
            else "`fedpers keys` lists every key")
    raise ConfigError(f"unknown run-config key {name!r}; {hint}")


def _md(text: str) -> str:
    """``text`` safe in a Markdown table cell (no pipes, tags or emphasis)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def keys_markdown(infos: Sequence[KeyInfo]) -> str:
    """The key tables of ``docs/configuration.md``, one per group, between
    :data:`MARKDOWN_BEGIN` and :data:`MARKDOWN_END`."""
    by_key = {i.key: i for i in infos}
    out = [MARKDOWN_BEGIN]
    for group in KEY_GROUPS:
        out += ["", f"### {group.title}", ""]
        if group.see:
            out += [f"See [{group.see.split('#')[0]}]({group.see}).", ""]
        out += ["| key | default | type | meaning |", "|---|---|---|---|"]
        for key in group.keys:
            info = by_key[key]
            meaning = info.doc
            if info.choices:
                meaning += ". Choices: " + ", ".join(f"`{c}`" for c in info.choices)
            if per_task := task_default_text(key, "`"):
                meaning += f". Task default: {per_task}"
            out.append(f"| `{key}` | `{info.toml_default}` | {_md(_kind(info))} | "
                       f"{_md(meaning)} |")
    out += ["", MARKDOWN_END]
    return "\n".join(out)
