"""Several workers, one study, on PostgreSQL: how Optuna users run a study on several machines.

A throwaway PostgreSQL server (Debian's `postgresql` package) runs in a temp folder, listening on a
unix socket there only (no TCP), as the `postgres` user when the tests run as root (initdb
refuses root). Three `nas search` processes share one study on it; one is SIGKILLed mid-trial.
The test skips only where PostgreSQL is not installed or cannot be started.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import LAUNCHER  # a nas process that reads the fixture data
from optuna.trial import TrialState

from nas.study import DIED, failure_reason

optuna.logging.set_verbosity(optuna.logging.WARNING)

PORT = 5432  # only names the socket file inside the temp folder: no clash with a real server


def _pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin (Debian's layout), else where initdb is on PATH."""

    def version(d: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", d))

    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)
    for d in reversed(dirs):
        if Path(d, "initdb").is_file() and Path(d, "pg_ctl").is_file():
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL cluster and database `nas`; yields its SQLAlchemy URL; always stopped."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing (util-linux)")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))  # short: a unix socket path has ~100 chars
    data, log = root / "data", root / "server.log"
    if as_user:
        os.chown(root, owner.pw_uid, owner.pw_gid)

    def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout)

    started = False
    try:
        init = run(str(bindir / "initdb"), "-D", str(data), "-U", "nas", "-A", "trust", "-E", "UTF8", "--no-locale")
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {(init.stderr or init.stdout).strip().splitlines()[-1:]}")
        start = run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-k {root} -c listen_addresses='' -p {PORT}",
            "start",
            timeout=90,
        )
        started = True  # stop it even if the start timed out half-way
        if start.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else start.stderr
            pytest.skip(f"PostgreSQL did not start: {tail}")
        made = run(str(bindir / "createdb"), "-h", str(root), "-p", str(PORT), "-U", "nas", "nas")
        assert made.returncode == 0, made.stderr
        yield f"postgresql+psycopg://nas@/nas?host={root}&port={PORT}"
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _launch(md5: dict, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    launcher = cwd / "launch.py"
    launcher.write_text(LAUNCHER)
    # One thread each: three workers share this machine's cores instead of fighting over them.
    # Heartbeat every 2 s, dead after 4 s: quick, yet not so tight that a loaded machine's late
    # beat gets a live trial failed.
    env = {**os.environ, "NAS_HEARTBEAT_SECONDS": "2", "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, str(launcher), json.dumps(md5), *args],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    names = optuna.get_all_study_names(url)
    if not names:
        return []
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=url).get_trials()


@pytest.mark.slow
def test_three_workers_one_study_on_postgres(postgres_url, cifar_dir, _cifar_files, tmp_path):
    _, md5 = _cifar_files
    want = 6
    # Two workers with the same seed propose the same genomes at the same time (the worst case
    # for "never train a genome twice"); the third its own.
    seeds = [0, 0, 1]
    base = [
        "search",
        "--jobs",
        "1",
        "--budget",
        "3000",
        "--val-size",
        "200",
        "--subset",
        "600",
        "--batch-size",
        "128",
        "--searcher",
        "random",
        "--trials",
        str(want),
        "--epochs",
        "3",
        "--pruner",
        "none",
        "--storage",
        postgres_url,
        "--data-dir",
        str(cifar_dir),
        "--quiet",
    ]
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = [_launch(md5, [*base, "--seed", str(s)], tmp_path, log) for s, log in zip(seeds, logs)]
    pids = {p.pid: p for p in procs}
    killed_trial = None
    try:
        deadline = time.time() + 120
        while killed_trial is None and time.time() < deadline:
            for t in _trials(postgres_url):
                pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
                # mid-training: its first epoch reported, two to go (on a loaded machine the
                # signal must land before the trial can finish), and its worker one of ours
                if t.state == TrialState.RUNNING and len(t.intermediate_values) == 1 and pid in pids:
                    os.kill(pid, signal.SIGKILL)
                    killed_trial, victim = t.number, pids[pid]
                    break
            else:
                assert all(p.poll() is None for p in procs), "a worker ended before one could be killed"
                time.sleep(0.1)
        assert killed_trial is not None, "no trial was seen mid-training"
        assert victim.wait(timeout=30) == -signal.SIGKILL
        for p in procs:
            if p is not victim:
                assert p.wait(timeout=240) == 0, "\n".join(log.read_text() for log in logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # Every trial is visible through Optuna's own API on the same URL.
    names = optuna.get_all_study_names(postgres_url)
    assert len(names) == 1
    study = optuna.load_study(study_name=names[0], storage=postgres_url)
    trials = study.get_trials()
    states = Counter(t.state.name for t in trials)
    for t in trials:  # shown when an assertion below fails
        print(
            f"  #{t.number} {t.state.name:<8} {t.user_attrs.get('worker', '?'):<24} {t.user_attrs.get('genome_str')}"
            f"  reused_from={t.user_attrs.get('reused_from')} failed_trial={t.system_attrs.get('failed_trial')}"
            f"  failure={t.user_attrs.get('failure')}"
        )
    print(f"killed: {victim.pid} during #{killed_trial}")
    # The trial the victim was running when the kill landed: the one seen mid-training, or a later
    # one when the victim finished that trial before the signal arrived.
    unfinished = [
        t
        for t in trials
        if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
        and t.state != TrialState.COMPLETE  # nor a proposal it gave back or found held:
        and not t.user_attrs.get("retryable")
        and "duplicate_of" not in t.user_attrs
    ]
    assert len(unfinished) == 1, [(t.number, t.state.name) for t in unfinished]
    killed = unfinished[0]
    assert killed.number >= killed_trial
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    trained = [t for t in completed if "reused_from" not in t.user_attrs]  # trained, not reused
    genomes = [t.user_attrs["genome"] for t in trained]
    workers = {t.user_attrs.get("worker") for t in completed}
    # the killed trial: failed by Optuna's heartbeat check and retried once, with its parameters
    assert killed.state == TrialState.FAIL and failure_reason(killed) == DIED
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params and retries[0].user_attrs["genome"] == killed.user_attrs["genome"]
    # the requested trials completed (several workers may each start the last one: at most 2 over)
    assert want <= len(completed) <= want + 2
    assert states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0
    # no genome trained twice: a trial of a genome already trained (or in training) reused it
    assert len(genomes) == len(set(genomes)), Counter(genomes).most_common(3)
    assert len(workers) >= 2
