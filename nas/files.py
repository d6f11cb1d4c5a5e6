"""Writing to the file system without leaving anything behind when it fails: a command that
ends in an error must not leave new folders or half-written files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nas.errors import NasError


@contextmanager
def new_folders(folder: Path) -> Iterator[list[Path]]:
    """Create `folder` and its missing parents, yielding those created (deepest first); if the
    block (or the creation) fails, remove again the ones that are still empty."""
    missing: list[Path] = []
    p = Path(folder)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
        yield missing
    except BaseException:
        for d in missing:
            try:
                d.rmdir()
            except OSError:  # not empty (or never made): keep it and what is above it
                break
        raise


def check_file_target(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path, or a NasError when it names a folder (a file cannot replace it)."""
    path = Path(path)
    if path.is_dir():
        raise NasError(f"{what} {path} is a folder; give a file path, e.g. {path / ('new' + (path.suffix or '.html'))}")
    return path


def write_text_atomic(path: str | Path, text: str, what: str = "file") -> Path:
    """Write `text` to a temporary sibling, then rename it to `path`, so a reader never sees half
    a file; on failure neither the temporary file nor new folders stay behind (NasError). The
    temporary name is unique, so several workers writing the same report do not collide."""
    path = check_file_target(path, what)
    try:
        with new_folders(path.parent):
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            tmp = Path(name)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is for reading
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)  # gone after a successful rename
    except OSError as e:
        raise NasError(f"cannot write {what} {path}: {e.strerror or e}") from None
    return path


def card_path_for(onnx_path: str | Path) -> Path:
    """`model.onnx` -> `model.card.json`, in the same folder: where an exported model's card lives."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".card.json")
