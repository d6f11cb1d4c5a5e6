"""The training additions: EMA of the weights, flip TTA (in the exported model too), alternating
flip, BatchNorm learning-rate multiplier, whitened first conv, and distillation from a teacher.
Each test would fail if its feature were a no-op."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from nas.cli import main
from nas.data import augment
from nas.errors import NasError
from nas.export import export_run, onnx_logits
from nas.families import build_model
from nas.modules import FlipAverage
from nas.runs import load_trained, train_genome_command
from nas.spaces import Genome
from nas.training import (
    Recipe,
    distillation_loss,
    make_optimizer,
    predictor,
    set_lr,
    train,
    training_loss,
    whiten_first_conv,
)

SMALL = Genome.from_dict({"family": "conv", "genes": {"depth": [1, 1, 1, 1], "width": [8, 16, 32, 32]}})
FAST = Recipe(epochs=2, lr=0.2, batch_size=64)


def _images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_new_fields_at_their_neutral_values_rename_no_study():
    assert Recipe(ema=0.0, tta="none", alt_flip=False, bn_lr=1.0, whiten=False, kd_alpha=0.0).tag == Recipe().tag
    for changed in ({"ema": 0.99}, {"tta": "flip"}, {"alt_flip": True}, {"bn_lr": 4.0}, {"whiten": True}):
        assert replace(Recipe(), **changed).tag != Recipe().tag


def test_ema_weights_differ_from_the_last_ones_and_are_the_ones_saved(cifar_dir, tmp_path, cifar_data):
    model = build_model(SMALL)
    result = train(model, cifar_data, replace(FAST, ema=0.9))
    last, averaged = model.state_dict(), result.model.state_dict()
    assert result.model is not model
    assert any(not torch.equal(last[k], averaged[k]) for k in last if last[k].is_floating_point())
    # nas train saves the average
    s = train_genome_command(
        SMALL,
        replace(FAST, ema=0.9),
        data_dir=cifar_dir,
        out_dir=tmp_path / "r",
        device="cpu",
        val_size=200,
        progress=False,
    )
    saved = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    again = train(SMALL, cifar_data, replace(FAST, ema=0.9))  # the same data, seed and recipe
    assert all(torch.equal(saved[k], v) for k, v in again.model.state_dict().items())
    assert s["recipe"]["ema"] == 0.9


def test_tta_logits_are_the_mean_of_plain_and_mirrored_logits():
    model = build_model(SMALL).eval()
    x = _images()
    with torch.no_grad():
        expected = (model(x) + model(x.flip(3))) / 2
        got = predictor(model, "flip")(x)
        assert torch.allclose(got, expected, atol=1e-6)
        assert not torch.allclose(got, model(x), atol=1e-4)
    assert predictor(model, "none") is model


def test_a_tta_run_reloads_and_exports_with_its_tta(cifar_dir, tmp_path):
    run = tmp_path / "r"
    s = train_genome_command(
        SMALL, replace(FAST, tta="flip"), data_dir=cifar_dir, out_dir=run, device="cpu", val_size=200, progress=False
    )
    _, model = load_trained(run)
    assert isinstance(model, FlipAverage)
    result = export_run(run, data_dir=cifar_dir)
    assert "flip" in result.card["test_time_augmentation"] and result.card["test_acc"] == s["test_acc"]
    x = _images()
    with torch.no_grad():
        want = model(x).numpy()
        plain = model.model(x).numpy()
    got = onnx_logits(result.onnx_path, x)
    assert np.abs(got - want).max() < 1e-4 and np.abs(got - plain).max() > 1e-3


def test_alternating_flip_mirrors_exactly_the_images_asked():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([True, False, True, False, False, True])
    mean, std = torch.zeros(3), torch.ones(3) / 255
    out = augment(x, mean, std, crop=False, flip=mask)
    for i in range(6):
        assert torch.equal(out[i], (x[i].flip(2) if mask[i] else x[i]).float())


def test_alternating_flip_changes_training(cifar_data):
    a = train(SMALL, cifar_data, replace(FAST, epochs=1))
    b = train(SMALL, cifar_data, replace(FAST, epochs=1, alt_flip=True))
    assert a.curve[0]["train_loss"] != b.curve[0]["train_loss"]


def test_batchnorm_parameters_learn_at_their_multiplier():
    model = build_model(SMALL)
    opt = make_optimizer(model, Recipe(lr=0.5, bn_lr=4.0))
    set_lr(opt, 0.5)
    by_ndim = {p.ndim: g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_ndim[4] == 0.5 and by_ndim[1] == 2.0


def test_whitened_first_conv_gives_unit_variance_responses(cifar_data):
    model = build_model(SMALL)
    conv = model[0].body[0]
    before = conv.weight.clone()
    assert whiten_first_conv(model, cifar_data, eps=1e-8)
    assert not torch.equal(before, conv.weight)
    assert torch.allclose(conv.weight[0], -conv.weight[1])  # +/- pairs
    from nas.data import normalize

    with torch.no_grad():
        y = conv(normalize(cifar_data.train_x[:500], cifar_data.mean, cifar_data.std))
    var = y[:, 0::2].transpose(0, 1).reshape(y.shape[1] // 2, -1).var(1)
    assert torch.allclose(var, torch.ones_like(var), atol=0.1)


def test_distillation_loss_falls_to_the_plain_loss_at_weight_zero():
    student, teacher = torch.randn(16, 100), torch.randn(16, 100)
    labels = torch.randint(0, 100, (16,))
    plain = torch.nn.functional.cross_entropy(student, labels, label_smoothing=0.1)
    assert torch.allclose(training_loss(student, labels, Recipe(kd_alpha=0.0), teacher), plain)
    kd = distillation_loss(student, teacher, 4.0)
    assert kd > 0 and torch.allclose(distillation_loss(teacher, teacher, 4.0), torch.zeros(()), atol=1e-6)
    mixed = training_loss(student, labels, Recipe(kd_alpha=0.5, kd_temperature=4.0), teacher)
    assert torch.allclose(mixed, 0.5 * plain + 0.5 * kd)


def test_a_teacher_changes_what_the_student_learns(cifar_data):
    teacher = train(SMALL, cifar_data, FAST).model.eval()
    student = Genome.from_dict({"family": "conv", "genes": {"depth": [1, 1, 1, 1], "width": [4, 8, 8, 16]}})
    alone = train(student, cifar_data, replace(FAST, epochs=1))
    taught = train(student, cifar_data, replace(FAST, epochs=1, kd_alpha=0.9), teacher=teacher)
    assert alone.curve[0]["train_loss"] != taught.curve[0]["train_loss"]
    with pytest.raises(NasError, match="needs a teacher"):
        train(student, cifar_data, replace(FAST, kd_alpha=0.5))


def test_nas_train_with_a_teacher(cifar_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    args = ["--epochs", "1", "--data-dir", str(cifar_dir), "--device", "cpu", "--batch-size", "64", "--val-size", "200"]
    assert main(["train", SMALL.to_json(), *args, "--out", str(teacher)]) == 0
    assert main(["train", "conv:4x1|8x1|8x1|16x1", *args, "--out", str(tmp_path / "s"), "--teacher", str(teacher)]) == 0
    summary = json.loads((tmp_path / "s" / "result.json").read_text())
    assert summary["teacher"] == str(teacher) and summary["recipe"]["kd_alpha"] == 0.5
    assert summary["params"] == sum(p.numel() for p in build_model(Genome.from_dict(summary["genome"])).parameters())
    capsys.readouterr()


@pytest.mark.parametrize(
    "make, message",
    [
        ("ten_classes", "the teacher predicts 10 classes but the data has 100"),
        ("missing", "no such training run folder"),
    ],
)
def test_a_teacher_that_does_not_fit_is_a_one_line_error(make, message, cifar_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    if make == "ten_classes":
        g = Genome.from_dict(
            {"family": "conv", "genes": {"depth": [1, 1, 1, 1], "width": [4, 8, 8, 16]}, "options": {"num_classes": 10}}
        )
        teacher.mkdir()
        (teacher / "genome.json").write_text(g.to_json())
        torch.save(build_model(g).state_dict(), teacher / "model.pt")
    args = ["--epochs", "1", "--data-dir", str(cifar_dir), "--device", "cpu", "--val-size", "200"]
    assert main(["train", "conv:4x1|8x1|8x1|16x1", *args, "--out", str(tmp_path / "s"), "--teacher", str(teacher)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
