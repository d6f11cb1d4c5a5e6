"""Space files, genomes and their errors, as a user meets them."""

import json
import random
import textwrap

import pytest
from conftest import builtin_space_names, random_genome

from nas.errors import NasError
from nas.spaces import Genome, list_spaces, load_space, parse_genome


def test_builtin_spaces_are_listed():
    names = set(list_spaces())
    assert {"conv", "mbconv"} <= names


def test_genome_round_trips_through_json():
    g = load_space("mbconv").presets["seed-m7"]
    again = Genome.from_json(g.to_json())
    assert again == g
    assert again.to_dict() == g.to_dict()
    assert str(again) == "mbconv:s32|32x1e4k3|64x1e4k3|128x2e4k3|256x1e4k3;activation=relu,bias=true,stem_kernel=1"


def test_linear_width_schedule_derives_stage_widths():
    sp = load_space("mbconv-linear")
    g = sp.genome(
        {
            "stem": 16,
            "depth": [1, 2, 2, 1],
            "width_base": 24,
            "width_slope": 16,
            "expand": [2, 3, 4, 6],
            "kernel": [3, 3, 5, 5],
        }
    )
    assert str(g) == "mbconv-linear:s16|w24+16|24x1e2k3|40x2e3k3|56x2e4k5|72x1e6k5"


def test_parse_genome_accepts_preset_file_and_inline_json(tmp_path):
    g = parse_genome("seed-m4")
    f = tmp_path / "g.json"
    f.write_text(g.to_json())
    assert parse_genome(str(f)) == g
    assert parse_genome(g.to_json()) == g
    assert parse_genome("mbconv:seed-m4") == g


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope", "unknown preset 'nope'"),
        ("{bad", "malformed JSON"),
        ('{"family": "vit", "genes": {}}', "unknown family 'vit'"),
        ('{"family": "conv", "genes": {"depth": [1, 1, 1, 1]}}', "missing gene 'genes.width'"),
        ('{"family": "conv", "genes": {"depth": [1, 1], "width": [8, 8]}}', "genes.depth must be a list of 4"),
        (
            '{"family": "conv", "genes": {"depth": [1,1,1,1], "width": [8,8,8,8]}, "options": {"act": "relu"}}',
            "options.act is not an option",
        ),
        ('{"family": "mbconv", "genes": {}, "options": {"skip": "dense"}}', "options.skip = 'dense' must be"),
    ],
)
def test_bad_genomes_get_one_line_errors(text, message):
    with pytest.raises(NasError, match=message) as e:
        parse_genome(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("space_name", builtin_space_names())
def test_random_genomes_of_every_space_file_round_trip_through_json(space_name):
    rng = random.Random(space_name)
    for _ in range(50):
        g = random_genome(space_name, rng)
        again = Genome.from_json(g.to_json())
        assert again == g and again.to_dict() == g.to_dict()


@pytest.mark.parametrize("space_name", builtin_space_names())
def test_bad_options_and_genes_of_every_family_get_one_line_errors(space_name):
    sp = load_space(space_name)
    family, d = sp.family, sp.extreme("min").to_dict()
    cases = [
        ({**d, "options": {**d["options"], key: "bogus"}}, f"options.{key} = 'bogus' must be")
        for key in family.option_checks
    ]
    for name in family.gene_names(sp.options):
        low = family.lowest(name) - 1
        bad = [low] * sp.stages if name in family.per_stage else low
        cases.append(({**d, "genes": {**d["genes"], name: bad}}, f"genes.{name} must hold integers >= {low + 1}"))
        cases.append(
            ({**d, "genes": {k: v for k, v in d["genes"].items() if k != name}}, f"missing gene 'genes.{name}'")
        )
    for data, message in cases:
        with pytest.raises(NasError) as e:
            parse_genome(json.dumps(data))
        assert message in str(e.value) and "\n" not in str(e.value)


def test_genome_outside_space_is_rejected():
    sp = load_space("conv")
    g = Genome.from_dict({"family": "conv", "genes": {"depth": [1, 9, 1, 1], "width": [8, 8, 8, 8]}})
    with pytest.raises(NasError, match=r"gene 'depth2' = 9 is outside space 'conv' \(allowed: 1..4\)"):
        sp.check(g)


def _write(tmp_path, name, body):
    d = tmp_path / "spaces"
    d.mkdir(exist_ok=True)
    (d / f"{name}.toml").write_text(textwrap.dedent(body))
    return d


def test_user_space_file_needs_no_code(tmp_path, monkeypatch):
    d = _write(
        tmp_path,
        "tiny-conv",
        """
        family = "conv"
        description = "three stages, narrow"
        [options]
        stages = 3
        activation = "silu"
        [genes]
        depth = {low = 1, high = 2}
        width = {low = 8, high = 64, step = 8}
        [presets.mine]
        depth = [1, 2, 1]
        width = [8, 16, 32]
    """,
    )
    monkeypatch.setenv("NAS_SPACES_PATH", str(d))
    assert "tiny-conv" in list_spaces()
    sp = load_space("tiny-conv")
    assert sp.stages == 3 and sp.options["activation"] == "silu"
    assert [sp.coord_name(c) for c in sp.coords] == ["depth1", "depth2", "depth3", "width1", "width2", "width3"]
    assert str(parse_genome("tiny-conv:mine")) == "tiny-conv:8x1|16x2|32x1"
    assert parse_genome("tiny-conv:8x1|16x2|32x1") == parse_genome("tiny-conv:mine")
    # off-grid widths are snapped onto the file's step
    assert sp.from_vector([1, 1, 1, 13, 20, 64]).genes["width"] == [16, 24, 64]


@pytest.mark.parametrize(
    "body, message",
    [
        ('family = "conv"\n[genes]\ndepth = {low = 1, high = 4}\n', "missing field 'genes.width'"),
        ('family = "conv"\n[genes]\ndepth = {low = 1, high = 4}\nwidth = {low = 8}\n', "genes.width.high: missing"),
        ('family = "conv"\n[genes]\ndepth = {low = 3, high = 1}\nwidth = {low = 8, high = 9}\n', "genes.depth: need"),
        (
            'family = "conv"\n[genes]\ndepth = {low = 1, high = 4, stride = 2}\nwidth = {low = 8, high = 9}\n',
            "genes.depth.stride: unknown field",
        ),
        ('family = "conv"\nwidth = 3\n', "unknown field 'width'"),
        ('family = "conv"\nwidths = "ratio"\n', "widths = 'ratio' must be one of 'absolute', 'growth'"),
        (
            'family = "mbconv"\nwidths = "growth"\n[options]\nwidth_schedule = "linear"\n',
            "needs a per-stage 'width' gene",
        ),
        ('family = "conv"\n[options]\nresidual = "yes"\n', "options.residual = 'yes' must be true or false"),
        ('family = "conv\n', "malformed TOML"),
        ("[genes]\n", "missing field 'family'"),
        (
            'family = "conv"\n[genes]\ndepth = {low = 1, high = 4}\nwidth = {low = 8, high = 64}\n'
            "[presets.big]\ndepth = [1, 1, 1, 1]\nwidth = [8, 8, 8, 128]\n",
            "presets.big: gene 'width4' = 128",
        ),
    ],
)
def test_malformed_space_file_names_file_and_field(tmp_path, body, message):
    d = tmp_path / "s"
    d.mkdir()
    f = d / "broken.toml"
    f.write_text(body)
    with pytest.raises(NasError, match=message) as e:
        load_space(str(f))
    assert str(f) in str(e.value) and "\n" not in str(e.value)
