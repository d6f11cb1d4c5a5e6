"""Progress bars: tqdm on stderr, drawn only when asked for and stderr is a terminal, so a log
file gets the commands' own lines instead of bar redraws."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, enabled: bool, **options: Any) -> tqdm:
    """A bar over `total` steps (tqdm `options`: unit, desc, ...); silent unless `enabled` and
    stderr is a terminal (tqdm's `disable=None`)."""
    return tqdm(total=total, disable=None if enabled else True, **options)
