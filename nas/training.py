"""The training recipe (plain data) and the training loop, in one readable file.

The loop follows the spirit of Keller Jordan's airbench: the dataset sits on the device as
uint8, each batch is augmented there with tensor ops, and nothing forces a device sync per step
except where the CPU makes syncs free. Models and batches are channels_last everywhere. Training
runs in bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512-BF16/AMX; ~2.8x faster steps
there, measured on a 48k-parameter model), float32 elsewhere; `Recipe.bf16 = False` turns it off.
torch.compile is optional and CUDA-only (on the CPU it took ~45 s per model for little gain).
The CPU path is reproducible for a seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from nas.data import CifarData, augment, batches, load_cifar100, normalize
from nas.errors import NasError
from nas.models import build_model
from nas.progress import progress_bar
from nas.spaces import Genome, Space, parse_genome

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine")
# Not part of the recipe's identity: compiling changes speed, not what is learned.
_UNTAGGED = frozenset({"compile"})
# A recipe's identity (what names its studies; docs/design.md, study names) is the original
# fields at their original defaults, overlaid with the fields where this recipe differs from
# its baseline. Both tables are frozen: add entries, never change one (that would rename).
# The recipe fields and their defaults when study names were first derived from the recipe.
_ORIGINAL: Mapping[str, Any] = MappingProxyType({
    "optimizer": "sgd", "lr": 0.1, "schedule": "onecycle", "warmup": 0.2, "label_smoothing": 0.1,
    "weight_decay": 5e-4, "batch_size": 256, "epochs": 15, "crop": True, "flip": True, "cutout": 0,
    "bf16": True, "seed": 0,
})
# Fields added since, each at its neutral value: the one that trains as before the field existed.
_ADDED: Mapping[str, Any] = MappingProxyType({})


def _field(default: Any, help: str | None = None, *, flag: str | None = None,
           choices: tuple[str, ...] | None = None, option: bool = True) -> Any:
    """A Recipe field and what its command-line option (nas.cli, one per field) needs: `help`
    (`{default}` is replaced by the default; omitted: "default <value>"), the `flag` (default
    `--<name>`; a bool's flag sets the opposite of its default), `choices`, or `option=False` to
    keep it off the command line."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "option": option})


@dataclass(frozen=True)
class Recipe:
    """How a genome is trained. Defaults follow the brief's training lessons: SGD with Nesterov
    momentum 0.9 at lr 0.1, weight decay 5e-4 (not on BatchNorm or biases), label smoothing 0.1,
    random crop + flip. A space file's [recipe] table overrides them with values measured for
    its family (`space_recipe`): the conv spaces train at lr 0.8, which beat 0.1/0.2/0.4 for
    their hand design at 10k and 50k parameters (benchmarks/recipe_tuning.py, README), and
    `mbconv-shape` at lr 0.4 (0.8 diverged); the other spaces keep 0.1, not yet measured. Every
    field is an option of `nas train`, `search` and `sweep` unless marked otherwise."""

    optimizer: str = _field("sgd", "sgd = SGD, Nesterov momentum 0.9", choices=OPTIMIZERS)  # or "adamw"
    lr: float = _field(0.1, "peak learning rate (default: the space's [recipe] lr, else {default})")
    # "onecycle": linear up, linear down to 0; "cosine": linear up, cosine to 0
    schedule: str = _field("onecycle", "learning-rate schedule (default {default})", choices=SCHEDULES)
    warmup: float = _field(0.2, option=False)  # fraction of all steps spent ramping the learning rate up
    label_smoothing: float = _field(0.1)
    weight_decay: float = _field(5e-4, "not applied to BatchNorm and biases (default: the space's, else {default})")
    batch_size: int = _field(256)
    epochs: int = _field(15)      # its option's default depends on the command (nas.cli)
    crop: bool = _field(True, option=False)   # random 32x32 crop of the 4-px zero-padded image
    flip: bool = _field(True, option=False)   # random horizontal flip
    cutout: int = _field(0, "cutout square side in pixels, 0 = off (default)")
    compile: bool = _field(False, "torch.compile the model (CUDA only)")
    bf16: bool = _field(True, "train in float32 (default: bf16 autocast on CUDA and on CPUs with native bf16)",
                        flag="--no-bf16")
    seed: int = _field(0, option=False)  # `--seed` is the sampler's seed in nas search

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        checks = (("lr", self.lr > 0), ("warmup", 0 <= self.warmup < 1),
                  ("label_smoothing", 0 <= self.label_smoothing < 1), ("weight_decay", self.weight_decay >= 0),
                  ("batch_size", self.batch_size >= 1), ("epochs", self.epochs >= 1), ("cutout", self.cutout >= 0))
        bounds = {"lr": "> 0", "warmup": "in [0, 1)", "label_smoothing": "in [0, 1)", "weight_decay": ">= 0",
                  "batch_size": ">= 1", "epochs": ">= 1", "cutout": ">= 0"}
        problems += [f"{name} must be {bounds[name]}, got {getattr(self, name)!r}" for name, ok in checks if not ok]
        if problems:
            raise NasError(f"recipe: {problems[0]}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """A recipe from (possibly partial) data; missing fields take their defaults."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise NasError(f"recipe: unknown field '{unknown[0]}' (fields: {', '.join(names)})")
        values = {}
        for key, value in d.items():
            kind = type(getattr(cls, key))  # the default's type
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not kind:
                raise NasError(f"recipe: {key} must be a {kind.__name__}, got {value!r}")
            values[key] = value
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """What names this recipe's studies: `_ORIGINAL` overlaid with each field whose value
        differs from its baseline (`_ORIGINAL`, else `_ADDED`, else, for a field not entered
        there yet, its declared default). Adding a field at its neutral value renames no study,
        nor does changing a default later: only the recipe's values count."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        diff = {k: v for k, v in self.to_dict().items()
                if k not in _UNTAGGED and v != _ORIGINAL.get(k, _ADDED.get(k, defaults[k]))}
        return {**_ORIGINAL, **diff}

    @property
    def tag(self) -> str:
        """Short stable name, e.g. `e15-sgd-3f9a1c`, for naming studies: recipes with equal
        `identity()` give equal tags, in any process and any later version."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:6]
        return f"e{self.epochs}-{self.optimizer}-{digest}"


def recipe_options() -> list[tuple[dataclasses.Field, str]]:
    """The Recipe fields that are command-line options of train, search and sweep (every field
    not marked `option=False`), each with its flag: what nas.cli builds the options from and
    what a printed `nas train` command line is made of."""
    return [(f, f.metadata.get("flag") or f"--{f.name.replace('_', '-')}")
            for f in dataclasses.fields(Recipe) if f.metadata.get("option", True)]


def space_recipe(space: Space | None = None, **given: Any) -> Recipe:
    """The recipe for a genome of `space`: `given` fields, over the space file's [recipe] table
    (defaults measured for that family), over Recipe's own defaults."""
    table = dict(space.recipe) if space is not None else {}
    if table:
        try:
            Recipe.from_dict(table)
        except NasError as e:
            raise NasError(f"{space.path}: {e}") from None
    return Recipe.from_dict({**table, **given})


@dataclass
class TrainResult:
    """What one training run produced. `curve` has one entry per completed epoch;
    `val_acc` is the last completed epoch's validation accuracy (0.0 if none completed, None
    without a validation split)."""

    curve: list[dict[str, float]]
    val_acc: float | None
    status: str                   # "ok" or "failed"
    failure: str | None
    epochs: int                   # epochs completed
    stopped_early: bool           # the callback asked to stop
    wall_time_s: float
    train_time_s: float           # time in training steps, without the per-epoch evaluation
    images_seen: int
    device: str
    params: int
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


# ---------------------------------------------------------------- pieces of the loop

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' * (n != 1)})"


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based) of `total`."""
    ramp = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < ramp:
        return (step + 1) / ramp
    progress = (step - ramp) / max(1, total - ramp)
    if schedule == "onecycle":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only: BatchNorm scales/shifts and biases are the
    1-D parameters, and decaying them only fights the normalisation."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def bf16_autocast(device: torch.device, wanted: bool = True) -> bool:
    """Whether to train/evaluate in bf16 autocast on `device`: on CUDA when wanted; on the CPU only
    where it has native bf16 (emulated bf16 would be slower than float32)."""
    if not wanted:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: CifarData, batch_size: int = 1000,
             bf16: bool = True) -> float:
    """Top-1 accuracy of `model` on uint8 images `x` with labels `y` (no augmentation),
    normalised with `data`'s statistics. One device sync at the end."""
    if len(x) == 0:
        raise NasError("evaluate: no images")
    was_training = model.training
    model.eval()
    amp = bf16_autocast(x.device, bf16)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i:i + batch_size], data.mean, data.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            correct += (model(xb).argmax(1) == y[i:i + batch_size]).sum()
    model.train(was_training)
    return correct.item() / len(x)


