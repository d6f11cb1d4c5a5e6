"""optuna-dashboard on a study store shows our trials: start the real command on 127.0.0.1
against a small study written by `nas search` and read the trials through its HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import optuna
import pytest
from conftest import PlantedTraining

from nas.search import SearchConfig, search
from nas.training import Recipe

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard not installed (pip install -e .[test])")
optuna.logging.set_verbosity(optuna.logging.WARNING)

START_TIMEOUT_S = 30

# The same code the `optuna-dashboard` console script runs, under this interpreter, so the test
# does not depend on which script PATH finds first.
DASHBOARD = [
    sys.executable,
    "-c",
    "import sys; from optuna_dashboard._cli import main; sys.argv[0] = 'optuna-dashboard'; main()",
]


def make_study(storage: str, data_dir, monkeypatch) -> optuna.Study:
    """A 4-trial TPE search of the conv space on the fixture data whose last trial diverges
    (trainings 1-2 measure the score's noise, 3-6 are the trials)."""
    monkeypatch.setattr("nas.objective.train", PlantedTraining(fail_on=6))
    result = search(
        "conv",
        5000,
        SearchConfig("tpe", trials=4, val_size=200, pruner="none"),
        storage=storage,
        data_dir=data_dir,
        recipe=Recipe(epochs=3),
        progress=False,
    )
    return optuna.load_study(study_name=result.study_name, storage=storage)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return json.load(r)


@pytest.fixture
def dashboard(tmp_path, cifar_dir, monkeypatch):
    """(base URL of an optuna-dashboard serving a small study, the study); stopped after the test."""
    storage = f"sqlite:///{tmp_path / 'nas.db'}"
    study = make_study(storage, cifar_dir, monkeypatch)
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen(
        DASHBOARD + [storage, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"optuna-dashboard exited:\n{(tmp_path / 'dashboard.log').read_text()}"
            try:
                get_json(f"{base}/api/meta")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"optuna-dashboard did not answer within {START_TIMEOUT_S} s"
                time.sleep(0.2)
        yield base, study
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def attrs(items: list[dict]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in items}


def test_dashboard_serves_trials_with_attrs_and_learning_curves(dashboard):
    base, study = dashboard
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [study.study_name]
    shown = attrs(studies[0]["user_attrs"])
    assert (shown["space"], shown["budget"], shown["searcher"]) == ("conv", "5000", "tpe")
    assert json.loads(shown["recipe"]) == study.user_attrs["recipe"]

    detail = get_json(f"{base}/api/studies/{studies[0]['study_id']}?after=0")
    trials, recorded = detail["trials"], study.trials
    assert [t["state"] for t in trials] == ["Complete"] * 3 + ["Fail"]
    assert [t["values"] for t in trials[:3]] == [[t.value] for t in recorded[:3]]
    assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]
    assert detail["has_intermediate_values"] is True

    for shown, t in zip(trials[:3], recorded):
        a = attrs(shown["user_attrs"])
        assert a["genome_str"] == t.user_attrs["genome_str"] and a["role"] == t.user_attrs["role"]
        assert int(a["params"]) == t.user_attrs["params"] <= 5000
        curve = json.loads(a["curve"])
        assert [c["epoch"] for c in curve] == [1, 2, 3] and curve[-1]["val_acc"] == pytest.approx(t.value)
        # the per-epoch validation accuracy is the learning curve the dashboard draws
        assert [(v["step"], v["value"]) for v in shown["intermediate_values"]] == [
            (c["epoch"], pytest.approx(c["val_acc"])) for c in curve
        ]
    assert attrs(trials[0]["user_attrs"])["role"] == "start"  # the hand design comes first
    assert attrs(trials[3]["user_attrs"])["failure"] == recorded[3].user_attrs["failure"]
    assert recorded[3].user_attrs["failure"].startswith("loss became nan at epoch")

    # `after` pages through trials, which is how the dashboard refreshes a running study
    assert [t["number"] for t in get_json(f"{base}/api/studies/{studies[0]['study_id']}?after=2")["trials"]] == [2, 3]
