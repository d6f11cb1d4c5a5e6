"""Bad input through the real CLI, one process per case in a fresh folder: one line on stderr
(`nas: error: ...`, or `nas: warning: ...` where the command can go on), no traceback, a non-zero
exit status after an error, and no file or folder left behind in the working folder.

The processes run a few at a time (each imports torch); none of them loads data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEEP = 100_000  # nesting levels: far beyond Python's recursion limit


def _file(name: str, text: str = "x") -> Callable[[Path], None]:
    return lambda cwd: (cwd / name).write_text(text)


def _folder(name: str) -> Callable[[Path], None]:
    return lambda cwd: (cwd / name).mkdir()


def _storage(cwd: Path) -> None:
    """s.db with study 'conv-b5000' holding trial #0 (a conv genome)."""
    import optuna

    from nas.spaces import load_space

    g = load_space("conv").genome({"depth": [1, 1, 1, 1], "width": [8, 8, 16, 16]})
    study = optuna.create_study(storage=f"sqlite:///{cwd / 's.db'}", study_name="conv-b5000", direction="maximize")
    study.enqueue_trial({}, user_attrs={"genome": g.to_json()})
    study.tell(study.ask(), 0.5)


def _storage_and_folder(name: str) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        _storage(cwd)
        (cwd / name).mkdir()

    return setup


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    message: str  # part of the one line printed
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    warning: bool = False  # a warning: the command goes on (exit 0 here)


