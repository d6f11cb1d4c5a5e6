"""The mixed family: each stage's block type is a gene (plain conv, residual basic block,
depthwise-separable conv), counted exactly, written in the short form, and searched."""

from __future__ import annotations

import optuna
import pytest
import torch
from conftest import PlantedTraining
from torch import nn

from nas.budget import min_params, project
from nas.counting import count_params
from nas.errors import NasError
from nas.families import build_model
from nas.search import SearchConfig, default_start, search
from nas.spaces import load_space, parse_genome
from nas.study import trial_genome


def test_each_block_type_builds_what_it_says_and_counts_exactly():
    g = parse_genome("mixed-shape:8x1p|16x2r|32x1s|32x1p")
    model = build_model(g)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # plain: 1 conv; residual: 2 blocks of 2 convs + a 1x1 projection where 8 -> 16; separable: 2; plain: 1
    assert len(convs) == 1 + 5 + 2 + 1
    assert sum(c.groups > 1 for c in convs) == 1  # the separable stage's depthwise conv
    assert count_params(g) == sum(p.numel() for p in model.parameters())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)


def test_the_short_form_names_each_stage_block_and_reads_back():
    text = "mixed-shape:22x1p|33x2r|42x1s|42x1p"
    g = parse_genome(text)
    assert g.genes["block"] == [1, 2, 3, 1] and str(g) == text
    with pytest.raises(NasError, match="p plain, r residual, s separable") as e:
        parse_genome("mixed-shape:22x1p|33x2q|42x1s|42x1p")
    assert "\n" not in str(e.value)


def test_the_hand_design_is_plain_and_projection_keeps_the_block_types():
    sp = load_space("mixed-shape")
    assert set(project(default_start(sp), sp, 50_000).genes["block"]) == {1}
    g = project(parse_genome("mixed-shape:16x1s|32x1r|64x1s|128x1r"), sp, 500_000)
    assert g.genes["block"] == [3, 2, 3, 2] and 450_000 <= count_params(g) <= 500_000
    # the smallest model uses the block with the fewest parameters: separable convs
    assert min_params(sp) < count_params(project(default_start(sp), sp, min_params(sp) * 2))


def test_a_space_asking_for_an_unknown_block_type_is_one_line(tmp_path):
    text = load_space("mixed-shape").path.read_text()
    text = text.replace("block = {choices = [1, 2, 3]}", "block = {choices = [1, 4]}")
    path = tmp_path / "odd.toml"
    path.write_text(text)
    with pytest.raises(NasError, match="family 'mixed' knows only 1, 2, 3"):
        load_space(str(path))


def test_the_search_tries_every_block_type(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("nas.objective.train", PlantedTraining())
    config = SearchConfig("random", trials=12, val_size=200, subset=600, pruner="none", plan=False, noise_seeds=False)
    storage = f"sqlite:///{tmp_path}/m.db"
    result = search("mixed-shape", 20_000, config, storage=storage, data_dir=cifar_dir, progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    kinds = {b for t in study.trials if "genome" in t.user_attrs for b in trial_genome(t).genes["block"]}
    assert kinds == {1, 2, 3}
