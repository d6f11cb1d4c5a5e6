"""User-facing errors and warnings: one line each on stderr, `nas: error: ...` (the CLI exits
with status 2) or `nas: warning: ...` (the command goes on)."""

import sys


class NasError(Exception):
    """An error caused by user input or environment, reported without a traceback."""


_warned: set[str] = set()


def warn(message: str) -> None:
    """Tell the user about a questionable input that the command can still work with; each
    message once per process (the code that notices may run many times)."""
    if message not in _warned:
        _warned.add(message)
        print(f"nas: warning: {message}", file=sys.stderr, flush=True)
