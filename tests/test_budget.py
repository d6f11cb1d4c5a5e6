"""Budget projection: always inside [(1 - tol) B, B], proportions kept where widths suffice."""

import random

import numpy as np
import pytest

from nas.budget import band, min_params, param_gradient, project
from nas.counting import count_params
from nas.errors import NasError
from nas.spaces import load_space

BUDGETS = sorted({int(b) for b in np.logspace(3, 7, 25)} | {1_000, 5_000, 10_000, 50_000, 100_000,
                                                             500_000, 1_000_000, 10_000_000})


@pytest.mark.parametrize("space_name", ["conv", "mbconv", "conv-shape", "mbconv-shape"])
def test_projection_lands_in_band_for_every_budget(space_name):
    sp = load_space(space_name)
    rng = random.Random(0)
    for budget in BUDGETS:
        for _ in range(4):
            g = sp.from_vector([rng.choice(sp.genes[n].values()) for n, _ in sp.coords])
            p = project(g, sp, budget)
            lo, hi = band(budget)
            assert lo <= count_params(p) <= hi, (budget, str(g), str(p))
            sp.check(p)


def test_tolerance_narrows_the_band():
    sp = load_space("mbconv")
    p = project(sp.presets["seed-m8"], sp, 200_000, tol=0.01)
    assert 198_000 <= count_params(p) <= 200_000


def test_genome_already_in_band_is_unchanged():
    sp = load_space("mbconv")
    m5 = sp.presets["seed-m5"]
    assert project(m5, sp, 100_000) == m5


def test_widths_rescale_with_proportions_and_depth_is_kept():
    sp = load_space("mbconv")
    m8 = sp.presets["seed-m8"]
    p = project(m8, sp, 300_000)
    assert p.genes["depth"] == m8.genes["depth"] and p.genes["expand"] == m8.genes["expand"]
    ratios = [w / w0 for w, w0 in zip(p.genes["width"], m8.genes["width"])]
    assert max(ratios) / min(ratios) < 1.15  # one common scale, up to rounding
    assert p.options == m8.options  # block options travel with the genome


def test_depth_is_reduced_only_when_widths_cannot_fit():
    sp = load_space("conv")
    deep = sp.genome({"depth": [4, 4, 4, 4], "width": [32, 64, 128, 256]})
    assert project(deep, sp, 100_000).genes["depth"] == [4, 4, 4, 4]
    # at 600 parameters even the narrowest 16-conv network is too big
    narrowest = sp.genome({"depth": [4, 4, 4, 4], "width": [2, 2, 2, 2]})
    assert count_params(narrowest) > 600
    small = project(deep, sp, 600)
    assert sum(small.genes["depth"]) < 16 and count_params(small) <= 600


def test_budget_below_space_minimum_names_smallest_budget():
    sp = load_space("mbconv")
    smallest = min_params(sp)
    with pytest.raises(NasError, match=f"smallest model has {smallest:,} parameters"):
        project(sp.extreme("max"), sp, smallest - 1)
    assert count_params(project(sp.extreme("max"), sp, smallest)) == smallest


@pytest.mark.parametrize("bad", [0, -5, "abc", 1.5, float("nan")])
def test_bad_budget_is_a_one_line_error(bad):
    sp = load_space("conv")
    with pytest.raises(NasError, match="budget must be"):
        project(sp.presets["plain-small"], sp, bad)


def test_param_gradient_is_the_exact_difference():
    sp = load_space("mbconv")
    g = sp.presets["seed-m4"]
    grad = dict(zip([sp.coord_name(c) for c in sp.coords], param_gradient(sp, g)))

    def count_with(name, value):
        v = dict(zip([sp.coord_name(c) for c in sp.coords], sp.vector(g)))
        v[name] = value
        return count_params(sp.from_vector(list(v.values()), g.options))

    assert grad["width4"] == count_with("width4", 101) - count_params(g)
    assert grad["kernel1"] == (count_with("kernel1", 5) - count_params(g)) / 2  # per unit of kernel size
    assert all(x > 0 for x in grad.values())  # every gene adds parameters
