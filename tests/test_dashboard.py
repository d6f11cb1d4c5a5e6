"""optuna-dashboard on a study store shows our trials: start the real command on 127.0.0.1
against a small study written per docs/design.md and read the trials through its HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard not installed (pip install -e .[test])")
optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = "mbconv-b5000-e3"
START_TIMEOUT_S = 30

# The same code the `optuna-dashboard` console script runs, under this interpreter, so the test
# does not depend on which script PATH finds first.
DASHBOARD = [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; sys.argv[0] = 'optuna-dashboard'; main()"]


def make_study(path: Path) -> str:
    storage = f"sqlite:///{path}"
    study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    study.set_user_attr("budget", 5000)
    study.set_user_attr("searcher", "fdpg")
    for n, acc in enumerate([0.11, 0.14, 0.125]):
        curve = [{"epoch": e, "train_loss": 4.0 / e, "val_acc": acc * e / 3} for e in (1, 2, 3)]
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=acc,
            intermediate_values={c["epoch"]: c["val_acc"] for c in curve},
            user_attrs={"genome_str": f"mbconv:s16|16x1e4k3|32x1e4k3|32x1e4k3|{40 + n}x1e4k3",
                        "params": 4900 + n, "curve": curve, "role": "centre" if n == 0 else "neighbour",
                        "step": 0, "device": "cpu"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"failure": "diverged"}))
    return storage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return json.load(r)


@pytest.fixture
def dashboard(tmp_path):
    """Base URL of an optuna-dashboard serving a small study; stopped after the test."""
    storage = make_study(tmp_path / "nas.db")
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen(DASHBOARD + [storage, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref"],
                            stdout=log, stderr=subprocess.STDOUT)
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
        yield base
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
    studies = get_json(f"{dashboard}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [STUDY]
    assert attrs(studies[0]["user_attrs"]) == {"budget": "5000", "searcher": "fdpg"}

    detail = get_json(f"{dashboard}/api/studies/{studies[0]['study_id']}?after=0")
    trials = detail["trials"]
    assert [t["state"] for t in trials] == ["Complete"] * 3 + ["Fail"]
    assert [t["values"] for t in trials[:3]] == [[0.11], [0.14], [0.125]]
    assert [t["number"] for t in detail["best_trials"]] == [1]
    assert detail["has_intermediate_values"] is True

    first = trials[0]
    a = attrs(first["user_attrs"])
    assert a["genome_str"] == "mbconv:s16|16x1e4k3|32x1e4k3|32x1e4k3|40x1e4k3"
    assert a["params"] == "4900" and a["role"] == "centre" and a["step"] == "0"
    assert json.loads(a["curve"])[-1] == {"epoch": 3, "train_loss": 4.0 / 3, "val_acc": pytest.approx(0.11)}
    assert [(v["step"], v["value"]) for v in first["intermediate_values"]] == \
        [(1, pytest.approx(0.11 / 3)), (2, pytest.approx(0.22 / 3)), (3, pytest.approx(0.11))]
    assert attrs(trials[3]["user_attrs"]) == {"failure": "diverged"}

    # `after` pages through trials, which is how the dashboard refreshes a running study
    assert [t["number"] for t in get_json(f"{dashboard}/api/studies/{studies[0]['study_id']}?after=2")["trials"]] == [2, 3]
