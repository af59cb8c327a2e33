"""The one ClientApp: composes a local update rule, a personaliser and the upload
steps (attack, DP clipping, codec: ``fedpers.client_pipeline``).

Message contract (what the ServerApp sends and expects back):

- ``query``: reply ``MetricRecord`` "info" with ``partition-id`` and ``num-examples``
  (and the device-profile keys of the node config, ``fedpers.devices.PROFILE_KEYS``).
- ``train``: in ``ArrayRecord`` "arrays" (global shared parameters) and
  ``ConfigRecord`` "config" (``server-round``; ``max-steps``, a local step budget,
  under a round deadline with partial work); out ``ArrayRecord`` "arrays" (the
  encoded shared parameters) and ``MetricRecord`` "metrics" (``num-examples``,
  ``train-loss``, ``steps``, ``partition-id``). A strategy may add ArrayRecords both
  ways (``StrategySpec.extra_records``, e.g. SCAFFOLD's ``control``): the local update
  rule reads them from ``LocalContext.server_arrays`` and fills ``reply_arrays``.
- ``evaluate``: same input; out ``MetricRecord`` "metrics" with ``num-examples``,
  ``partition-id`` and the task's metrics of the client's own model on its local
  test part (``accuracy``/``loss``; anomaly tasks also ``auroc``, ``auprc``,
  ``f1``, ``threshold`` and ``num-val``, and ``f1-global-threshold``, the F1 at
  the server's threshold, when its config carries ``global-threshold``). The
  client's own model is the personaliser's ``eval_model``. With ``client-model-dir``
  an anomaly client also keeps that model and its threshold on its own disk
  (``fedpers.client_detector``), for ``fedpers detect --client``.
- ``query.save_state`` / ``query.load_state`` / ``query.drop_state`` (checkpoint and
  resume, ``fedpers.client_state``): in ``ConfigRecord`` "config" ``state-key``,
  ``server-round`` (and ``keep-round`` to save, ``sha256`` to load); the client
  writes its Context state to its own disk, loads it back, or deletes it, and replies
  ``ConfigRecord`` "state" with ``partition-id`` (and ``sha256``, ``bytes`` of what it
  saved).

With ``virtual-nodes`` (simulation) a message may also carry ``ConfigRecord``
"virtual-client" (``fedpers.virtual``): the outermost mod takes it off and makes the
node that client for the call, so the handlers above never see it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import LOCAL_UPDATES, PERSONALIZERS, LocalContext
from fedpers import client_detector, client_records, client_state
from fedpers import metrics as task_metrics
from fedpers.arrays import record_to_numpy, to_array_record
from fedpers.attacks import AttackParams, attackers, poison_labels
from fedpers.client_pipeline import (
    RoundInputs,
    Upload,
    build_client_pipeline,
    decode_broadcast,
    run_pipeline,
)
from fedpers.config import RunConfig, parse_run_config
from fedpers.data import TASKS, DataSpec, load_federated
from fedpers.devices import reported_profile
from fedpers.heap import freeze_once
from fedpers.seeds import Stream, derive_seed
from fedpers.training import (
    anomaly_scores,
    evaluate,
    resolve_device,
    seed_torch,
)
from fedpers.virtual import virtual_client_mod
from strategies import STRATEGIES

logger = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def _parse(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return parse_run_config(dict(items))


def client_config(context: Context) -> RunConfig:
    """The run config, parsed once per process."""
    return _parse(tuple(sorted(context.run_config.items())))


def partition_id(context: Context, cfg: RunConfig) -> int:
    """This SuperNode's client index, from its node config."""
    node_cfg = context.node_config
    if "partition-id" not in node_cfg:
        raise ValueError("this SuperNode has no 'partition-id' in its node config; start it "
                         "with --node-config \"partition-id=I num-partitions=N\"")
    pid = int(node_cfg["partition-id"])
    num = int(node_cfg.get("num-partitions", cfg.num_clients))
    if num != cfg.num_clients:
        raise ValueError(f"node config num-partitions={num} but run-config key 'num-clients' "
                         f"is {cfg.num_clients}; they must agree")
    if not 0 <= pid < cfg.num_clients:
        raise ValueError(f"partition-id={pid} is outside 0..{cfg.num_clients - 1} "
                         f"(run-config key 'num-clients' = {cfg.num_clients})")
    return pid


@dataclass
class Call:
    """One train or evaluate call: its run config, context, model and decoded broadcast."""

    cfg: RunConfig
    local: LocalContext
    model: torch.nn.Module
    received: dict[str, np.ndarray]  # the broadcast model, decoded once per call


