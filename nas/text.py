"""How counts and durations are written in what nas prints: `plural(1, "epoch")` is "1 epoch", not
"1 epochs"; `duration(150)` is "2 min"."""

from __future__ import annotations

import math


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` (with thousands separators) and the noun, singular for exactly one."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def duration(seconds: float | None) -> str:
    """A short human duration: '45 s', '24 min', '2 h 05 min'."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    h, m = divmod(round(minutes), 60)
    return f"{h} h {m:02d} min"
