"""`nas sweep` on fixture data: one study per budget, final test accuracy, ONNX export of each
winner, resume without redoing."""

import json
import re
import shutil
import time

import optuna
import pytest

from nas.budget import parse_budgets, project
from nas.errors import NasError
from nas.liveness import CLAIM_PREFIX
from nas.report import write_report
from nas.search import SearchConfig, default_start
from nas.spaces import load_space
from nas.summary import write_summary_json
from nas.sweep import sweep
from nas.training import space_recipe, training_precision

OPTS = {
    "config": SearchConfig("random", trials=2, val_size=200, pruner="none"),
    "progress": False,
    "recipe": space_recipe(load_space("conv"), epochs=1),
}


def plotted(page: str, div_id: str) -> list[dict]:
    """The traces a report page hands to plotly for the plot in div `div_id`."""
    start = re.search(rf'Plotly\.newPlot\(\s*"{div_id}",\s*', page)
    assert start, f"no plot {div_id} in the page"
    return json.JSONDecoder().raw_decode(page, start.end())[0]


def test_parse_budgets():
    assert parse_budgets("1000, 5k,1M,5000") == [1000, 5000, 1_000_000]
    for bad in ("", "10,abc", "0", "-5", "1000,,5000", "1000,"):
        with pytest.raises(NasError):
            parse_budgets(bad)


