"""Budget projection: always inside [(1 - tol) B, B], proportions kept where widths suffice."""

import random

import numpy as np
import pytest
from conftest import builtin_space_names

from nas.budget import band, check_budget, min_params, param_gradient, parse_budgets, project
from nas.counting import count_params
from nas.errors import NasError
from nas.spaces import load_space

BUDGETS = sorted(
    {int(b) for b in np.logspace(3, 7, 25)} | {1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 10_000_000}
)


@pytest.mark.parametrize("space_name", builtin_space_names())
def test_projection_lands_in_band_for_every_budget(space_name):
    sp = load_space(space_name)
    rng = random.Random(0)
    for budget in [b for b in BUDGETS if b >= min_params(sp)]:
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


@pytest.mark.parametrize(
    "text, value",
    [
        ("50000", 50_000),
        ("50k", 50_000),
        ("50_000", 50_000),
        ("1e5", 100_000),
        ("1M", 1_000_000),
        ("1.5k", 1_500),
        ("2m", 2_000_000),
        ("1E3", 1_000),
        (" 7 ", 7),
        ("1.000e3", 1_000),
        ("1e12", 10**12),
        (50_000, 50_000),
        (1e5, 100_000),
        (np.int64(300), 300),
    ],
)
def test_budget_grammar(text, value):
    assert check_budget(text) == value and type(check_budget(text)) is int


@pytest.mark.parametrize(
    "text, message",
    [
        ("0", "positive number of parameters, got '0'"),
        ("-5", "positive number of parameters, got '-5'"),
        ("1.5", "whole number of parameters, got '1.5'"),
        ("1e-1000000", "whole number of parameters, got '1e-1000000'"),
        ("1e30", "at most 1,000,000,000,000 parameters, got '1e30'"),  # exact, no float leftovers
        ("1e999999999", "at most 1,000,000,000,000 parameters, got '1e999999999'"),
        (1e30, "at most 1,000,000,000,000 parameters, got 1e+30"),
        ("1" + "0" * 5000, "at most 1,000,000,000,000"),
        ("lots", "got 'lots'"),
        ("5kk", "got '5kk'"),
        ("nan", "got 'nan'"),
        ("inf", "got 'inf'"),
        ("", "got ''"),
        ("1__0", "got '1__0'"),
        ("50,000", "no thousands commas"),
        (True, "got True"),
        (None, "got None"),
    ],
)
def test_bad_budget_message_quotes_the_input(text, message):
    with pytest.raises(NasError, match="budget must be") as e:
        check_budget(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parse_budgets_uses_the_same_grammar():
    assert parse_budgets("1000, 5k,1e5,1.5M,5000") == [1000, 5000, 100_000, 1_500_000]
    with pytest.raises(NasError, match="entry 2 of '1000,,5000' is empty"):
        parse_budgets("1000,,5000")
    with pytest.raises(NasError, match="entry 2 of '1k,1e30': budget must be at most"):
        parse_budgets("1k,1e30")


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
