"""Per-task defaults (fedpers/data/defaults.py): a task's own default for the keys the
user did not set; explicit keys (config file, --set, a benchmark's tables) always win;
``fedpers keys`` lists them; a first ``fedpers run --set task=digits`` learns."""

from __future__ import annotations

import re

import pytest
from conftest import metric_history
from mlflow.tracking import MlflowClient

from fedpers import cli
from fedpers.config import config_keys, parse_run_config
from fedpers.config_files import toml_literal
from fedpers.data import TASKS
from fedpers.data.defaults import TASK_DEFAULTS, task_defaults, tasks_with_default
from fedpers.keydoc import describe_keys, keys_markdown

GLOBAL = config_keys()


@pytest.mark.parametrize("task", sorted(TASK_DEFAULTS))
def test_task_defaults_name_a_task_and_keys_of_the_right_type(task):
    assert task in TASKS
    for key, value in TASK_DEFAULTS[task].items():
        assert key in GLOBAL, f"{task}: {key!r} is not a run-config key"
        assert type(value) is type(GLOBAL[key]), f"{task}: {key} = {value!r}"
        assert value != GLOBAL[key], f"{task}: {key} = the global default; drop it"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_an_unset_key_takes_the_task_default_else_the_global_one(task):
    raw = {"task": task, **({"data-dir": "/nowhere"} if task == "npz" else {})}
    cfg = parse_run_config(raw).to_dict()
    own = task_defaults(task)
    for key, default in GLOBAL.items():
        if key not in raw:
            assert cfg[key] == own.get(key, default), key


def test_digits_has_defaults_that_differ_from_the_global_ones():
    cfg = parse_run_config({"task": "digits"})
    assert (cfg.lr, cfg.local_epochs, cfg.batch_size) != (GLOBAL["lr"], GLOBAL["local-epochs"],
                                                          GLOBAL["batch-size"])
    assert cfg.lr == TASK_DEFAULTS["digits"]["lr"]


def test_explicit_keys_win_over_task_defaults():
    own = TASK_DEFAULTS["digits"]
    set_to_global = {key: GLOBAL[key] for key in own}
    cfg = parse_run_config({"task": "digits", **set_to_global}).to_dict()
    assert {key: cfg[key] for key in own} == set_to_global
    # one key set, the others still from the task
    key, *rest = own
    cfg = parse_run_config({"task": "digits", key: GLOBAL[key]}).to_dict()
    assert cfg[key] == GLOBAL[key]
    assert all(cfg[k] == own[k] for k in rest)


def test_a_config_file_and_set_are_explicit(tmp_path):
    from fedpers.cli_commands import resolve_config

    path = tmp_path / "run.toml"
    path.write_text('task = "digits"\nlr = 0.05\n')
    cfg = resolve_config(str(path), ["batch-size=32"], None, None)
    assert (cfg.lr, cfg.batch_size) == (0.05, 32)
    assert cfg.local_epochs == TASK_DEFAULTS["digits"]["local-epochs"]  # not set: the task's


def test_a_parsed_config_keeps_its_values_when_copied_or_parsed_again():
    """Flower's run config, a checkpoint and ``replace`` carry every key: the values
    already in effect, which parse again unchanged (the task defaults are applied once)."""
    cfg = parse_run_config({"task": "digits"})
    assert parse_run_config(cfg.to_dict()) == cfg
    other = cfg.replace(**{"num-clients": 3})
    assert (other.lr, other.local_epochs, other.batch_size) == (cfg.lr, cfg.local_epochs,
                                                                cfg.batch_size)


def test_keys_lists_each_task_default_under_its_key(capsys):
    assert cli.main(["keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for key, per_task in {k: tasks_with_default(k) for k in GLOBAL}.items():
        if not per_task:
            continue
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {key} = "))
        text = lines[at + 1].strip()  # the line right under the key's
        for task, value in per_task.items():
            shown = re.escape(f"{task} = {toml_literal(value)}")
            assert re.search(rf"task default: (.*, )?{shown}(,|$)", text), text


def test_keys_name_and_markdown_show_the_task_defaults(capsys):
    assert cli.main(["keys", "lr"]) == 0
    out = capsys.readouterr().out
    assert f"by task: digits = {TASK_DEFAULTS['digits']['lr']}" in out
    row = next(line for line in keys_markdown(describe_keys(False)).splitlines()
               if line.startswith("| `lr` |"))
    assert f"Task default: digits = `{TASK_DEFAULTS['digits']['lr']}`" in row


@pytest.mark.slow
def test_a_first_digits_run_learns(tmp_path, capsys):
    """What a new user types, nothing else set: the global model reaches 0.8 accuracy
    within the default rounds, and MLflow records the values in effect."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["run", "--set", "task=digits", "--tracking-uri", uri]) == 0
    run_id = re.findall(r"^run id: (\w+)$", capsys.readouterr().out, re.M)[-1]
    hist = metric_history(uri, run_id)
    rounds = GLOBAL["num-server-rounds"]
    final = dict(hist["eval/global_accuracy"])[rounds]
    print(f"task=digits, default config: global accuracy {final:.4f} after {rounds} rounds")
    assert final >= 0.8, hist["eval/global_accuracy"]
    params = MlflowClient(tracking_uri=uri).get_run(run_id).data.params
    for key, value in TASK_DEFAULTS["digits"].items():
        assert params[key] == str(value), (key, params[key])