def test_two_budget_sweep_resumes_and_reports(cifar_dir, tmp_path, monkeypatch):
    import nas.data

    reads = []  # every CIFAR file decoded, by whichever path (training, search split, export check)
    real_read = nas.data._read_split
    monkeypatch.setattr(nas.data, "_read_split", lambda root, train: reads.append(train) or real_read(root, train))
    storage = f"sqlite:///{tmp_path}/sweep.db"
    runs = tmp_path / "runs"
    outcomes = sweep(
        "conv",
        [3000, 8000],
        final_epochs=2,
        storage=storage,
        data_dir=cifar_dir,
        runs_dir=runs,
        baselines=["hand"],
        **OPTS,
    )
    assert [o.budget for o in outcomes] == [3000, 8000]
    # two searches, four final trainings and two exports: the training and test files are read once
    assert reads == [True, False]
    summaries = optuna.get_all_study_summaries(storage)
    assert len(summaries) == 2
    for o in outcomes:
        final = o.final
        assert not o.final_reused and final is not None
        assert final["params"] <= o.budget and 0 <= final["test_acc"] <= 1
        assert final["epochs"] == 2 and len(final["curve"]) == 2
        assert (runs / o.search.study_name / "final" / "model.pt").is_file()
        assert final["train_size"] == 2000  # every fixture training image: no validation split held out
        study = optuna.load_study(study_name=o.search.study_name, storage=storage)
        assert study.user_attrs["final"]["test_acc"] == final["test_acc"]
        # the hand design is trained beside the winner with the same recipe and epochs; no reference
        # model was built near 3k or 8k parameters
        hand = o.baselines["hand"]
        assert set(o.baselines) == {"hand"} and hand["epochs"] == 2 and hand["recipe"] == final["recipe"]
        assert study.user_attrs["baseline:hand"]["test_acc"] == hand["test_acc"]
        # the hand design was the search's first trial
        first = min(study.trials, key=lambda t: t.number)
        assert first.user_attrs["role"] == "start" and first.user_attrs["genome"] == hand["genome"]
        # each winner is exported, checked on the test images, into its run folder
        assert o.onnx == runs / o.search.study_name / "final" / "model.onnx" and o.onnx.is_file()
        assert study.user_attrs["final"]["onnx"] == str(o.onnx)
        card = json.loads((o.onnx.parent / "model.card.json").read_text())
        assert card["test_acc"] == final["test_acc"] and card["check"]["max_abs_diff"] <= 1e-4
        assert card["check"]["inputs"] == "the first 100 CIFAR-100 test images"
    # budget transfer: the 3k winner, projected to 8k, is a trial of the 8k search
    second = optuna.load_study(study_name=outcomes[1].search.study_name, storage=storage)
    assert [t.user_attrs["seed"] for t in second.trials if "seed" in t.user_attrs] == ["start", "transfer:3000"]
    trials_before = {s.study_name: s.n_trials for s in summaries}

    exported = {o.budget: o.onnx.stat().st_mtime_ns for o in outcomes}
    again = sweep(
        "conv",
        [3000, 8000],
        final_epochs=2,
        storage=storage,
        data_dir=cifar_dir,
        runs_dir=runs,
        baselines=["hand"],
        **OPTS,
    )
    assert all(o.final_reused for o in again)
    assert reads[2:] in ([], [True, False])  # the rerun, too, reads the files at most once
    assert {o.budget: o.onnx.stat().st_mtime_ns for o in again} == exported  # not exported again
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == trials_before
    # a rerun with --time keeps the epochs the winners were trained for, however fast the machine
    # is now, so nothing is trained again; and a budget whose winner is trained has ended its
    # search, so the time its share has left (no trial cap here) buys no more trials
    import nas.sweep_plan

    monkeypatch.setattr(nas.sweep_plan, "equal_epochs", lambda *args: 7)
    timed = sweep(
        "conv",
        [3000, 8000],
        time_limit=600,
        storage=storage,
        data_dir=cifar_dir,
        runs_dir=runs,
        baselines=["hand"],
        **{**OPTS, "config": SearchConfig("random", val_size=200, pruner="none")},
    )
    assert all(o.final_reused and o.final["epochs"] == 2 for o in timed)
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == trials_before

    html = write_report(storage, tmp_path / "sweep.html").read_text()
    for o in outcomes:
        assert o.final["genome_str"] in html
        assert o.baselines["hand"]["genome_str"] in html
    # the curve: each budget's winner at its parameter count and final test accuracy, beside the
    # search's best; then what search added over the hand design, and the winners' shapes
    series = outcomes[0].search.study_name.replace("-b3000", "")
    curve = {t["name"]: t for t in plotted(html, "accuracy-vs-params")}
    winners = curve[f"{series}: winners, final test acc"]
    assert winners["x"] == [o.final["params"] for o in outcomes]
    assert winners["y"] == pytest.approx([100 * o.final["test_acc"] for o in outcomes])
    best = curve[f"{series}: best per budget (search score)"]
    assert best["x"] == [o.search.best.user_attrs["params"] for o in outcomes]
    assert best["y"] == pytest.approx([100 * o.search.best.value for o in outcomes])
    added = {t["name"]: t for t in plotted(html, "search-added")}
    assert added["search winner"]["x"] == ["3k", "8k"]
    assert added["search winner"]["y"] == pytest.approx([100 * o.final["test_acc"] for o in outcomes])
    assert added["hand design"]["y"] == pytest.approx([100 * o.baselines["hand"]["test_acc"] for o in outcomes])
    assert [t["name"] for t in plotted(html, "winner-shapes") if t.get("showlegend", True)] == ["3k", "8k"]

    # the exported winners, copied beside the report as <budget>.onnx with their cards
    from nas.summary import collect_models

    models = collect_models(storage, tmp_path / "sweep")
    assert [p.name for p in models] == ["3000.onnx", "8000.onnx"]
    assert all(p.with_name(p.stem + ".card.json").is_file() for p in models)
    assert models[0].read_bytes() == outcomes[0].onnx.read_bytes()

    summary = json.loads(write_summary_json(storage, tmp_path / "sweep.json").read_text())
    assert [b["budget"] for b in summary["budgets"]] == [3000, 8000]
    for b, o in zip(summary["budgets"], outcomes):
        assert b["winner"]["genome_str"] == o.final["genome_str"] and b["winner"]["test_acc"] == o.final["test_acc"]
        assert b["baselines"]["hand"]["test_acc"] == o.baselines["hand"]["test_acc"]
        assert b["final_epochs"] == 2 and b["search_minutes"] > 0
    # the Markdown table beside it: one row per budget, from the same records
    rows = [
        line
        for line in (tmp_path / "sweep.md").read_text().splitlines()
        if line.startswith("| 3,000") or line.startswith("| 8,000")
    ]
    assert len(rows) == 2
    for row, o in zip(rows, outcomes):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert cells[1] == f"`{o.final['genome_str']}`".replace("|", "\\|")
        assert cells[3].startswith(f"**{100 * o.final['test_acc']:.2f}%**")
        assert cells[4] == "—"  # no aim at 3k or 8k
        assert cells[5].startswith(f"{100 * o.baselines['hand']['test_acc']:.2f}%")
    # a winner that tests below the budget before it is flagged
    falls = outcomes[1].final["test_acc"] < outcomes[0].final["test_acc"]
    assert ("below the budget before" in rows[1]) == falls and "below the budget before" not in rows[0]


