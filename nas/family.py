"""What a model family is: its genes and options, how a genome becomes block specs, its short
form, and the formulas it owns (default start, smallest model, stage shape).

A family lives in one module (`nas.families` for conv and mbconv, `nas.resnet`); the registry
`nas.families.FAMILIES` names them. This module is the base they share.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from nas.errors import NasError

if TYPE_CHECKING:
    from nas.blocks import BlockSpec
    from nas.spaces import Genome, Space


# ---------------------------------------------------------------- option checking


def choice(*allowed: Any):
    def check(v: Any) -> bool:
        return v in allowed and type(v) is type(allowed[0])

    check.describe = " or ".join(repr(a) if isinstance(a, str) else str(a).lower() for a in allowed)  # type: ignore[attr-defined]
    check.choices = allowed  # type: ignore[attr-defined]  # what is allowed, for tests that try every value
    return check


def int_range(lo: int, hi: int):
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    check.describe = f"an integer in {lo}..{hi}"  # type: ignore[attr-defined]
    check.int_range = (lo, hi)  # type: ignore[attr-defined]
    return check


def float_range(lo: float, hi: float):
    def check(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v < hi

    check.describe = f"a number in [{lo}, {hi})"  # type: ignore[attr-defined]
    check.float_range = (lo, hi)  # type: ignore[attr-defined]
    return check


ACTIVATIONS = ("relu", "silu")


def _format_option(value: Any) -> str:
    """An option value in a short form: true/false, an int, a float's repr (exact), or the string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _parse_option(text: str) -> Any:
    """The inverse of `_format_option` (an int stays an int: 0 and 0.0 are different JSON)."""
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def split_body(body: str, where: str) -> list[str]:
    """A short form's body cut at '|'; NasError on an empty part."""
    parts = body.split("|")
    if not body or any(not p for p in parts):
        raise NasError(f"{where}: empty part in genome '{body}' (parts are separated by single '|')")
    return parts


def segment(pattern: str, part: str, form: str, where: str) -> list[int]:
    """The integers `pattern` captures in one part of a body; NasError naming `form` if it does not match."""
    m = re.fullmatch(pattern, part)
    if not m:
        raise NasError(f"{where}: '{part}' is not of the form {form}")
    return [int(x) for x in m.groups()]


def coord_name(name: str, stage: int | None) -> str:
    """A gene's name as a coordinate: per-stage genes get the 1-based stage, e.g. width3."""
    return name if stage is None else f"{name}{stage + 1}"


