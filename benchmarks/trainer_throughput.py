"""Training throughput (images/s): nas's on-device trainer vs a plain torchvision loop.

Both train the same genome with the same batch size, optimizer (SGD Nesterov), loss (label
smoothing 0.1) and augmentation (random crop with 4 px padding, horizontal flip, normalise) on
the same machine, in alternating rounds so that a change in machine load hits both sides.
Each round is one epoch over the same number of training images; evaluation is not timed.

The plain loop is what a tutorial would write: `torchvision.datasets.CIFAR100` with
RandomCrop/RandomHorizontalFlip/ToTensor/Normalize transforms, a DataLoader, float32, the
default memory format. It is measured with every worker count in --workers and credited
with its best one.

    python benchmarks/trainer_throughput.py --data-dir /path/holding/cifar-100-python
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch
from torch import nn

from nas.data import load_cifar100, resolve_data_dir
from nas.models import build_model
from nas.budget import project
from nas.spaces import load_space, parse_genome
from nas.training import Recipe, default_device, describe_device, train


def plain_loop_round(genome, dataset, batch_size: int, workers: int, device: torch.device, recipe: Recipe,
                     max_batches: int | None = None) -> float:
    """One epoch of the plain loop; returns images/s (the DataLoader's worker start-up included,
    as in a loop that creates its iterator every epoch)."""
    torch.manual_seed(recipe.seed)
    model = build_model(genome).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, nesterov=True,
                                weight_decay=recipe.weight_decay)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    steps = len(loader) if max_batches is None else min(max_batches, len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    model.train()
    seen, running = 0, 0.0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.item()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder holding cifar-100-python/ (default: NAS_DATA_DIR, else the cache)")
    p.add_argument("--genome", default="seed-m4", help="GENOME (preset, .json file or inline JSON)")
    p.add_argument("--budget", type=int, default=50_000,
                   help="project the genome into this budget first (the target is stated for <= 50k parameters)")
    p.add_argument("--no-bf16", action="store_true", help="train nas's side in float32 (the plain loop always is)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, help="training images per round (default 4096 on CPU, 45000 on CUDA)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per side (median reported)")
    p.add_argument("--workers", default=None,
                   help="comma-separated DataLoader worker counts to try for the plain loop "
                        "(default: 0 and the number of CPU cores)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = p.parse_args(argv)

    device = torch.device(args.device) if args.device else default_device()
    genome = parse_genome(args.genome)
    genome = project(genome, load_space(genome.space), args.budget)
    cores = os.cpu_count() or 1
    workers = ([int(w) for w in args.workers.split(",")] if args.workers
               else sorted({0, cores if device.type == "cpu" else min(8, cores)}))
    images = args.images or (45000 if device.type == "cuda" else 4096)
    recipe = Recipe(epochs=1, batch_size=args.batch_size, bf16=not args.no_bf16)

    data = load_cifar100(args.data_dir, device=device, subset=images)
    data = dataclasses.replace(data, val_x=data.val_x[:1000], val_y=data.val_y[:1000])

    import torchvision.transforms as T
    from torchvision.datasets import CIFAR100
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean.tolist(), data.std.tolist())])
    full = CIFAR100(str(resolve_data_dir(args.data_dir)), train=True, transform=transform)
    subset = torch.utils.data.Subset(full, torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
                                     [:images].tolist())

    params = sum(p.numel() for p in build_model(genome).parameters())
    print(f"model {genome} ({params:,} parameters), batch size {args.batch_size}, {images} images per round, "
          f"device {describe_device(device)}, load average {os.getloadavg()[0]:.1f} on {cores} cores")

    # Warm-up: first-call allocations, kernel selection (and compilation) are not throughput.
    warm = dataclasses.replace(data, train_x=data.train_x[:2 * args.batch_size],
                               train_y=data.train_y[:2 * args.batch_size])
    train(genome, warm, recipe, device)
    for w in workers:
        plain_loop_round(genome, subset, args.batch_size, w, device, recipe, max_batches=2)

    ours: list[float] = []
    plain: dict[int, list[float]] = {w: [] for w in workers}
    for r in range(args.rounds):
        result = train(genome, data, recipe, device)
        ours.append(result.images_seen / result.train_time_s)
        line = f"round {r + 1}: nas trainer {ours[-1]:8.0f} img/s"
        for w in workers:
            plain[w].append(plain_loop_round(genome, subset, args.batch_size, w, device, recipe))
            line += f" | plain loop, {w} workers {plain[w][-1]:8.0f} img/s"
        print(line, flush=True)

    best_w = max(workers, key=lambda w: statistics.median(plain[w]))
    ours_med, plain_med = statistics.median(ours), statistics.median(plain[best_w])
    print(f"median: nas trainer {ours_med:.0f} img/s, plain torchvision loop {plain_med:.0f} img/s "
          f"(best of workers {workers}: {best_w}); ratio {ours_med / plain_med:.2f}x "
          f"(load average now {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
