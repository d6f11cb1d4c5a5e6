"""The torch modules of the built-in block specs (`nas.blocks`), and a genome's whole network."""

from __future__ import annotations

import torch
from torch import nn

from nas.blocks import Conv, Head, MBConv
from nas.families import architecture
from nas.spaces import Genome

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


def conv_bn_act(c_in: int, c_out: int, kernel: int, act: str, bias: bool, stride: int = 1,
                groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(c_out),
        _ACTIVATIONS[act](inplace=True),
    )


class ConvLayer(nn.Module):
    def __init__(self, spec: Conv):
        super().__init__()
        self.body = conv_bn_act(spec.c_in, spec.c_out, spec.kernel, spec.act, spec.bias, spec.stride)
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


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
    def __init__(self, spec: MBConv):
        super().__init__()
        s = spec
        layers: list[nn.Module] = [
            conv_bn_act(s.c_in, s.c_inner, 1, s.act, s.bias),
            conv_bn_act(s.c_inner, s.c_inner, s.kernel, s.act, s.bias, stride=s.stride, groups=s.c_inner),
        ]
        if s.se:
            layers.append(SqueezeExcite(s.c_inner, s.se, s.act))
        layers.append(conv_bn_act(s.c_inner, s.c_out, 1, s.act, s.bias))
        self.main = nn.Sequential(*layers)
        self.skip_kind = s.skip
        self.skip = nn.Conv2d(s.c_in, s.c_out, 1, stride=s.stride, bias=s.bias) if s.skip == "project" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        if self.skip_kind == "identity":
            return y + x
        if self.skip is not None:
            return y + self.skip(x)
        return y


class Classifier(nn.Module):
    def __init__(self, spec: Head):
        super().__init__()
        self.fc = nn.Linear(spec.c_in, spec.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


def build_model(genome: Genome) -> nn.Sequential:
    """The network of a genome; outputs logits (softmax is part of the loss)."""
    model = nn.Sequential(*(b.build() for b in architecture(genome)))
    init_weights(model)
    return model


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (the brief's training lessons); zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
