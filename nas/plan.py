"""What a search will do and how long it will take on this machine, before it starts.

The seconds per trial come from a short calibration: the budget's hand design (the space's
default start, projected) is trained for a few batches through the real training loop on
synthetic images, and the measured images/s for training and evaluation are cached per machine
and model (`~/.cache/nas/calibration.json`), so a second `--plan` answers at once. A sweep's
many models are calibrated `jobs` at a time (`calibrate_all`), as its trials train.

The defaults are sized to the device: a CPU gets a plain conv space, a reduced fidelity and a
time limit that ends the search within 30 minutes; a GPU gets the larger GPU defaults.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import NasError
from nas.text import duration, plural

if TYPE_CHECKING:
    import torch

    from nas.data import CifarData
    from nas.spaces import Genome
    from nas.training import Recipe


# ---------------------------------------------------------------- defaults per device


@dataclass(frozen=True)
class DeviceDefaults:
    """What `nas search` does when the user does not say: the space, the fidelity (training
    images x epochs per trial) and how long the search may run (None: `trials` decide)."""

    space: str
    epochs: int
    subset: int | None
    trials: int
    time_limit_s: float | None
    jobs: int = 1  # trials trained at once, the CPU threads split between them
    finalists: int = 3  # best genomes retrained on every image of the split (nas.finalists)
    pruner: str = "hyperband"  # stops trials behind on epochs (nas.samplers.make_pruner)

    def describe(self) -> str:
        images = f"{self.subset:,} images" if self.subset else "all 45,000 training images"
        limit = f"a time limit of {duration(self.time_limit_s)}" if self.time_limit_s else f"{self.trials} trials"
        pruning = "no pruning" if self.pruner == "none" else f"{self.pruner} pruning"
        return (
            f"space {self.space}, {images} x {self.epochs} epochs per trial, {pruning}, {limit}, "
            f"{self.finalists} finalists (the best trial of each topology first) retrained on all training "
            f"images to choose the winner"
        )


# CPU: the plain conv family trains ~6x more images/s than MBConv at 50k parameters on 2 cores
# (README, "Choosing the default space"); 20 minutes leaves room for data loading, the
# calibration and the last running epoch inside the promised 30.
# Two trials at once, one thread each, beat one trial on two threads by 1.55x (10k) and 1.28x
# (50k) on the 2-core machine (benchmarks/cpu_defaults.py --parts 2): small models leave a core idle.
# No pruning: at 4 epochs Hyperband stops most trials of deeper genomes (they learn more slowly
# at first) and TPE learns from the stopped scores to stay shallow, while the deeper genomes test
# best after the final training (README, "Does the search beat a hand design?").
CPU_DEFAULTS = DeviceDefaults(
    space="conv-shape", epochs=4, subset=15_000, trials=10_000, time_limit_s=20 * 60, jobs=2, pruner="none"
)
# Of a sweep's --time, the share that goes to the searches; the rest trains the winners.
SWEEP_SEARCH_SHARE = 0.5
CUDA_DEFAULTS = DeviceDefaults(space="mbconv-shape", epochs=15, subset=None, trials=40, time_limit_s=None)


def device_defaults(device: str | torch.device | None = None) -> DeviceDefaults:
    import torch

    from nas.training import default_device

    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda":
        return CUDA_DEFAULTS
    return replace(CPU_DEFAULTS, jobs=max(1, min(CPU_DEFAULTS.jobs, torch.get_num_threads())))


# ---------------------------------------------------------------- durations

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m', '45' (seconds) -> seconds; a one-line NasError otherwise."""
    s = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", s)
    if not s or parts is None or not any(parts.groups()):
        raise NasError(f"time {text!r} is not a duration (use e.g. 90s, 30m, 2h or 1h30m)")
    h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
    total = 3600 * h + 60 * m + sec
    if total <= 0:
        raise NasError(f"time {text!r} must be longer than zero")
    return total


# ---------------------------------------------------------------- calibration

CALIBRATION_ENV = "NAS_CALIBRATION_CACHE"
CALIBRATION_IMAGES = 2048  # timed training images of a search's calibration


@dataclass(frozen=True)
class Calibration:
    """Measured throughput of one model on this machine (images per second)."""

    genome: str
    params: int
    train_images_per_s: float
    eval_images_per_s: float
    device: str
    cached: bool = False

    def seconds(self, train_images: int, epochs: int, val_images: int) -> float:
        """Seconds for one trial: `epochs` passes over `train_images`, each followed by evaluation."""
        return epochs * (train_images / self.train_images_per_s + val_images / self.eval_images_per_s)


