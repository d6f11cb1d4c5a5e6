"""How counts are written in what nas prints: `plural(1, "epoch")` is "1 epoch", not "1 epochs"."""


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` (with thousands separators) and the noun, singular for exactly one."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"
