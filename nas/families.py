"""The model families: the registry `FAMILIES`, and the built-in conv, mixed and mbconv families.

A family (see `nas.family.Family`) turns a genome into an architecture, a list of block specs
(`nas.blocks`), each of which counts its parameters and builds its module. A new family is one
module with its Family subclass (and any new block spec), plus one line in `FAMILIES`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nas.blocks import BlockSpec, Conv, Head, MaxPool, MBConv, SeparableConv, downsampling
from nas.errors import NasError
from nas.family import (
    ACTIVATIONS,
    Family,
    WidthDepthFamily,
    choice,
    float_range,
    int_range,
    segment,
    split_body,
)
from nas.resnet import BasicBlock, ResNetFamily

if TYPE_CHECKING:
    from torch import nn

    from nas.spaces import Genome, Space


class ConvFamily(WidthDepthFamily):
    """The reference study's plain family: per stage, `depth` 3x3 convs of `width` channels."""

    name = "conv"
    default_options = {"stages": 4, "activation": "relu", "bias": True, "residual": False, "num_classes": 100}
    option_checks = {
        "stages": int_range(1, 6),
        "activation": choice(*ACTIVATIONS),
        "bias": choice(True, False),
        "residual": choice(True, False),
        "num_classes": int_range(2, 100000),
    }

    def stage_block(self, genes: dict[str, Any], stage: int, c_in: int, options: dict[str, Any]) -> BlockSpec:
        """One block of stage `stage`, reading `c_in` channels: a 3x3 conv."""
        c_out = genes["width"][stage]
        residual = options["residual"] and c_in == c_out
        return Conv(c_in, c_out, 3, options["bias"], options["activation"], residual=residual)

    def architecture(self, genome: Genome) -> list[BlockSpec]:
        o, g = genome.options, genome.genes
        blocks: list[BlockSpec] = []
        c = 3
        for s in range(o["stages"]):
            if s > 0:
                blocks.append(MaxPool())
            for _ in range(g["depth"][s]):
                blocks.append(self.stage_block(g, s, c, o))
                c = g["width"][s]
        blocks.append(Head(c, o["num_classes"]))
        return blocks


# The mixed family's block types: the `block` gene's values, and their letters in a short form.
BLOCK_TYPES = {1: "plain", 2: "residual", 3: "separable"}
BLOCK_LETTERS = {1: "p", 2: "r", 3: "s"}


