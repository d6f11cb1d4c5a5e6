"""Exact parameter counts (analytic, no module is built), FLOPs and a per-layer table (fvcore)."""

from __future__ import annotations

import functools
import logging
import warnings

from nas.families import Conv, Head, MaxPool, MBConv, BlockSpec, architecture
from nas.spaces import Genome


def conv_params(c_in: int, c_out: int, kernel: int, bias: bool, groups: int = 1) -> int:
    return c_out * (c_in // groups) * kernel * kernel + (c_out if bias else 0)


def batchnorm_params(c: int) -> int:
    return 2 * c  # weight and bias; running stats are buffers, not parameters


def block_params(spec: BlockSpec) -> int:
    """Parameters of one block spec, as `nas.models.build_block` would create them."""
    if isinstance(spec, Conv):
        return conv_params(spec.c_in, spec.c_out, spec.kernel, spec.bias) + batchnorm_params(spec.c_out)
    if isinstance(spec, MBConv):
        s = spec
        n = conv_params(s.c_in, s.c_inner, 1, s.bias) + batchnorm_params(s.c_inner)
        n += conv_params(s.c_inner, s.c_inner, s.kernel, s.bias, groups=s.c_inner) + batchnorm_params(s.c_inner)
        if s.se:
            n += conv_params(s.c_inner, s.se, 1, True) + conv_params(s.se, s.c_inner, 1, True)
        n += conv_params(s.c_inner, s.c_out, 1, s.bias) + batchnorm_params(s.c_out)
        if s.skip == "project":
            n += conv_params(s.c_in, s.c_out, 1, s.bias)
        return n
    if isinstance(spec, MaxPool):
        return 0
    if isinstance(spec, Head):
        return spec.c_in * spec.classes + spec.classes
    raise TypeError(f"no parameter formula for block spec {spec!r}")


def architecture_params(genome: Genome) -> int:
    """The count itself, uncached (callers with their own cache key use this)."""
    return sum(block_params(b) for b in architecture(genome))


@functools.lru_cache(maxsize=1 << 16)
def _count_key(key: str, genome: Genome) -> int:
    return architecture_params(genome)


def count_params(genome: Genome) -> int:
    """Exactly `sum(p.numel() for p in build_model(genome).parameters())`, without building it."""
    return _count_key(genome.key(), genome)


def _flop_analysis(genome: Genome):
    import torch  # here: counting parameters must not wait for torch to load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    from nas.models import build_model

    model = build_model(genome).eval()
    with warnings.catch_warnings():  # fvcore traces through a deprecated torch.jit API
        warnings.simplefilter("ignore", FutureWarning)
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 32, 32))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.total()  # runs the trace once; later queries reuse it
    return model, analysis


@functools.lru_cache(maxsize=4096)
def _flops_key(key: str, genome: Genome) -> int:
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    return int(_flop_analysis(genome)[1].total())


def count_flops(genome: Genome) -> int:
    """Forward FLOPs of one 32x32 image, as fvcore counts them (one multiply-add = one FLOP)."""
    return _flops_key(genome.key(), genome)


def layer_table(genome: Genome, max_depth: int = 3) -> str:
    """fvcore's per-module table of parameters and FLOPs."""
    from fvcore.nn import flop_count_table

    _, analysis = _flop_analysis(genome)
    return flop_count_table(analysis, max_depth=max_depth)