def _setup(msg: Message, context: Context) -> Call:
    cfg = client_config(context)
    pid = partition_id(context, cfg)
    task = TASKS[cfg.task]
    fed = load_federated(DataSpec.from_config(cfg))
    freeze_once()  # the data and imports stay: full collections skip them (fedpers.heap)
    server_cfg: dict[str, Any] = (dict(msg.content["config"])
                                  if "config" in msg.content.config_records else {})
    rnd = int(server_cfg.get("server-round", 0))
    local = LocalContext.from_config(
        cfg, data=fed.clients[pid], kind=fed.kind, server_round=rnd, partition_id=pid,
        seed=derive_seed(cfg.seed, Stream.CLIENT_TRAIN, rnd, pid),
        device=resolve_device(cfg.device), state=context.state, server_config=server_cfg,
        server_arrays={name: record_to_numpy(rec)
                       for name, rec in msg.content.array_records.items() if name != "arrays"})
    seed_torch(local.seed)
    model = task.build_model(fed.input_shape, fed.num_classes)
    received = decode_broadcast(cfg, msg.content.array_records["arrays"],
                                _shared_arrays(model, set()))
    missing = set(received) - set(model.state_dict())
    if missing:
        raise ValueError(f"server sent parameters this model does not have: {sorted(missing)}")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in received.items()}, strict=False)
    personalizer = PERSONALIZERS[cfg.personalization]
    # Local update rules act on the shared part: private names leave the server's extra
    # records (e.g. SCAFFOLD's control variate) here and get no proximal term.
    local.private_keys = frozenset(personalizer.private_keys(model))
    local.server_arrays = {name: {k: v for k, v in rec.items() if k not in local.private_keys}
                           for name, rec in local.server_arrays.items()}
    personalizer.prepare(model, local)
    return Call(cfg, local, model, received)


def _shared_arrays(model: torch.nn.Module, private: set[str]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
            if k not in private}


