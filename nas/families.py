"""Model families: a genome becomes an architecture, a list of block specs (plain data).

The specs are consumed twice: `nas.models` builds modules from them and `nas.counting`
counts their parameters analytically, so both always describe the same network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas.errors import NasError

if TYPE_CHECKING:
    from nas.spaces import Genome


# ---------------------------------------------------------------- block specs

@dataclass(frozen=True)
class Conv:
    """Conv2d (same padding) + BatchNorm + activation; `residual` adds the input back."""

    c_in: int
    c_out: int
    kernel: int
    bias: bool
    act: str
    stride: int = 1
    residual: bool = False


@dataclass(frozen=True)
class MBConv:
    """Inverted residual: 1x1 expand, depthwise kxk, optional squeeze-excitation, 1x1 project.

    Each conv is followed by BatchNorm and the activation (as in the reference study).
    `skip` is "identity", "project" (1x1 conv, stride as the block) or "none".
    """

    c_in: int
    c_out: int
    c_inner: int
    kernel: int
    stride: int
    bias: bool
    act: str
    se: int  # squeeze-excitation bottleneck channels, 0 = none
    skip: str


@dataclass(frozen=True)
class MaxPool:
    """2x2 max-pooling between stages."""


@dataclass(frozen=True)
class Head:
    """Global average pool, flatten, optional dropout, linear classifier."""

    c_in: int
    classes: int


BlockSpec = Conv | MBConv | MaxPool | Head


# ---------------------------------------------------------------- option checking

def _choice(*allowed: Any):
    def check(v: Any) -> bool:
        return v in allowed and type(v) is type(allowed[0])
    check.describe = " or ".join(repr(a) if isinstance(a, str) else str(a).lower() for a in allowed)  # type: ignore[attr-defined]
    check.choices = allowed  # type: ignore[attr-defined]  # what is allowed, for tests that try every value
    return check


def _int_range(lo: int, hi: int):
    def check(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
    check.describe = f"an integer in {lo}..{hi}"  # type: ignore[attr-defined]
    check.int_range = (lo, hi)  # type: ignore[attr-defined]
    return check


def _float_range(lo: float, hi: float):
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


def _split_body(body: str, where: str) -> list[str]:
    parts = body.split("|")
    if not body or any(not p for p in parts):
        raise NasError(f"{where}: empty part in genome '{body}' (parts are separated by single '|')")
    return parts


def _segment(pattern: str, part: str, form: str, where: str) -> list[int]:
    m = re.fullmatch(pattern, part)
    if not m:
        raise NasError(f"{where}: '{part}' is not of the form {form}")
    return [int(x) for x in m.groups()]


class Family:
    """Which genes and options a family has, and how a genome becomes block specs."""

    name: str
    per_stage: frozenset[str]
    gene_roles: dict[str, str]
    default_options: dict[str, Any]
    option_checks: dict[str, Any]

    def gene_names(self, options: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def architecture(self, genome: Genome) -> list[BlockSpec]:
        raise NotImplementedError

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
        """`prefix:body`, then `;key=value,...` for the options that differ from `base_options`."""
        diff = [f"{k}={_format_option(v)}" for k, v in genome.options.items()
                if k not in self.body_options and json.dumps(v) != json.dumps(base_options.get(k))]
        return f"{prefix}:{self.short_body(genome.genes, genome.options)}" + (";" + ",".join(diff) if diff else "")

    def parse_short(self, text: str, base_options: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(genes, options) of a short form without its `prefix:`; options not in the text come
        from `base_options` (the options of the space the prefix names). Genes are not checked."""
        body, _, suffix = text.partition(";")
        options = dict(base_options)
        given: set[str] = set()
        for item in suffix.split(",") if suffix else []:
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise NasError(f"{where}: option '{item}' after ';' must look like key=value "
                               f"(e.g. activation=relu,bias=true)")
            if key in self.body_options:
                raise NasError(f"{where}: option '{key}' is given by the genes before ';', not after it")
            if key in given:
                raise NasError(f"{where}: option '{key}' is given twice")
            given.add(key)
            options[key] = _parse_option(value.strip())
        genes, implied = self.parse_body(body, where)
        return genes, self.check_options({**options, **implied}, where)

    def check_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        if not isinstance(options, dict):
            raise NasError(f"{where}: field 'options' must be a table/object")
        for key, value in options.items():
            if key not in self.option_checks:
                raise NasError(f"{where}: options.{key} is not an option of family '{self.name}' "
                               f"(options: {', '.join(sorted(self.option_checks))})")
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
                raise NasError(f"{where}: genes.{key} is not a gene of family '{self.name}' with these "
                               f"options (genes: {', '.join(names)})")
        for name in names:
            if name not in genes:
                raise NasError(f"{where}: missing gene 'genes.{name}'")
            v = genes[name]
            lowest = 0 if name == "width_slope" else 1
            if name in self.per_stage:
                if not (isinstance(v, list) and len(v) == stages):
                    raise NasError(f"{where}: genes.{name} must be a list of {stages} integers (one per stage)")
                items = v
            else:
                items = [v]
            for x in items:
                if not isinstance(x, int) or isinstance(x, bool) or x < lowest:
                    raise NasError(f"{where}: genes.{name} must hold integers >= {lowest}, got {x!r}")
            out[name] = list(v) if name in self.per_stage else v
        return out


