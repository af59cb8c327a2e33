"""Differential privacy: ``dp=`` modes, their config checks and accounting.

``dp = "client-clipping"`` is DP-FedAvg with client-side fixed clipping and central
Gaussian noise (``fedpers.privacy.dpfedavg``, arXiv:1710.06963); the budget spent
is tracked with the RDP accountant of the sampled Gaussian mechanism
(``fedpers.privacy.accountant``, arXiv:1908.10530) and logged every round as
``privacy/epsilon`` at ``dp-delta``.

Why not Flower's ``DifferentialPrivacyClientSideFixedClipping`` + ``fixedclipping_mod``
(flwr 1.42): the mod wraps the whole ClientApp, so it would clip the *encoded* codec
payload and refuses replies with more than one ArrayRecord; the wrapper draws its
noise from numpy's global, unseeded generator, adds it *after* the wrapped strategy's
step (for FedAvgM/FedAdam/FedYogi the noise must enter before the server optimiser),
and its accountant needs the ``dp-accounting`` package and gives no amplification by
sampling. The same clip-then-noise construction is done here, in the round loop,
seeded from the run seed.

Combinations refused (``check_dp_config``), each with a ConfigError naming both keys:
SCAFFOLD (its control update is a second, unclipped vector each client sends),
FedNova (it rescales by client-reported step counts, which the sensitivity bound does
not cover), robust aggregation other than ``mean`` and ``clip-update-norm`` (a median
or Krum selection is not the Gaussian mechanism on a sum; ``dp-clip-norm`` is the
clipping), and selection rules other than ``uniform`` (they choose clients from their
losses or speeds, which is itself a release of private information).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpers.config_checks import clients_per_round
from fedpers.errors import ConfigError
from fedpers.privacy.accountant import RdpAccountant
from fedpers.privacy.dpfedavg import DpFedAvg, DpParams, clip_update
from fedpers.registry import Registry
from strategies import STRATEGIES

if TYPE_CHECKING:
    from fedpers.config import RunConfig



class NoPrivacy:
    """``dp = "none"``: no server half."""

    @classmethod
    def build(cls, params: DpParams) -> None:
        return None


# dp= name -> the server half's factory (``build(DpParams)``; None: no privacy)
DP_MODES: Registry[type] = Registry("dp", {
    "none": NoPrivacy,
    "client-clipping": DpFedAvg,
})

__all__ = ["DP_MODES", "DpFedAvg", "DpParams", "NoPrivacy", "PrivacyLayer", "RdpAccountant",
           "build_privacy", "check_dp_config", "clip_update", "sampling_rate"]


def sampling_rate(cfg: RunConfig) -> float:
    """``q`` of the accountant: ``m / num-clients`` under uniform selection.

    With a simulated clock (``device-profile``) the round's sample is drawn from the
    clients online in it, not from everyone uniformly; no amplification by sampling
    is claimed then (``q = 1``).
    """
    if cfg.device_profile != "none":
        return 1.0
    return min(1.0, clients_per_round(cfg)[0] / cfg.num_clients)


def check_dp_config(cfg: RunConfig) -> None:
    """Refuse ``dp`` combinations that break the DP-FedAvg analysis (module docstring)."""
    DP_MODES.get(cfg.dp)
    if cfg.dp == "none":
        return  # the dp-* keys at their defaults: checked by fedpers.config
    spec = STRATEGIES[cfg.strategy]
    if spec.extra_records:
        raise ConfigError(
            f"run-config key 'dp' = {cfg.dp!r} cannot be used with 'strategy' = "
            f"{cfg.strategy!r}: each client also sends its "
            f"{', '.join(spec.extra_records)} record (SCAFFOLD's control update), which "
            f"DP-FedAvg neither clips nor noises, so the round's release is not private")
    if spec.normalises_steps:
        raise ConfigError(
            f"run-config key 'dp' = {cfg.dp!r} cannot be used with 'strategy' = "
            f"{cfg.strategy!r}: it divides each update by the client's reported local "
            f"steps and rescales by their weighted sum, so a client's influence is not "
            f"bounded by dp-clip-norm")
    if cfg.aggregation != "mean":
        raise ConfigError(
            f"run-config key 'dp' = {cfg.dp!r} needs 'aggregation' = 'mean': the "
            f"Gaussian noise is calibrated to a clipped sum, and {cfg.aggregation!r} is "
            f"not one (its sensitivity and selection are not accounted)")
    if cfg.clip_update_norm > 0:
        raise ConfigError(
            f"run-config key 'clip-update-norm' = {cfg.clip_update_norm} cannot be used "
            f"with 'dp' = {cfg.dp!r}: 'dp-clip-norm' is the clipping bound of DP-FedAvg; "
            f"set clip-update-norm = 0")
    if cfg.selection != "uniform":
        raise ConfigError(
            f"run-config key 'dp' = {cfg.dp!r} needs 'selection' = 'uniform': "
            f"{cfg.selection!r} picks clients from what they reported (loss, speed), "
            f"which leaks information the accountant does not cover")


class PrivacyLayer:
    """What the round loop uses: the server half of the ``dp`` mode and its accountant.

    Stateless: the accountant's epsilon is a function of the releases so far, which
    the round loop counts (its aggregated rounds, checkpointed with the loop)."""

    stateless = True

    def __init__(self, params: DpParams, rate: float) -> None:
        """``params``: the dp keys; ``rate``: the accountant's sampling rate q
        (:func:`sampling_rate`)."""
        server = DP_MODES.build(params.dp, params)
        if server is None:
            raise ValueError("PrivacyLayer needs dp != 'none'")
        self.server = server
        self.accountant = RdpAccountant(rate, params.dp_noise_multiplier, params.dp_delta)

    def metrics(self, releases: int) -> dict[str, float]:
        """``privacy/epsilon`` after ``releases`` aggregated rounds (and the count)."""
        return {"privacy/epsilon": self.accountant.epsilon(releases),
                "privacy/releases": float(releases)}


def build_privacy(cfg: RunConfig) -> PrivacyLayer | None:
    """The round loop's privacy layer, or None for ``dp = 'none'``."""
    if cfg.dp == "none":
        return None
    return PrivacyLayer(DpParams.from_config(cfg), sampling_rate(cfg))
