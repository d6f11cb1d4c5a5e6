"""nas.curves: the asymptote fit on synthetic curves with a known alpha, and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from nas.curves import Asymptote, fit_asymptote


def synthetic(alpha: float, beta: float, t0: float, epochs: int, noise: float, seed: int):
    t = np.arange(1, epochs + 1, dtype=float)
    rng = np.random.default_rng(seed)
    return t, alpha - np.exp(-beta * (t - t0)) + rng.normal(0, noise, len(t))


def test_exact_curve_recovers_all_parameters():
    t, acc = synthetic(0.42, 0.35, -1.5, 12, 0.0, 0)
    a = fit_asymptote(t, acc)
    assert a.converged and a.method == "fit"
    assert a.alpha == pytest.approx(0.42, abs=1e-4)
    assert a.beta == pytest.approx(0.35, rel=1e-3) and a.t0 == pytest.approx(-1.5, abs=1e-2)
    assert a.predict(5.0) == pytest.approx(0.42 - np.exp(-0.35 * 6.5), abs=1e-4)


@pytest.mark.parametrize("alpha, beta, t0", [(0.3, 0.25, -3.0), (0.55, 0.5, -1.0), (0.12, 0.15, -8.0), (0.7, 1.0, 0.5)])
def test_noisy_curves_recover_alpha(alpha, beta, t0):
    errors, covered = [], 0
    for seed in range(10):
        t, acc = synthetic(alpha, beta, t0, 20, 0.005, seed)
        a = fit_asymptote(t, acc)
        assert a.converged, a
        errors.append(abs(a.alpha - alpha))
        covered += abs(a.alpha - alpha) <= 3 * a.alpha_std
    assert max(errors) < 0.03 and np.mean(errors) < 0.015
    assert covered >= 8  # the uncertainty is honest, not just small


def test_extrapolates_beyond_the_observed_part():
    """Only the first third of a 30-epoch curve is seen; the asymptote beats the last value."""
    t, acc = synthetic(0.5, 0.15, -2.0, 30, 0.003, 1)
    a = fit_asymptote(t[:10], acc[:10])
    assert a.converged
    assert abs(a.alpha - 0.5) < abs(acc[9] - 0.5)
    assert abs(a.alpha - 0.5) < 0.05


def test_too_few_points_fall_back_to_last_values():
    a = fit_asymptote([1, 2, 3], [0.1, 0.2, 0.25])
    assert not a.converged and a.method == "fallback" and "3 points" in a.reason
    assert a.alpha == 0.25 and a.alpha_std >= 0.1 and a.beta is None
    assert fit_asymptote([], []).alpha == 0.0
    assert a.predict(10.0) == 0.25 and list(a.predict(np.array([1.0, 2.0]))) == [0.25, 0.25]


def test_unsaturated_curve_falls_back_instead_of_predicting_nonsense():
    """A straight line has no asymptote in [0, 1] the data can support."""
    t = np.arange(1, 7, dtype=float)
    a = fit_asymptote(t, 0.05 * t)
    assert not a.converged and a.method == "fallback"
    assert a.alpha == pytest.approx(0.3) and a.alpha_std >= 0.1


def test_non_finite_points_are_ignored():
    t, acc = synthetic(0.4, 0.4, -1.0, 10, 0.0, 0)
    acc[3] = np.nan
    a = fit_asymptote(t, acc)
    assert a.converged and a.alpha == pytest.approx(0.4, abs=1e-3)


def test_flat_noisy_curve_stays_in_bounds():
    rng = np.random.default_rng(0)
    a = fit_asymptote(np.arange(1, 9), 0.01 + rng.normal(0, 0.003, 8))
    assert isinstance(a, Asymptote) and 0.0 <= a.alpha <= 1.0 and np.isfinite(a.alpha_std)
