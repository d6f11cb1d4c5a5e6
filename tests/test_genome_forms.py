"""Every way to write a GENOME: the short form nas prints reads back as the same genome (for every
space file and every option value), `STUDY#N` names a trial, JSON naming a space needs no family."""

from __future__ import annotations

import json
import random

import optuna
import pytest
from conftest import builtin_space_names, option_values, random_genome

from nas.errors import NasError
from nas.families import FAMILIES
from nas.genome_args import parse_genome
from nas.spaces import load_space, parse_short

SPACES = builtin_space_names()


@pytest.mark.parametrize("space_name", SPACES)
def test_short_form_round_trips_random_genomes(space_name):
    rng = random.Random(space_name)
    for _ in range(300):
        g = random_genome(space_name, rng)
        text = str(g)
        again = parse_short(text)
        assert again == g and again.options == g.options and again.space == g.space, text
        assert str(again) == text


@pytest.mark.parametrize("space_name", SPACES)
def test_short_form_round_trips_every_option_value(space_name):
    rng = random.Random(1)
    sp = load_space(space_name)
    for key, check in sp.family.option_checks.items():
        for value in option_values(check, rng):
            g = random_genome(space_name, rng, {**sp.options, key: value})
            again = parse_short(str(g))
            assert again == g and json.dumps(again.options[key]) == json.dumps(value), str(g)


def test_short_forms_are_readable():
    m4 = load_space("mbconv").presets["seed-m4"]
    # the preset's options differ from the mbconv space's: they follow the ';'
    assert str(m4) == "mbconv:s16|16x1e4k3|32x1e4k3|32x1e4k3|100x1e4k3;activation=relu,bias=true,stem_kernel=1"
    conv = load_space("conv").genome({"depth": [1, 2, 1, 1], "width": [16, 32, 64, 128]})
    assert str(conv) == "conv:16x1|32x2|64x1|128x1"
    res = load_space("conv-res").genome({"depth": [1, 2, 1, 1], "width": [16, 32, 64, 128]})
    assert str(res) == "conv-res:16x1|32x2|64x1|128x1"
    lin = load_space("mbconv-linear").genome(
        {
            "stem": 16,
            "depth": [1, 2, 2, 1],
            "width_base": 24,
            "width_slope": 16,
            "expand": [2, 3, 4, 6],
            "kernel": [3, 3, 5, 5],
        }
    )
    assert str(lin) == "mbconv-linear:s16|w24+16|24x1e2k3|40x2e3k3|56x2e4k5|72x1e6k5"


def test_linear_schedule_keeps_its_slope_with_one_stage():
    g = random_genome("mbconv-linear", random.Random(0), {**load_space("mbconv-linear").options, "stages": 1})
    assert parse_short(str(g)).genes["width_slope"] == g.genes["width_slope"]


def test_genome_of_an_unlisted_space_prints_with_its_family(tmp_path):
    f = tmp_path / "elsewhere.toml"
    f.write_text(
        'family = "conv"\n[options]\nstages = 2\nbias = false\n[genes]\ndepth = {low = 1, high = 2}\n'
        "width = {low = 4, high = 64}\n"
    )
    g = load_space(str(f)).genome({"depth": [1, 2], "width": [8, 16]})
    assert str(g) == "conv:8x1|16x2;bias=false"  # 'elsewhere' is not on the search path
    assert parse_short(str(g)) == g


@pytest.mark.parametrize(
    "text",
    [
        "mbconv:s16|16x1e4k3|32x1e4k3|32x1e4k3|100x1e4k3;activation=relu,bias=true,stem_kernel=1",
        "conv:16x1|32x2|64x1|128x1",
        "conv-res:16x1|32x2|64x1|128x1",
        "mbconv-linear:s16|w24+16|24x1e2k3|40x2e3k3|56x2e4k5|72x1e6k5",
    ],
)
def test_every_genome_argument_takes_the_short_form(text):
    g = parse_genome(text)
    assert str(g) == text and parse_genome(g.to_json()) == g


