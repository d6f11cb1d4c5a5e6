"""Exact parameter counts (analytic, no module is built), FLOPs and a per-layer table (fvcore)."""

from __future__ import annotations

import functools
import logging
import warnings

from nas.families import architecture
from nas.spaces import Genome


def architecture_params(genome: Genome) -> int:
    """The count itself, uncached (callers with their own cache key use this)."""
    return sum(b.params() for b in architecture(genome))


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

    from nas.families import build_model

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
