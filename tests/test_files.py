"""Atomic writes: what several workers of one study rely on when they write the same report."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from nas.errors import NasError
from nas.files import write_text_atomic


def test_concurrent_writers_of_one_file_all_succeed_and_leave_one_whole_file(tmp_path):
    target = tmp_path / "reports" / "nas.html"  # the folder does not exist yet, as on a fresh run
    texts = [f"<html>{i}</html>" * 2000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: write_text_atomic(target, t, "report file"), texts * 4))
    assert target.read_text() in texts  # one writer's whole text, never a mix or a truncation
    assert [p.name for p in target.parent.iterdir()] == ["nas.html"]  # no temporary file left


def test_failed_write_leaves_no_new_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NasError, match="cannot write report file"):
        write_text_atomic(blocker / "sub" / "nas.html", "text", "report file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
