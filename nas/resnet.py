"""The ResNet basic-block family (He et al. 2016, the CIFAR variant), in one module.

A 3x3 stem conv as wide as stage 1, then per stage `depth` basic blocks of `width` channels,
global average pool and a linear head. Stages 2.. halve the resolution: with
`downsample = "stride"` their first block's first conv has stride 2, with "maxpool" a 2x2
max-pool comes before the stage. A block's shortcut is the identity, or a 1x1 conv + BatchNorm
(projection) only where the block changes the shape (width or resolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nas.blocks import (
    BlockSpec,
    Conv,
    Head,
    batchnorm_params,
    conv_params,
    downsampling,
)
from nas.family import WidthDepthFamily, choice, int_range

if TYPE_CHECKING:
    from torch import nn

    from nas.spaces import Genome


@dataclass(frozen=True)
class BasicBlock:
    """Two bias-free 3x3 convs with BatchNorm, ReLU after the first and after the sum with the
    shortcut; the first conv and the projection carry the stride. torchvision's BasicBlock."""

    c_in: int
    c_out: int
    stride: int

    @property
    def projection(self) -> bool:
        return self.stride != 1 or self.c_in != self.c_out

    def params(self) -> int:
        n = conv_params(self.c_in, self.c_out, 3, False) + conv_params(self.c_out, self.c_out, 3, False)
        n += 2 * batchnorm_params(self.c_out)
        if self.projection:
            n += conv_params(self.c_in, self.c_out, 1, False) + batchnorm_params(self.c_out)
        return n

    def build(self) -> nn.Module:
        from torch import nn
        from torchvision.models.resnet import BasicBlock as TorchBasicBlock

        from nas.modules import PointwiseConv

        shortcut = (
            nn.Sequential(PointwiseConv(self.c_in, self.c_out, self.stride), nn.BatchNorm2d(self.c_out))
            if self.projection
            else None
        )
        return TorchBasicBlock(self.c_in, self.c_out, self.stride, shortcut)


class ResNetFamily(WidthDepthFamily):
    """Genes: per stage the width and the number of basic blocks (depth); short form and default
    start (widths doubling from 16, as in the CIFAR ResNets, one block per stage) as conv's.

    The count is not monotone in the widths under "maxpool" (two equal neighbouring widths save
    a projection), but every gene at its minimum makes all widths equal, so the default
    `smallest` (every gene at its minimum) is still the smallest model."""

    name = "resnet"
    default_options = {"stages": 3, "downsample": "stride", "num_classes": 100}
    option_checks = {
        "stages": int_range(3, 4),
        "downsample": choice("stride", "maxpool"),
        "num_classes": int_range(2, 100000),
    }

    def architecture(self, genome: Genome) -> list[BlockSpec]:
        o, g = genome.options, genome.genes
        c = g["width"][0]
        blocks: list[BlockSpec] = [Conv(3, c, 3, False, "relu")]  # the stem
        for s, (w, depth) in enumerate(zip(g["width"], g["depth"])):
            pool, stride = downsampling(s, o["downsample"])
            blocks += pool
            for j in range(depth):
                blocks.append(BasicBlock(c, w, stride if j == 0 else 1))
                c = w
        blocks.append(Head(c, o["num_classes"]))
        return blocks