def test_a_hand_design_that_won_is_trained_once_for_both_rows(cifar_dir, tmp_path, monkeypatch):
    """When the search's winner is the hand design (its first trial), the hand baseline is the
    same genome, recipe and seed: one training serves both, and the report shows both numbers."""
    import nas.runs

    trained = []
    real_train = nas.runs.train
    monkeypatch.setattr(nas.runs, "train", lambda g, *a, **k: trained.append(str(g)) or real_train(g, *a, **k))
    storage = f"sqlite:///{tmp_path}/sweep.db"
    only_the_start = {**OPTS, "config": SearchConfig("random", trials=1, val_size=200, pruner="none", finalists=0)}
    args = {"final_epochs": 1, "storage": storage, "data_dir": cifar_dir, "runs_dir": tmp_path / "runs"}
    (o,) = sweep("conv", [3000], baselines=["hand"], **args, **only_the_start)
    assert o.final["genome"] == o.baselines["hand"]["genome"]
    assert trained == [o.final["genome_str"]]  # one final training (the search's trials train elsewhere)
    hand = o.baselines["hand"]
    assert hand["test_acc"] == o.final["test_acc"] and hand["run_dir"] == o.final["run_dir"]
    assert hand["same_as"] == "final" and "trial" not in hand
    summary = json.loads(write_summary_json(storage, tmp_path / "sweep.json").read_text())
    assert summary["budgets"][0]["baselines"]["hand"]["test_acc"] == o.final["test_acc"]
    # a rerun reuses both records
    (again,) = sweep("conv", [3000], baselines=["hand"], **args, **only_the_start)
    assert again.final_reused and len(trained) == 1
    # in a fresh clone (no run folders) the winner is trained again to be exported, not taken
    # from its baseline's record, whose weights are not here either
    shutil.rmtree(tmp_path / "runs")
    (fresh,) = sweep("conv", [3000], baselines=["hand"], retrain_missing=True, **args, **only_the_start)
    assert len(trained) == 2 and fresh.onnx is not None and fresh.onnx.is_file()
    # the hand row was that training: it takes the new record (the same seed on another CPU can
    # give another model, so the old numbers would no longer be the winner's)
    hand = fresh.baselines["hand"]
    assert hand["same_as"] == "final" and hand["wall_time_s"] == fresh.final["wall_time_s"] != o.final["wall_time_s"]


def test_baselines_trained_beside_the_sweep_are_not_trained_again(cifar_dir, tmp_path, monkeypatch, capsys):
    """`nas sweep --baselines-only` trains the sweep's baselines, largest budget first, into its
    storage; the sweep with the same options then trains only its winners."""
    import nas.runs
    from nas.cli import main

    trained = []
    real_train = nas.runs.train
    monkeypatch.setattr(nas.runs, "train", lambda g, *a, **k: trained.append(str(g)) or real_train(g, *a, **k))
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/sweep.db"
    common = ["--space", "conv", "--searcher", "random", "--trials", "2", "--epochs", "1", "--val-size", "200"]
    common += [
        "--subset",
        "all",
        "--pruner",
        "none",
        "--final-epochs",
        "1",
        "--baselines",
        "hand",
        "--storage",
        storage,
    ]
    common += ["--data-dir", str(cifar_dir), "--budgets", "3000,8000"]
    assert main(["sweep", "--baselines-only", *common]) == 0
    out = capsys.readouterr().out
    assert "budget 3,000: hand " in out and "budget 8,000: hand " in out
    assert re.search(r"budget 8,000: the hand design tests \d+\.\d\d% after 1 epoch \(", out)
    hands = [str(project(default_start(load_space("conv")), load_space("conv"), b, 0.1)) for b in (8000, 3000)]
    assert trained == hands  # largest budget first, nothing searched
    assert not any(s.n_trials for s in optuna.get_all_study_summaries(storage))

    assert main(["sweep", *common, "--quiet"]) == 0
    studies = [
        optuna.load_study(study_name=x.study_name, storage=storage) for x in optuna.get_all_study_summaries(storage)
    ]
    assert len(studies) == 2 and all(x.trials for x in studies)  # the sweep searched the baselines' studies
    finals = [x.user_attrs["final"] for x in studies]
    assert trained[:2] == hands and all(g not in hands for g in trained[2:])  # since then only winners trained
    assert len(trained) == 2 + sum("same_as" not in f for f in finals)  # a winner that is the hand design reuses it


