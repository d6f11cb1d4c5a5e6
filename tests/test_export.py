"""nas export: ONNX files that match PyTorch, model cards, STUDY#N, and the errors a user meets."""

from __future__ import annotations

import json
import shlex

import numpy as np
import optuna
import pytest
import torch

from nas.cli import main
from nas.counting import count_flops, count_params
from nas.errors import NasError
from nas.export import CHECK_TOLERANCE, card_path_for, export_run, onnx_logits
from nas.families import build_model
from nas.runs import load_trained
from nas.spaces import Genome, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONV = '{"family": "conv", "genes": {"depth": [1, 1, 1, 1], "width": [8, 8, 16, 16]}}'


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, _cifar_files):
    """A conv model trained 2 epochs on the fixture data by `nas train` (BatchNorm statistics are
    real running averages, not the initial 0/1)."""
    from conftest import use_fixture_checksums

    root, md5 = _cifar_files
    mp = pytest.MonkeyPatch()
    use_fixture_checksums(mp, md5)
    out = tmp_path_factory.mktemp("export") / "run"
    try:
        assert (
            main(
                [
                    "train",
                    CONV,
                    "--epochs",
                    "1",
                    "--data-dir",
                    str(root),
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
            == 0
        )
    finally:
        mp.undo()
    return out


def synthetic_run(folder, genome: Genome, with_input: bool = True):
    """A run folder as nas train writes it, for a model with random weights and random BatchNorm
    running statistics (no training: fast, and far from the identity BatchNorm starts as)."""
    torch.manual_seed(0)
    model = build_model(genome)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "genome.json").write_text(genome.to_json())
    result = {
        "genome_str": str(genome),
        "recipe": {"epochs": 1},
        "val_acc": 0.1,
        "test_acc": 0.05,
        "epochs": 1,
        "val_size": 200,
        "train_size": 1800,
    }
    if with_input:
        result["input"] = {"shape": [3, 32, 32], "mean": [0.5, 0.48, 0.44], "std": [0.27, 0.26, 0.28]}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_export_of_a_trained_run_matches_pytorch_on_test_images(trained_run, cifar_dir, tmp_path):
    from nas.data import load_test_images, normalize

    out = tmp_path / "m" / "model.onnx"
    r = export_run(trained_run, out, data_dir=cifar_dir)
    assert out.is_file() and r.card_path == tmp_path / "m" / "model.card.json" and r.card_path.is_file()
    card = json.loads(r.card_path.read_text())
    result = json.loads((trained_run / "result.json").read_text())
    genome, model = load_trained(trained_run)
    # what the card says
    assert card["genome_str"] == str(genome) == "conv:8x1|8x1|16x1|16x1"
    assert card["params"] == count_params(genome) and card["flops"] == count_flops(genome)
    assert card["recipe"] == result["recipe"] and card["test_acc"] == result["test_acc"]
    assert card["input"]["shape"] == ["batch", 3, 32, 32] and card["output"]["num_classes"] == 100
    assert card["input"]["mean"] == result["input"]["mean"] and len(card["input"]["std"]) == 3
    assert card["check"]["inputs"] == "the first 100 CIFAR-100 test images" and card["check"]["images"] == 100
    assert card["check"]["max_abs_diff"] <= CHECK_TOLERANCE and card["check"]["top1_agree"] == 100
    # and checked independently: the card's normalisation, 100 test images, ONNX Runtime vs PyTorch
    assert any(m.running_mean.abs().sum() > 0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    images, _ = load_test_images(cifar_dir, 100)
    x = normalize(images, torch.tensor(card["input"]["mean"]), torch.tensor(card["input"]["std"]))
    with torch.no_grad():
        ref = model(x).numpy()
    diff = np.abs(onnx_logits(out, x) - ref).max()
    print(f"ONNX vs PyTorch, 100 fixture test images: max abs diff {diff:.3e}")
    assert diff <= CHECK_TOLERANCE
    # the batch size is dynamic
    for n in (1, 7):
        assert onnx_logits(out, x[:n]).shape == (n, 100)


@pytest.mark.parametrize("space", ["mbconv", "mbconv-linear", "conv-res"])
def test_every_family_exports_within_tolerance(space, tmp_path):
    """Depthwise convs, SiLU, squeeze-excitation, strided downsampling, residuals: random weights
    and BatchNorm statistics, checked on random images (no data set here)."""
    sp = load_space(space)
    genome = (
        next(iter(sp.presets.values()))
        if sp.presets
        else sp.from_vector([g.minimum for g in (sp.genes[n] for n, _ in sp.coords)])
    )
    run = synthetic_run(tmp_path / "run", genome)
    r = export_run(run, tmp_path / "m.onnx", data_dir=tmp_path / "no-data")
    check = r.card["check"]
    assert check["inputs"].startswith("100 random images") and "CIFAR-100 not found" in check["inputs"]
    assert check["max_abs_diff"] <= CHECK_TOLERANCE and check["top1_agree"] == 100


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    import nas.export

    run = synthetic_run(tmp_path / "run", Genome.from_json(CONV))
    monkeypatch.setattr(nas.export, "compare", lambda *a: {"max_abs_diff": 0.5, "top1_agree": 90, "images": 100})
    with pytest.raises(NasError, match="export check failed: .* 5.00e-01 .*nothing written"):
        export_run(run, tmp_path / "m.onnx", data_dir=tmp_path / "no-data")
    assert list(tmp_path.glob("*.onnx")) == [] and not list(tmp_path.glob(".*tmp"))
    r = export_run(run, tmp_path / "m.onnx", check=False)
    assert r.card["check"] == {"skipped": True, "inputs": None} and (tmp_path / "m.onnx").is_file()


def test_old_run_without_normalisation_is_recomputed_from_the_data(trained_run, cifar_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    result = json.loads((old / "result.json").read_text())
    spec = result.pop("input")
    result.pop("subset")
    (old / "result.json").write_text(json.dumps(result))
    r = export_run(old, tmp_path / "m.onnx", data_dir=cifar_dir)
    assert r.card["input"]["mean"] == pytest.approx(spec["mean"]) and r.card["input"]["std"] == pytest.approx(
        spec["std"]
    )
    with pytest.raises(NasError, match="no normalisation statistics .* cannot be recomputed: CIFAR-100 not found"):
        export_run(old, tmp_path / "m2.onnx", data_dir=tmp_path / "no-data")


def test_nas_export_cli(trained_run, cifar_dir, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(trained_run), "-o", str(out), "--data-dir", str(cifar_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"exported: {out}  (conv:8x1|8x1|16x1|16x1, ")
    assert printed[1] == f"card:     {card_path_for(out)}"
    assert printed[2].startswith("check:    ONNX Runtime = PyTorch on the first 100 CIFAR-100 test images: max |diff|")
    assert printed[2].endswith("same top-1 on 100/100")
    # default output: RUN/model.onnx
    assert main(["export", str(trained_run), "--no-check"]) == 0
    assert (trained_run / "model.onnx").is_file() and "check:    skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "no/such/run"], "no/such/run: no such training run folder"),
        (["export", "{run}", "-o", "{tmp}/model.txt"], "output file must end in .onnx"),
        (["export", "mbconv-b1#x", "--storage", "sqlite:///{tmp}/s.db"], "must be a trial number"),
        (["export", "nosuch#1", "--storage", "sqlite:///{tmp}/s.db"], "no study 'nosuch' in sqlite:///"),
    ],
)
def test_export_errors_are_one_line(argv, message, trained_run, tmp_path, capsys):
    argv = [a.format(run=trained_run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nas: error: ") and message in err[0], err


def test_study_trial_export_and_the_way_to_train_one_that_has_no_weights(cifar_dir, tmp_path, capsys, monkeypatch):
    """STUDY#N: the winner with a final training exports; another trial says which `nas train` to
    run, and following that advice, as a user would, gives a run that exports."""
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/s.db"
    winner = Genome.from_json(CONV)
    other = Genome.from_json('{"family": "conv", "genes": {"depth": [1, 1, 1, 1], "width": [4, 8, 8, 16]}}')
    study = optuna.create_study(study_name="conv-b3000-test", storage=storage, direction="maximize")
    for g, value in ((winner, 0.3), (other, 0.2)):
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                user_attrs={"genome": g.to_json(), "genome_str": str(g), "recipe": {"epochs": 1, "batch_size": 64}},
            )
        )
    run = synthetic_run(tmp_path / "runs" / "final" / "conv-b3000-test", winner)
    study.set_user_attr("val_size", 200)
    study.set_user_attr(
        "final",
        {"trial": 0, "genome": winner.to_json(), "run_dir": "runs/final/conv-b3000-test", "recipe": {"epochs": 1}},
    )
    assert (
        main(["export", "conv-b3000-test#0", "--storage", storage, "-o", "w.onnx", "--data-dir", str(cifar_dir)]) == 0
    )
    card = json.loads((tmp_path / "w.card.json").read_text())
    assert card["source"]["study"] == "conv-b3000-test" and card["source"]["trial"] == 0
    assert card["source"]["run_dir"] == str(run.relative_to(tmp_path))
    capsys.readouterr()

    assert main(["export", "conv-b3000-test#1", "--storage", storage, "-o", "o.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trial #1 of study 'conv-b3000-test' has no trained weights" in err
    train = err.split("train it with  ", 1)[1].split("  then  ", 1)[0]
    export = err.split("  then  ", 1)[1]
    assert train.startswith("nas train ") and "--epochs 1" in train and "--batch-size 64" in train
    assert "--val-size 200" in train and export == "nas export runs/conv-b3000-test-t1"
    assert main([*shlex.split(train)[1:], "--data-dir", str(cifar_dir), "--device", "cpu"]) == 0
    assert main([*shlex.split(export)[1:], "-o", "o.onnx", "--data-dir", str(cifar_dir)]) == 0
    assert json.loads((tmp_path / "o.card.json").read_text())["genome_str"] == str(other)
