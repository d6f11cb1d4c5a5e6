"""The analytic counter equals the built model's parameter count, for every genome."""

import random

import pytest
import torch
from conftest import builtin_space_names, random_genome

from nas.counting import count_flops, count_params
from nas.families import build_model
from nas.spaces import Genome, load_space

PUBLISHED = {"seed-m4": 50_548, "seed-m5": 99_844, "seed-m6": 352_388, "seed-m7": 491_524, "seed-m8": 1_068_740}


def numel(genome: Genome) -> int:
    return sum(p.numel() for p in build_model(genome).parameters())


@pytest.mark.parametrize("name, params", PUBLISHED.items())
def test_reference_models_have_published_counts(name, params):
    g = load_space("mbconv").presets[name]
    assert count_params(g) == params
    assert numel(g) == params


def random_conv(rng: random.Random) -> Genome:
    stages = rng.randint(1, 6)
    return Genome.from_dict(
        {
            "family": "conv",
            "genes": {
                "depth": [rng.randint(1, 4) for _ in range(stages)],
                "width": [rng.randint(1, 96) for _ in range(stages)],
            },
            "options": {
                "stages": stages,
                "activation": rng.choice(["relu", "silu"]),
                "bias": rng.random() < 0.5,
                "residual": rng.random() < 0.5,
                "num_classes": rng.choice([10, 100]),
            },
        }
    )


def random_mbconv(rng: random.Random) -> Genome:
    stages = rng.randint(1, 5)
    linear = rng.random() < 0.4
    widths = (
        {"width_base": rng.randint(1, 48), "width_slope": rng.randint(0, 24)}
        if linear
        else {"width": [rng.randint(1, 96) for _ in range(stages)]}
    )
    return Genome.from_dict(
        {
            "family": "mbconv",
            "genes": {
                "stem": rng.randint(1, 48),
                "depth": [rng.randint(1, 3) for _ in range(stages)],
                "expand": [rng.randint(1, 6) for _ in range(stages)],
                "kernel": [rng.choice([3, 5, 7]) for _ in range(stages)],
                **widths,
            },
            "options": {
                "stages": stages,
                "activation": rng.choice(["relu", "silu"]),
                "se_ratio": rng.choice([0.0, 0.0, 0.1, 0.25, 0.5]),
                "bias": rng.random() < 0.5,
                "skip": rng.choice(["project", "identity"]),
                "downsample": rng.choice(["maxpool", "stride"]),
                "stem_kernel": rng.choice([1, 3, 5]),
                "width_schedule": "linear" if linear else "per_stage",
                "num_classes": rng.choice([10, 100]),
            },
        }
    )


@pytest.mark.parametrize("make", [random_conv, random_mbconv])
def test_counter_matches_built_model_on_500_random_genomes(make):
    rng = random.Random(1234)
    seen_options = set()
    for _ in range(500):
        g = make(rng)
        assert count_params(g) == numel(g), str(g)
        seen_options.update((k, v) for k, v in g.options.items() if k != "num_classes")
    # every block option value was exercised
    expected = {
        "bias": {True, False},
        "activation": {"relu", "silu"},
        "residual": {True, False},
        "skip": {"project", "identity"},
        "downsample": {"maxpool", "stride"},
        "width_schedule": {"per_stage", "linear"},
        "stem_kernel": {1, 3, 5},
    }
    # every option of the generator's family took every value listed for it
    family_options = {k for k, _ in seen_options}
    assert family_options & expected.keys(), family_options
    for key in family_options & expected.keys():
        assert {v for k, v in seen_options if k == key} == expected[key], key


@pytest.mark.parametrize("space_name", builtin_space_names())
def test_counter_matches_built_model_for_every_space_file(space_name):
    # every family with a space file, with random option values
    rng = random.Random(space_name)
    for _ in range(60):
        g = random_genome(space_name, rng, max_width=48, max_other=4)
        assert count_params(g) == numel(g), str(g)


@pytest.mark.parametrize("make", [random_conv, random_mbconv])
def test_random_genomes_build_working_models(make):
    rng = random.Random(7)
    for _ in range(25):
        g = make(rng)
        out = build_model(g).eval()(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, g.options["num_classes"])
        assert torch.isfinite(out).all()


def test_flops_are_multiply_adds_of_one_image():
    g = Genome.from_dict(
        {"family": "conv", "genes": {"depth": [1], "width": [8]}, "options": {"stages": 1, "bias": False}}
    )
    conv = 32 * 32 * 8 * (3 * 3 * 3)  # one multiply-add per weight per output pixel
    batchnorm = 32 * 32 * 8 * 2  # fvcore: scale and shift per element
    linear = 8 * 100
    assert count_flops(g) == conv + batchnorm + linear
    m4 = load_space("mbconv").presets["seed-m4"]
    assert count_flops(m4) == 5_206_928
    wider = Genome.from_dict({**m4.to_dict(), "genes": {**m4.genes, "stem": 32}})
    assert count_flops(wider) > count_flops(m4)