def _cache_path() -> Path:
    env = os.environ.get(CALIBRATION_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "nas" / "calibration.json"


def machine_key(device: torch.device) -> str:
    """What makes throughput differ between machines: the processor or GPU, threads, torch."""
    import torch

    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    what = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        what += f", {torch.get_num_threads()} threads"
    return f"{what}, torch {torch.__version__}"


def calibrate(
    genome: Genome,
    recipe: Recipe,
    device: str | torch.device | None = None,
    *,
    use_cache: bool = True,
    images: int = CALIBRATION_IMAGES,
) -> Calibration:
    """Images/s of training and evaluating `genome` with `recipe` on `device`: one short warm-up
    run, then one timed run of `images` synthetic images through nas's own training loop."""
    import torch

    from nas.training import default_device

    dev = torch.device(device) if device is not None else default_device()
    key = _cache_key(genome, recipe, dev)
    if use_cache:
        with _CACHE_LOCK:
            c = _MEASURED.get(key) or _read_cache().get(key)
        if c is not None:
            return Calibration(str(genome), c["params"], c["train"], c["eval"], c["device"], cached=True)
    cal = _measure(genome, recipe, dev, images)
    if use_cache:
        entry = {
            "params": cal.params,
            "train": cal.train_images_per_s,
            "eval": cal.eval_images_per_s,
            "device": cal.device,
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with _CACHE_LOCK:  # concurrent calibrations (calibrate_all) must not drop each other's entries
            _MEASURED[key] = entry
            _write_cache({**_read_cache(), key: entry})
    return cal


def calibrate_all(
    models: Sequence[tuple[Genome, Recipe, int]], device: str | torch.device | None = None, *, jobs: int = 1
) -> list[Calibration]:
    """`calibrate` for each (genome, recipe, images) of `models`, `jobs` at a time on a CPU, each
    on the threads one of `jobs` concurrent trials gets: the conditions a search's trials train
    in (threads of one process, sharing the cores), at 1/jobs of the wall time. A model listed
    twice (the same cache entry) is measured once, at its first `images`; the largest go first,
    so the last to finish is a short one."""
    import torch

    from nas.counting import count_params
    from nas.training import default_device, threads_per_job

    dev = torch.device(device) if device is not None else default_device()
    workers = jobs if dev.type == "cpu" else 1
    with threads_per_job(workers):  # first: the thread count is part of each cache key
        keys = [_cache_key(g, r, dev) for g, r, _ in models]
        first: dict[str, tuple[Genome, Recipe, int]] = {}
        for key, model in zip(keys, models):
            first.setdefault(key, model)  # a model listed twice: measured once, at its first `images`
        order = sorted(first, key=lambda k: -count_params(first[k][0]))
        with ThreadPoolExecutor(workers, thread_name_prefix="nas-calibrate") as pool:
            measured = dict(zip(order, pool.map(lambda k: calibrate(*first[k][:2], dev, images=first[k][2]), order)))
        return [measured[k] for k in keys]


def _cache_key(genome: Genome, recipe: Recipe, dev: torch.device) -> str:
    """What a calibration depends on: the machine, the model and the recipe's batch and precision."""
    return json.dumps([machine_key(dev), str(genome), recipe.batch_size, recipe.bf16, recipe.compile])


def _measure(genome: Genome, recipe: Recipe, dev: torch.device, images: int) -> Calibration:
    """One warm-up run (kernel selection, allocator), then one timed epoch of `images` images (at
    least a batch; a one-batch measurement is rough, and enough where only a factor matters)."""
    import torch

    from nas.training import train

    gen = torch.Generator().manual_seed(0)
    quick = replace(recipe, epochs=1, compile=False)
    images = max(images, recipe.batch_size)
    train(genome, _synthetic_data(genome, recipe, min(images, 2 * recipe.batch_size), gen).to(dev), quick, dev)
    data = _synthetic_data(genome, recipe, images, gen).to(dev)
    result = train(genome, data, quick, dev)
    eval_s = max(result.wall_time_s - result.train_time_s, 1e-6)
    return Calibration(
        str(genome),
        result.params,
        len(data.train_y) / max(result.train_time_s, 1e-6),
        len(data.val_y) / eval_s,
        result.device,
    )


def _synthetic_data(genome: Genome, recipe: Recipe, n: int, gen: torch.Generator) -> CifarData:
    """`n` random training images and at least a batch of validation images, CIFAR-shaped."""
    import torch

    from nas.data import CifarData

    def images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=gen)
        return x, torch.randint(0, 100, (count,), generator=gen)

    x, y = images(n)
    vx, vy = images(max(recipe.batch_size, n // 2))
    classes = genome.options.get("num_classes", 100)
    return CifarData(x, y, vx, vy, vx[:1], vy[:1], classes, torch.full((3,), 0.5), torch.full((3,), 0.25), [])


# This process's measurements, also where the cache file cannot be written (a read-only home).
_MEASURED: dict[str, dict[str, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _read_cache() -> dict[str, Any]:
    path = _cache_path()
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache is only a slower plan


def _write_cache(cache: dict[str, Any]) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the plan is still right, only not cached


# ---------------------------------------------------------------- the plan


def hyperband_rungs(epochs: int, reduction: int = 3) -> list[int]:
    """The epochs at which Optuna's HyperbandPruner(min_resource=1, reduction_factor=3) compares
    trials: 1, 3, 9, ... below `epochs`, then `epochs` itself."""
    rungs, r = [], 1
    while r < epochs:
        rungs.append(r)
        r *= reduction
    return [*rungs, epochs]


# A search trial's training time grows with its FLOPs more slowly than in proportion (per-layer
# costs do not shrink with the layer): in the 2026-12 sweep's studies at 1k-50k, the median trial
# time over the hand design's was 1.00, 1.37, 1.40, 1.26 where the FLOPs ratio was 0.86, 1.61,
# 1.54, 1.25, which FLOPs ratio ** 0.75 matches within 0.1.
TIME_PER_FLOPS_EXPONENT = 0.75
WINNER_FLOPS_QUANTILE = 0.8  # see Plan.winner_cost_factor


@dataclass
class Plan:
    """A search, described before it runs."""

    space: str
    searcher: str
    budget: int
    band: tuple[int, int]
    device: str
    bf16: bool
    train_images: int
    val_images: int
    epochs: int
    pruner: str
    trials: int | None  # None: as many as the time limit allows
    time_limit_s: float | None
    calibration: Calibration  # of one trial of the hand design, on the threads one job gets
    done: int = 0  # trials already in the study
    jobs: int = 1  # trials trained at once
    finalists: int = 0  # best genomes retrained at the end (see nas.finalists)
    finalist_images: int = 0  # ... on this many training images
    finalist_epochs: int = 0  # ... for this many epochs
    finalist_pick: str = "diverse"  # ... which (nas.finalists.pick)
    # a typical trial's training time over the hand design's (TIME_PER_FLOPS_EXPONENT): the
    # calibration times the hand design, and the search's genomes are mostly larger in FLOPs
    cost_factor: float = 1.0
    # ... and a winner's: the best genomes are the ones that compute more (in the 2026-12 curves
    # the 5k-1M winners had 1.7-4.5x the hand design's FLOPs, median 3.1; a random genome's
    # median is 1.5), so a sweep plans its winners' epochs at WINNER_FLOPS_QUANTILE of the draws
    winner_cost_factor: float = 1.0
    noise_trials: int = 0  # hand-design trainings with other seeds first (nas.search.measure_noise)

    @property
    def seconds_per_finalist(self) -> float:
        return self.cost_factor * self.calibration.seconds(self.finalist_images, self.finalist_epochs, self.val_images)

    @property
    def finalist_scale(self) -> float:
        """A finalist's training time over its trial's (the same genome at the two fidelities)."""
        return self.calibration.seconds(
            self.finalist_images, self.finalist_epochs, self.val_images
        ) / self.calibration.seconds(self.train_images, self.epochs, self.val_images)

    @property
    def finalists_s(self) -> float:
        """All finalists' retraining, `jobs` at a time."""
        return math.ceil(self.finalists / self.jobs) * self.seconds_per_finalist

    @property
    def noise_s(self) -> float:
        """The hand design's trainings that measure the score's noise, one after the other."""
        return self.noise_trials * self.calibration.seconds(self.train_images, self.epochs, self.val_images)

    @property
    def reserve_s(self) -> float:
        """Of the time limit, what is kept for the finalists: no trial starts after the rest."""
        return self.reserve_for(1.0)

    def reserve_for(self, slowdown: float, finalist_s: list[float] | None = None) -> float:
        """The finalists' time: `finalist_s` (each finalist's estimated seconds; default the
        calibrated ones, `slowdown` times slower), `jobs` at a time, longest first, with the time
        of the trials still running when the search stops (they run on every job at once: one
        trial's time, `slowdown` times the calibrated), at most half the time limit (a short
        search still searches)."""
        if not self.finalists or self.time_limit_s is None:
            return 0.0
        each = finalist_s if finalist_s is not None else [self.seconds_per_finalist * slowdown] * self.finalists
        jobs = [0.0] * self.jobs
        for s in sorted(each, reverse=True):  # longest first onto the least loaded job
            jobs[jobs.index(min(jobs))] += s
        return min(max(jobs) + self.seconds_per_job_trial * slowdown, self.time_limit_s / 2)

    @property
    def seconds_per_job_trial(self) -> float:
        """Wall seconds of one typical trial trained to its last epoch, on the threads of one job."""
        return self.cost_factor * self.calibration.seconds(self.train_images, self.epochs, self.val_images)

    @property
    def seconds_per_trial(self) -> float:
        """Wall seconds per trial trained to its last epoch (pruned trials take less), `jobs` of
        them running at once."""
        return self.seconds_per_job_trial / self.jobs

    @property
    def expected_trials(self) -> int:
        """Trials that fit the time limit once the noise measurement and the finalists have theirs."""
        left = None if self.trials is None else max(0, self.trials - self.done)
        if self.time_limit_s is None:
            return left or 0
        fit = max(1, int((self.time_limit_s - self.reserve_s - self.noise_s) // self.seconds_per_trial))
        return fit if left is None else min(left, fit)

    @property
    def eta_s(self) -> float:
        """Upper bound of the run's length: every trial to its last epoch, and a time limit may be
        overrun by the epoch running when it passes."""
        full = self.expected_trials * self.seconds_per_trial + self.noise_s + self.finalists_s
        if self.time_limit_s is None:
            return full
        until_deadline = self.time_limit_s + self.seconds_per_trial / self.epochs
        return until_deadline if self.trials is None else min(full, until_deadline)  # no count: runs to the end

    @property
    def finalist_choice(self) -> str:
        return "the best trial of each topology first" if self.finalist_pick == "diverse" else "the best trials"

    def lines(self) -> list[str]:
        rungs = (
            f", pruned at {', '.join(map(str, hyperband_rungs(self.epochs)[:-1]))} epoch(s) when behind"
            if self.pruner == "hyperband" and self.epochs > 1
            else ""
        )
        if self.trials is None:
            count = f"as many as fit in {duration(self.time_limit_s)} (about {self.expected_trials})"
        else:
            count = f"{self.trials} ({self.done} already done)" if self.done else f"{self.trials}"
            if self.time_limit_s is not None:
                count += f", stopping at {duration(self.time_limit_s)}"
        cal = self.calibration
        lo, hi = self.band
        return [
            f"plan: {self.searcher} search of {self.space}, budget {self.budget:,} (band {lo:,}..{hi:,})",
            f"  device:   {self.device}{', bf16 autocast' if self.bf16 else ', float32'}",
            f"  fidelity: {self.train_images:,} training images x {self.epochs} epoch{'s' * (self.epochs != 1)} "
            f"per trial{rungs}; {self.val_images:,} validation images",
            f"  trials:   {count}" + (f", {self.jobs} at a time" if self.jobs > 1 else ""),
            *(
                [
                    f"  winner:   the best of {self.finalists} finalists ({self.finalist_choice}) retrained on "
                    f"{self.finalist_images:,} images x {plural(self.finalist_epochs, 'epoch')} with a fresh seed "
                    f"(~{self.seconds_per_finalist:.0f} s each"
                    f"{f', {self.reserve_s:.0f} s kept for them' if self.reserve_s else ''})"
                ]
                if self.finalists
                else []
            ),
            f"  speed:    ~{self.seconds_per_trial:.0f} s per full trial ({cal.train_images_per_s:,.0f} train "
            f"img/s, measured on {cal.genome}{', cached' if cal.cached else ''}"
            f"{f'; a typical genome here trains {self.cost_factor:.2f}x as long' if self.cost_factor != 1 else ''})",
            f"  ETA:      {duration(self.eta_s)}",
        ]
