"""`nas train` end to end on the fixture data: trains, prints, saves a model that rebuilds."""

import json

from nas.cli import main
from nas.runs import load_trained
from nas.training import evaluate


def test_nas_train_saves_a_rebuildable_model(cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    genome = '{"family": "conv", "genes": {"depth": [1, 1, 1, 1], "width": [8, 8, 16, 16]}}'
    code = main(
        [
            "train",
            genome,
            "--epochs",
            "2",
            "--data-dir",
            str(cifar_dir),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "64",
            "--val-size",
            "200",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "val acc:" in printed and "test acc:" in printed
    result = json.loads((out / "result.json").read_text())
    assert len(result["curve"]) == 2 and 0 <= result["test_acc"] <= 1
    genome, model = load_trained(out)
    assert str(genome) == "conv:8x1|8x1|16x1|16x1"
    # the saved weights reproduce the reported test accuracy
    from nas.data import load_cifar100

    data = load_cifar100(cifar_dir, device="cpu", val_size=200, download=False)
    assert evaluate(model, data.test_x, data.test_y, data, bf16=False) == result["test_acc"]  # float32, as reported


def test_nas_train_bad_epochs_is_one_line_error(capsys):
    try:
        main(["train", "seed-m4", "--epochs", "0"])
    except SystemExit as e:
        assert e.code == 2
    assert "must be a positive whole number" in capsys.readouterr().err


def test_nas_train_subset_and_one_epoch(cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "conv:8x1|8x1|16x1|16x1",
            "--epochs",
            "1",
            "--subset",
            "500",
            "--data-dir",
            str(cifar_dir),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "100",
            "--val-size",
            "200",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "(1 epoch, " in printed and "500 training images" in printed  # not "1 epochs"
    assert json.loads((out / "result.json").read_text())["train_size"] == 500


def test_nas_train_subset_is_validated_like_search(capsys):
    assert main(["train", "seed-m4", "--subset", "499"]) == 2
    assert "subset must be at least 500 training images" in capsys.readouterr().err


def test_recipe_options_come_from_the_recipe_fields(monkeypatch, capsys):
    """Every Recipe field not marked otherwise is an option of train (and search, sweep), with the
    help its field carries: a new field is an option without an edit to the CLI."""
    import dataclasses

    import pytest

    import nas.training
    from nas.cli import build_parser
    from nas.options import recipe_from_args

    newer = dataclasses.make_dataclass(
        "Recipe",
        [("mixup", float, dataclasses.field(default=0.0, metadata={"help": "mixup alpha (default {default})"}))],
        bases=(nas.training.Recipe,),
        frozen=True,
    )
    monkeypatch.setattr(nas.training, "Recipe", newer)
    for command in ("train", "search", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--mixup MIXUP mixup alpha (default 0.0)" in text
        assert "--lr LR peak learning rate (default: the space's [recipe] lr, else 0.1)" in text
        assert "--batch-size BATCH_SIZE default 256" in text and "--no-bf16 train in float32" in text
        assert "--optimizer {sgd,adamw}" in text and "--schedule {onecycle,cosine}" in text
        assert "--warmup" not in text and "--crop" not in text  # fields kept off the command line
    args = build_parser("train").parse_args(["train", "seed-m4", "--mixup", "0.2", "--lr", "0.3", "--no-bf16"])
    recipe = recipe_from_args(args)
    assert (recipe.mixup, recipe.lr, recipe.bf16, recipe.compile, recipe.epochs) == (0.2, 0.3, False, False, 15)
    defaults = recipe_from_args(build_parser("train").parse_args(["train", "seed-m4"]))
    assert defaults == newer(epochs=15)


def test_a_head_that_does_not_fit_the_data_fails_before_training(cifar_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "conv:8x1|8x1|16x1|16x1;num_classes=10",
            "--data-dir",
            str(cifar_dir),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--val-size",
            "200",
        ]
    )
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == (
        "nas: error: conv:8x1|8x1|16x1|16x1;num_classes=10 has a 10-class head but the data has 100 classes\n"
    )
