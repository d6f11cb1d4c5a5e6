"""nas.training: recipe data, the loop (on fixture data, CPU), failures, saving and reloading."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from nas.errors import NasError
from nas.runs import load_trained, train_genome_command
from nas.spaces import Genome
from nas.training import _ORIGINAL, Recipe, evaluate, lr_factor, param_groups, train

# ~19k parameters; learns the fixture's colour/stripe classes in a few epochs on the CPU.
SMALL = Genome.from_dict({"family": "conv", "genes": {"depth": [1, 1, 1, 1], "width": [8, 16, 32, 32]}})
FAST = Recipe(epochs=3, lr=0.2, batch_size=64)


def test_recipe_round_trip_and_tag():
    r = Recipe(optimizer="adamw", lr=2e-3, schedule="cosine", cutout=8, epochs=30)
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert Recipe.from_dict({"epochs": 7, "lr": 1}) == Recipe(epochs=7, lr=1.0)
    assert r.tag.startswith("e30-adamw-") and len(r.tag.split("-")[-1]) == 6
    assert Recipe().tag == Recipe().tag == Recipe(compile=True).tag  # compile is speed, not identity
    assert Recipe(seed=1).tag != Recipe().tag and Recipe(lr=0.05).tag != Recipe().tag
    # Stable across processes and versions: the hash of the sorted JSON of the fields (while all
    # are original ones; see test_tag_is_stable_when_recipe_fields_are_added).
    assert (
        Recipe().tag
        == "e15-sgd-"
        + __import__("hashlib")
        .sha256(json.dumps({k: v for k, v in Recipe().to_dict().items() if k in _ORIGINAL}, sort_keys=True).encode())
        .hexdigest()[:6]
    )


def test_tag_is_stable_when_recipe_fields_are_added():
    """Study names come from the tag: names made before the identity baseline stay the same, and a
    field added later (at its neutral value) or a default changed later renames nothing."""
    import dataclasses

    import nas.training

    # Tags as they were computed before the baseline existed (the hash of every field but compile;
    # lr 0.1 is the default).
    old = Recipe(lr=0.1)
    assert old.tag == "e15-sgd-747dec" and replace(old, epochs=2).tag == "e2-sgd-bd7f96"
    assert replace(old, epochs=2, batch_size=128).tag == "e2-sgd-8613d1"
    assert Recipe(lr=0.05, cutout=8, optimizer="adamw", bf16=False).tag == "e15-adamw-805af5"
    # A future field, at its default: same identity; set to something else: a new one.
    Mixup = dataclasses.make_dataclass("Mixup", [("mixup", float, 0.0)], bases=(Recipe,), frozen=True)
    assert Mixup(epochs=2).tag == Recipe(epochs=2).tag
    assert Mixup(epochs=2, mixup=0.2).tag != Recipe(epochs=2).tag
    assert Recipe().tag == old.tag
    # Once entered in the baseline, the field's default may change: a recipe that sets the old
    # neutral value keeps the old name, the new default gets its own.
    Later = dataclasses.make_dataclass("Later", [("mixup", float, 0.2)], bases=(Recipe,), frozen=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nas.training, "_ADDED", {"mixup": 0.0})
        assert Later(epochs=2, mixup=0.0).tag == Recipe(epochs=2).tag
        assert Later(epochs=2).tag == Mixup(epochs=2, mixup=0.2).tag
    # and changing an original default does not rename a recipe that keeps the old value
    Faster = dataclasses.make_dataclass("Faster", [("lr", float, 0.2)], bases=(Recipe,), frozen=True)
    assert Faster(lr=0.1).tag == old.tag and Faster().tag == Recipe(lr=0.2).tag


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"optimizer": "adam"}, "optimizer"),
        ({"lr": 0}, "lr"),
        ({"schedule": "step"}, "schedule"),
        ({"epochs": "3"}, "epochs"),
        ({"lrr": 0.1}, "unknown field 'lrr'"),
    ],
)
def test_recipe_rejects_bad_values(bad, match):
    with pytest.raises(NasError, match=match):
        Recipe.from_dict(bad)


def test_lr_schedules():
    total = 100
    one = [lr_factor(s, total, "onecycle", 0.2) for s in range(total)]
    cos = [lr_factor(s, total, "cosine", 0.2) for s in range(total)]
    for f in (one, cos):
        assert f[19] == 1.0 and f[0] == pytest.approx(0.05)
        assert all(a <= b for a, b in zip(f[:20], f[1:20]))  # warmup rises
        assert all(a >= b for a, b in zip(f[20:], f[21:]))  # then decays
        assert f[-1] < 0.05
    assert one[60] == pytest.approx(0.5) and cos[60] == pytest.approx(0.5)
    assert cos[40] > one[40]  # cosine stays high longer
    assert lr_factor(0, total, "cosine", 0.0) == 1.0


def test_weight_decay_skips_batchnorm_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model[0].weight, model[3].weight])
    assert ids(no_decay["params"]) == ids([model[0].bias, model[1].weight, model[1].bias, model[3].bias])


def test_short_training_beats_chance_and_reports(cifar_data):
    r = train(SMALL, cifar_data, FAST, device="cpu")
    assert r.ok and r.failure is None and r.epochs == 3 and not r.stopped_early
    assert [c["epoch"] for c in r.curve] == [1, 2, 3]
    assert all(set(c) == {"epoch", "train_loss", "val_acc"} for c in r.curve)
    assert r.curve[-1]["train_loss"] < r.curve[0]["train_loss"]
    assert r.val_acc == r.curve[-1]["val_acc"] > 0.1  # chance is 0.01
    assert r.device.startswith("cpu") and r.params == sum(p.numel() for p in r.model.parameters())
    assert r.images_seen == 3 * 1800 and 0 < r.train_time_s <= r.wall_time_s
    test_acc = evaluate(r.model, cifar_data.test_x, cifar_data.test_y, cifar_data, batch_size=128)
    assert test_acc > 0.1
    assert set(r.to_dict()) >= {"curve", "val_acc", "status", "failure", "wall_time_s", "device"}


def test_same_seed_same_curve_on_cpu(cifar_data):
    recipe = Recipe(epochs=2, lr=0.2, batch_size=64, cutout=8, seed=5)
    a = train(SMALL, cifar_data, recipe, device="cpu")
    b = train(SMALL, cifar_data, recipe, device="cpu")
    c = train(SMALL, cifar_data, Recipe(**{**recipe.to_dict(), "seed": 6}), device="cpu")
    assert a.curve == b.curve
    assert c.curve != a.curve


def test_nan_loss_stops_with_reason(cifar_data):
    r = train(SMALL, cifar_data, Recipe(epochs=3, lr=1e30, batch_size=64), device="cpu")
    assert r.status == "failed" and r.model is None
    assert r.failure.startswith("loss became ") and " at epoch 1 step " in r.failure
    step = int(r.failure.rsplit(" ", 1)[1])
    assert 2 <= step <= math.ceil(1800 / 64)  # the first step's loss is finite; a later one is not
    assert r.curve == [] and r.val_acc == 0.0


class _NanAfter(nn.Module):
    """A model whose output turns NaN from the 5th forward pass in training mode."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 100)
        self.calls = 0

    def forward(self, x):
        self.calls += self.training
        out = self.fc(x.mean((2, 3)))
        return out * float("nan") if self.training and self.calls >= 5 else out


