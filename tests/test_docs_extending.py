"""docs/extending.md works as written.

Every ```python block of the page runs, in order, in one namespace (each block compiled
on its own, so each may start with ``from __future__ import annotations``). The
components it defines and registers are then checked against their contracts: the
LG-FedAvg personaliser through the real ClientApp handlers, the unweighted FedAvg by
hand-computed averages, the clipped local SGD by the length of one step. A slow test
runs all three end to end on the Simulation Engine. The registries are restored after
each test, so the other suites (which check the registries' exact contents) never see
the example entries.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from clients import LOCAL_UPDATES, PERSONALIZERS, LocalContext
from clients.sgd import SGDUpdate
from fedpers.arrays import to_array_record
from fedpers.config import ConfigError, parse_run_config
from fedpers.data.base import ClientData
from strategies import STRATEGIES, StrategyParams

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
REGISTRIES = (PERSONALIZERS, STRATEGIES, LOCAL_UPDATES)
NODE = 5

pytestmark = pytest.mark.usefixtures("task_identity")  # Messages outside an app


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of every ```python block of a Markdown text."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def run_blocks(namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute the page's python blocks in ``namespace``; each error names its line."""
    for line, source in python_blocks(DOC.read_text()):
        exec(compile("\n" * (line - 1) + source, str(DOC), "exec"), namespace)
    return namespace


@pytest.fixture
def restore_registries() -> Iterator[None]:
    saved = [dict(r) for r in REGISTRIES]
    try:
        yield
    finally:
        for registry, before in zip(REGISTRIES, saved, strict=True):
            for name in set(registry) - set(before):
                del registry[name]


@pytest.fixture
def doc(restore_registries) -> dict[str, Any]:
    return run_blocks({"__name__": "docs_extending"})


def test_the_page_has_the_blocks_this_test_relies_on():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 4
    names = ("class LGFedAvg", "class UniformFedAvg", "class ClippedSGD", "PERSONALIZERS[")
    for name, (_, source) in zip(names, blocks, strict=True):
        assert name in source


def test_blocks_register_names_the_config_accepts(doc):
    cfg = doc["cfg"]
    assert (cfg.strategy, cfg.personalization) == ("fedavg-uniform", "lg-fedavg")
    assert isinstance(PERSONALIZERS["lg-fedavg"], doc["LGFedAvg"])
    assert STRATEGIES["fedavg-uniform-clipped"].local_update == "clipped-sgd"
    parse_run_config({"strategy": "fedavg-uniform-clipped"})
    with pytest.raises(ConfigError, match="lg-fedavg"):  # the error lists it as valid
        parse_run_config({"personalization": "no-such-method"})


def test_registries_are_restored(restore_registries):
    assert "lg-fedavg" not in PERSONALIZERS and "fedavg-uniform" not in STRATEGIES


# LG-FedAvg through the ClientApp's handlers ------------------------------------------


def _run_cfg(**overrides: Any) -> dict[str, Any]:
    raw = {"task": "digits", "num-clients": 2, "partition": "iid",
           "max-samples-per-client": 40, "batch-size": 10, "lr": 0.1,
           "personalization": "lg-fedavg", **overrides}
    return parse_run_config(raw).to_dict()


def _context(run_cfg: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=NODE, node_config={"partition-id": 1, "num-partitions": 2},
                   state=RecordDict(), run_config=run_cfg)


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return to_array_record(arrays)  # as fedpers sends them: 0-d arrays stay 0-d


def _numpy(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in rec.items()}


