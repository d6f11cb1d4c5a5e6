"""The torch modules that block specs (`nas.blocks`) build, and the test-time-augmentation wrapper.

Modules take plain numbers, not specs: specs import this module when they build, and nothing
here imports a spec, so the two never import each other.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


def conv_bn_act(
    c_in: int, c_out: int, kernel: int, act: str, bias: bool, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(c_out),
        _ACTIVATIONS[act](inplace=True),
    )


class ConvLayer(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, kernel: int, act: str, bias: bool, stride: int = 1, residual: bool = False
    ):
        super().__init__()
        self.body = conv_bn_act(c_in, c_out, kernel, act, bias, stride)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def separable_conv(c_in: int, c_out: int, act: str, bias: bool) -> nn.Sequential:
    """3x3 depthwise conv, then 1x1 pointwise conv, each with BatchNorm and the activation."""
    return nn.Sequential(conv_bn_act(c_in, c_in, 3, act, bias, groups=c_in), conv_bn_act(c_in, c_out, 1, act, bias))


class PointwiseConv(nn.Conv2d):
    """A 1x1 conv (a projection shortcut). With a stride and under 8 input channels it takes every
    stride-th pixel, then applies the conv unstrided: the same output, parameters and state_dict
    as the strided conv, without oneDNN's channels_last float32 backward of a strided 1x1 conv
    with 2-7 input channels, which corrupts the heap on AVX2 CPUs (torch 2.14.1, oneDNN 3.12;
    8-33 did not). Wider inputs keep the strided conv, up to 15% faster
    (benchmarks/projection_shortcut.py)."""

    NARROW = 8  # input channels below which the strided kernel is avoided

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bias: bool = False):
        super().__init__(c_in, c_out, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if (sh, sw) == (1, 1) or self.in_channels >= self.NARROW:
            return super().forward(x)
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = _ACTIVATIONS[act](inplace=True)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class MBConvBlock(nn.Module):
    """1x1 expand, depthwise kxk, optional squeeze-excitation, 1x1 project; `skip` is
    "identity", "project" (a 1x1 conv with the block's stride) or "none"."""

    def __init__(
        self, c_in: int, c_out: int, c_inner: int, kernel: int, stride: int, bias: bool, act: str, se: int, skip: str
    ):
        super().__init__()
        layers: list[nn.Module] = [
            conv_bn_act(c_in, c_inner, 1, act, bias),
            conv_bn_act(c_inner, c_inner, kernel, act, bias, stride=stride, groups=c_inner),
        ]
        if se:
            layers.append(SqueezeExcite(c_inner, se, act))
        layers.append(conv_bn_act(c_inner, c_out, 1, act, bias))
        self.main = nn.Sequential(*layers)
        self.skip_kind = skip
        self.skip = PointwiseConv(c_in, c_out, stride, bias) if skip == "project" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        if self.skip_kind == "identity":
            return y + x
        if self.skip is not None:
            return y + self.skip(x)
        return y


class Classifier(nn.Module):
    def __init__(self, c_in: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class FlipAverage(nn.Module):
    """Test-time augmentation: the mean of the model's logits for the images and their mirror
    images. Wrapping the model (rather than averaging in the evaluation loop) makes the exported
    ONNX graph do the same, so the accuracy a user gets is the accuracy reported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.model(x) + self.model(x.flip(3)))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (the brief's training lessons); zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
