"""A space may search recipe fields (`[search_recipe]`, e.g. the learning rate) with the
architecture: each genome carries the values its trial trained with, in its JSON and short
form, and every later training of it (finalists, nas train, a sweep's final training) uses them."""

from __future__ import annotations

import optuna
import pytest
from conftest import PlantedTraining

from nas.errors import NasError
from nas.runs import train_genome_command
from nas.search import SearchConfig, search
from nas.spaces import load_space, parse_genome
from nas.study import trial_genome
from nas.training import Recipe, recipe_for, space_recipe


def test_a_genome_carries_its_lr_in_its_short_form_and_json():
    g = parse_genome("conv-shape-lr:22x1|33x2|42x1|42x1;lr=0.6")
    assert g.recipe == {"lr": 0.6} and str(g) == "conv-shape-lr:22x1|33x2|42x1|42x1;lr=0.6"
    assert parse_genome(g.to_json()) == g
    assert recipe_for(g, space_recipe(load_space("conv-shape-lr"))).lr == 0.6
    # the same architecture at another lr is another point of the search
    assert g != parse_genome("conv-shape-lr:22x1|33x2|42x1|42x1;lr=0.4")
    # a genome without training genes keeps the JSON it always had
    plain = parse_genome("conv-shape:22x1|33x2|42x1|42x1")
    assert "recipe" not in plain.to_dict() and recipe_for(plain, Recipe(lr=0.8)).lr == 0.8


@pytest.mark.parametrize(
    "text, message",
    [
        ("conv-shape-lr:22x1|33x2|42x1|42x1;lr=-1", "recipe.lr must be a number >= 0"),
        (
            '{"family": "conv", "genes": {"depth": [1], "width": [8]}, '
            '"options": {"stages": 1}, "recipe": {"epochs": 3}}',
            "not a searchable",
        ),
    ],
)
def test_bad_training_genes_are_one_line(text, message):
    with pytest.raises(NasError, match=message) as e:
        parse_genome(text)
    assert "\n" not in str(e.value)


def test_a_bad_search_recipe_table_is_one_line(tmp_path):
    text = load_space("conv-shape-lr").path.read_text()
    for bad, message in [
        ("lr = {low = 1.6, high = 0.2, log = true}", "0 < low < high"),
        ("epochs = {low = 1, high = 9}", "not a searchable recipe field"),
    ]:
        path = tmp_path / "odd.toml"
        path.write_text(text.replace("lr = {low = 0.2, high = 1.6, log = true}", bad))
        with pytest.raises(NasError, match=message) as e:
            load_space(str(path))
        assert "\n" not in str(e.value)


class RecordsLr(PlantedTraining):
    def __init__(self):
        super().__init__()
        self.lrs = []

    def __call__(self, genome, data, recipe, *a, **kw):
        self.lrs.append((str(genome), recipe.lr))
        return super().__call__(genome, data, recipe, *a, **kw)


def test_the_search_trains_each_trial_at_its_own_lr_and_the_hand_design_at_the_measured_one(
    cifar_dir, tmp_path, monkeypatch
):
    planted = RecordsLr()
    monkeypatch.setattr("nas.objective.train", planted)
    config = SearchConfig("tpe", trials=8, val_size=200, subset=600, pruner="none", plan=False, noise_seeds=False)
    storage = f"sqlite:///{tmp_path}/lr.db"
    result = search("conv-shape-lr", 20_000, config, storage=storage, data_dir=cifar_dir, progress=False)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    trials = [t for t in study.trials if "genome" in t.user_attrs]
    genomes = [trial_genome(t) for t in trials]
    assert genomes[0].recipe == {"lr": 0.8}  # the start: the space's measured lr
    assert len({g.recipe["lr"] for g in genomes}) > 3 and all(0.2 <= g.recipe["lr"] <= 1.6 for g in genomes)
    # each training ran at its genome's lr, and the trial's param is the value the genome carries
    assert {(str(g), g.recipe["lr"]) for g in genomes} <= set(planted.lrs)
    assert all(t.params["recipe_lr"] == pytest.approx(g.recipe["lr"], rel=1e-2) for t, g in zip(trials, genomes))


def test_nas_train_trains_and_records_the_genomes_lr(cifar_dir, tmp_path):
    s = train_genome_command(
        "conv-shape-lr:4x1|8x1|8x1|8x1;lr=0.3",
        Recipe(epochs=1, batch_size=128),
        data_dir=cifar_dir,
        out_dir=tmp_path / "r",
        device="cpu",
        val_size=200,
        progress=False,
    )
    assert s["recipe"]["lr"] == 0.3 and s["genome_str"].endswith(";lr=0.3")