def _initial(run_cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    from fedpers.data import TASKS

    torch.manual_seed(0)
    model = TASKS[run_cfg["task"]].build_model((64,), 10)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [NODE]


def _train(ctx: Context, arrays: dict[str, np.ndarray], rnd: int) -> dict[str, np.ndarray]:
    from fedpers.client_app import train

    cfg = parse_run_config(ctx.run_config)
    strategy = STRATEGIES[cfg.strategy].build(StrategyParams.from_config(cfg))
    (msg,) = strategy.configure_train(rnd, _record(arrays), ConfigRecord(), _Grid())
    return _numpy(train(msg, ctx).content["arrays"])


def _eval_loss(ctx: Context, arrays: dict[str, np.ndarray], rnd: int) -> float:
    from fedpers.client_app import evaluate_local

    msg = Message(RecordDict({"arrays": _record(arrays),
                              "config": ConfigRecord({"server-round": rnd})}),
                  message_type=MessageType.EVALUATE, dst_node_id=NODE)
    return float(evaluate_local(msg, ctx).content["metrics"]["loss"])


def test_lg_fedavg_uploads_only_the_head_and_keeps_the_body(doc):
    cfg = _run_cfg()
    x0 = _initial(cfg)
    head = {"head.weight", "head.bias"}
    ctx = _context(cfg)
    sent = _train(ctx, x0, 1)
    assert set(sent) == head  # the body never leaves the client
    kept = _numpy(ctx.state.array_records["lg-body"])
    assert set(kept) == set(x0) - head
    assert any(not np.array_equal(kept[k], x0[k]) for k in kept)  # the body trained


def test_lg_fedavg_body_comes_from_the_state_not_the_server(doc):
    cfg = _run_cfg()
    x0 = _initial(cfg)
    ctx = _context(cfg)
    _train(ctx, x0, 1)
    state = ctx.state.array_records["lg-body"]
    other = {k: v + 3 if k.startswith("body") else v for k, v in x0.items()}
    a, b = _context(cfg), _context(cfg)
    a.state["lg-body"], b.state["lg-body"] = state, state
    up_a, up_b = _train(a, x0, 2), _train(b, other, 2)
    for k in up_a:
        np.testing.assert_array_equal(up_a[k], up_b[k], err_msg=k)
    # ... and evaluation uses the kept body: a client that never trained differs
    assert _eval_loss(ctx, x0, 1) != _eval_loss(_context(cfg), x0, 1)


def test_lg_fedavg_refuses_a_model_without_a_head(doc):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="declares none"):
        PERSONALIZERS["lg-fedavg"].private_keys(model)


# Unweighted FedAvg ---------------------------------------------------------------------


def _reply(arrays: dict[str, np.ndarray], num_examples: int) -> Message:
    ins = Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=7)
    metrics = MetricRecord({"num-examples": num_examples, "train-loss": 0.5, "steps": 1,
                            "partition-id": 0})
    return Message(RecordDict({"arrays": _record(arrays), "metrics": metrics}), reply_to=ins)


def test_uniform_fedavg_counts_every_client_once(doc):
    cfg = parse_run_config({"strategy": "fedavg-uniform"})
    strategy = STRATEGIES["fedavg-uniform"].build(StrategyParams.from_config(cfg))
    a = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(4, np.int64)}
    b = {"w": np.array([3.0, 6.0], np.float32), "n": np.array(8, np.int64)}
    arrays, _ = strategy.aggregate_train(1, [_reply(a, 10), _reply(b, 30)])
    out = _numpy(arrays)
    # unweighted: (1 + 3) / 2 = 2, (2 + 6) / 2 = 4 (FedAvg's 10:30 weights give 2.5, 5)
    np.testing.assert_array_equal(out["w"], np.array([2.0, 4.0], np.float32))
    assert out["n"].shape == () and out["n"].dtype == np.int64 and int(out["n"]) == 6
    assert strategy.aggregate_train(1, []) == (None, None)


def test_uniform_fedavg_aggregates_only_the_shared_part(doc):
    strategy = STRATEGIES["fedavg-uniform"].build(parse_run_config({}))
    head = {"head.bias": np.array([1.0], np.float32)}
    arrays, _ = strategy.aggregate_train(1, [_reply(head, 1), _reply(head, 2)])
    assert set(_numpy(arrays)) == {"head.bias"}


