"""`nas sweep` on fixture data: one study per budget, final test accuracy, resume without redoing."""

import json

import optuna
import pytest

from nas.errors import NasError
from nas.budget import parse_budgets
from nas.report import write_report, write_summary_json
from nas.sweep import sweep

OPTS = dict(searcher="random", trials=2, epochs=1, val_size=200, pruner="none", progress=False)


def test_parse_budgets():
    assert parse_budgets("1000, 5k,1M,5000") == [1000, 5000, 1_000_000]
    for bad in ("", "10,abc", "0", "-5", "1000,,5000", "1000,"):
        with pytest.raises(NasError):
            parse_budgets(bad)


def test_two_budget_sweep_resumes_and_reports(cifar_dir, tmp_path):
    storage = f"sqlite:///{tmp_path}/sweep.db"
    runs = tmp_path / "runs"
    outcomes = sweep("conv", [3000, 8000], final_epochs=2, storage=storage, data_dir=cifar_dir,
                     runs_dir=runs, **OPTS)
    assert [o.budget for o in outcomes] == [3000, 8000]
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
    # budget transfer: the 3k winner, projected to 8k, is a trial of the 8k search
    second = optuna.load_study(study_name=outcomes[1].search.study_name, storage=storage)
    assert [t.user_attrs["seed"] for t in second.trials if "seed" in t.user_attrs] == ["start", "transfer:3000"]
    trials_before = {s.study_name: s.n_trials for s in summaries}

    again = sweep("conv", [3000, 8000], final_epochs=2, storage=storage, data_dir=cifar_dir,
                  runs_dir=runs, **OPTS)
    assert all(o.final_reused for o in again)
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == trials_before

    html = write_report(storage, tmp_path / "sweep.html").read_text()
    for o in outcomes:
        assert o.final["genome_str"] in html
        assert o.baselines["hand"]["genome_str"] in html
    assert "Accuracy vs parameters" in html or "accuracy vs parameters" in html.lower()
    assert "What search added" in html and "Winners&#x27; shapes across budgets" in html or "shapes across budgets" in html

    summary = json.loads(write_summary_json(storage, tmp_path / "sweep.json").read_text())
    assert [b["budget"] for b in summary["budgets"]] == [3000, 8000]
    for b, o in zip(summary["budgets"], outcomes):
        assert b["winner"]["genome_str"] == o.final["genome_str"] and b["winner"]["test_acc"] == o.final["test_acc"]
        assert b["baselines"]["hand"]["test_acc"] == o.baselines["hand"]["test_acc"]
        assert b["final_epochs"] == 2 and b["search_minutes"] > 0


def test_nas_sweep_and_report_cli(cifar_dir, tmp_path, capsys, monkeypatch):
    from nas.cli import main

    monkeypatch.chdir(tmp_path)  # default runs/ and reports/ folders land here
    storage = f"sqlite:///{tmp_path}/cli.db"
    argv = ["sweep", "--budgets", "3k", "--space", "conv", "--searcher", "random", "--trials", "2", "--subset", "all",
            "--epochs", "1", "--final-epochs", "1", "--val-size", "200", "--pruner", "none", "--quiet",
            "--storage", storage, "--data-dir", str(cifar_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3,000" in out and "test acc" in out and "optuna-dashboard sqlite:///" in out
    assert (tmp_path / "reports" / "cli.html").is_file()
    assert main(["report", "--storage", storage, "--out", str(tmp_path / "r.html")]) == 0
    assert "3,000" in (tmp_path / "r.html").read_text()
    # a mistyped storage is an error, not a new empty study
    code = main(["report", "--storage", str(tmp_path / "missing.log")])
    assert code == 2 and "no study storage" in capsys.readouterr().err
