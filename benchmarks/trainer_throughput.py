"""Training throughput: nas's `train()` against a minimal on-device loop, side by side in one run.

The minimal loop is the least a fast trainer can do: the uint8 images already on the device, a
batched random crop and flip with tensor ops, SGD (Nesterov) with a one-cycle learning rate, bf16
autocast where the device has it, channels_last, and nothing else: no loss check, no scheduler
object, no EMA, no progress bar. `train()` runs with the space's full default recipe (every
training default on: EMA, alternating flip, ...), so the ratio says what all of nas's per-step
work costs, or saves.

Both sides train the same genome on the same images for one epoch per round, with one thread
each in turn, rounds alternating so that a change in machine load hits both. Evaluation is not
timed. Prints img/s per round and the ratio of medians per budget.

    python benchmarks/trainer_throughput.py --data-dir ../shared/data            # 10k, 50k, 500k
    python benchmarks/trainer_throughput.py --budgets 10k --rounds 5 --images 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
from torch import nn

from nas.budget import parse_budgets, project
from nas.data import PAD, load_cifar100
from nas.families import build_model
from nas.genome_args import parse_genome
from nas.spaces import load_space
from nas.training import Recipe, bf16_autocast, default_device, describe_device, space_recipe, train


def minimal_loop_epoch(genome, data, recipe: Recipe, device: torch.device) -> float:
    """One epoch of the minimal loop over `data.train_*`; returns images/s."""
    torch.manual_seed(recipe.seed)
    model = build_model(genome).to(device, memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=recipe.lr,
        momentum=0.9,
        nesterov=True,
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    amp = bf16_autocast(device, recipe.bf16)
    scale = (1.0 / (255.0 * data.std)).view(1, -1, 1, 1)
    shift = (-data.mean / data.std).view(1, -1, 1, 1)
    n, bs = len(data.train_y), recipe.batch_size
    steps = -(-n // bs)
    model.train()
    start = time.perf_counter()
    order = torch.randperm(n, device=device)
    for step in range(steps):
        idx = order[step * bs : (step + 1) * bs]
        x = torch.nn.functional.pad(data.train_x[idx], (PAD,) * 4)
        b = len(idx)
        dy = torch.randint(0, 2 * PAD + 1, (b, 1, 1, 1), device=device)
        dx = torch.randint(0, 2 * PAD + 1, (b, 1, 1, 1), device=device)
        rows = dy + torch.arange(32, device=device).view(1, 1, 32, 1)
        cols = dx + torch.arange(32, device=device).view(1, 1, 1, 32)
        x = x.gather(2, rows.expand(b, 3, 32, 32 + 2 * PAD)).gather(3, cols.expand(b, 3, 32, 32))
        x = torch.where(torch.rand(b, 1, 1, 1, device=device) < 0.5, x.flip(3), x)
        x = torch.addcmul(shift, x.float(), scale).contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * min((step + 1) / (0.2 * steps), (steps - step) / (0.8 * steps))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), data.train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()  # wait for the device
    return n / (time.perf_counter() - start)


def measure(budget: int, args: argparse.Namespace, device: torch.device) -> float:
    space = load_space("conv-shape")
    genome = project(parse_genome("conv-shape:hand-16-32-48-64"), space, budget)
    recipe = space_recipe(space, epochs=1, bf16=not args.no_bf16)
    data = load_cifar100(args.data_dir, device=device, subset=args.images)
    data = dataclasses.replace(data, val_x=data.val_x[:0], val_y=data.val_y[:0])  # nothing to evaluate
    params = sum(p.numel() for p in build_model(genome).parameters())
    print(
        f"\n{genome} ({params:,} parameters), recipe {recipe.tag}: ema {recipe.ema}, alt_flip {recipe.alt_flip}, "
        f"bn_lr {recipe.bn_lr}, whiten {recipe.whiten}, tta {recipe.tta}; {len(data.train_y)} images per round",
        flush=True,
    )
    minimal_loop_epoch(genome, warm_up(genome, data, recipe, device), recipe, device)
    ours, minimal = [], []
    for r in range(args.rounds):
        result = train(genome, data, recipe, device)
        ours.append(result.images_seen / result.train_time_s)
        minimal.append(minimal_loop_epoch(genome, data, recipe, device))
        print(f"  round {r + 1}: train() {ours[-1]:7.0f} img/s | minimal loop {minimal[-1]:7.0f} img/s", flush=True)
    ratio = statistics.median(ours) / statistics.median(minimal)
    print(
        f"  median: train() {statistics.median(ours):.0f} img/s, minimal loop {statistics.median(minimal):.0f} "
        f"img/s; ratio {ratio:.2f}x",
        flush=True,
    )
    return ratio


def add_throughput_options(p: argparse.ArgumentParser, budgets: str, budgets_help: str) -> None:
    """The options every throughput benchmark takes: data, budgets, images and rounds, threads, device."""
    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: NAS_DATA_DIR, else the cache)")
    p.add_argument("--budgets", default=budgets, help=f"{budgets_help} (default {budgets})")
    p.add_argument("--images", type=int, default=10000, help="training images per round (default 10000)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per side (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a search worker)")
    p.add_argument("--no-bf16", action="store_true", help="float32 throughout")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def throughput_device(args: argparse.Namespace) -> torch.device:
    """Set the threads, choose the device and say what it is and how loaded the machine is."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    print(f"device {describe_device(device)}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return device


def warm_up(genome, data, recipe: Recipe, device: torch.device):
    """A few batches through `train()` (first-call allocations and kernel choice are not
    throughput); returns those batches' data, to warm up another loop the same way."""
    n = 4 * recipe.batch_size
    warm = dataclasses.replace(data, train_x=data.train_x[:n], train_y=data.train_y[:n])
    train(genome, warm, recipe, device)
    return warm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_throughput_options(p, "10k,50k,500k", "conv-shape hand design projected to each")
    args = p.parse_args(argv)
    device = throughput_device(args)
    ratios = {b: measure(b, args, device) for b in parse_budgets(args.budgets)}
    print(
        "\nratio train() / minimal loop: "
        + ", ".join(f"{b:,}: {r:.2f}x" for b, r in ratios.items())
        + f" (load average now {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
