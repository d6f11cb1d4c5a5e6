"""Budgets: the one grammar every budget argument is read with, and budget projection, which
moves a genome into the band [(1 - tol) * B, B] before any training.

Widths are rescaled together (keeping the genome's proportions); depth and then the other
genes (expansion, kernel) change only when widths alone cannot reach the band. The parameter
count is monotone in every gene, which makes bisection on the width scale exact.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import replace
from decimal import Decimal

from nas.counting import architecture_params
from nas.errors import NasError
from nas.spaces import Genome, Space

DEFAULT_TOL = 0.1


# The budget grammar, shared by every budget argument (--budget, --budgets, the Python API): an
# integer or decimal number with optional `_` between digits, an optional exponent and an optional
# suffix k (thousand), M (million) or G (billion), case-insensitive: 50000, 50_000, 50k, 1.5k, 1e5, 1M.
_BUDGET_RE = re.compile(r"[+-]?(\d(_?\d)*(\.(\d(_?\d)*)?)?|\.\d(_?\d)*)([eE][+-]?\d+)?[kKmMgG]?")
_SUFFIX = {"k": 3, "m": 6, "g": 9}
MAX_BUDGET = 10**12  # far above any space's largest model; bounds the arithmetic
BUDGET_FORMS = "like 50000, 50_000, 50k, 1.5k, 1e5 or 1M"


def check_budget(budget: object) -> int:
    """The budget as a positive int, or a one-line NasError that quotes the input as given.

    Takes an int, a float holding a whole number, or a string in the budget grammar. The value is
    worked out exactly from its decimal digits (no float, no rounding): `1e30` is rejected as too
    large instead of becoming 1,000,000,000,000,000,019,884,624,838,656."""
    if isinstance(budget, str):
        shown, text = f"'{budget}'", budget.strip()
        if not _BUDGET_RE.fullmatch(text):
            hint = "; no thousands commas" if "," in text else ""
            raise NasError(f"budget must be a number of parameters ({BUDGET_FORMS}{hint}), got {shown}")
        scale = _SUFFIX.get(text[-1].lower(), 0)
        number = Decimal((text[:-1] if scale else text).replace("_", ""))
    elif isinstance(budget, numbers.Real) and not isinstance(budget, bool) and math.isfinite(budget):
        shown, scale = repr(budget), 0
        number = Decimal(int(budget) if isinstance(budget, numbers.Integral) else float(budget))  # exact
    else:
        raise NasError(f"budget must be a number of parameters ({BUDGET_FORMS}), got {budget!r}")
    negative, digits, exponent = number.as_tuple()  # exact digits; no context rounding or overflow
    digits, exponent = list(digits), int(exponent) + scale
    while len(digits) > 1 and digits[-1] == 0:  # 1.500e3 -> 15e2
        digits.pop()
        exponent += 1
    if negative or digits == [0]:
        raise NasError(f"budget must be a positive number of parameters, got {shown}")
    if exponent < 0:  # a non-zero digit after the decimal point
        raise NasError(f"budget must be a whole number of parameters, got {shown}")
    if len(digits) + exponent > len(str(MAX_BUDGET)) or int("".join(map(str, digits))) * 10**exponent > MAX_BUDGET:
        raise NasError(f"budget must be at most {MAX_BUDGET:,} parameters, got {shown}")
    return int("".join(map(str, digits))) * 10**exponent


def parse_budgets(text: str) -> list[int]:
    """'1000,5k,1M' -> [1000, 5000, 1000000]: comma-separated budgets in the order given, each
    in the budget grammar (see `check_budget`); a repeated budget is kept once."""
    parts = text.split(",")
    if not text.strip():
        raise NasError("budgets: give at least one budget, e.g. --budgets 10000,50000")
    out: list[int] = []
    for i, part in enumerate(parts, 1):
        if not part.strip():
            raise NasError(f"budgets: entry {i} of '{text}' is empty (separate budgets by single commas)")
        try:
            budget = check_budget(part.strip())
        except NasError as e:
            raise NasError(f"budgets: entry {i} of '{text}': {e}") from None
        if budget not in out:
            out.append(budget)
    return out


def band(budget: int, tol: float = DEFAULT_TOL) -> tuple[int, int]:
    """The inclusive parameter range a projected genome lands in."""
    return math.ceil((1 - tol) * budget), budget


class _Counter:
    """Counts parameters of coordinate vectors of one space with fixed options, cached by the
    vector itself (cheaper than a genome's JSON key; bisection revisits the same vectors)."""

    def __init__(self, space: Space, options: dict):
        self.space, self.options = space, options
        self.cache: dict[tuple[int, ...], int] = {}

    def genome(self, v: list[int]) -> Genome:
        return self.space.from_vector(v, self.options)

    def __call__(self, v: list[int]) -> int:
        key = tuple(v)
        if key not in self.cache:
            self.cache[key] = architecture_params(self.genome(v))
        return self.cache[key]


def min_params(space: Space, options: dict | None = None) -> int:
    """The smallest parameter count any genome of the space reaches (its family says which genome)."""
    return architecture_params(space.family.smallest(space, options or space.options))


def max_params(space: Space, options: dict | None = None) -> int:
    """The largest parameter count any genome of the space reaches (its family says which genome)."""
    return architecture_params(space.family.largest(space, options or space.options))


def project(genome: Genome, space: Space, budget: int, tol: float = DEFAULT_TOL) -> Genome:
    """The genome nearest to `genome` whose parameter count is in [(1 - tol) * budget, budget]
    (its training genes kept)."""
    if genome.recipe:
        return replace(project(genome.architecture_only(), space, budget, tol), recipe=genome.recipe)
    budget = check_budget(budget)
    if not 0 <= tol < 1:
        raise NasError(f"tolerance must be in [0, 1), got {tol}")
    if genome.family != space.family.name:
        raise NasError(
            f"genome of family '{genome.family}' cannot be projected in space '{space.name}' "
            f"(family '{space.family.name}')"
        )
    options = genome.options
    count = _Counter(space, options)
    lo, hi = band(budget, tol)
    genes = [space.genes[n] for n, _ in space.coords]
    v = [g.snap(x) for g, x in zip(genes, space.vector(genome))]  # clip into the space's ranges
    if lo <= count(v) <= hi:
        return count.genome(v)
    smallest = min_params(space, options)
    if smallest > hi:
        raise NasError(
            f"budget {budget:,} is below what space '{space.name}' can meet: its smallest "
            f"model has {smallest:,} parameters"
        )
    largest = max_params(space, options)
    if largest < lo:
        raise NasError(
            f"budget {budget:,} is above what space '{space.name}' can meet with tolerance "
            f"{tol}: its largest model has {largest:,} parameters"
        )
    fit = _WidthFit(space, genes, count, lo, hi)
    # Structure first, only as far as needed: shrink depth (deepest stage first, later stages on
    # ties), then the other genes, while even the narrowest widths overshoot; grow symmetrically.
    while count(fit.widths_at(v, "minimum")) > hi:
        v = _step_structure(v, genes, fit.depths, fit.others, -1)
    while count(fit.widths_at(v, "maximum")) < lo:
        v = _step_structure(v, genes, fit.depths, fit.others, +1)
    # A structure whose width grid jumps over the band gives way to the next smaller structure
    # (one depth step, else one other gene), as when even the narrowest widths overshoot.
    start = list(v)
    while (fitted := fit(v)) is None:
        try:
            v = _step_structure(v, genes, fit.depths, fit.others, -1)
        except NasError:
            raise NasError(f"cannot land in [{lo:,}, {hi:,}] from {count.genome(start)}; try a larger --tol") from None
    return count.genome(fitted)


class _WidthFit:
    """The widths of one structure fitted into the band [lo, hi]: bisection on the width scale,
    then single steps into the band (see `__call__`)."""

    def __init__(self, space: Space, genes: list, count: _Counter, lo: int, hi: int):
        self.genes, self.count, self.lo, self.hi = genes, count, lo, hi
        self.widths = [i for i, g in enumerate(genes) if g.role == "width"]
        self.depths = [i for i, g in enumerate(genes) if g.role == "depth"]
        self.others = [i for i, g in enumerate(genes) if g.role == "other"]
        self.scales = {i for i, c in enumerate(space.coords) if space.is_scale(c)}

    def widths_at(self, v: list, which: str) -> list:
        """`v` with every width at its gene's 'minimum' or 'maximum'."""
        out = list(v)
        for i in self.widths:
            out[i] = getattr(self.genes[i], which)
        return out

    def scaled(self, base: list, alpha: float) -> list:
        out = list(base)
        for i in self.widths:
            # A scale coordinate stays fractional, so the widths derived from it round one by one
            # and the count moves in steps of one channel of one stage, not of every stage at once.
            out[i] = base[i] * alpha if i in self.scales else self.genes[i].snap(base[i] * alpha)
        return out

    def __call__(self, base: list) -> list | None:
        """Bisection on the width scale from `base`, then single steps into the band; None if the
        grid has no point in the band near this structure."""
        count, hi = self.count, self.hi
        # Bisection on log(alpha): the count is monotone in alpha.
        a_lo, a_hi = math.log(1e-4), math.log(1e4)
        if count(self.scaled(base, math.exp(a_lo))) > hi:  # widths already at their minimum are the floor
            a_lo = -math.inf
        for _ in range(40):
            mid = (a_lo + a_hi) / 2 if math.isfinite(a_lo) else a_hi - 20
            if count(self.scaled(base, math.exp(mid))) <= hi:
                a_lo = mid
            else:
                a_hi = mid
            if a_hi - a_lo < 1e-4:
                break
        v = self.scaled(base, math.exp(a_lo)) if math.isfinite(a_lo) else self.widths_at(base, "minimum")
        return self.fill(v, base, math.exp(a_hi))

    def fill(self, v: list, base: list, target: float) -> list | None:
        """Rounding can leave the count under the band: add single width steps, always to the width
        furthest below its ideal scaled value (`base` times `target`), so proportions stay as
        close as the grid allows; the other genes only when no width step fits."""
        genes, count, lo, hi = self.genes, self.count, self.lo, self.hi
        n = count(v)
        while n < lo:
            best = None
            for group in (self.widths, self.others + self.depths):  # counting the other genes is the cost
                for i in group:
                    nxt = genes[i].shift(v[i], +1)
                    if nxt is None:
                        continue
                    trial = list(v)
                    trial[i] = nxt
                    m = count(trial)
                    if m > hi:
                        continue
                    lag = v[i] / max(base[i] * target, 1e-9) if genes[i].role == "width" else 0.0
                    if best is None or (lag, -m) < best[0]:
                        best = ((lag, -m), trial, m)
                if best is not None:
                    break
            if best is None:
                best = _exchange_step(v, genes, count, lo, hi)
            if best is None:
                return None
            _, v, n = best
        return v


def _exchange_step(v: list, genes: list, count: _Counter, lo: int, hi: int) -> tuple | None:
    """When no single step up fits under the band's top, one gene up and another down may land in
    the band (e.g. a coarse width grid): the pair with the largest count in [lo, hi], else None."""
    best = None
    for i, up in enumerate(genes):
        nxt = up.shift(v[i], +1)
        if nxt is None:
            continue
        for j, down in enumerate(genes):
            prv = down.shift(v[j], -1) if j != i else None
            if prv is None:
                continue
            trial = list(v)
            trial[i], trial[j] = nxt, prv
            m = count(trial)
            if lo <= m <= hi and (best is None or m > best[2]):
                best = (None, trial, m)
    return best


def _step_structure(v: list[int], genes: list, depths: list[int], others: list[int], sign: int) -> list[int]:
    """One grid step of one depth gene (else one other gene) in direction `sign`."""
    for group in (depths, others):
        movable = [i for i in group if genes[i].shift(v[i], sign) is not None]
        if movable:
            # shrinking: the largest value, latest stage on ties; growing: the smallest, earliest
            i = max(movable, key=lambda i: (v[i], i)) if sign < 0 else min(movable, key=lambda i: (v[i], i))
            out = list(v)
            out[i] = genes[i].shift(v[i], sign)
            return out
    raise NasError("no structural gene left to change")  # unreachable: extremes were checked


def param_gradient(space: Space, genome: Genome) -> list[float]:
    """dN/dq_i per coordinate: exact forward difference of the count by one grid step
    (backward where the forward step leaves the range), divided by the step in value."""
    count = _Counter(space, genome.options)
    v = space.vector(genome)
    n0 = count(v)
    grad = []
    for i, (name, _) in enumerate(space.coords):
        gene = space.genes[name]
        nxt = gene.shift(v[i], +1)
        if nxt is not None:
            w = list(v)
            w[i] = nxt
            grad.append((count(w) - n0) / (nxt - v[i]))
            continue
        prv = gene.shift(v[i], -1)
        if prv is None:
            grad.append(0.0)
            continue
        w = list(v)
        w[i] = prv
        grad.append((n0 - count(w)) / (v[i] - prv))
    return grad
