"""`nas search` end to end on the fixture CIFAR-100: output, report, Ctrl-C and SIGKILL resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import LAUNCHER  # a nas process that reads the fixture data
from optuna.trial import TrialState

from nas.cli import main
from nas.study import DIED, INTERRUPTED, failure_reason

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Small, fast trials: a 3k-parameter model, 600 of the fixture's training images, 200 for validation.
BASE = [
    "search",
    "--budget",
    "3000",
    "--space",
    "mbconv",
    "--jobs",
    "1",
    "--val-size",
    "200",
    "--subset",
    "600",
    "--batch-size",
    "128",
]


def _journal(path: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(path))


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1
    return optuna.load_study(study_name=names[0], storage=storage).get_trials()


def test_search_end_to_end(cifar_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/e2e.db"
    args = [
        *BASE,
        "--searcher",
        "tpe",
        "--trials",
        "2",
        "--epochs",
        "2",
        "--storage",
        storage,
        "--data-dir",
        str(cifar_dir),
    ]
    assert main(args) == 0
    out = capsys.readouterr()
    # the plan first, on stderr with the progress, so stdout keeps only the results
    plan = out.err.splitlines()
    assert plan[0].startswith("plan: tpe search of mbconv, budget 3,000")
    # a CPU search prunes nothing by default (tests/test_plan.py has the line with pruning)
    assert any(
        line.split()
        == [
            "fidelity:",
            "600",
            "training",
            "images",
            "x",
            "2",
            "epochs",
            "per",
            "trial;",
            "200",
            "validation",
            "images",
        ]
        for line in plan
    )
    assert any(line.strip().startswith("ETA:") for line in plan)
    assert out.err.count("trial #") == 2  # a line per trial (bars only on a terminal)
    lines = out.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "trial", "genome"])
    assert lines[head].split()[-4:] == ["params", "FLOPs", "val", "acc"]
    assert lines[head + 1].split()[0] == "1" and "mbconv:" in lines[head + 1]
    assert f"dashboard: optuna-dashboard sqlite:///{tmp_path}/e2e.db" in out.out
    assert (tmp_path / "reports" / "e2e.html").is_file()
    trials = _trials(storage)
    assert len(trials) == 2
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # no pruning on a CPU: both train 2 epochs
    for t in trials:
        a = t.user_attrs
        assert a["params"] <= 3000 and len(a["curve"]) == 2 and a["val_acc"] == t.value
        assert sorted(t.intermediate_values) == [1, 2] and a["searcher"] == "tpe" and "cpu" in a["device"]
    # rerun: nothing left to do, same trials
    assert main(args) == 0
    assert len(_trials(storage)) == 2


def test_fdpg_asymptote_through_the_cli(cifar_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/f.db"
    assert (
        main(
            [
                *BASE,
                "--searcher",
                "fdpg",
                "--start",
                "seed-m4",
                "--trials",
                "3",
                "--epochs",
                "1",
                "--score",
                "asymptote",
                "--storage",
                storage,
                "--data-dir",
                str(cifar_dir),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "asymptote" in out and "fdpg trials" in out
    trials = _trials(storage)
    assert [t.user_attrs["role"] for t in trials] == ["centre", "neighbour", "neighbour"]
    assert all(t.value == pytest.approx(t.user_attrs["asymptote"]) for t in trials)
    assert optuna.get_all_study_names(storage)[0].endswith("-asym-sub600-val200")


def test_a_new_recipe_field_keeps_resuming_the_study(cifar_dir, tmp_path, monkeypatch, capsys):
    """A later version adds a recipe field with a default: the same command resumes the study
    (its trials count) instead of starting a new empty one under a new name."""
    import dataclasses

    import nas.training

    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/r.db"
    args = [
        *BASE,
        "--searcher",
        "random",
        "--trials",
        "1",
        "--epochs",
        "1",
        "--pruner",
        "none",
        "--storage",
        storage,
        "--data-dir",
        str(cifar_dir),
        "--quiet",
    ]
    assert main(args) == 0
    name = optuna.get_all_study_names(storage)[0]
    capsys.readouterr()
    # What adding `mixup: float = 0.0` to Recipe would do (the CLI builds nas.training.Recipe).
    newer = dataclasses.make_dataclass("Recipe", [("mixup", float, 0.0)], bases=(nas.training.Recipe,), frozen=True)
    monkeypatch.setattr(nas.training, "Recipe", newer)
    args[args.index("--trials") + 1] = "2"
    assert main(args) == 0
    assert f"study {name}: 2 random trials" in capsys.readouterr().out
    assert optuna.get_all_study_names(storage) == [name]
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 2 and study.user_attrs["recipe"]["mixup"] == 0.0  # the newer recipe ran
    assert "mixup" not in study.trials[0].user_attrs["recipe"] and "mixup" in study.trials[1].user_attrs["recipe"]


def test_search_errors_are_one_line(tmp_path, capsys):
    assert main(["search", "--budget", "10", "--storage", f"sqlite:///{tmp_path}/x.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nas: error: budget 10 is below")
    assert main(["search", "--budget", "3000", "--storage", f"{tmp_path}/x.txt"]) == 2
    assert "neither a storage URL" in capsys.readouterr().err


def _launch(md5: dict, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    launcher = cwd / "launch.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "NAS_HEARTBEAT_SECONDS": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, str(launcher), json.dumps(md5), *args],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _wait_for_running(storage: str, proc: subprocess.Popen, completed: int, timeout: float = 120) -> None:
    """Until a trial is being evaluated (RUNNING, genome recorded) after `completed` trials completed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the search ended before it could be stopped"
        try:
            trials = _trials(storage)
        except (AssertionError, KeyError, optuna.exceptions.OptunaError, Exception):
            trials = []
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        if done >= completed and any(t.state == TrialState.RUNNING and "genome" in t.user_attrs for t in trials):
            return
        time.sleep(0.2)
    raise AssertionError("no running trial to stop")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["sigkill", "sigint", "sigterm"])
