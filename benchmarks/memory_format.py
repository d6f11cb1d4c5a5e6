"""channels_last against contiguous (NCHW) tensors for training on the CPU, side by side in one run.

nas trains in channels_last everywhere (oneDNN's NHWC kernels). When a channels_last kernel
crashed on an AVX2 CPU (see projection_shortcut.py), the alternative to working around it was
to train contiguous there; this measures what that would cost. Each genome is trained for
`--steps` SGD steps on random batches in each format, the two alternating by round so a change
in machine load hits both, with bf16 autocast where the CPU has it (as nas trains). Prints img/s
per round and the ratio of medians (contiguous / channels_last; below 1: channels_last is faster).

    python benchmarks/memory_format.py                    # the third curve's 10k-500k winners, 1 thread
    python benchmarks/memory_format.py --genomes 'conv-shape:4x1|8x1|16x1|33x1' --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from nas.families import build_model
from nas.genome_args import parse_genome
from nas.training import bf16_autocast

GENOMES = (
    "conv-shape:9x1|14x2|17x1|17x1",
    "conv-shape:12x3|27x1|48x1|60x1",
    "conv-shape:18x3|39x1|69x1|86x1",
    "conv-shape:78x2|78x1|117x1|264x1",
)


def images_per_s(model: nn.Module, fmt: torch.memory_format, steps: int, batch: int, amp: bool) -> float:
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,))
    for i in range(steps + 1):  # the first step is a warm-up (kernel choice, allocator)
        if i == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def add_step_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed SGD steps per round")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)


def cpu_setup(args: argparse.Namespace, note: str = "") -> bool:
    """Set the threads, say what the CPU trains in; whether that is bf16 autocast."""
    torch.set_num_threads(args.threads)
    amp = bf16_autocast(torch.device("cpu"))
    print(f"cpu, {args.threads} thread(s), {'bf16 autocast' if amp else 'float32'}{note}", flush=True)
    return amp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genomes", nargs="+", default=GENOMES)
    add_step_options(parser)
    args = parser.parse_args()
    amp = cpu_setup(args)
    for text in args.genomes:
        genome = parse_genome(text)
        nhwc, nchw = [], []
        for r in range(args.rounds):
            torch.manual_seed(0)
            nhwc.append(images_per_s(build_model(genome), torch.channels_last, args.steps, args.batch, amp))
            torch.manual_seed(0)
            nchw.append(images_per_s(build_model(genome), torch.contiguous_format, args.steps, args.batch, amp))
            print(f"  {genome} round {r + 1}: channels_last {nhwc[-1]:6.0f} img/s | contiguous {nchw[-1]:6.0f} img/s")
        ratio = statistics.median(nchw) / statistics.median(nhwc)
        print(f"{genome}: contiguous / channels_last = {ratio:.2f} (median of {args.rounds} rounds)", flush=True)


if __name__ == "__main__":
    main()