def test_a_training_another_live_process_is_running_is_waited_for(cifar_dir, tmp_path, monkeypatch, capsys):
    """Two processes on one storage train each model once: a baseline another process is training
    (its claim renewed each heartbeat) is waited for and its record taken; a claim gone silent (a
    process that died) is not waited for."""
    import threading
    import time

    import nas.runs
    from nas.liveness import CLAIM_PREFIX
    from nas.sweep import train_baselines

    monkeypatch.setenv("NAS_HEARTBEAT_SECONDS", "0.5")
    trained = []
    real_train = nas.runs.train
    monkeypatch.setattr(nas.runs, "train", lambda g, *a, **k: trained.append(str(g)) or real_train(g, *a, **k))
    storage = f"sqlite:///{tmp_path}/sweep.db"
    args = {"final_epochs": 1, "storage": storage, "data_dir": cifar_dir, "runs_dir": tmp_path / "runs"}
    args |= {"baselines": ["hand"], "config": OPTS["config"], "recipe": OPTS["recipe"]}
    record = train_baselines("conv", [3000], progress=False, **args)[3000]["hand"]
    assert len(trained) == 1
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    claim = CLAIM_PREFIX + "baseline:hand"
    assert study.user_attrs[claim] is None  # withdrawn when the training ended

    def other_process(beats: int) -> None:  # trains the hand design, then records it
        for _ in range(beats):
            study.set_user_attr(claim, {**mine, "by": "elsewhere pid 1", "beat": time.time()})
            time.sleep(0.2)
        study.set_user_attr("baseline:hand", record)
        study.set_user_attr(claim, None)

    mine = {"genome": record["genome"], "recipe": record["recipe"]}
    study.set_user_attr("baseline:hand", None)  # not trained yet, and the other process's claim is live
    study.set_user_attr(claim, {**mine, "by": "elsewhere pid 1", "beat": time.time()})
    worker = threading.Thread(target=other_process, args=(8,))
    worker.start()
    again = train_baselines("conv", [3000], progress=True, **args)[3000]["hand"]
    worker.join()
    assert again == record and len(trained) == 1
    waited = "budget 3,000: elsewhere pid 1 is training the hand design; waiting for its record"
    assert waited in capsys.readouterr().out
    # a claim whose process died (silent for more than twice the heartbeat) is trained over
    study.set_user_attr("baseline:hand", None)
    study.set_user_attr(claim, {**mine, "by": "elsewhere pid 1", "beat": time.time() - 5})
    train_baselines("conv", [3000], progress=True, **args)
    assert len(trained) == 2 and "waiting" not in capsys.readouterr().out


def test_nas_sweep_and_report_cli(cifar_dir, tmp_path, capsys, monkeypatch):
    from nas.cli import main

    monkeypatch.chdir(tmp_path)  # default runs/ and reports/ folders land here
    storage = f"sqlite:///{tmp_path}/cli.db"
    common = [
        "--space",
        "conv",
        "--searcher",
        "random",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--val-size",
        "200",
        "--subset",
        "all",
        "--pruner",
        "none",
        "--quiet",
        "--storage",
        storage,
        "--data-dir",
        str(cifar_dir),
    ]
    # search --export before any final training: the search is kept, the export says how to get weights
    search = ["search", "--budget", "3000", *common, "--export", "best.onnx"]
    assert main(search) == 2
    captured = capsys.readouterr()
    assert "rank" in captured.out and not (tmp_path / "best.onnx").exists()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "has no trained weights" in err[0] and "nas train '{" in err[0]

    argv = ["sweep", "--budgets", "3k", "--final-epochs", "1", *common]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3,000" in out and "test acc" in out and "optuna-dashboard sqlite:///" in out
    assert "onnx:      runs/final/conv-b3000-" in out and "/model.onnx" in out
    # now the winner has a final training: search --export exports it (no new trials)
    assert main(search) == 0
    assert (tmp_path / "best.onnx").is_file() and (tmp_path / "best.card.json").is_file()
    assert "exported: best.onnx" in capsys.readouterr().out
    assert (tmp_path / "reports" / "cli.html").is_file()
    assert main(["report", "--storage", storage, "--out", str(tmp_path / "r.html")]) == 0
    assert "3,000" in (tmp_path / "r.html").read_text()
    summary = json.loads((tmp_path / "r.json").read_text())  # the JSON summary beside the page
    assert [b["budget"] for b in summary["budgets"]] == [3000]
    # a mistyped storage is an error, not a new empty study
    code = main(["report", "--storage", str(tmp_path / "missing.log")])
    assert code == 2 and "no study storage" in capsys.readouterr().err


