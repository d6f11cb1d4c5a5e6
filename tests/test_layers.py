"""The import layers declared in pyproject.toml ([tool.importlinter]) hold, function-level imports
included, and the check fails when a lower layer reaches up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's command on the `nas` package found under `root`, with the project's contract."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"  # lint-imports
    return subprocess.run(
        [sys.executable, "-c", command, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "one-way layers KEPT" in result.stdout


def test_a_spaces_function_that_reads_a_study_breaks_the_layers(tmp_path):
    shutil.copytree(ROOT / "nas", tmp_path / "nas", ignore=shutil.ignore_patterns("__pycache__"))
    spaces = tmp_path / "nas" / "spaces.py"
    spaces.write_text(
        spaces.read_text() + "\n\ndef _reaches_up():\n    from nas.study import trial_genome\n\n"
        "    return open_storage\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "one-way layers BROKEN" in result.stdout and "nas.spaces -> nas.study" in result.stdout