def test_nan_from_model_names_epoch_and_step(cifar_data):
    r = train(_NanAfter(), cifar_data, Recipe(epochs=2, batch_size=1000), device="cpu")
    # 1800 images in batches of 1000: epoch 1 has steps 1, 2; epoch 2 has steps 1, 2 (calls 3, 4);
    # so the 5th call is never reached in 2 epochs, and with 3 epochs it is epoch 3 step 1.
    assert r.ok and r.epochs == 2
    r = train(_NanAfter(), cifar_data, Recipe(epochs=3, batch_size=1000), device="cpu")
    assert r.status == "failed" and r.failure == "loss became nan at epoch 3 step 1"
    assert len(r.curve) == 2


def test_callback_stops_early_and_sees_each_epoch(cifar_data):
    seen = []

    def cb(epoch, acc):
        seen.append((epoch, acc))
        return epoch < 2

    r = train(SMALL, cifar_data, Recipe(epochs=5, lr=0.2, batch_size=128), device="cpu", callback=cb)
    assert r.ok and r.stopped_early and r.epochs == 2
    assert seen == [(c["epoch"], c["val_acc"]) for c in r.curve]


def test_callback_exceptions_propagate(cifar_data):
    class Pruned(Exception):
        pass

    def cb(epoch, acc):
        raise Pruned

    with pytest.raises(Pruned):
        train(SMALL, cifar_data, Recipe(epochs=2, batch_size=256), device="cpu", callback=cb)


