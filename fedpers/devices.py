"""Device heterogeneity on a simulated clock. No Flower import.

Each client has a :class:`DeviceProfile`: how fast it trains (samples per second),
its uplink and downlink bandwidth (bytes per second), its chance of being online in
a round (``availability``) and its chance of dropping out mid-round (``dropout``).
Profiles come from ``device-profile``:

- ``none``: no clock (the default; nothing below runs and no metric changes).
- ``lognormal``: drawn per client from seeded log-normal distributions, each
  spanning 10x between its 5th and 95th percentile (``sigma = ln 10 / (2 * 1.645)
  = 0.70``). Medians:

  * compute: 73.6 samples/s, i.e. 13.6 ms per training sample: FedScale's
    log-normal client model (``get_completion_time_lognormal`` in
    fedscale/cloud/internal/client_metadata.py: a default of 5 ms per sample, "to
    be adjusted to on-device benchmarks", times a ``lognormal(1, 0.6)`` factor,
    median ``5 ms * e``; FedScale cites the PAPAYA and GFL papers for the
    log-normal shape). FedScale's spread (sigma 0.6, 7.2x) is widened to sigma 0.70
    (10x) as the issue asks.
  * downlink 5.0e6 B/s (40 Mbit/s) and uplink 1.5e6 B/s (12 Mbit/s): the global
    mobile averages of Ookla's Speedtest Global Index for October 2020 (39.18 and
    11.63 Mbit/s, as reported by telecomtalk.info, 2020-11-17), rounded and used as
    medians. Downlink and uplink are drawn independently.

  Speeds are for a generic small model: rescale them (or give a trace) for yours.
  Availability: each client's chance of being online is drawn from a Beta
  distribution with mean ``device-availability`` and concentration 4 (a modelling
  choice, not a measurement: at mean 0.8, Beta(3.2, 0.8), the median client is online
  in 85% of the rounds and 8% of the clients in fewer than half); every client
  drops out mid-round with chance ``device-dropout``.
- ``trace``: a CSV file (``device-trace``) with columns ``partition-id``,
  ``compute-sps``, ``up-bps``, ``down-bps``, ``availability`` (and optionally
  ``dropout``; else ``device-dropout``), one row per client.

In deployment a SuperNode reports its own profile in its node config
(``--node-config "partition-id=0 num-partitions=9 compute-sps=120 up-bps=2e6"``): the
client sends those keys in its handshake reply and the server uses them instead of
the drawn (or trace) values, key by key.

The clock (server side): a client's time in a round is

    samples / compute-sps + bytes down / down-bps + bytes up / up-bps

with the exact bytes of its train message and reply (``fedpers.byte_count``), and the
samples it processed (from the ``steps`` it reports; see :func:`samples_processed`).
A round lasts as long as its slowest client that finishes; with a deadline
(``round-deadline`` > 0), clients slower than the deadline are dropped and the
round lasts the deadline. Clients that drop out mid-round lose their connection:
they are dropped and do not hold the round up. Offline clients are not selectable.
Every random draw is seeded by (run seed, round, client).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedpers.registry import Params
from fedpers.seeds import Stream, derive_seed

# Keys a SuperNode may set in its node config (and sends in its handshake reply).
PROFILE_KEYS = ("compute-sps", "up-bps", "down-bps", "availability", "dropout")
TRACE_COLUMNS = ("partition-id", "compute-sps", "up-bps", "down-bps", "availability")
# The train ConfigRecord key with a client's local step budget (partial work).
MAX_STEPS = "max-steps"

SIGMA_10X = math.log(10.0) / (2 * 1.6448536269514722)  # p95 / p5 = 10
AVAILABILITY_CONCENTRATION = 4.0


class DeviceError(ValueError):
    """A device profile, trace or reported value is invalid."""


@dataclass(frozen=True)
class DeviceProfile:
    """One client's device: speeds and availability."""

    compute_sps: float  # training samples per second
    up_bps: float  # uplink, bytes per second
    down_bps: float  # downlink, bytes per second
    availability: float = 1.0  # chance of being online in a round
    dropout: float = 0.0  # chance of dropping out mid-round

    def __post_init__(self) -> None:
        for name in ("compute_sps", "up_bps", "down_bps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise DeviceError(f"{name.replace('_', '-')} must be a number > 0, got {v!r}")
        if not 0.0 < self.availability <= 1.0:
            raise DeviceError(f"availability must be in (0, 1], got {self.availability!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise DeviceError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def seconds(self, samples: float, bytes_down: float, bytes_up: float) -> ClientTime:
        """Simulated time of one round of work on this device."""
        return ClientTime(samples / self.compute_sps, bytes_down / self.down_bps,
                          bytes_up / self.up_bps)

    def with_values(self, values: Mapping[str, float]) -> DeviceProfile:
        """A copy with kebab-case fields (``PROFILE_KEYS``) replaced."""
        return replace(self, **{k.replace("-", "_"): float(v) for k, v in values.items()
                                if k in PROFILE_KEYS})


@dataclass(frozen=True)
class ClientTime:
    compute_s: float
    down_s: float
    up_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.down_s + self.up_s


@dataclass(frozen=True)
class LogNormal:
    """``median * exp(sigma * z)``, z standard normal."""

    median: float
    sigma: float = SIGMA_10X

    def draw(self, rng: np.random.Generator) -> float:
        return float(self.median * math.exp(self.sigma * rng.standard_normal()))


COMPUTE_SPS = LogNormal(1.0 / (0.005 * math.e))  # 73.6 samples/s (13.6 ms per sample)
DOWN_BPS = LogNormal(5.0e6)  # 40 Mbit/s
UP_BPS = LogNormal(1.5e6)  # 12 Mbit/s


def draw_profile(seed: int, partition_id: int, availability: float = 1.0,
                 dropout: float = 0.0) -> DeviceProfile:
    """The ``lognormal`` profile of one client: depends only on the seed and its id."""
    rng = np.random.default_rng(derive_seed(seed, Stream.DEVICE_PROFILES, partition_id))
    compute, down, up = COMPUTE_SPS.draw(rng), DOWN_BPS.draw(rng), UP_BPS.draw(rng)
    avail = 1.0
    if availability < 1.0:
        k = AVAILABILITY_CONCENTRATION
        avail = float(np.clip(rng.beta(k * availability, k * (1.0 - availability)),
                              1e-3, 1.0))
    return DeviceProfile(compute, up, down, avail, dropout)


def lognormal_profiles(num_clients: int, seed: int, availability: float = 1.0,
                       dropout: float = 0.0) -> dict[int, DeviceProfile]:
    return {p: draw_profile(seed, p, availability, dropout) for p in range(num_clients)}


def load_trace(path: str | Path, num_clients: int,
               dropout: float = 0.0) -> dict[int, DeviceProfile]:
    """Profiles from a CSV trace: one row per partition id ``0 .. num_clients - 1``.

    Columns ``TRACE_COLUMNS`` are required, ``dropout`` is optional (default
    ``dropout``); other columns are ignored. Raises :class:`DeviceError` naming the
    file, and the row or column, on anything missing or invalid.
    """
    p = Path(path)
    if not p.is_file():
        raise DeviceError(f"device trace {str(p)!r} does not exist")
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in TRACE_COLUMNS if c not in header]
        if missing:
            raise DeviceError(f"device trace {str(p)!r} lacks column(s) {', '.join(missing)} "
                              f"(needs {', '.join(TRACE_COLUMNS)}; has {', '.join(header)})")
        profiles: dict[int, DeviceProfile] = {}
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            try:
                pid = int(row["partition-id"])
                values = {c: float(row[c]) for c in TRACE_COLUMNS[1:]}
                drop = float(row["dropout"]) if row.get("dropout") else dropout
                profile = DeviceProfile(values["compute-sps"], values["up-bps"],
                                        values["down-bps"], values["availability"], drop)
            except (ValueError, DeviceError) as exc:
                raise DeviceError(f"device trace {str(p)!r}, line {line}: {exc}") from exc
            if pid in profiles:
                raise DeviceError(f"device trace {str(p)!r}, line {line}: partition-id {pid} "
                                  f"appears twice")
            profiles[pid] = profile
    absent = [i for i in range(num_clients) if i not in profiles]
    if absent:
        shown = ", ".join(map(str, absent[:10])) + (" ..." if len(absent) > 10 else "")
        raise DeviceError(f"device trace {str(p)!r} has no row for partition-id(s) {shown} "
                          f"(num-clients = {num_clients})")
    return {i: profiles[i] for i in range(num_clients)}


def reported_profile(node_config: Mapping[str, object]) -> dict[str, float]:
    """The profile keys a SuperNode set in its node config, checked (client side)."""
    out: dict[str, float] = {}
    for key in PROFILE_KEYS:
        if key in node_config:
            try:
                out[key] = float(node_config[key])  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                raise DeviceError(f"node config {key}={node_config[key]!r} is not a "
                                  f"number") from exc
    if out:  # validates ranges
        DeviceProfile(1.0, 1.0, 1.0).with_values(out)
    return out


def samples_processed(steps: int, num_train: int, batch_size: int) -> int:
    """Training samples seen in ``steps`` shuffled mini-batch steps over ``num_train``.

    Every batch is full except the last of each epoch, so this is exact for the
    local SGD of ``fedpers.training.train_local``. Without ``num_train`` (0), an
    upper bound: ``steps * batch_size``.
    """
    if num_train <= 0:
        return steps * batch_size
    per_epoch = math.ceil(num_train / batch_size)
    epochs, rest = divmod(steps, per_epoch)
    return epochs * num_train + rest * batch_size


@dataclass(frozen=True)
class RoundTiming:
    """How one round went on the clock."""

    duration_s: float
    finished: tuple[int, ...]  # partition ids whose updates arrived in time
    late: tuple[int, ...]  # past the deadline: dropped


def time_round(seconds: Mapping[int, float], deadline: float = 0.0) -> RoundTiming:
    """A round lasts as long as its slowest client that finishes; with a deadline,
    clients slower than it are late (dropped) and the round lasts the deadline."""
    finished = tuple(sorted(p for p, t in seconds.items() if deadline <= 0 or t <= deadline))
    late = tuple(sorted(p for p in seconds if p not in finished))
    duration = max((seconds[p] for p in finished), default=0.0)
    if late:
        duration = deadline
    return RoundTiming(float(duration), finished, late)


def steps_within_deadline(profile: DeviceProfile, deadline: float, batch_size: int,
                          bytes_down: float, bytes_up: float) -> int:
    """Local steps a device with ``profile`` fits into ``deadline`` after the transfers
    (at least 1), all quantities known. :meth:`Clock.step_budget` estimates the upload
    and gives the budget the server sends."""
    left = deadline - bytes_down / profile.down_bps - bytes_up / profile.up_bps
    return max(1, int(math.floor(left * profile.compute_sps / batch_size)))


@dataclass
class Clock:
    """The simulated clock of one run: profiles, the deadline and the time so far."""

    profiles: dict[int, DeviceProfile]
    seed: int
    deadline: float = 0.0
    total_s: float = 0.0
    # measured bytes of each client's last train message and reply (estimates)
    last_bytes: dict[int, tuple[int, int]] = field(default_factory=dict)

    def report(self, partition_id: int, values: Mapping[str, float]) -> None:
        """Use what the client reported about its device instead of the drawn values."""
        own = {k: v for k, v in values.items() if k in PROFILE_KEYS}
        if own:
            self.profiles[partition_id] = self.profiles[partition_id].with_values(own)

    def online(self, server_round: int, partition_ids: Iterable[int]) -> list[int]:
        """The clients online in this round (each an independent seeded draw)."""
        return [p for p in partition_ids
                if _draw(self.seed, Stream.DEVICE_ONLINE, server_round, p)
                < self.profiles[p].availability]

    def drops_out(self, server_round: int, partition_id: int) -> bool:
        return bool(_draw(self.seed, Stream.DEVICE_DROPOUT, server_round, partition_id)
                    < self.profiles[partition_id].dropout)

    def seconds(self, partition_id: int, samples: float, bytes_down: float,
                bytes_up: float) -> float:
        self.last_bytes[partition_id] = (int(bytes_down), int(bytes_up))
        return self.profiles[partition_id].seconds(samples, bytes_down, bytes_up).total_s

    def expected_seconds(self, partition_id: int, samples: float,
                         fallback_bytes: float) -> float:
        """A client's predicted time for ``samples``: its last measured bytes, or
        ``fallback_bytes`` each way before it has been measured."""
        down, up = self.last_bytes.get(partition_id, (fallback_bytes, fallback_bytes))
        return self.profiles[partition_id].seconds(samples, down, up).total_s

    def step_budget(self, partition_id: int, batch_size: int, bytes_down: float,
                    fallback_bytes: float) -> int:
        """The step budget the server sends (``max-steps``): the steps that fit the
        deadline (:func:`steps_within_deadline`), the upload estimated from the client's
        last one (or ``fallback_bytes``), with a 10% margin."""
        up = self.last_bytes.get(partition_id, (0, fallback_bytes))[1]
        return steps_within_deadline(self.profiles[partition_id], self.deadline, batch_size,
                                     bytes_down, 1.1 * up)

    def end_round(self, seconds: Mapping[int, float]) -> RoundTiming:
        timing = time_round(seconds, self.deadline)
        self.total_s += timing.duration_s
        return timing

    def state_dict(self) -> dict[str, Any]:
        """The simulated time so far and each client's last measured bytes (the
        profiles are drawn again from the seed, or reported again at the handshake)."""
        return {"total_s": self.total_s,
                "last_bytes": {str(p): list(b) for p, b in self.last_bytes.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total_s = float(state["total_s"])
        self.last_bytes = {int(p): (int(b[0]), int(b[1]))
                           for p, b in state["last_bytes"].items()}


def _draw(seed: int, tag: Stream, server_round: int, partition_id: int) -> float:
    return float(np.random.default_rng(derive_seed(seed, tag, server_round,
                                                   partition_id)).random())


@dataclass(frozen=True)
class DeviceParams(Params):
    """The run-config keys of the simulated clock (``fedpers keys``, group Selection and
    devices).

    Attributes
    ----------
    device_profile : str
        ``device-profile``: none, lognormal or trace.
    device_trace : str
        ``device-trace``: the CSV of per-client profiles (trace).
    device_availability : float
        ``device-availability``: mean chance a client is online (lognormal).
    device_dropout : float
        ``device-dropout``: chance a client drops out mid-round.
    round_deadline : float
        ``round-deadline``: simulated seconds per round (0 = none).
    num_clients : int
        ``num-clients``: clients to draw or read a profile for.
    seed : int
        ``seed``: of the profiles, availability and dropouts.
    """

    device_profile: str
    device_trace: str
    device_availability: float
    device_dropout: float
    round_deadline: float
    num_clients: int
    seed: int


def build_clock(params: DeviceParams) -> Clock | None:
    """The run's clock, or ``None`` for ``device-profile = "none"``."""
    if params.device_profile == "none":
        return None
    if params.device_profile == "trace":
        profiles = load_trace(params.device_trace, params.num_clients, params.device_dropout)
    else:
        profiles = lognormal_profiles(params.num_clients, params.seed,
                                      params.device_availability, params.device_dropout)
    return Clock(profiles, params.seed, params.round_deadline)


__all__ = [
    "Clock",
    "ClientTime",
    "DeviceError",
    "DeviceParams",
    "DeviceProfile",
    "MAX_STEPS",
    "PROFILE_KEYS",
    "RoundTiming",
    "build_clock",
    "draw_profile",
    "load_trace",
    "lognormal_profiles",
    "reported_profile",
    "samples_processed",
    "steps_within_deadline",
    "time_round",
]
