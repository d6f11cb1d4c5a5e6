"""Spaces searched by shape (`widths = "growth"`): the searcher picks proportions, projection the size."""

import random

import optuna
import pytest

from nas.budget import band, project
from nas.counting import count_params
from nas.families import build_model
from nas.search import default_start
from nas.spaces import load_space
from nas.trials import suggest_genome

SHAPE_SPACES = ["conv-shape", "mbconv-shape"]


def _random(sp, rng):
    return sp.from_vector([rng.choice(sp.genes[n].values()) for n, _ in sp.coords])


@pytest.mark.parametrize("name", SHAPE_SPACES)
def test_widths_follow_growth_and_never_shrink(name):
    sp = load_space(name)
    rng = random.Random(3)
    for _ in range(200):
        g = _random(sp, rng)
        w = g.genes["width"]
        assert all(a <= b for a, b in zip(w, w[1:])), str(g)
        if "stem" in g.genes:
            assert g.genes["stem"] == w[0]
        sp.check(g)


@pytest.mark.parametrize("name", SHAPE_SPACES)
def test_counts_are_exact_for_shape_genomes(name):
    sp = load_space(name)
    rng = random.Random(5)
    for _ in range(60):
        g = project(_random(sp, rng), sp, rng.choice([1_000, 10_000, 50_000, 200_000]))
        assert count_params(g) == sum(p.numel() for p in build_model(g).parameters()), str(g)


def test_growth_coordinates_round_trip():
    sp = load_space("conv-shape")
    g = sp.from_vector([1, 2, 1, 1, 12, 150, 200, 125])
    assert g.genes["width"] == [12, 18, 36, 45]
    assert sp.vector(g) == [1, 2, 1, 1, 12, 150, 200, 125]
    assert sp.from_vector(sp.vector(g)) == g
    assert sp.from_vector([1, 2, 1, 1, 12.4, 150, 200, 125]).genes["width"] == [12, 19, 37, 46]


@pytest.mark.parametrize("budget", [10_000, 50_000, 1_000_000])
def test_projection_keeps_the_shape(budget):
    sp = load_space("conv-shape")
    shape = [1, 2, 1, 1, 16, 150, 200, 125]
    p = project(sp.from_vector(shape), sp, budget)
    lo, hi = band(budget)
    assert lo <= count_params(p) <= hi
    assert sp.vector(p)[:4] == shape[:4] and sp.vector(p)[5:] == shape[5:]  # depth and growth kept


def test_sampler_does_not_search_the_scale():
    sp = load_space("conv-shape")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggest_genome(trial, sp)
    assert set(trial.params) == {"depth1", "depth2", "depth3", "depth4", "growth2", "growth3", "growth4"}


def test_default_start_doubles_widths():
    sp = load_space("conv-shape")
    g = project(default_start(sp), sp, 50_000)
    assert sp.vector(g)[5:] == [200, 200, 200] and g.genes["depth"] == [1, 1, 1, 1]


def test_absolute_spaces_are_unchanged():
    sp = load_space("conv")
    assert [c for c in sp.coords if c[0] == "width"] == [("width", s) for s in range(4)]
    assert not any(sp.is_scale(c) for c in sp.coords)