class Family:
    """Which genes and options a family has, how a genome becomes block specs, and the formulas
    that depend on the family (a subclass overrides the defaults that do not fit it)."""

    name: str
    per_stage: frozenset[str]
    gene_roles: dict[str, str]
    default_options: dict[str, Any]
    option_checks: dict[str, Any]
    zero_genes: frozenset[str] = frozenset()  # genes that may be 0; every other gene is >= 1
    gene_choices: dict[str, tuple[int, ...]] = {}  # genes that only some values mean anything for

    def gene_names(self, options: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def architecture(self, genome: Genome) -> list[BlockSpec]:
        raise NotImplementedError

    def lowest(self, name: str) -> int:
        """The smallest value gene `name` may take."""
        return 0 if name in self.zero_genes else 1

    # ---- formulas a family owns

    def start_genes(self, options: dict[str, Any]) -> dict[str, Any]:
        """The genes of `default_start` that do not start at their space's minimum (extra names
        are ignored, so one dict serves every option value)."""
        return {}

    def default_start(self, space: Space) -> Genome:
        """fdpg's default start and the sweep's hand design: `start_genes`, every other gene at
        the space's minimum, snapped into the space. Only proportions matter: projection sets
        the scale."""
        from nas.spaces import Genome  # nas.spaces imports the families

        names = self.gene_names(space.options)
        genes = {
            n: [space.genes[n].minimum] * space.stages if n in self.per_stage else space.genes[n].minimum for n in names
        }
        genes.update({n: v for n, v in self.start_genes(space.options).items() if n in names})
        return space.from_vector(space.vector(Genome(space.name, self.name, genes, dict(space.options))))

    def smallest(self, space: Space, options: dict[str, Any]) -> Genome:
        """The genome of `space` with the fewest parameters under `options`: every coordinate at
        its minimum, right for a family whose count never falls when a gene grows."""
        return space.extreme("min", options)

    def largest(self, space: Space, options: dict[str, Any]) -> Genome:
        """The genome of `space` with the most parameters under `options` (every coordinate at
        its maximum, for a family whose count never falls when a gene grows)."""
        return space.extreme("max", options)

    def stage_widths(self, genes: dict[str, Any], options: dict[str, Any]) -> list[int]:
        """The output width of every stage."""
        return list(genes["width"])

    def stage_shape(self, genome: Genome) -> tuple[list[int], list[int]]:
        """(widths, depths) per stage, for comparing shapes across budgets."""
        return self.stage_widths(genome.genes, genome.options), list(genome.genes["depth"])

    def named_genes(self, genome: Genome) -> dict[str, int]:
        """The genes as named integers in gene order, a per-stage gene as name1..nameS."""
        out: dict[str, int] = {}
        for name in self.gene_names(genome.options):
            value = genome.genes[name]
            if name in self.per_stage:
                out.update({coord_name(name, s): v for s, v in enumerate(value)})
            else:
                out[name] = value
        return out

    # ---- the short form `<space>:<body>[;<option>=<value>,...]`
    # The body holds every gene, plus the options it implies (`body_options`, e.g. the stage
    # count); the suffix lists the other options that differ from those of the space the prefix
    # names, so `parse_short(short_string(g)) == g` for every option value.
    body_options: frozenset[str] = frozenset({"stages"})

    def short_body(self, genes: dict[str, Any], options: dict[str, Any]) -> str:
        raise NotImplementedError

    def parse_body(self, body: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(genes, implied options) of a short form's body; NasError if it is malformed."""
        raise NotImplementedError

    def short_string(self, genome: Genome, prefix: str, base_options: dict[str, Any]) -> str:
        """`prefix:body`, then `;key=value,...` for the options that differ from `base_options`
        and for the genome's training genes (e.g. `lr=0.6`)."""
        diff = [
            f"{k}={_format_option(v)}"
            for k, v in genome.options.items()
            if k not in self.body_options and json.dumps(v) != json.dumps(base_options.get(k))
        ]
        diff += [f"{k}={_format_option(v)}" for k, v in sorted(genome.recipe.items())]
        return f"{prefix}:{self.short_body(genome.genes, genome.options)}" + (";" + ",".join(diff) if diff else "")

    def parse_short(
        self, text: str, base_options: dict[str, Any], where: str, recipe_keys: tuple[str, ...] = ()
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(genes, options, training genes) of a short form without its `prefix:`; options not in
        the text come from `base_options` (the options of the space the prefix names); a key of
        `recipe_keys` after ';' is a training gene. Genes are not checked."""
        body, _, suffix = text.partition(";")
        options = dict(base_options)
        recipe: dict[str, Any] = {}
        given: set[str] = set()
        for item in suffix.split(",") if suffix else []:
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise NasError(
                    f"{where}: option '{item}' after ';' must look like key=value (e.g. activation=relu,bias=true)"
                )
            if key in self.body_options:
                raise NasError(f"{where}: option '{key}' is given by the genes before ';', not after it")
            if key in given:
                raise NasError(f"{where}: option '{key}' is given twice")
            given.add(key)
            (recipe if key in recipe_keys else options)[key] = _parse_option(value.strip())
        genes, implied = self.parse_body(body, where)
        return genes, self.check_options({**options, **implied}, where), recipe

    def check_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        if not isinstance(options, dict):
            raise NasError(f"{where}: field 'options' must be a table/object")
        for key, value in options.items():
            if key not in self.option_checks:
                raise NasError(
                    f"{where}: options.{key} is not an option of family '{self.name}' "
                    f"(options: {', '.join(sorted(self.option_checks))})"
                )
            check = self.option_checks[key]
            if not check(value):
                raise NasError(f"{where}: options.{key} = {value!r} must be {check.describe}")
        return dict(options)

    def check_genes(self, genes: dict[str, Any], options: dict[str, Any], where: str) -> dict[str, Any]:
        names = self.gene_names(options)
        stages = options["stages"]
        out: dict[str, Any] = {}
        for key in genes:
            if key not in names:
                raise NasError(
                    f"{where}: genes.{key} is not a gene of family '{self.name}' with these "
                    f"options (genes: {', '.join(names)})"
                )
        for name in names:
            if name not in genes:
                raise NasError(f"{where}: missing gene 'genes.{name}'")
            v = genes[name]
            lowest = self.lowest(name)
            if name in self.per_stage:
                if not (isinstance(v, list) and len(v) == stages):
                    raise NasError(f"{where}: genes.{name} must be a list of {stages} integers (one per stage)")
                items = v
            else:
                items = [v]
            for x in items:
                if not isinstance(x, int) or isinstance(x, bool) or x < lowest:
                    raise NasError(f"{where}: genes.{name} must hold integers >= {lowest}, got {x!r}")
                if name in self.gene_choices and x not in self.gene_choices[name]:
                    allowed = ", ".join(map(str, self.gene_choices[name]))
                    raise NasError(f"{where}: genes.{name} must hold one of {allowed}, got {x!r}")
            out[name] = list(v) if name in self.per_stage else v
        return out


class WidthDepthFamily(Family):
    """A family whose genes are a width and a depth per stage, widths doubling from 16 at the
    default start. Short-form body: per stage `<width>x<depth>`, e.g. 16x1|32x2|64x1|128x1."""

    per_stage = frozenset({"depth", "width"})
    gene_roles = {"depth": "depth", "width": "width"}

    def gene_names(self, options: dict[str, Any]) -> list[str]:
        return ["depth", "width"]

    def start_genes(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"width": [16 * 2**s for s in range(options["stages"])]}

    def short_body(self, genes: dict[str, Any], options: dict[str, Any]) -> str:
        return "|".join(f"{w}x{d}" for d, w in zip(genes["depth"], genes["width"]))

    def parse_body(self, body: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        stages = [segment(r"(\d+)x(\d+)", p, "<width>x<depth>, e.g. 32x2", where) for p in split_body(body, where)]
        return {"depth": [d for _, d in stages], "width": [w for w, _ in stages]}, {"stages": len(stages)}