def test_stopped_search_keeps_trials_and_finishes_on_rerun(sig, cifar_dir, _cifar_files, tmp_path):
    _, md5 = _cifar_files
    storage = f"sqlite:///{tmp_path}/k.db"
    args = [
        *BASE,
        "--searcher",
        "random",
        "--trials",
        "3",
        "--epochs",
        "3",
        "--pruner",
        "none",
        "--lr",
        "0.1",  # below mbconv's 0.4, at which a random genome can diverge on the tiny fixture data
        "--storage",
        storage,
        "--data-dir",
        str(cifar_dir),
        "--quiet",
    ]
    log = tmp_path / "log.txt"
    proc = _launch(md5, args, tmp_path, log)
    try:
        _wait_for_running(storage, proc, completed=1)
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: t for t in _trials(storage)}
    stopped = [t for t in before.values() if t.state != TrialState.COMPLETE]
    completed = {n: t.value for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert len(stopped) == 1 and completed
    if sig != signal.SIGKILL:  # Ctrl-C, or `kill`: stopped cleanly
        assert code == 130
        last = log.read_text().strip().splitlines()[-1]
        assert last.startswith("nas: interrupted: finished trials are kept")
        assert stopped[0].state == TrialState.FAIL and stopped[0].user_attrs["failure"] == INTERRUPTED
    else:
        assert stopped[0].state == TrialState.RUNNING  # until a rerun sees its heartbeat expire

    rerun = _launch(md5, args, tmp_path, log)
    assert rerun.wait(timeout=300) == 0, log.read_text()
    after = _trials(storage)
    assert {t.number: t.value for t in after if t.number in completed} == completed
    assert sum(t.state == TrialState.COMPLETE for t in after) == 3
    killed = after[stopped[0].number]
    assert killed.state == TrialState.FAIL
    if sig == signal.SIGKILL:
        assert failure_reason(killed) == DIED  # Optuna's heartbeat check failed it (SQLite is an RDB)
        retry = [t for t in after if t.system_attrs.get("failed_trial") == killed.number]
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
        assert retry[0].params == killed.params and retry[0].user_attrs["genome"] == killed.user_attrs["genome"]


# A quick TPE search of the conv space (the command of issue 9, scaled down to the fixture: each
# trial is a few optimiser steps, so the processes' start-up dominates).
TRIALS = 4
CONV = [
    "search",
    "--space",
    "conv",
    "--jobs",
    "1",
    "--budget",
    "3000",
    "--val-size",
    "200",
    "--subset",
    "500",
    "--batch-size",
    "100",
    "--trials",
    str(TRIALS),
    "--epochs",
    "1",
    "--pruner",
    "none",
    "--finalists",
    "0",
    "--quiet",
]


def _trained(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """The genome of every trial that trained to the end (not reused from another trial)."""
    return [
        t.user_attrs["genome"]
        for t in trials
        if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs and "duplicate_of" not in t.user_attrs
    ]


@pytest.mark.slow
def test_killed_search_resumes_without_repeating_genomes(cifar_dir, _cifar_files, tmp_path):
    """kill -9 mid-search, rerun: the seeded sampler must not replay the first run's proposals,
    and proposals of genomes the study holds do not count: N trials = N distinct trainings."""
    _, md5 = _cifar_files
    storage = f"sqlite:///{tmp_path}/k.db"
    # trials of 8 epochs, so the kill lands while one runs (1-epoch trials on an idle machine can
    # all finish between two looks at the study)
    args = [*CONV, "--epochs", "8", "--storage", storage, "--data-dir", str(cifar_dir)]
    log = tmp_path / "log.txt"
    proc = _launch(md5, args, tmp_path, log)
    try:
        _wait_for_running(storage, proc, completed=1)  # still in TPE's random start-up
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = _trained(_trials(storage))
    rerun = _launch(md5, args, tmp_path, log)
    assert rerun.wait(timeout=300) == 0, log.read_text()
    trials = _trials(storage)
    trained = _trained(trials)
    print(
        f"first run trained {len(first)}, after the rerun {len(trained)} trainings, "
        f"{len(set(trained))} distinct, {len(trials)} trials in the study"
    )
    assert trained[: len(first)] == first
    assert len(trained) == len(set(trained)) == TRIALS, "a genome was trained twice, or the budget not reached"
    assert f"{TRIALS} tpe trials (stopped: trial limit reached)" in log.read_text()


@pytest.mark.slow
def test_two_workers_on_one_journal_never_train_a_genome_twice(cifar_dir, _cifar_files, tmp_path):
    """Two `nas search` processes on one journal file share the study: together they train the
    requested number of distinct genomes, and no genome twice."""
    _, md5 = _cifar_files
    storage = str(tmp_path / "nas.log")
    args = [*CONV, "--storage", storage, "--data-dir", str(cifar_dir)]
    logs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    procs = [_launch(md5, args, tmp_path, logs[0])]
    time.sleep(1)
    procs.append(_launch(md5, args, tmp_path, logs[1]))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [log.read_text() for log in logs]
    study = optuna.load_study(study_name=optuna.get_all_study_names(_journal(storage))[0], storage=_journal(storage))
    trials = study.get_trials()
    trained = _trained(trials)
    print(
        f"{len(trained)} trainings, {len(set(trained))} distinct, {len(trials)} trials in the study, "
        f"{sum('duplicate_of' in t.user_attrs for t in trials)} duplicate proposals"
    )
    assert len(trained) == len(set(trained)), "a genome was trained twice"
    assert len(trained) == TRIALS, "the requested total was not reached, or overshot"
    assert sum(f"{TRIALS} tpe trials (stopped: trial limit reached)" in log.read_text() for log in logs) == 2


def test_a_missing_data_folder_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """Checks first, then work: no plan, no storage, no report when the data cannot be had."""

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/s.db"
    code = main(["search", "--budget", "50000", "--data-dir", str(tmp_path / "nonexistent"), "--storage", storage])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nas: error: CIFAR-100 not found") and err.count("\n") == 1, err
    assert "plan:" not in err and sorted(p.name for p in tmp_path.iterdir()) == []