def train(msg: Message, context: Context) -> Message:
    call = _setup(msg, context)
    local, model, cfg = call.local, call.model, call.cfg
    personalizer = PERSONALIZERS[cfg.personalization]
    update = LOCAL_UPDATES[STRATEGIES[cfg.strategy].local_update]
    attack = AttackParams.from_config(cfg)
    if local.partition_id in attackers(attack):  # a label-flipping attacker trains on bad labels
        local.data = poison_labels(attack, local.partition_id, local.data,
                                   load_federated(DataSpec.from_config(cfg)).num_classes)
    result = personalizer.train(model, update, local)
    shared = _shared_arrays(model, set(local.private_keys))
    # A strategy's extra reply records (e.g. SCAFFOLD's "control") go with shared names only.
    extra = {name: {k: v for k, v in rec.items() if k in shared}
             for name, rec in local.reply_arrays.items()}
    inputs = RoundInputs(local.server_round, local.partition_id, call.received, context.state)
    upload = run_pipeline(build_client_pipeline(cfg, local.partition_id),
                          Upload(shared, extra), inputs)
    metrics = MetricRecord({"num-examples": result.num_examples, "train-loss": result.loss,
                            "steps": result.steps, "partition-id": local.partition_id,
                            **upload.metrics})
    records = {name: to_array_record(arrays) for name, arrays in upload.extra.items()}
    return Message(RecordDict({"arrays": to_array_record(upload.shared), "metrics": metrics,
                               **records}), reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    call = _setup(msg, context)
    local, cfg = call.local, call.cfg
    model = PERSONALIZERS[cfg.personalization].eval_model(call.model, local)
    data = local.data
    out: dict[str, Any] = {"num-examples": int(len(data.x_test)),
                           "partition-id": local.partition_id}
    threshold = None
    if local.kind == "anomaly":
        if data.x_val is None or len(data.x_val) == 0:
            raise ValueError("anomaly task without normal validation data on this client")
        val_scores = anomaly_scores(model, data.x_val, local.device)
        threshold = task_metrics.calibrate_threshold(val_scores, cfg.threshold_percentile)
        out.update({"threshold": threshold, "num-val": int(len(data.x_val))})
        global_threshold = local.server_config.get(task_metrics.GLOBAL_THRESHOLD)
        if global_threshold is not None and len(data.x_test):
            # the same model's F1 with the server's one threshold, for comparison
            scores = anomaly_scores(model, data.x_test, local.device)
            out[task_metrics.F1_GLOBAL_THRESHOLD] = task_metrics.threshold_metrics(
                data.y_test, scores, float(global_threshold))["f1"]
    out.update(evaluate(model, data.x_test, data.y_test, kind=local.kind, device=local.device,
                        threshold=threshold))
    if threshold is not None:
        keep_detector(context, cfg, local, model, threshold)
    return Message(RecordDict({"metrics": MetricRecord(out)}), reply_to=msg)


def keep_detector(context: Context, cfg: RunConfig, local: LocalContext,
                  model: torch.nn.Module, threshold: float) -> None:
    """With ``client-model-dir`` (run or node config), write the detector this client
    just evaluated with, and its own threshold, to its disk (``fedpers.client_detector``).

    A failed write is logged and the evaluation's metrics still go back: the run's
    results do not depend on it.
    """
    root = client_detector.detector_root(context.node_config, cfg.client_model_dir)
    if root is None:
        return
    fed = load_federated(DataSpec.from_config(cfg))
    meta = {"task": cfg.task, "kind": local.kind, "input_shape": list(fed.input_shape),
            "num_classes": fed.num_classes, "threshold": float(threshold),
            "threshold_percentile": cfg.threshold_percentile,
            "num_val": 0 if local.data.x_val is None else int(len(local.data.x_val)),
            "personalization": cfg.personalization,
            "partition_id": local.partition_id, "server_round": local.server_round,
            "mlflow_run_id": cfg.mlflow_run_id}
    try:
        key = client_detector.run_key(cfg.mlflow_run_id, context.run_id)
        folder = client_detector.client_folder(root, key, local.partition_id)
        client_detector.save_detector(folder, model.state_dict(), {**meta, "run_key": key})
    except (OSError, client_detector.ClientDetectorError) as exc:
        logger.warning("client %d: its detector was not saved under %s (%s: %s)",
                       local.partition_id, root, type(exc).__name__, exc)
        return
    logger.debug("client %d: detector of round %d saved in %s", local.partition_id,
                 local.server_round, folder)


def query(msg: Message, context: Context) -> Message:
    cfg = client_config(context)
    pid = partition_id(context, cfg)
    fed = load_federated(DataSpec.from_config(cfg))
    # A SuperNode may report its device (node config keys compute-sps, up-bps, ...):
    # the server's simulated clock then uses these instead of drawn values.
    info = MetricRecord({"partition-id": pid, "num-examples": fed.clients[pid].num_train,
                         **reported_profile(context.node_config)})
    return Message(RecordDict({"info": info}), reply_to=msg)


def client_components(cfg: RunConfig, pid: int) -> dict[str, object]:
    """This client's components by name: the ones whose state the checkpoint walks
    (``fedpers.client_records``)."""
    steps = build_client_pipeline(cfg, pid)
    return {"personalization": PERSONALIZERS.get(cfg.personalization),
            "local-update": LOCAL_UPDATES[STRATEGIES[cfg.strategy].local_update],
            **{f"upload/{type(step).__name__}": step for step in steps}}


def _state_folder(msg: Message, context: Context) -> tuple[Any, int, Any]:
    """(the server's request, this partition id, its state folder)."""
    cfg = client_config(context)
    pid = partition_id(context, cfg)
    req = msg.content["config"]
    root = client_state.state_root(context.node_config, cfg.client_state_dir)
    return req, pid, client_state.state_folder(root, str(req["state-key"]), pid)


def save_state(msg: Message, context: Context) -> Message:
    """Checkpoint: write this client's Context state to its disk; reply its digest."""
    req, pid, folder = _state_folder(msg, context)
    keep = [int(req["keep-round"])] if int(req.get("keep-round", 0)) > 0 else []
    components = client_components(client_config(context), pid)
    state = client_records.checkpoint_state(components, context.state)
    sha, size = client_state.save(state, folder, int(req["server-round"]), keep)
    info = ConfigRecord({"partition-id": pid, "sha256": sha, "bytes": size})
    return Message(RecordDict({"state": info}), reply_to=msg)


def load_state(msg: Message, context: Context) -> Message:
    """Resume: replace this client's Context state with the checkpointed one."""
    req, pid, folder = _state_folder(msg, context)
    saved = client_state.load(folder, int(req["server-round"]), str(req["sha256"]))
    components = client_components(client_config(context), pid)
    client_records.restore_state(components, context.state, saved)
    return Message(RecordDict({"state": ConfigRecord({"partition-id": pid})}), reply_to=msg)


def drop_state(msg: Message, context: Context) -> Message:
    """The run is over: delete this client's checkpointed state."""
    req, pid, folder = _state_folder(msg, context)
    client_state.drop(folder.parent.parent, str(req["state-key"]), pid)
    return Message(RecordDict({"state": ConfigRecord({"partition-id": pid})}), reply_to=msg)


def build_client_app(mods: list | None = None) -> ClientApp:
    """The ClientApp, optionally with extra Flower mods (e.g. fault injection in tests).

    The outermost mod is ``fedpers.virtual.virtual_client_mod``: with ``virtual-nodes``
    it makes this node the client the message names, with that client's state, before
    any other mod runs (and passes every other message through untouched).
    """
    client_app = ClientApp(mods=[virtual_client_mod, *(mods or [])])
    client_app.train()(train)
    client_app.evaluate()(evaluate_local)
    client_app.query()(query)
    client_app.query(client_state.SAVE)(save_state)
    client_app.query(client_state.LOAD)(load_state)
    client_app.query(client_state.DROP)(drop_state)
    return client_app


app = build_client_app()

__all__ = ["app", "build_client_app", "client_config", "partition_id", "ConfigRecord"]