CASES = [
    # GENOME arguments
    Case("unknown-preset", ["count", "resnet18"], "unknown preset 'resnet18'"),
    Case("empty-genome", ["count", ""], "unknown preset ''"),
    Case("malformed-json", ["count", "{oops"], "malformed JSON"),
    Case("unknown-family", ["count", '{"family": "vit", "genes": {}}'], "unknown family 'vit'"),
    Case(
        "options-not-object",
        ["count", '{"family": "conv", "genes": {}, "options": "x"}'],
        "field 'options' must be an object",
    ),
    Case("json-unknown-space", ["count", '{"space": "nope", "genes": {}}'], "unknown space 'nope'"),
    Case("genome-name-too-long", ["count", "x" * 5000], "unknown preset 'xxxx"),
    Case("json-file-name-too-long", ["count", "g" * 300 + ".json"], "File name too long"),
    Case("deep-inline-json", ["count", '{"genes": ' + "[" * DEEP], "JSON nested too deeply"),
    Case(
        "deep-json-file",
        ["count", "deep.json"],
        "deep.json: JSON nested too deeply",
        setup=_file("deep.json", '{"genes": ' + "[" * DEEP + "]" * DEEP + "}"),
    ),
    Case("missing-json-file", ["count", "missing.json"], "genome file missing.json does not exist"),
    Case("json-file-is-folder", ["count", "g.json"], "genome file g.json is a folder", setup=_folder("g.json")),
    Case("short-form-bad-stage", ["count", "conv:16x1|32x|64x1|128x1"], "'32x' is not of the form <width>x<depth>"),
    Case("short-form-unknown-space", ["count", "vit:16x1|32x2"], "unknown space 'vit'"),
    Case("short-form-unknown-option", ["count", "conv:16x1|32x2|64x1|128x1;act=relu"], "options.act is not an option"),
    Case(
        "short-form-not-linear",
        ["count", "mbconv-linear:s16|w24+16|24x1e2k3|41x2e3k3|56x2e4k5|72x1e6k5"],
        "do not follow w24+16",
    ),
    Case(
        "short-form-outside-space", ["count", "conv:1x1|32x2|64x1|128x1"], "gene 'width1' = 1 is outside space 'conv'"
    ),
    Case("trial-without-storage", ["count", "conv-b5000#0"], "no study storage at 'studies/nas.db'"),
    Case(
        "trial-unknown-study",
        ["count", "nope#0", "--storage", "sqlite:///s.db"],
        "no study 'nope' in sqlite:///s.db",
        setup=_storage,
    ),
    Case(
        "trial-unknown-number",
        ["train", "conv-b5000#9", "--storage", "sqlite:///s.db"],
        "study 'conv-b5000' has no trial #9 (trials #0..#0)",
        setup=_storage,
    ),
    # budgets
    Case(
        "budget-zero",
        ["project", "seed-m4", "--budget", "0"],
        "budget must be a positive number of parameters, got '0'",
    ),
    Case("budget-huge", ["project", "seed-m4", "--budget", "1e30"], "at most 1,000,000,000,000 parameters, got '1e30'"),
    Case("budget-fraction", ["project", "seed-m4", "--budget", "1.5"], "whole number of parameters, got '1.5'"),
    Case("budget-commas", ["project", "seed-m4", "--budget", "50,000"], "no thousands commas"),
    Case("budget-below-space", ["project", "seed-m4", "--budget", "100"], "smallest model has"),
    Case("search-budget-suffix", ["search", "--budget", "5kk"], "got '5kk'"),
    Case("sweep-empty-budget", ["sweep", "--budgets", "1000,,5000"], "entry 2 of '1000,,5000' is empty"),
    Case("sweep-huge-budget", ["sweep", "--budgets", "5k,1e30"], "entry 2 of '5k,1e30': budget must be at most"),
    Case(
        "sweep-budget-below-space",
        ["sweep", "--budgets", "5k,100", "--space", "conv"],
        "budget 100 is below what space 'conv' can meet",
    ),
    # search, train, space options
    Case("search-tiny-subset", ["search", "--budget", "5k", "--subset", "100"], "subset must be at least 500"),
    Case("train-tiny-subset", ["train", "seed-m4", "--subset", "10"], "subset must be at least 500"),
    Case("train-zero-epochs", ["train", "seed-m4", "--epochs", "0"], "must be a positive whole number, got '0'"),
    Case("search-bad-tol", ["search", "--budget", "5k", "--tol", "1.5"], "tolerance must be in [0, 1)"),
    Case("search-unknown-space", ["search", "--budget", "5k", "--space", "nope"], "unknown space 'nope'"),
    Case("search-bad-storage", ["search", "--budget", "5k", "--storage", "x.txt"], "neither a storage URL"),
    Case(
        "data-dir-is-file", ["train", "seed-m4", "--data-dir", "afile"], "afile is not a folder", setup=_file("afile")
    ),
    Case("unknown-space", ["space", "show", "nope"], "unknown space 'nope'"),
    Case(
        "deep-space-file",
        ["space", "show", "deep.toml"],
        "TOML nested too deeply",
        setup=_file("deep.toml", "a = " + "[" * DEEP + "]" * DEEP),
    ),
    Case("no-command", [], "the following arguments are required: COMMAND"),
    # report
    Case("report-no-storage", ["report"], "no study storage at 'studies/nas.db'"),
    Case(
        "report-out-is-folder",
        ["report", "--storage", "sqlite:///s.db", "--out", "out"],
        "report file out is a folder",
        setup=_storage_and_folder("out"),
    ),
    Case(
        "report-out-unwritable",
        ["report", "--storage", "sqlite:///s.db", "--out", "/dev/null/r.html"],
        "cannot write report file /dev/null/r.html",
        setup=_storage,
    ),
    Case("export-no-run", ["export", "nowhere"], "nowhere: no such training run folder"),
    Case(
        "train-teacher-missing",
        ["train", "conv:4x1|8x1|8x1|16x1", "--teacher", "nowhere"],
        "nowhere: no such training run folder",
    ),
    # warnings
    Case(
        "spaces-path-missing",
        ["space", "list"],
        "NAS_SPACES_PATH entry 'nowhere' is not a folder",
        env={"NAS_SPACES_PATH": "nowhere"},
        warning=True,
    ),
]


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _run(case: Case, root: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    cwd = root / case.id
    cwd.mkdir()
    if case.setup:
        case.setup(cwd)
    before = _tree(cwd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAS_")}
    env.update(PYTHONPATH=str(REPO), **case.env)  # this worktree's nas, not an installed one
    p = subprocess.run(
        [sys.executable, "-m", "nas.cli", *case.argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    return p, _tree(cwd) - before


@pytest.fixture(scope="module")
def results(request, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, set[str]]]:
    """The selected cases, run four at a time."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    root = tmp_path_factory.mktemp("bad-inputs")
    with ThreadPoolExecutor(4) as pool:
        return dict(zip((c.id for c in selected), pool.map(lambda c: _run(c, root), selected)))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case: Case, results):
    p, new = results[case.id]
    lines = p.stderr.splitlines()
    assert "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("nas: warning:" if case.warning else "nas: error:"), p.stderr
    assert case.message in lines[0], p.stderr
    assert (p.returncode == 0) if case.warning else (p.returncode != 0), p.returncode
    assert not new, f"left behind: {sorted(new)}"


def test_every_command_has_bad_input_cases():
    """A command added without a bad-input case here fails this; so does a repeated case id."""
    from nas.cli import COMMAND_HELP

    assert {c.argv[0] for c in CASES if c.argv} >= set(COMMAND_HELP)
    assert len({c.id for c in CASES}) == len(CASES)


def test_closed_stdout_pipe_ends_quietly(tmp_path):
    """`nas count seed-m4 | head -1`: the reader is gone before nas writes; no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "count", "seed-m4"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    p.stdout.close()  # like `head` exiting
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == ""