def test_interrupted_sweep_leaves_finished_winners_exported(cifar_dir, tmp_path):
    """Ctrl-C in the second budget's search: the first budget's winner is already exported; the
    rerun exports a winner whose export was lost (deleted here) without training it again."""

    def objective(genome, trial):
        from nas.counting import count_params

        if count_params(genome) > 3000:
            raise KeyboardInterrupt
        return 0.01 * (count_params(genome) % 7)

    storage = f"sqlite:///{tmp_path}/int.db"
    runs = tmp_path / "runs"
    opts = {**OPTS, "objective": objective}
    with pytest.raises(KeyboardInterrupt):
        sweep("conv", [3000, 8000], final_epochs=1, storage=storage, data_dir=cifar_dir, runs_dir=runs, **opts)
    (first,) = [p.parent for p in runs.glob("*/final/model.pt")]
    assert (first / "model.onnx").is_file() and (first / "model.card.json").is_file()
    (first / "model.onnx").unlink()
    again = sweep("conv", [3000], final_epochs=1, storage=storage, data_dir=cifar_dir, runs_dir=runs, **opts)
    assert again[0].final_reused and again[0].onnx == first / "model.onnx" and again[0].onnx.is_file()


def test_a_winner_whose_weights_are_gone_is_trained_again_when_asked(cifar_dir, tmp_path, capsys, monkeypatch):
    """A journal resumed in a fresh clone has the winners' records but not their run folders: the
    sweep says so, and with retrain_missing trains the winner again (same recipe and seed, so the
    same test accuracy on this CPU) and exports it, also after waiting out the claim of an
    earlier retraining that was killed (whose record is still the old one)."""
    storage = f"sqlite:///{tmp_path}/gone.db"
    runs = tmp_path / "runs"
    opts = {**OPTS, "progress": True, "final_epochs": 1, "storage": storage, "data_dir": cifar_dir}
    (first,) = sweep("conv", [3000], runs_dir=runs, baselines=["hand"], **opts)
    elsewhere = tmp_path / "fresh-clone-runs"
    shutil.move(runs, elsewhere)  # the run folders are not in the new checkout
    (kept,) = sweep("conv", [3000], runs_dir=runs, baselines=["hand"], **opts)
    assert kept.final_reused and kept.onnx is None
    assert "not exported: the final training's weights are not in" in capsys.readouterr().out
    # the record says which precision trained it; make it the other one, as if trained on the
    # other kind of machine (a GPU or a CPU with native bf16, or one without)
    here = training_precision("cpu", first.final["recipe"]["bf16"])
    assert first.final["precision"] == here
    other = "float32" if here == "bf16" else "bf16"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr("final", {**study.user_attrs["final"], "precision": other})
    # a retraining killed a moment ago: its claim is fresh, then goes silent after two heartbeats
    monkeypatch.setenv("NAS_HEARTBEAT_SECONDS", "0.5")
    killed = {"genome": first.final["genome"], "recipe": first.final["recipe"], "by": "vm pid 1", "beat": time.time()}
    study.set_user_attr(CLAIM_PREFIX + "final", killed)

    (again,) = sweep("conv", [3000], runs_dir=runs, baselines=["hand"], retrain_missing=True, **opts)
    out = capsys.readouterr().out
    assert "vm pid 1 is training the winner; waiting for its record" in out
    assert "the winner's weights are not in" in out and "training it again" in out
    assert f"it trained in {other}, this machine trains in {here}: another model" in out
    assert again.final["precision"] == here
    assert not again.final_reused and again.onnx is not None and again.onnx.is_file()
    assert again.final["genome_str"] == first.final["genome_str"]
    assert again.final["test_acc"] == first.final["test_acc"]  # the same training, seeded
    if first.baselines["hand"].get("same_as") == "final":  # the hand design won: its row is that training
        assert again.baselines["hand"]["wall_time_s"] == again.final["wall_time_s"]
    else:
        assert again.baselines["hand"] == first.baselines["hand"]  # a baseline keeps its record