@pytest.mark.parametrize(
    "text, message",
    [
        ("conv:16x1|32x|64x1|128x1", "'32x' is not of the form <width>x<depth>"),
        ("conv:16x1||64x1|128x1", "empty part"),
        ("conv:16x1|32x2|64x1", "3 stages, space 'conv' has 4"),
        (
            "mbconv:s16|16x1e4k3|32x1e4k3|32x1e4k3|100x1e4",
            "'100x1e4' is not of the form <width>x<depth>e<expansion>k<kernel>",
        ),
        ("mbconv:s16", "no stages"),
        ("mbconv-linear:s16|w24+16|24x1e2k3|41x2e3k3|56x2e4k5|72x1e6k5", "do not follow w24+16"),
        ("vit:16x1|32x2|64x1|128x1", "unknown space 'vit'"),
        ("conv:16x1|32x2|64x1|128x1;relu", "must look like key=value"),
        ("conv:16x1|32x2|64x1|128x1;act=relu", "options.act is not an option"),
        ("conv:16x1|32x2|64x1|128x1;stages=3", "given by the genes before ';'"),
        ("conv:16x1|32x2|64x1|128x1;bias=maybe", "options.bias = 'maybe' must be true or false"),
        ("conv:1x1|32x2|64x1|128x1", "gene 'width1' = 1 is outside space 'conv'"),
    ],
)
def test_bad_short_forms_say_what_is_wrong(text, message):
    with pytest.raises(NasError) as e:
        parse_genome(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_inline_json_naming_a_space_takes_family_and_options_from_it():
    g = parse_genome('{"space": "conv-res", "genes": {"depth": [1, 2, 1, 1], "width": [16, 32, 64, 128]}}')
    assert g.family == "conv" and g.options == load_space("conv-res").options
    assert str(g) == "conv-res:16x1|32x2|64x1|128x1"
    g = parse_genome(
        '{"space": "conv-res", "genes": {"depth": [1, 1, 1, 1], "width": [8, 8, 8, 8]}, '
        '"options": {"activation": "relu"}}'
    )
    assert str(g) == "conv-res:8x1|8x1|8x1|8x1;activation=relu"


@pytest.fixture
def trial_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="conv-b5000-e1", direction="maximize")
    g = load_space("conv").genome({"depth": [1, 1, 1, 1], "width": [8, 8, 16, 16]})
    study.enqueue_trial({}, user_attrs={"genome": g.to_json(), "genome_str": str(g)})
    t = study.ask()
    study.tell(t, 0.5)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # trial #1: no genome
    return storage, g


def test_study_trial_reference(trial_storage):
    storage, g = trial_storage
    assert parse_genome("conv-b5000-e1#0", storage=storage) == g


@pytest.mark.parametrize(
    "ref, message",
    [
        ("nope#0", "no study 'nope' in"),
        ("conv-b5000-e1#7", "study 'conv-b5000-e1' has no trial #7 (trials #0..#1)"),
        ("conv-b5000-e1#1", "trial #1 of study 'conv-b5000-e1' has no genome"),
    ],
)
def test_missing_study_or_trial_is_one_line(trial_storage, ref, message):
    storage, _ = trial_storage
    with pytest.raises(NasError) as e:
        parse_genome(ref, storage=storage)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_study_reference_to_a_missing_storage_creates_nothing(tmp_path):
    with pytest.raises(NasError, match="no study storage at"):
        parse_genome("x#0", storage=f"sqlite:///{tmp_path / 'sub' / 'none.db'}")
    assert list(tmp_path.iterdir()) == []


def test_every_family_has_a_space_file():
    # so the tests over every space file (short forms, exact counts, projection) cover every family
    assert set(FAMILIES) == {load_space(name).family.name for name in SPACES}
