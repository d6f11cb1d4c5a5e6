"""Learning-curve extrapolation: fit acc(t) = alpha - exp(-beta * (t - t0)) and read off alpha.

The reference study proposed scoring a candidate by this asymptote instead of the raw accuracy
at a fixed epoch. The fit is done as alpha - exp(c - beta * t) with c = beta * t0, which keeps
the amplitude's exponent in a bounded, well-scaled range. When the fit fails, has too few points,
runs into a bound, or is too uncertain, the fallback is the best of the last few accuracies with
a large uncertainty, so callers can always rank by `alpha`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 4  # three parameters, plus one degree of freedom for the uncertainty
MAX_STD = 0.2  # a fitted alpha less certain than this is no better than the fallback
FALLBACK_STD = 0.1  # the uncertainty claimed for the fallback (accuracies are in [0, 1])
_BOUNDS = ([0.0, 1e-3, -50.0], [1.0, 20.0, 50.0])  # alpha, beta, c


@dataclass(frozen=True)
class Asymptote:
    """Predicted final accuracy `alpha` +- `alpha_std`. `method` is "fit" or "fallback";
    `reason` says why the fallback was used. `beta`, `t0` are the fitted curve's (None for the fallback)."""

    alpha: float
    alpha_std: float
    converged: bool
    method: str
    reason: str = ""
    beta: float | None = None
    t0: float | None = None

    def predict(self, t: float | np.ndarray) -> float | np.ndarray:
        """The fitted curve at epoch(s) `t`; the constant `alpha` for the fallback."""
        if self.beta is None or self.t0 is None:
            return np.full_like(np.asarray(t, dtype=float), self.alpha) if np.ndim(t) else self.alpha
        return self.alpha - np.exp(-self.beta * (np.asarray(t, dtype=float) - self.t0))


def _curve(t: np.ndarray, alpha: float, beta: float, c: float) -> np.ndarray:
    return alpha - np.exp(np.clip(c - beta * t, -700, 700))


def _fallback(acc: np.ndarray, reason: str) -> Asymptote:
    last = acc[-3:]
    alpha = float(last.max()) if len(last) else 0.0
    spread = float(last.max() - last.min()) if len(last) else 0.0
    return Asymptote(alpha, max(FALLBACK_STD, spread), False, "fallback", reason)


def fit_asymptote(epochs: Sequence[float], accs: Sequence[float]) -> Asymptote:
    """Fit acc(t) = alpha - exp(-beta (t - t0)) (alpha in [0, 1], beta > 0) to a learning curve
    by least squares; the uncertainty of alpha comes from the fit's covariance."""
    t = np.asarray(epochs, dtype=float)
    acc = np.asarray(accs, dtype=float)
    keep = np.isfinite(t) & np.isfinite(acc)
    t, acc = t[keep], acc[keep]
    if len(t) < MIN_POINTS:
        return _fallback(acc, f"{len(t)} points, need {MIN_POINTS}")
    best = None
    # Several starting rates: the least-squares surface has flat valleys for nearly linear curves.
    for beta0 in (0.05, 0.3, 1.5):
        alpha0 = min(0.99, float(acc.max()) + 0.05)
        c0 = float(np.log(max(alpha0 - acc[0], 1e-3)) + beta0 * t[0])
        p0 = [alpha0, beta0, float(np.clip(c0, -49, 49))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                p, cov = curve_fit(_curve, t, acc, p0=p0, bounds=_BOUNDS, maxfev=5000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((_curve(t, *p) - acc) ** 2))
        if best is None or sse < best[0]:
            best = (sse, p, cov)
    if best is None:
        return _fallback(acc, "least squares did not converge")
    _, (alpha, beta, c), cov = best
    std = float(np.sqrt(cov[0, 0])) if np.isfinite(cov[0, 0]) and cov[0, 0] >= 0 else float("inf")
    if alpha >= _BOUNDS[1][0] - 1e-6 or alpha <= _BOUNDS[0][0] + 1e-6:
        return _fallback(acc, f"alpha ran into its bound ({alpha:.3g})")
    if not std <= MAX_STD:
        return _fallback(acc, f"alpha too uncertain (std {std:.3g})")
    return Asymptote(float(alpha), std, True, "fit", beta=float(beta), t0=float(c / beta))
