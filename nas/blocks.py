"""Block specs: the plain-data pieces a family's architecture is made of (`nas.families`).

Each spec counts its own parameters (arithmetic only) and builds its own module, in one place,
so the count and the model cannot drift apart; a new block type is one new spec class with
`params()` and `build()`. Specs import torch only inside `build`: counting a genome's
parameters must not wait for torch to load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import nn


class BlockSpec(Protocol):
    def params(self) -> int:
        """Exactly the parameter count of the module `build()` returns."""
        ...

    def build(self) -> nn.Module: ...


def conv_params(c_in: int, c_out: int, kernel: int, bias: bool, groups: int = 1) -> int:
    return c_out * (c_in // groups) * kernel * kernel + (c_out if bias else 0)


def batchnorm_params(c: int) -> int:
    return 2 * c  # weight and bias; running stats are buffers, not parameters


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

    def params(self) -> int:
        return conv_params(self.c_in, self.c_out, self.kernel, self.bias) + batchnorm_params(self.c_out)

    def build(self) -> nn.Module:
        from nas.modules import ConvLayer

        return ConvLayer(self.c_in, self.c_out, self.kernel, self.act, self.bias, self.stride, self.residual)


@dataclass(frozen=True)
class SeparableConv:
    """Depthwise-separable conv: a 3x3 depthwise conv, then a 1x1 conv, each followed by
    BatchNorm and the activation (MobileNet's block, without the expansion of MBConv)."""

    c_in: int
    c_out: int
    bias: bool
    act: str

    def params(self) -> int:
        depthwise = conv_params(self.c_in, self.c_in, 3, self.bias, groups=self.c_in) + batchnorm_params(self.c_in)
        return depthwise + conv_params(self.c_in, self.c_out, 1, self.bias) + batchnorm_params(self.c_out)

    def build(self) -> nn.Module:
        from nas.modules import separable_conv

        return separable_conv(self.c_in, self.c_out, self.act, self.bias)


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

    def params(self) -> int:
        n = conv_params(self.c_in, self.c_inner, 1, self.bias) + batchnorm_params(self.c_inner)
        n += conv_params(self.c_inner, self.c_inner, self.kernel, self.bias, groups=self.c_inner)
        n += batchnorm_params(self.c_inner)
        if self.se:
            n += conv_params(self.c_inner, self.se, 1, True) + conv_params(self.se, self.c_inner, 1, True)
        n += conv_params(self.c_inner, self.c_out, 1, self.bias) + batchnorm_params(self.c_out)
        if self.skip == "project":
            n += conv_params(self.c_in, self.c_out, 1, self.bias)
        return n

    def build(self) -> nn.Module:
        from nas.modules import MBConvBlock

        s = self
        return MBConvBlock(s.c_in, s.c_out, s.c_inner, s.kernel, s.stride, s.bias, s.act, s.se, s.skip)


@dataclass(frozen=True)
class MaxPool:
    """2x2 max-pooling between stages."""

    def params(self) -> int:
        return 0

    def build(self) -> nn.Module:
        from torch import nn

        return nn.MaxPool2d(2)


@dataclass(frozen=True)
class Head:
    """Global average pool, flatten, linear classifier."""

    c_in: int
    classes: int

    def params(self) -> int:
        return self.c_in * self.classes + self.classes

    def build(self) -> nn.Module:
        from nas.modules import Classifier

        return Classifier(self.c_in, self.classes)


def downsampling(stage: int, mode: str) -> tuple[list[BlockSpec], int]:
    """How stage `stage` (0-based) halves the resolution: (specs before it, stride of its first
    block). "maxpool": a 2x2 max-pool before it; "stride": stride 2. Stage 0 keeps the resolution."""
    if stage == 0:
        return [], 1
    return ([MaxPool()], 1) if mode == "maxpool" else ([], 2)
