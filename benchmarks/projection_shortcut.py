"""The strided projection shortcut computed as every stride-th pixel, then an unstrided 1x1 conv
(nas's PointwiseConv below 8 input channels) against the strided nn.Conv2d 1x1, side by side.

oneDNN's channels_last float32 backward of a strided 1x1 conv with 2-7 input channels corrupts
the heap on AVX2 CPUs (torch 2.14.1), so PointwiseConv takes the sliced form there; this
measures what that form would cost on wider inputs, where the strided conv does not crash (and
which PointwiseConv therefore keeps). Each ResNet is built twice from the same genome, every
strided shortcut sliced in the first and strided in the second (same weights), and trained for `--steps` SGD steps on
random batches in channels_last, the two alternating by round so a change in machine load hits
both. bf16 autocast where the CPU has it, as nas trains. Prints img/s per round and the ratio of
medians (sliced / strided conv; above 1: the sliced form is faster).

    python benchmarks/projection_shortcut.py                      # three ResNets, 1 thread
    python benchmarks/projection_shortcut.py --genomes 'resnet:16x3|32x3|64x3' --rounds 5
"""

from __future__ import annotations

import argparse
import statistics

import torch
from memory_format import add_step_options, cpu_setup, images_per_s  # the same timed SGD steps
from torch import nn

from nas.families import build_model
from nas.genome_args import parse_genome
from nas.modules import PointwiseConv

GENOMES = ("resnet:8x1|16x1|32x1", "resnet:16x3|32x3|64x3", "resnet:48x2|96x2|192x2")


def with_shortcuts(model: nn.Module, sliced: bool) -> nn.Module:
    """`model` with every strided PointwiseConv computing in the sliced form (`sliced`) or as
    the strided conv, whatever its width."""
    for module in model.modules():
        if isinstance(module, PointwiseConv) and module.stride != (1, 1):
            module.NARROW = 1 << 30 if sliced else 0
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genomes", nargs="+", default=GENOMES, help="ResNet genomes (widths of 8 and up)")
    add_step_options(parser)
    args = parser.parse_args()
    amp = cpu_setup(args, ", channels_last")
    for text in args.genomes:
        genome = parse_genome(text)
        torch.manual_seed(0)
        ours = with_shortcuts(build_model(genome), sliced=True).to(memory_format=torch.channels_last)
        torch.manual_seed(0)
        theirs = with_shortcuts(build_model(genome), sliced=False).to(memory_format=torch.channels_last)
        a, b = [], []
        for r in range(args.rounds):
            a.append(images_per_s(ours, torch.channels_last, args.steps, args.batch, amp))
            b.append(images_per_s(theirs, torch.channels_last, args.steps, args.batch, amp))
            print(f"  {genome} round {r + 1}: sliced {a[-1]:6.0f} img/s | strided conv {b[-1]:6.0f} img/s")
        ratio = statistics.median(a) / statistics.median(b)
        print(f"{genome}: sliced / strided conv = {ratio:.2f} (median of {args.rounds} rounds)", flush=True)


if __name__ == "__main__":
    main()