def test_a_head_that_does_not_fit_the_data_is_a_one_line_error(cifar_data):
    ten = Genome.from_dict({**SMALL.to_dict(), "options": {**SMALL.options, "num_classes": 10}})
    with pytest.raises(NasError) as e:
        train(ten, cifar_data, FAST, device="cpu")
    assert str(e.value) == f"{ten} has a 10-class head but the data has 100 classes"
    with pytest.raises(NasError, match="^the model has a 7-class head but the data has 100 classes$"):
        train(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7)), cifar_data, FAST, device="cpu")


def test_train_command_saves_and_reloads(cifar_dir, tmp_path):
    out = tmp_path / "run"
    s = train_genome_command(
        SMALL.to_json(),
        Recipe(epochs=2, lr=0.2, batch_size=64),
        data_dir=cifar_dir,
        out_dir=out,
        device="cpu",
        val_size=200,
        progress=False,
    )
    assert s["status"] == "ok" and s["epochs"] == 2 and s["genome_str"] == str(SMALL)
    assert 0 < s["val_acc"] <= 1 and 0 < s["test_acc"] <= 1 and s["recipe"]["lr"] == 0.2
    assert json.loads((out / "result.json").read_text())["test_acc"] == s["test_acc"]
    genome, model = load_trained(out)
    assert genome == SMALL and not model.training
    from nas.data import load_cifar100

    data = load_cifar100(cifar_dir, val_size=200, download=False)
    assert evaluate(model, data.test_x, data.test_y, data, bf16=False) == s["test_acc"]  # float32, as reported


def test_a_training_written_to_a_log_file_says_how_far_it_is(cifar_dir, tmp_path, capsys, monkeypatch):
    """With stderr a file (no bar), a training prints its epochs and ETA (at most once a minute;
    here every epoch), not after the last epoch, whose result line follows; nothing when quiet."""
    import nas.progress

    monkeypatch.setattr(nas.progress.EpochLines, "LOG_EVERY_S", 0.0)
    args = {"data_dir": cifar_dir, "device": "cpu", "val_size": 200}
    train_genome_command(SMALL, Recipe(epochs=3, batch_size=64), out_dir=tmp_path / "a", progress=True, **args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"training {SMALL}: epoch")]
    assert [line.split(": epoch ")[1].split(",")[0] for line in lines] == ["1/3", "2/3"]
    assert all("val acc" in line and "elapsed, ETA" in line for line in lines)
    train_genome_command(SMALL, Recipe(epochs=2, batch_size=64), out_dir=tmp_path / "b", progress=False, **args)
    assert "epoch" not in capsys.readouterr().err


