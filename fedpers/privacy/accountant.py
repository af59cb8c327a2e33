"""Rényi-DP accountant of the sampled Gaussian mechanism.

Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled Gaussian
Mechanism", arXiv:1908.10530 (2019); the RDP-to-(epsilon, delta) conversion of
Mironov, "Rényi Differential Privacy", arXiv:1702.07476, Prop. 3.

The sampled Gaussian mechanism (SGM) with sampling rate ``q`` and noise multiplier
``sigma`` (noise std / L2 sensitivity) satisfies (alpha, RDP(alpha))-RDP with

``RDP(alpha) = log A_alpha / (alpha - 1)``,
``A_alpha = E_{z ~ N(0, sigma^2)} [((1 - q) + q exp((2z - 1) / (2 sigma^2)))^alpha]``.

For integer ``alpha`` the binomial expansion gives (Sec. 3.3 of the paper)
``A_alpha = sum_k C(alpha, k) (1 - q)^(alpha - k) q^k exp((k^2 - k) / (2 sigma^2))``;
for fractional ``alpha`` the two-sided series of Sec. 3.3 is summed until its terms
are negligible. ``q = 1`` is the plain Gaussian mechanism, ``RDP = alpha / (2 sigma^2)``.
RDP composes additively over releases; the budget after ``T`` releases is
``epsilon = min_alpha T RDP(alpha) + log(1 / delta) / (alpha - 1)``.

Pure numpy/scipy (the ``dp-accounting`` package that Flower's own ``RdpAccountant``
wraps is not a dependency of fedpers).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

# fractional orders near 1 matter for large noise, large ones for small noise
ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 8 for x in range(1, 8)] + [2.0 + x / 4 for x in range(0, 36)]
    + [float(a) for a in range(11, 64)] + [64.0, 80.0, 96.0, 128.0, 192.0, 256.0])


def _log_add(a: float, b: float) -> float:
    lo, hi = min(a, b), max(a, b)
    if lo == -math.inf:
        return hi
    return math.log1p(math.exp(lo - hi)) + hi


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) - exp(b)) for a >= b."""
    if b == -math.inf:
        return a
    if a <= b:
        return -math.inf  # equal up to rounding: the difference is negligible
    return math.log(math.expm1(a - b)) + b


def _log_erfc(x: float) -> float:
    return math.log(2.0) + float(special.log_ndtr(-x * math.sqrt(2.0)))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -math.inf
    for k in range(alpha + 1):
        term = (math.log(special.binom(alpha, k)) + k * math.log(q)
                + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma ** 2))
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma ** 2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coef = special.binom(alpha, i)
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma ** 2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma ** 2) + log_e1
        if coef > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            return _log_add(log_a0, log_a1)


def sgm_rdp(q: float, sigma: float, alpha: float) -> float:
    """RDP of one release of the sampled Gaussian mechanism at order ``alpha > 1``.

    Parameters
    ----------
    q : float
        Sampling rate in [0, 1] (each user is in a release's sample with chance q).
    sigma : float
        Noise multiplier: Gaussian noise std divided by the L2 sensitivity.
    alpha : float
        Rényi order, > 1.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"sampling rate q must be in [0, 1], got {q}")
    if alpha <= 1:
        raise ValueError(f"Rényi order alpha must be > 1, got {alpha}")
    if q == 0:
        return 0.0
    if sigma <= 0:
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma ** 2)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, int(alpha))
    else:
        log_a = _log_a_frac(q, sigma, alpha)
    return log_a / (alpha - 1)


def epsilon(q: float, sigma: float, releases: int, delta: float,
            orders: tuple[float, ...] = ORDERS) -> tuple[float, float]:
    """``(epsilon, best order)`` after ``releases`` compositions of the SGM at ``delta``.

    ``epsilon = min_alpha releases * RDP(alpha) + log(1 / delta) / (alpha - 1)``
    (Mironov 2017, Prop. 3); 0 before any release.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if releases <= 0:
        return 0.0, math.nan
    eps = np.array([releases * sgm_rdp(q, sigma, a) + math.log(1 / delta) / (a - 1)
                    for a in orders])
    best = int(np.argmin(eps))
    return float(eps[best]), float(orders[best])


class RdpAccountant:
    """The budget of ``T`` identical SGM releases (one per aggregated round).

    The RDP curve of one release is computed once; ``epsilon(T)`` is then a minimum
    over orders, so logging it every round costs nothing. The state is the number of
    releases, which the server's checkpoint already holds (rounds aggregated).
    """

    stateless = True  # fedpers.state

    def __init__(self, q: float, sigma: float, delta: float,
                 orders: tuple[float, ...] = ORDERS) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.q, self.sigma, self.delta = float(q), float(sigma), float(delta)
        self.orders = np.asarray(orders, dtype=np.float64)
        self.rdp = np.array([sgm_rdp(self.q, self.sigma, a) for a in orders])

    def epsilon(self, releases: int) -> float:
        """Epsilon at ``delta`` after ``releases`` releases (0 before the first)."""
        if releases <= 0:
            return 0.0
        return float(np.min(releases * self.rdp
                            + math.log(1 / self.delta) / (self.orders - 1)))
