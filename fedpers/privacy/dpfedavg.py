"""DP-FedAvg with client-side fixed clipping: McMahan, Ramage, Talwar and Zhang,
"Learning Differentially Private Recurrent Language Models", arXiv:1710.06963.

Each client clips its update ``u_i = y_i - x`` (shared floating-point parameters) to
L2 norm ``C`` before its codec encodes it (``clip_update``). The server clips every
decoded update to ``C`` again (a lossy codec, or a compressed broadcast, moves the
update by up to the codec's error; clipping after decoding makes the bound exact for
every codec) and releases the fixed-denominator estimate (the paper's ``f~_f``)

``v = (sum_i clip(u_i, C) + N(0, (z C)^2 I)) / m``,

``m`` the clients selected for the round, i.e. noise std ``z C / m`` per coordinate on
the average (``DpFedAvg.apply``). A user changes the sum by at most ``C``, so one
release is the Gaussian mechanism with noise multiplier ``z`` on a uniformly sampled
set of users; ``fedpers.privacy.accountant`` composes its RDP over rounds. Every
passed reply's update is replaced by ``v`` (``y_i <- x + v``), so the strategy's own
step acts on the private average (post-processing): FedAvg/FedProx set ``x + v``,
FedAvgM/FedAdam/FedYogi feed ``-v`` to their server optimiser, and the
``num-examples`` weights no longer matter (the analysis needs fixed weights).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from fedpers.registry import Params
from fedpers.screening import update_norm
from fedpers.seeds import Stream, derive_seed

if TYPE_CHECKING:
    from fedpers.screening import CheckedReply

CLIP_RTOL = 1e-5  # privacy/clipped_server counts updates beyond C (1 + this)


def _float_keys(arrays: dict[str, np.ndarray]) -> list[str]:
    return [k for k in sorted(arrays) if np.asarray(arrays[k]).dtype.kind == "f"]


def clip_update(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """``reference + (arrays - reference) min(1, C / ||arrays - reference||)``.

    Only floating-point entries are clipped (integer buffers, e.g. BatchNorm's step
    counter, carry no gradient information and are passed through). Returns the
    clipped arrays (dtypes kept) and the update norm before clipping.
    """
    norm = update_norm(arrays, reference)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = dict(arrays)
    if scale < 1.0:
        for k in _float_keys(arrays):
            ref = reference[k].astype(np.float64)
            out[k] = (ref + scale * (arrays[k].astype(np.float64) - ref)).astype(
                arrays[k].dtype)
    return out, norm


@dataclass(frozen=True)
class DpOutcome:
    """The replies the strategy aggregates (as ``RobustOutcome.passed``) and metrics."""

    passed: list[tuple[int, CheckedReply]]
    metrics: dict[str, float]


@dataclass(frozen=True)
class DpParams(Params):
    """The run-config keys differential privacy reads.

    Attributes
    ----------
    dp : str
        ``dp``: the mode's name.
    dp_clip_norm : float
        ``dp-clip-norm``: the L2 bound C of each client's update.
    dp_noise_multiplier : float
        ``dp-noise-multiplier``: z, the noise std on the sum is z C.
    dp_delta : float
        ``dp-delta``: the delta at which epsilon is logged.
    seed : int
        ``seed``: the run seed the noise is drawn from.
    """

    dp: str
    dp_clip_norm: float
    dp_noise_multiplier: float
    dp_delta: float
    seed: int


class DpFedAvg:
    """The server half: re-clip, sum, add seeded Gaussian noise, divide by ``m``.

    Parameters
    ----------
    clip_norm : float
        ``C``, the L2 bound of each client's update.
    noise_multiplier : float
        ``z``: the noise std on the sum is ``z C``.
    seed : int
        The run seed; round ``t``'s noise comes from ``derive_seed(seed, Stream.DP_NOISE, t)``.
    """

    stateless = True  # each round's noise comes from its own seeded stream

    def __init__(self, clip_norm: float, noise_multiplier: float, seed: int) -> None:
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.seed = int(seed)

    @classmethod
    def build(cls, params: DpParams) -> DpFedAvg:
        """The server half with ``dp-clip-norm``, ``dp-noise-multiplier`` and the seed."""
        return cls(params.dp_clip_norm, params.dp_noise_multiplier, params.seed)

    def noise_std(self, selected: int) -> float:
        """Per-coordinate noise std on the average: ``z C / m``."""
        return self.noise_multiplier * self.clip_norm / max(1, selected)

    def apply(self, rnd: int, passed: list[tuple[int, CheckedReply]],
              reference: dict[str, np.ndarray], selected: int) -> DpOutcome:
        """Replace each passed reply's update by the noised average ``v``.

        ``selected`` is ``m``, the number of clients selected for the round (the fixed
        denominator); failed, dropped or rejected clients contribute 0 to the sum.
        """
        if not passed:
            return DpOutcome(passed, {})
        keys = _float_keys(passed[0][1].arrays)
        total = {k: np.zeros(reference[k].shape, np.float64) for k in keys}
        clipped = 0
        for _, c in passed:
            arrays, norm = clip_update({k: c.arrays[k] for k in keys}, reference,
                                       self.clip_norm)
            # float32 rounding of a client-clipped update is not counted
            clipped += int(norm > self.clip_norm * (1 + CLIP_RTOL))
            for k in keys:
                total[k] += arrays[k].astype(np.float64) - reference[k].astype(np.float64)
        m = max(selected, len(passed))
        rng = np.random.default_rng(derive_seed(self.seed, Stream.DP_NOISE, rnd))
        sigma_sum = self.noise_multiplier * self.clip_norm
        noised = {}
        for k in keys:
            v = (total[k] + rng.normal(0.0, sigma_sum, size=total[k].shape)) / m
            noised[k] = (reference[k].astype(np.float64) + v).astype(reference[k].dtype)
        out = [(i, replace(c, arrays={**c.arrays, **noised})) for i, c in passed]
        return DpOutcome(out, {"privacy/noise_std": self.noise_std(m),
                               "privacy/clipped_server": float(clipped)})