@torch.no_grad()
def output_classes(model: nn.Module) -> int:
    """How many classes `model` predicts: the width of its logits for one blank 32x32 image, in
    eval mode (BatchNorm statistics stay as they are)."""
    p = next(model.parameters(), None)
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, 32, 32, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else torch.float32)
        return int(model(x).shape[1])
    finally:
        model.train(was_training)


class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch} step {step}")


# ---------------------------------------------------------------- the loop

def train(model_or_genome: nn.Module | Genome, data: CifarData, recipe: Recipe,
          device: str | torch.device | None = None,
          callback: Callable[[int, float], bool | None] | None = None,
          progress: bool = False, desc: str | None = None) -> TrainResult:
    """Train for `recipe.epochs` epochs on `data.train_*`, evaluating on `data.val_*` after each.

    `callback(epoch, val_acc)` (epoch 1-based; val_acc None without a validation split) runs after
    each epoch; returning False stops the run early (status "ok", `stopped_early`). Exceptions it raises propagate unchanged. A NaN or
    infinite loss, or CUDA running out of memory, ends the run with status "failed" and a reason.
    A model whose head does not predict `data.num_classes` classes raises NasError before training.
    """
    dev = torch.device(device) if device is not None else default_device()
    if data.device != dev:
        data = data.to(dev)
    cuda = dev.type == "cuda"
    amp = bf16_autocast(dev, recipe.bf16)
    if isinstance(model_or_genome, Genome):
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(recipe.seed)
            model = build_model(model_or_genome)
    else:
        model = model_or_genome
    # channels_last on the CPU too: oneDNN's NHWC kernels trained these small nets ~1.3-1.7x faster.
    model = model.to(dev, memory_format=torch.channels_last)
    classes = output_classes(model)
    if classes != data.num_classes:  # else a CUDA assert or a silent mismatch, deep in the loop
        what = model_or_genome if isinstance(model_or_genome, Genome) else "the model"
        raise NasError(f"{what} has a {classes}-class head but the data has {data.num_classes} classes")
    forward = torch.compile(model) if recipe.compile and cuda else model
    params = sum(p.numel() for p in model.parameters())

    optimizer = make_optimizer(model, recipe)
    n, bs = len(data.train_y), recipe.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * recipe.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, recipe.schedule, recipe.warmup))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    gen = torch.Generator(device=dev).manual_seed(recipe.seed)
    # Checking the loss needs a sync: free on the CPU, so every step; on CUDA every 32 steps.
    check_every = 32 if cuda else 1

    curve: list[dict[str, float]] = []
    status, failure, stopped_early = "ok", None, False
    train_time, images_seen, epoch = 0.0, 0, 0
    start = time.perf_counter()
    # One bar over all batches (on a terminal only), so a slow epoch still shows movement.
    with progress_bar(total_steps, progress, unit="batch", leave=False,
                      desc=desc or (str(model_or_genome) if isinstance(model_or_genome, Genome) else "train")) as bar:
        try:
            for epoch in range(1, recipe.epochs + 1):
                model.train()
                t0 = time.perf_counter()
                losses = torch.zeros(steps_per_epoch, device=dev)
                checked = 0
                for step, idx in enumerate(batches(n, bs, gen, dev), 1):
                    x = augment(data.train_x[idx], data.mean, data.std, crop=recipe.crop, flip=recipe.flip,
                                cutout_size=recipe.cutout, generator=gen)
                    x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        loss = loss_fn(forward(x), data.train_y[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses[step - 1] = loss.detach()
                    bar.update(1)
                    if step % check_every == 0 or step == steps_per_epoch:
                        bad = (~torch.isfinite(losses[checked:step])).nonzero()
                        if len(bad):
                            s = checked + int(bad[0])
                            raise _Diverged(epoch, s + 1, losses[s].item())
                        checked = step
                images_seen += n
                train_loss = losses.mean().item()  # also waits for the device, for train_time
                train_time += time.perf_counter() - t0
                # No validation split (a final training on every image): nothing to measure per epoch.
                val_acc = (evaluate(forward, data.val_x, data.val_y, data, bf16=recipe.bf16)
                           if len(data.val_y) else None)
                curve.append({"epoch": epoch, "train_loss": train_loss, "val_acc": val_acc})
                bar.set_postfix(epoch=f"{epoch}/{recipe.epochs}", loss=f"{train_loss:.3f}",
                                val="-" if val_acc is None else f"{val_acc:.4f}")
                if callback is not None and callback(epoch, val_acc) is False:
                    stopped_early = True
                    break
        except _Diverged as e:
            status, failure = "failed", str(e)
        except torch.cuda.OutOfMemoryError:
            status = "failed"
            failure = f"CUDA out of memory at epoch {epoch} (batch size {bs}, {params} parameters)"
    if status == "failed" and cuda:
        # Drop this run's tensors before returning the cached blocks, so the next run has them.
        x = loss = losses = None  # noqa: F841
        optimizer.state.clear()
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    return TrainResult(curve=curve, val_acc=curve[-1]["val_acc"] if curve else 0.0, status=status,
                       failure=failure, epochs=len(curve), stopped_early=stopped_early,
                       wall_time_s=time.perf_counter() - start, train_time_s=train_time,
                       images_seen=images_seen, device=describe_device(dev), params=params,
                       model=model if status == "ok" else None)


# ---------------------------------------------------------------- `nas train GENOME`

def _run_dir(genome: Genome) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(genome)).strip("_")[:100]  # short forms with options get long
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def input_spec(data: CifarData) -> dict[str, Any]:
    """The input a model trained on `data` expects: 3x32x32 RGB, NCHW, float32, normalised per
    channel with the training split's statistics as `(pixel / 255 - mean) / std`."""
    return {"shape": [3, 32, 32], "layout": "NCHW", "channels": "RGB", "dtype": "float32",
            "mean": data.mean.cpu().tolist(), "std": data.std.cpu().tolist(),
            "normalize": "(pixel / 255 - mean) / std, per channel",
            "num_classes": data.num_classes, "classes": list(data.classes)}


def train_genome_command(genome: Genome | str, recipe: Recipe, data_dir: str | Path | None = None,
                         out_dir: str | Path | None = None, *, device: str | None = None,
                         val_size: int = 5000, subset: int | None = None, progress: bool = True,
                         data: CifarData | None = None) -> dict[str, Any]:
    """Train one genome (a Genome or a GENOME argument: preset, .json file or inline JSON) with
    `recipe`, report val and test accuracy, and save `model.pt` (state_dict), `genome.json` and
    `result.json` in `out_dir` (default `runs/<genome>-<timestamp>/`). Returns the summary
    written to result.json; a failed run still writes result.json, then raises NasError with the
    reason."""
    g = parse_genome(genome) if isinstance(genome, str) else genome
    dev = torch.device(device) if device else default_device()
    if data is None:  # a caller training several genomes passes the data it loaded once
        data = load_cifar100(data_dir, device=dev, val_size=val_size, subset=subset)
    result = train(g, data, recipe, dev, progress=progress)
    out = Path(out_dir) if out_dir else _run_dir(g)
    out.mkdir(parents=True, exist_ok=True)
    (out / "genome.json").write_text(g.to_json() + "\n")
    summary: dict[str, Any] = {
        "run_dir": str(out), "genome": g.to_dict(), "genome_str": str(g), "params": result.params,
        "recipe": recipe.to_dict(), "recipe_tag": recipe.tag, "val_size": len(data.val_y), "subset": subset,
        "train_size": len(data.train_y), "val_acc": result.val_acc, "test_acc": None,
        # What the model expects as input: the exported model (nas export) needs it to be usable.
        "input": input_spec(data),
        **{k: v for k, v in result.to_dict().items() if k not in ("val_acc", "params")},
    }
    if result.ok:
        summary["test_acc"] = evaluate(result.model, data.test_x, data.test_y, data, bf16=recipe.bf16)
        torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, out / "model.pt")
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not result.ok:
        raise NasError(f"training failed: {result.failure} (details in {out / 'result.json'})")
    return summary


def load_trained(run_dir: str | Path) -> tuple[Genome, nn.Module]:
    """The genome and trained model (in eval mode, on the CPU) saved by `train_genome_command`."""
    run = Path(run_dir)
    for name in ("genome.json", "model.pt"):
        if not (run / name).is_file():
            raise NasError(f"{run} is not a finished training run: {name} is missing")
    genome = Genome.from_json((run / "genome.json").read_text(), str(run / "genome.json"))
    model = build_model(genome)
    try:
        model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, EOFError) as e:
        raise NasError(f"{run / 'model.pt'} does not fit genome {genome}: {str(e).splitlines()[0]}") from None
    return genome, model.eval()