class MixedFamily(ConvFamily):
    """Conv stages whose block type is a gene: per stage `depth` blocks of `width` channels, each
    a plain 3x3 conv (1), a ResNet basic block (2: two 3x3 convs and a shortcut, torchvision's,
    ReLU) or a depthwise-separable conv (3), so that the search decides where residual
    connections or cheap separable convs pay. Stages are joined by 2x2 max-pooling, as in conv.
    Short-form body: per stage `<width>x<depth><p|r|s>`, e.g. 16x1p|32x2r|64x1s|128x1p."""

    name = "mixed"
    per_stage = frozenset({"depth", "width", "block"})
    gene_roles = {"depth": "depth", "width": "width", "block": "other"}
    gene_choices = {"block": tuple(BLOCK_TYPES)}

    def gene_names(self, options: dict[str, Any]) -> list[str]:
        return ["depth", "width", "block"]

    def start_genes(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().start_genes(options), "block": [1] * options["stages"]}  # the plain conv hand design

    # Block types by parameter count at equal widths: a separable conv counts fewer than a plain
    # one (9c + c*w against 9c*w), a residual block more (two convs).
    BY_COUNT = (3, 1, 2)

    def smallest(self, space: Space, options: dict[str, Any]) -> Genome:
        """Every other coordinate at its minimum, each stage's block the type with the fewest parameters."""
        kind = min(space.genes["block"].values(), key=self.BY_COUNT.index)
        return self._blocks_at(space.extreme("min", options), kind)

    def largest(self, space: Space, options: dict[str, Any]) -> Genome:
        """Every other coordinate at its maximum, each stage's block the type with the most parameters."""
        kind = max(space.genes["block"].values(), key=self.BY_COUNT.index)
        return self._blocks_at(space.extreme("max", options), kind)

    @staticmethod
    def _blocks_at(genome: Genome, kind: int) -> Genome:
        return replace(genome, genes={**genome.genes, "block": [kind] * len(genome.genes["block"])})

    def stage_block(self, genes: dict[str, Any], stage: int, c_in: int, options: dict[str, Any]) -> BlockSpec:
        """One block of stage `stage`, of the stage's type (`block` gene)."""
        kind, c_out = genes["block"][stage], genes["width"][stage]
        if kind == 2:
            return BasicBlock(c_in, c_out, 1)
        if kind == 3:
            return SeparableConv(c_in, c_out, options["bias"], options["activation"])
        return super().stage_block(genes, stage, c_in, options)

    def short_body(self, genes: dict[str, Any], options: dict[str, Any]) -> str:
        return "|".join(
            f"{w}x{d}{BLOCK_LETTERS.get(b, f'b{b}')}" for d, w, b in zip(genes["depth"], genes["width"], genes["block"])
        )

    def parse_body(self, body: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        code = {letter: kind for kind, letter in BLOCK_LETTERS.items()}
        form = "<width>x<depth><block: p plain, r residual, s separable>, e.g. 32x2r"
        genes: dict[str, list[int]] = {"depth": [], "width": [], "block": []}
        for part in split_body(body, where):
            letter = part[-1:] if part[-1:].isalpha() else ""
            if letter not in code:
                raise NasError(f"{where}: '{part}' is not of the form {form}")
            width, depth = segment(r"(\d+)x(\d+)", part[:-1], form, where)
            genes["depth"].append(depth)
            genes["width"].append(width)
            genes["block"].append(code[letter])
        return genes, {"stages": len(genes["depth"])}


class MBConvFamily(Family):
    """Inverted-residual family: a stem, then per stage `depth` MBConv blocks."""

    name = "mbconv"
    per_stage = frozenset({"depth", "width", "expand", "kernel"})
    gene_roles = {
        "stem": "width",
        "width": "width",
        "width_base": "width",
        "width_slope": "width",
        "depth": "depth",
        "expand": "other",
        "kernel": "other",
    }
    zero_genes = frozenset({"width_slope"})  # a slope of 0: every stage as wide as the first
    default_options = {
        "stages": 4,
        "activation": "relu",
        "se_ratio": 0.0,
        "bias": True,
        "skip": "project",
        "downsample": "maxpool",
        "stem_kernel": 1,
        "width_schedule": "per_stage",
        "num_classes": 100,
    }
    option_checks = {
        "stages": int_range(1, 6),
        "activation": choice(*ACTIVATIONS),
        "se_ratio": float_range(0.0, 1.0),
        "bias": choice(True, False),
        "skip": choice("project", "identity"),
        "downsample": choice("maxpool", "stride"),
        "stem_kernel": choice(1, 3, 5),
        "width_schedule": choice("per_stage", "linear"),
        "num_classes": int_range(2, 100000),
    }

    def gene_names(self, options: dict[str, Any]) -> list[str]:
        widths = (
            ["width"] if options.get("width_schedule", "per_stage") == "per_stage" else ["width_base", "width_slope"]
        )
        return ["stem", "depth", *widths, "expand", "kernel"]

    def start_genes(self, options: dict[str, Any]) -> dict[str, Any]:
        # widths doubling stage by stage ("wider blocks deeper in"), expansion 4
        stages = options["stages"]
        return {
            "stem": 16,
            "width": [16 * 2**s for s in range(stages)],
            "width_base": 16,
            "width_slope": 16,
            "expand": [4] * stages,
        }

    def stage_widths(self, genes: dict[str, Any], options: dict[str, Any]) -> list[int]:
        """Per-stage output widths; the linear schedule gives c_s = base + slope * s."""
        if options["width_schedule"] == "per_stage":
            return list(genes["width"])
        return [genes["width_base"] + genes["width_slope"] * s for s in range(options["stages"])]

    def architecture(self, genome: Genome) -> list[BlockSpec]:
        o, g = genome.options, genome.genes
        act, bias = o["activation"], o["bias"]
        blocks: list[BlockSpec] = [Conv(3, g["stem"], o["stem_kernel"], bias, act)]
        c = g["stem"]
        for s, w in enumerate(self.stage_widths(g, o)):
            pool, stride = downsampling(s, o["downsample"])
            blocks += pool
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
        widths = self.stage_widths(genes, options)
        parts = [
            f"s{genes['stem']}",
            *([f"w{genes['width_base']}+{genes['width_slope']}"] if linear else []),
            *(f"{w}x{d}e{e}k{k}" for w, d, e, k in zip(widths, genes["depth"], genes["expand"], genes["kernel"])),
        ]
        return "|".join(parts)

    def parse_body(self, body: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        parts = split_body(body, where)
        (stem,) = segment(r"s(\d+)", parts.pop(0), "s<stem>, e.g. s16", where)
        genes: dict[str, Any] = {"stem": stem}
        linear = bool(parts) and parts[0].startswith("w")
        if linear:
            genes["width_base"], genes["width_slope"] = segment(
                r"w(\d+)\+(\d+)", parts.pop(0), "w<width_base>+<width_slope>, e.g. w24+8", where
            )
        if not parts:
            raise NasError(f"{where}: no stages in genome '{body}'")
        form = "<width>x<depth>e<expansion>k<kernel>, e.g. 32x2e4k3"
        stages = [segment(r"(\d+)x(\d+)e(\d+)k(\d+)", p, form, where) for p in parts]
        for key, i in (("depth", 1), ("expand", 2), ("kernel", 3)):
            genes[key] = [st[i] for st in stages]
        widths = [st[0] for st in stages]
        implied = {"stages": len(stages), "width_schedule": "linear" if linear else "per_stage"}
        if linear:
            expected = self.stage_widths(genes, implied)
            if widths != expected:
                raise NasError(
                    f"{where}: stage widths {widths} do not follow "
                    f"w{genes['width_base']}+{genes['width_slope']} (expected {expected})"
                )
        else:
            genes["width"] = widths
        return genes, implied


FAMILIES: dict[str, Family] = {f.name: f for f in (ConvFamily(), MixedFamily(), MBConvFamily(), ResNetFamily())}


def architecture(genome: Genome) -> list[BlockSpec]:
    """The block specs of a genome's network, in order."""
    return FAMILIES[genome.family].architecture(genome)


def build_model(genome: Genome) -> nn.Sequential:
    """The network of a genome, freshly initialised; outputs logits (softmax is part of the loss)."""
    from torch import nn

    from nas.modules import init_weights

    model = nn.Sequential(*(b.build() for b in architecture(genome)))
    init_weights(model)
    return model