# Clipped local SGD ---------------------------------------------------------------------


def _one_step(update: Any) -> float:
    """Length of one SGD step (lr 0.1, one batch) on a loss whose gradient norm is ~200."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    x = np.full((4, 1), 10.0, np.float32)  # reconstruction loss (w x - x)^2: grad 2x^2 = 200
    data = ClientData(x_train=x, y_train=np.zeros(4, np.int64), x_test=x[:1],
                      y_test=np.zeros(1, np.int64))
    local = LocalContext.from_config(
        parse_run_config({"lr": 0.1, "momentum": 0.0, "batch-size": 4, "local-epochs": 1}),
        data=data, kind="anomaly", server_round=1, partition_id=0, seed=0,
        device=torch.device("cpu"), state=RecordDict(), server_config={})
    result = update.train(model, local)
    assert result.steps == 1
    return abs(float(model.weight.detach().reshape(-1)[0]))


def test_clipped_sgd_steps_at_most_lr_times_the_clip_norm(doc):
    clipped = _one_step(LOCAL_UPDATES["clipped-sgd"])
    assert clipped == pytest.approx(0.1 * doc["MAX_GRAD_NORM"], rel=1e-5)
    assert _one_step(SGDUpdate()) == pytest.approx(20.0, rel=1e-4)  # unclipped: 0.1 x 200


# End to end ----------------------------------------------------------------------------

MODULE = "docs_extending_example"
MODULE_SOURCE = '''"""docs/extending.md's python blocks as a module (written by a test)."""
import json as _json

for _line, _source in _json.loads({blocks!r}):
    exec(compile("\\n" * (_line - 1) + _source, {doc!r}, "exec"), globals())


def registered(msg, context, call_next):
    """A pass-through client mod. The ClientApp that carries it is pickled into Ray's
    workers, which import this module to unpickle it: that runs the blocks above there,
    and so registers the page's components in each worker's registries too."""
    return call_next(msg, context)
'''


@pytest.mark.slow
def test_the_page_components_run_end_to_end(tmp_path, tracking_uri, restore_registries,
                                            monkeypatch):
    """LG-FedAvg with unweighted FedAvg and clipped local SGD, digits, 2 clients,
    2 rounds, through the Simulation Engine: the run finishes, clients evaluate, and
    the uploads are about the size of the head, not of the model."""
    import importlib

    import mlflow
    from conftest import metric_history

    from fedpers.client_app import build_client_app
    from fedpers.simulation import run_simulation

    blocks = json.dumps(python_blocks(DOC.read_text()))
    (tmp_path / f"{MODULE}.py").write_text(MODULE_SOURCE.format(blocks=blocks, doc=str(DOC)))
    monkeypatch.syspath_prepend(str(tmp_path))  # Ray's workers get this process's sys.path
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    example = importlib.import_module(MODULE)
    try:
        cfg = parse_run_config({"task": "digits", "num-clients": 2, "num-server-rounds": 2,
                                "strategy": "fedavg-uniform-clipped",
                                "personalization": "lg-fedavg",
                                "tracking-uri": tracking_uri})
        run_id = run_simulation(cfg, num_cpus=2,
                                client_app=build_client_app(mods=[example.registered]))
    finally:
        sys.modules.pop(MODULE, None)
    assert mlflow.MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"
    history = metric_history(tracking_uri, run_id)
    assert [s for s, _ in history["eval/client_accuracy_mean"]] == [1, 2]
    assert [v for _, v in history["clients/trained"]] == [2.0, 2.0]
    full = sum(v.nbytes for v in _initial(cfg.to_dict()).values())
    head = sum(v.nbytes for k, v in _initial(cfg.to_dict()).items() if k.startswith("head."))
    for _, up in history["comm/bytes_up"]:
        assert 2 * head < up < 2 * full / 4  # two clients' heads plus framing, no body
