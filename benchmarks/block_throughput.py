"""Block types at equal parameters: training images/s of plain, residual and separable stages.

mixed-shape lets the search choose each stage's block. What a block costs per image decides how
many trials and epochs a CPU-minute buys, so this measures it: the hand design's shape (one block
per stage, widths doubling) built with every stage plain (`p`), residual basic blocks (`r`) or
depthwise-separable convs (`s`), each projected to the budget, trained by nas's `train()` with
the space's recipe for one epoch per round on one thread, the block types taking turns within
each round so that a change in machine load hits all of them. Prints img/s per round, the
median per block type and its ratio to plain, with parameters and FLOPs.

    python benchmarks/block_throughput.py --data-dir ../shared/data                 # 50k and 500k
    python benchmarks/block_throughput.py --budgets 10k --rounds 5 --images 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics

import torch
from trainer_throughput import add_throughput_options, throughput_device, warm_up

from nas.budget import parse_budgets, project
from nas.counting import count_flops, count_params
from nas.data import load_cifar100
from nas.genome_args import parse_genome
from nas.spaces import load_space
from nas.training import space_recipe, train

BLOCKS = {"p": "plain 3x3 conv", "r": "residual basic block", "s": "depthwise-separable conv"}


def measure(budget: int, data, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    space = load_space("mixed-shape")
    recipe = space_recipe(space, epochs=1, bf16=not args.no_bf16)
    genomes = {b: project(parse_genome(f"mixed-shape:16x1{b}|32x1{b}|64x1{b}|128x1{b}"), space, budget) for b in BLOCKS}
    print(f"\nbudget {budget:,}, recipe {recipe.tag}, {len(data.train_y)} images per round", flush=True)
    for b, genome in genomes.items():
        size = f"{count_params(genome):,} params, {count_flops(genome):,} FLOPs"
        print(f"  {b} {BLOCKS[b]:26s} {genome}  {size}", flush=True)
        warm_up(genome, data, recipe, device)
    speeds: dict[str, list[float]] = {b: [] for b in BLOCKS}
    for r in range(args.rounds):
        for b, genome in genomes.items():
            result = train(genome, data, recipe, device)
            speeds[b].append(result.images_seen / result.train_time_s)
        print(f"  round {r + 1}: " + " | ".join(f"{b} {s[-1]:6.0f} img/s" for b, s in speeds.items()), flush=True)
    medians = {b: statistics.median(s) for b, s in speeds.items()}
    print(
        "  median: " + ", ".join(f"{b} {m:.0f} img/s ({m / medians['p']:.2f}x plain)" for b, m in medians.items()),
        flush=True,
    )
    return medians


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_throughput_options(p, "50k,500k", "budgets to project the three designs to")
    args = p.parse_args(argv)
    device = throughput_device(args)
    data = load_cifar100(args.data_dir, device=device, subset=args.images)
    data = dataclasses.replace(data, val_x=data.val_x[:0], val_y=data.val_y[:0])  # nothing to evaluate
    results = {b: measure(b, data, args, device) for b in parse_budgets(args.budgets)}
    print("\nimg/s relative to plain convs at equal parameters:")
    for budget, medians in results.items():
        print(f"  {budget:>9,}: " + ", ".join(f"{b} {m / medians['p']:.2f}x" for b, m in medians.items()))
    print(f"(load average now {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
