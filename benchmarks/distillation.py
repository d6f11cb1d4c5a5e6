"""Distillation: does a large teacher make a small student better at equal student epochs?

The teacher (conv-shape's hand design projected to --teacher-budget) trains --teacher-epochs on
all 50,000 training images with the space's recipe and is saved as a run folder (reused when it
is there). Each student (the hand design at each of --budgets) then trains --epochs epochs on all
50,000 images, without a teacher and with it at each (alpha, T) of --kd, the teacher run online
in eval mode on the same augmented batches (`nas train --teacher`); test accuracy on the 10,000
test images in float32, the arithmetic of the exported model. One JSON line per run to --out.

    python benchmarks/distillation.py --data-dir ../shared/data --out benchmarks/results/distillation.jsonl
    python benchmarks/distillation.py --summarize --out benchmarks/results/distillation.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from nas.budget import parse_budgets, project
from nas.data import load_cifar100
from nas.runs import train_genome_command
from nas.spaces import load_space
from nas.training import space_recipe


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    space = load_space("conv-shape")
    hand = space.presets["hand-16-32-48-64"]
    data = load_cifar100(args.data_dir, val_size=0)
    teacher_dir = Path(args.teacher_dir)
    if not (teacher_dir / "model.pt").is_file():
        teacher = project(hand, space, parse_budgets(args.teacher_budget)[0])
        t0 = time.perf_counter()
        s = train_genome_command(
            teacher,
            space_recipe(space, epochs=args.teacher_epochs),
            out_dir=teacher_dir,
            data=data,
            device="cpu",
            progress=False,
        )
        print(
            f"teacher {teacher}: {100 * s['test_acc']:.2f}% after {args.teacher_epochs} epochs "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    teacher_acc = json.loads((teacher_dir / "result.json").read_text())["test_acc"]
    out = Path(args.out)
    done = (
        {(r["budget"], r["alpha"], r["temperature"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
        if out.is_file()
        else set()
    )
    arms = [(0.0, 4.0)] + [tuple(map(float, kd.split(":"))) for kd in args.kd.split(",")]
    for budget in parse_budgets(args.budgets):
        student = project(hand, space, budget)
        for seed in map(int, args.seeds.split(",")):
            for alpha, temperature in arms:
                if (budget, alpha, temperature, seed) in done:
                    continue
                recipe = replace(
                    space_recipe(space, epochs=args.epochs), kd_alpha=alpha, kd_temperature=temperature, seed=seed
                )
                t0 = time.perf_counter()
                s = train_genome_command(
                    student,
                    recipe,
                    out_dir=Path(args.runs) / f"{budget}-a{alpha}-t{temperature}-s{seed}",
                    data=data,
                    device="cpu",
                    progress=False,
                    teacher=teacher_dir if alpha > 0 else None,
                )
                row = {
                    "budget": budget,
                    "student": str(student),
                    "alpha": alpha,
                    "temperature": temperature,
                    "seed": seed,
                    "epochs": args.epochs,
                    "test_acc": s["test_acc"],
                    "teacher": str(teacher_dir),
                    "teacher_test_acc": teacher_acc,
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"{budget:>7,} alpha {alpha} T {temperature} seed {seed}: {100 * s['test_acc']:.2f}% "
                    f"({row['wall_s']:.0f} s)",
                    flush=True,
                )


def summarize(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()]
    by: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        by[(r["budget"], r["alpha"], r["temperature"])].append(100 * r["test_acc"])
    print(f"teacher: {rows[0]['teacher']} ({100 * rows[0]['teacher_test_acc']:.2f}% test)")
    for budget in sorted({r["budget"] for r in rows}):
        plain = statistics.mean(by[(budget, 0.0, 4.0)])
        print(
            f"student {budget:,} ({next(r['student'] for r in rows if r['budget'] == budget)}), "
            f"{rows[0]['epochs']} epochs: test accuracy %, mean over seeds (gain over no teacher)"
        )
        for (b, alpha, t), v in sorted(by.items()):
            if b == budget:
                what = "no teacher" if alpha == 0 else f"alpha {alpha}, T {t}"
                print(f"  {what:18s} {statistics.mean(v):6.2f} ({statistics.mean(v) - plain:+.2f}), n={len(v)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    p.add_argument("--teacher-budget", default="500k")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--teacher-dir", default="runs/distillation/teacher")
    p.add_argument("--budgets", default="10k,50k", help="students")
    p.add_argument("--epochs", type=int, default=15, help="student epochs")
    p.add_argument("--kd", default="0.5:4,0.9:4", help="alpha:T pairs")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/distillation")
    p.add_argument("--out", default="benchmarks/results/distillation.jsonl")
    p.add_argument("--summarize", action="store_true")
    args = p.parse_args(argv)
    summarize(args) if args.summarize else run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