def test_an_interrupted_training_goes_on_from_its_last_epoch(cifar_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C in epoch 3 of 4 keeps epochs 1-2 in the run folder's checkpoint; the same command
    again trains epochs 3-4 only and ends with the model an uninterrupted run gives (weights,
    average, optimizer, batch order and augmentation all carried over)."""
    import nas.runs
    from nas.runs import CHECKPOINT

    recipe = Recipe(epochs=4, lr=0.2, batch_size=64, ema=0.9, alt_flip=True, cutout=8)
    args = {"data_dir": cifar_dir, "device": "cpu", "val_size": 200}
    whole = train_genome_command(SMALL, recipe, out_dir=tmp_path / "whole", progress=False, **args)
    assert not (tmp_path / "whole" / CHECKPOINT).exists()

    class StopInEpoch3(nas.runs.EpochLines):
        def __call__(self, epoch, val_acc):
            if epoch == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(nas.runs, "EpochLines", StopInEpoch3)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_genome_command(SMALL, recipe, out_dir=out, progress=False, **args)
    assert (out / CHECKPOINT).is_file() and not (out / "model.pt").exists()
    epochs_seen = []
    monkeypatch.setattr(nas.runs, "EpochLines", lambda *a: lambda epoch, val: epochs_seen.append(epoch))
    resumed = train_genome_command(SMALL, recipe, out_dir=out, progress=True, **args)
    assert epochs_seen == [3, 4]
    assert f"resuming at epoch 3/4 from {out / CHECKPOINT}" in capsys.readouterr().err
    assert resumed["curve"] == whole["curve"] and resumed["test_acc"] == whole["test_acc"]
    assert resumed["epochs"] == 4 and resumed["images_seen"] == whole["images_seen"]
    a, b = torch.load(tmp_path / "whole" / "model.pt"), torch.load(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / CHECKPOINT).exists()  # done: a rerun trains afresh
    # a checkpoint of another recipe is not taken for this one
    other = replace(recipe, epochs=2)
    monkeypatch.setattr(nas.runs, "EpochLines", StopInEpoch3)
    with pytest.raises(KeyboardInterrupt):
        train_genome_command(SMALL, recipe, out_dir=out, progress=False, **args)
    monkeypatch.setattr(nas.runs, "EpochLines", lambda *a: lambda epoch, val: None)
    fresh = train_genome_command(SMALL, other, out_dir=out, progress=True, **args)
    assert "resuming" not in capsys.readouterr().err and [c["epoch"] for c in fresh["curve"]] == [1, 2]


def test_train_command_failure_and_bad_run_dir(cifar_dir, tmp_path):
    with pytest.raises(NasError, match="training failed: loss became"):
        train_genome_command(
            SMALL,
            Recipe(epochs=1, lr=1e30),
            data_dir=cifar_dir,
            out_dir=tmp_path / "r",
            device="cpu",
            val_size=200,
            progress=False,
        )
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "failed"
    with pytest.raises(NasError, match="model.pt is missing"):
        load_trained(tmp_path / "r")


@pytest.mark.realdata
def test_one_epoch_on_real_data_beats_chance():
    root = os.environ.get("NAS_DATA_DIR")
    if not root or not (Path(root) / "cifar-100-python").is_dir():
        pytest.skip("set NAS_DATA_DIR to a folder holding cifar-100-python/")
    from nas.data import load_cifar100

    data = load_cifar100(root, device="cpu", val_size=2000, subset=15000, download=False)
    r = train(SMALL, data, Recipe(epochs=1, lr=0.2, batch_size=128), device="cpu")
    assert r.ok and r.val_acc > 0.04, r.curve  # chance is 0.01


def test_bf16_is_part_of_the_recipe_identity_and_can_be_turned_off():
    import torch

    from nas.training import Recipe, bf16_autocast

    assert Recipe(bf16=True).tag != Recipe(bf16=False).tag
    assert not bf16_autocast(torch.device("cpu"), wanted=False)
    assert bf16_autocast(torch.device("cuda"), wanted=True)


def test_space_recipe_table_sets_defaults_the_user_can_override(tmp_path):
    from nas.spaces import load_space
    from nas.training import space_recipe

    conv = load_space("conv-shape")
    assert conv.recipe == {"lr": 0.8, "bn_lr": 4.0, "whiten": True, "tta": "flip"} and space_recipe(conv).lr == 0.8
    assert space_recipe(conv, lr=0.2, epochs=3, tta="none") == Recipe(lr=0.2, epochs=3, bn_lr=4.0, whiten=True)
    assert space_recipe(load_space("mbconv")) == Recipe(lr=0.4, tta="flip")
    assert space_recipe(load_space("resnet")) == Recipe(bn_lr=4.0, whiten=True, tta="flip")
    assert space_recipe(None, epochs=2) == Recipe(epochs=2)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'family = "conv"\n[recipe]\nlr = "fast"\n[genes]\ndepth = {low = 1, high = 2}\nwidth = {low = 2, high = 8}\n'
    )
    with pytest.raises(NasError, match=r"bad.toml: recipe: lr must be a float, got 'fast'"):
        space_recipe(load_space(bad))