class ConvFamily(Family):
    """The reference study's plain family: per stage, `depth` 3x3 convs of `width` channels."""

    name = "conv"
    per_stage = frozenset({"depth", "width"})
    gene_roles = {"depth": "depth", "width": "width"}
    default_options = {"stages": 4, "activation": "relu", "bias": True, "residual": False, "num_classes": 100}
    option_checks = {
        "stages": _int_range(1, 6),
        "activation": _choice(*ACTIVATIONS),
        "bias": _choice(True, False),
        "residual": _choice(True, False),
        "num_classes": _int_range(2, 100000),
    }

    def gene_names(self, options: dict[str, Any]) -> list[str]:
        return ["depth", "width"]

    def architecture(self, genome: Genome) -> list[BlockSpec]:
        o, g = genome.options, genome.genes
        blocks: list[BlockSpec] = []
        c = 3
        for s in range(o["stages"]):
            if s > 0:
                blocks.append(MaxPool())
            for _ in range(g["depth"][s]):
                w = g["width"][s]
                blocks.append(Conv(c, w, 3, o["bias"], o["activation"], residual=o["residual"] and c == w))
                c = w
        blocks.append(Head(c, o["num_classes"]))
        return blocks

    # Body: per stage `<width>x<depth>`, e.g. 16x1|32x2|64x1|128x1.
    def short_body(self, genes: dict[str, Any], options: dict[str, Any]) -> str:
        return "|".join(f"{w}x{d}" for d, w in zip(genes["depth"], genes["width"]))

    def parse_body(self, body: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        stages = [_segment(r"(\d+)x(\d+)", p, "<width>x<depth>, e.g. 32x2", where) for p in _split_body(body, where)]
        return {"depth": [d for _, d in stages], "width": [w for w, _ in stages]}, {"stages": len(stages)}


class MBConvFamily(Family):
    """Inverted-residual family: a stem, then per stage `depth` MBConv blocks."""

    name = "mbconv"
    per_stage = frozenset({"depth", "width", "expand", "kernel"})
    gene_roles = {"stem": "width", "width": "width", "width_base": "width", "width_slope": "width",
                  "depth": "depth", "expand": "other", "kernel": "other"}
    default_options = {"stages": 4, "activation": "relu", "se_ratio": 0.0, "bias": True, "skip": "project",
                       "downsample": "maxpool", "stem_kernel": 1, "width_schedule": "per_stage",
                       "num_classes": 100}
    option_checks = {
        "stages": _int_range(1, 6),
        "activation": _choice(*ACTIVATIONS),
        "se_ratio": _float_range(0.0, 1.0),
        "bias": _choice(True, False),
        "skip": _choice("project", "identity"),
        "downsample": _choice("maxpool", "stride"),
        "stem_kernel": _choice(1, 3, 5),
        "width_schedule": _choice("per_stage", "linear"),
        "num_classes": _int_range(2, 100000),
    }

    def gene_names(self, options: dict[str, Any]) -> list[str]:
        widths = ["width"] if options.get("width_schedule", "per_stage") == "per_stage" else ["width_base", "width_slope"]
        return ["stem", "depth", *widths, "expand", "kernel"]

    @staticmethod
    def widths(genes: dict[str, Any], options: dict[str, Any]) -> list[int]:
        """Per-stage output widths; the linear schedule gives c_s = base + slope * s."""
        if options["width_schedule"] == "per_stage":
            return list(genes["width"])
        return [genes["width_base"] + genes["width_slope"] * s for s in range(options["stages"])]

    def architecture(self, genome: Genome) -> list[BlockSpec]:
        o, g = genome.options, genome.genes
        act, bias = o["activation"], o["bias"]
        blocks: list[BlockSpec] = [Conv(3, g["stem"], o["stem_kernel"], bias, act)]
        c = g["stem"]
        for s, w in enumerate(self.widths(g, o)):
            stride = 1
            if s > 0:
                if o["downsample"] == "maxpool":
                    blocks.append(MaxPool())
                else:
                    stride = 2
            for j in range(g["depth"][s]):
                st = stride if j == 0 else 1
                if c == w and st == 1:
                    skip = "identity"
                else:
                    skip = "project" if o["skip"] == "project" else "none"
                se = max(1, round(c * o["se_ratio"])) if o["se_ratio"] > 0 else 0
                blocks.append(MBConv(c, w, g["expand"][s] * c, g["kernel"][s], st, bias, act, se, skip))
                c = w
        blocks.append(Head(c, o["num_classes"]))
        return blocks

    # Body: `s<stem>`, with the linear width schedule `w<width_base>+<width_slope>`, then per stage
    # `<width>x<depth>e<expansion>k<kernel>` (the linear schedule's widths are shown, and checked
    # when read back), e.g. s16|16x1e4k3|32x1e4k3|32x1e4k3|100x1e4k3.
    body_options = frozenset({"stages", "width_schedule"})

    def short_body(self, genes: dict[str, Any], options: dict[str, Any]) -> str:
        linear = options["width_schedule"] == "linear"
        widths = self.widths(genes, options)
        parts = [f"s{genes['stem']}", *([f"w{genes['width_base']}+{genes['width_slope']}"] if linear else []),
                 *(f"{w}x{d}e{e}k{k}" for w, d, e, k in zip(widths, genes["depth"], genes["expand"], genes["kernel"]))]
        return "|".join(parts)

    def parse_body(self, body: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        parts = _split_body(body, where)
        (stem,) = _segment(r"s(\d+)", parts.pop(0), "s<stem>, e.g. s16", where)
        genes: dict[str, Any] = {"stem": stem}
        linear = bool(parts) and parts[0].startswith("w")
        if linear:
            genes["width_base"], genes["width_slope"] = _segment(r"w(\d+)\+(\d+)", parts.pop(0),
                                                                 "w<width_base>+<width_slope>, e.g. w24+8", where)
        if not parts:
            raise NasError(f"{where}: no stages in genome '{body}'")
        form = "<width>x<depth>e<expansion>k<kernel>, e.g. 32x2e4k3"
        stages = [_segment(r"(\d+)x(\d+)e(\d+)k(\d+)", p, form, where) for p in parts]
        for key, i in (("depth", 1), ("expand", 2), ("kernel", 3)):
            genes[key] = [st[i] for st in stages]
        widths = [st[0] for st in stages]
        implied = {"stages": len(stages), "width_schedule": "linear" if linear else "per_stage"}
        if linear:
            expected = self.widths(genes, implied)
            if widths != expected:
                raise NasError(f"{where}: stage widths {widths} do not follow "
                               f"w{genes['width_base']}+{genes['width_slope']} (expected {expected})")
        else:
            genes["width"] = widths
        return genes, implied


FAMILIES: dict[str, Family] = {f.name: f for f in (ConvFamily(), MBConvFamily())}


def architecture(genome: Genome) -> list[BlockSpec]:
    """The block specs of a genome's network, in order."""
    return FAMILIES[genome.family].architecture(genome)
