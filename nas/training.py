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

import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from nas.data import CifarData, augment, batches, normalize
from nas.errors import NasError
from nas.families import build_model
from nas.modules import FlipAverage
from nas.progress import progress_bar
from nas.spaces import Genome, Space

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine")
# Not part of the recipe's identity: compiling changes speed, not what is learned.
_UNTAGGED = frozenset({"compile"})
# A recipe's identity (what names its studies; docs/design.md, study names) is the original
# fields at their original defaults, overlaid with the fields where this recipe differs from
# its baseline. Both tables are frozen: add entries, never change one (that would rename).
# The recipe fields and their defaults when study names were first derived from the recipe.
_ORIGINAL: Mapping[str, Any] = MappingProxyType(
    {
        "optimizer": "sgd",
        "lr": 0.1,
        "schedule": "onecycle",
        "warmup": 0.2,
        "label_smoothing": 0.1,
        "weight_decay": 5e-4,
        "batch_size": 256,
        "epochs": 15,
        "crop": True,
        "flip": True,
        "cutout": 0,
        "bf16": True,
        "seed": 0,
    }
)
# Fields added since, each at its neutral value: the one that trains as before the field existed.
_ADDED: Mapping[str, Any] = MappingProxyType(
    {
        "ema": 0.0,
        "tta": "none",
        "alt_flip": False,
        "bn_lr": 1.0,
        "whiten": False,
        "kd_alpha": 0.0,
        "kd_temperature": 4.0,
    }
)
TTA_MODES = ("none", "flip")


def _field(
    default: Any,
    help: str | None = None,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    option: bool = True,
) -> Any:
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
    epochs: int = _field(15)  # its option's default depends on the command (nas.cli)
    crop: bool = _field(True, option=False)  # random 32x32 crop of the 4-px zero-padded image
    flip: bool = _field(True, option=False)  # random horizontal flip
    cutout: int = _field(0, "cutout square side in pixels, 0 = off (default)")
    compile: bool = _field(False, "torch.compile the model (CUDA only)")
    bf16: bool = _field(
        True, "train in float32 (default: bf16 autocast on CUDA and on CPUs with native bf16)", flag="--no-bf16"
    )
    seed: int = _field(0, option=False)  # `--seed` is the sampler's seed in nas search
    # Learning more per epoch (benchmarks/recipe_ablation.py measures each at equal wall-clock time).
    ema: float = _field(
        0.0,
        "decay per step of an average of the weights; the average is evaluated, saved and "
        "exported (0 = off; default: the space's, else {default})",
    )
    tta: str = _field(
        "none",
        "test-time augmentation: 'flip' averages the logits of each image and its mirror "
        "image, in the exported model too (default: the space's, else {default})",
        choices=TTA_MODES,
    )
    alt_flip: bool = _field(
        False, "flip each image in every other epoch instead of at random (default: the space's, else random)"
    )
    bn_lr: float = _field(
        1.0, "learning-rate multiplier of BatchNorm parameters and biases (default: the space's, else {default})"
    )
    whiten: bool = _field(
        False, "initialise the first conv by whitening image patches (default: the space's, else off)"
    )
    kd_alpha: float = _field(
        0.0, "weight of the distillation loss when training with --teacher (default 0.5 with a teacher)"
    )
    kd_temperature: float = _field(4.0, "softmax temperature of the distillation loss (default {default})")

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.tta not in TTA_MODES:
            problems.append(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        checks = (  # (field, whether its value is allowed, what is allowed)
            ("lr", self.lr > 0, "> 0"),
            ("warmup", 0 <= self.warmup < 1, "in [0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("cutout", self.cutout >= 0, ">= 0"),
            ("ema", 0 <= self.ema < 1, "in [0, 1)"),
            ("bn_lr", self.bn_lr > 0, "> 0"),
            ("kd_alpha", 0 <= self.kd_alpha <= 1, "in [0, 1]"),
            ("kd_temperature", self.kd_temperature > 0, "> 0"),
        )
        problems += [f"{name} must be {bound}, got {getattr(self, name)!r}" for name, ok, bound in checks if not ok]
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
        diff = {
            k: v
            for k, v in self.to_dict().items()
            if k not in _UNTAGGED and v != _ORIGINAL.get(k, _ADDED.get(k, defaults[k]))
        }
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
    return [
        (f, f.metadata.get("flag") or f"--{f.name.replace('_', '-')}")
        for f in dataclasses.fields(Recipe)
        if f.metadata.get("option", True)
    ]


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


def recipe_for(genome: Genome, recipe: Recipe) -> Recipe:
    """The recipe `genome` trains with: `recipe` with the genome's training genes over it (the
    values a space with `[search_recipe]` chose for it; none for every other genome)."""
    return dataclasses.replace(recipe, **genome.recipe) if genome.recipe else recipe


@dataclass
class TrainResult:
    """What one training run produced. `curve` has one entry per completed epoch;
    `val_acc` is the last completed epoch's validation accuracy (0.0 if none completed, None
    without a validation split)."""

    curve: list[dict[str, float]]
    val_acc: float | None
    status: str  # "ok" or "failed"
    failure: str | None
    epochs: int  # epochs completed
    stopped_early: bool  # the callback asked to stop
    wall_time_s: float
    train_time_s: float  # time in training steps, without the per-epoch evaluation
    images_seen: int
    device: str
    params: int
    # "bf16" (autocast) or "float32": the same seed trains another model in the other, so a
    # retraining says which it gets
    precision: str = "float32"
    # The trained model (the weight average with recipe.ema); `predictor(model, recipe.tta)` answers.
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


# ---------------------------------------------------------------- pieces of the loop


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def threads_per_job(jobs: int) -> Iterator[None]:
    """Concurrent CPU training runs (a search's `jobs`, threads of one process) share the cores
    instead of each claiming all of them."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def param_groups(model: nn.Module, weight_decay: float, bn_lr: float = 1.0) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only: BatchNorm scales/shifts and biases are the
    1-D parameters, and decaying them only fights the normalisation. Those 1-D parameters learn
    at `bn_lr` times the learning rate (airbench's BatchNorm-bias multiplier). Each group's
    `lr_scale` is its multiplier of the recipe's learning rate."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": bn_lr},
    ]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay, recipe.bn_lr)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics, kept in a
    copy of the model. It is updated every `every` steps with the decay compounded to match,
    and warms up (an effective decay of at most (1 + n) / (10 + n) after n updates, as timm's
    ModelEma), so a short run is not averaged with its random initial weights."""

    def __init__(self, model: nn.Module, decay: float, every: int = 4):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.every, self.updates = decay**every, every, 0
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._floats = [(a, b) for a, b in pairs if a.is_floating_point()]
        self._others = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step % self.every:
            return
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_([a for a, _ in self._floats], [b for _, b in self._floats], 1.0 - decay)
        for a, b in self._others:  # BatchNorm's step counters
            a.copy_(b)


def predictor(model: nn.Module, tta: str) -> nn.Module:
    """What answers for a trained model: the model, or its test-time-augmented wrapper."""
    return FlipAverage(model) if tta == "flip" else model


@torch.no_grad()
def whiten_first_conv(model: nn.Module, data: CifarData, samples: int = 256, eps: float = 5e-4) -> bool:
    """Initialise the first conv that reads the image (3 input channels, not grouped) with the
    principal components of the training images' patches of its kernel size, each scaled to unit
    variance, in +/- pairs so that the ReLU after it keeps both signs (airbench's whitening
    init, with as many filters as the conv has). False when the model has no such conv."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1), None)
    if conv is None:
        return False
    k = conv.kernel_size[0]
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train_x), generator=gen)[:samples].to(data.device)
    x = normalize(data.train_x[idx], data.mean, data.std).cpu().double()
    patches = torch.nn.functional.unfold(x, k).transpose(1, 2).reshape(-1, 3 * k * k)
    patches = patches - patches.mean(0)
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))  # ascending
    values, vectors = values.flip(0), vectors.flip(1)
    filters = []
    for i in range(conv.out_channels):
        j = (i // 2) % len(values)
        filters.append((1 - 2 * (i % 2)) * vectors[:, j] / (values[j] + eps).sqrt())
    conv.weight.copy_(torch.stack(filters).reshape(conv.weight.shape).to(conv.weight))
    return True


def training_loss(
    logits: torch.Tensor, labels: torch.Tensor, recipe: Recipe, teacher_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Label-smoothed cross-entropy, mixed with the distillation loss when a teacher answered:
    (1 - kd_alpha) * cross-entropy + kd_alpha * distillation."""
    loss = nn.functional.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
    if teacher_logits is None:
        return loss
    kd = distillation_loss(logits, teacher_logits, recipe.kd_temperature)
    return (1 - recipe.kd_alpha) * loss + recipe.kd_alpha * kd


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et
    al.) so that its gradients keep their scale whatever the temperature."""
    t = temperature
    return nn.functional.kl_div(
        nn.functional.log_softmax(student.float() / t, 1),
        nn.functional.log_softmax(teacher.float() / t, 1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def bf16_autocast(device: torch.device, wanted: bool = True) -> bool:
    """Whether to train/evaluate in bf16 autocast on `device`: on CUDA when wanted; on the CPU only
    where it has native bf16 (emulated bf16 would be slower than float32)."""
    if not wanted:
        return False
    if device.type == "cuda":
        return True
    return (
        device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def training_precision(device: str | torch.device | None, wanted: bool = True) -> str:
    """What training on `device` computes in: "bf16" (autocast, see `bf16_autocast`) or "float32".
    The same seed trains another model in the other, so records say which."""
    dev = torch.device(device) if device is not None else default_device()
    return "bf16" if bf16_autocast(dev, wanted) else "float32"


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: CifarData, batch_size: int = 1000, bf16: bool = True
) -> float:
    """Top-1 accuracy of `model` on uint8 images `x` with labels `y` (no augmentation),
    normalised with `data`'s statistics. One device sync at the end."""
    if len(x) == 0:
        raise NasError("evaluate: no images")
    was_training = model.training
    model.eval()
    amp = bf16_autocast(x.device, bf16)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i : i + batch_size], data.mean, data.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            correct += (model(xb).argmax(1) == y[i : i + batch_size]).sum()
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
        x = torch.zeros(
            1, 3, 32, 32, device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else torch.float32
        )
        return int(model(x).shape[1])
    finally:
        model.train(was_training)


class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss became {value} at epoch {epoch} step {step}")


def _check_teacher(teacher: nn.Module, data: CifarData) -> None:
    classes = output_classes(teacher)
    if classes != data.num_classes:
        raise NasError(f"the teacher predicts {classes} classes but the data has {data.num_classes}")


# ---------------------------------------------------------------- the loop


def _prepared_model(
    model_or_genome: nn.Module | Genome, data: CifarData, recipe: Recipe, dev: torch.device
) -> nn.Module:
    """The model to train: built from the genome with the recipe's seed (without touching the
    caller's RNG), its first conv whitened if asked, channels_last on `dev`; NasError if its head
    does not predict the data's classes (else a CUDA assert or a silent mismatch, deep in the loop)."""
    if isinstance(model_or_genome, Genome):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = build_model(model_or_genome)
    else:
        model = model_or_genome
    if recipe.whiten:
        whiten_first_conv(model, data)
    # channels_last on the CPU too: oneDNN's NHWC kernels trained these small nets ~1.3-1.7x faster.
    model = model.to(dev, memory_format=torch.channels_last)
    classes = output_classes(model)
    if classes != data.num_classes:
        what = model_or_genome if isinstance(model_or_genome, Genome) else "the model"
        raise NasError(f"{what} has a {classes}-class head but the data has {data.num_classes} classes")
    return model


def _prepared_teacher(
    teacher: nn.Module | None, data: CifarData, recipe: Recipe, dev: torch.device
) -> nn.Module | None:
    """The teacher in eval mode on `dev` when the recipe distils (None when it does not)."""
    if recipe.kd_alpha > 0 and teacher is None:
        raise NasError("recipe: kd_alpha > 0 needs a teacher (nas train --teacher RUN)")
    if teacher is None or recipe.kd_alpha <= 0:
        return None
    teacher = teacher.to(dev, memory_format=torch.channels_last).eval()
    _check_teacher(teacher, data)
    return teacher


class _Loop:
    """The optimisation of one training run, an epoch at a time: the optimizer, the learning
    rate of every step (set directly, no scheduler), the batch order and augmentation drawn from
    one seeded generator, the weight average, and the loss check."""

    CHECK_EVERY = 32  # the loss check waits for the device: every 32 steps, not every step

    def __init__(self, model: nn.Module, data: CifarData, recipe: Recipe, dev: torch.device, teacher: nn.Module | None):
        self.model, self.data, self.recipe, self.dev, self.teacher = model, data, recipe, dev, teacher
        self.forward = torch.compile(model) if recipe.compile and dev.type == "cuda" else model
        self.amp = bf16_autocast(dev, recipe.bf16)
        self.average = WeightAverage(model, recipe.ema) if recipe.ema > 0 else None
        self.optimizer = make_optimizer(model, recipe)
        self.n = len(data.train_y)
        self.steps_per_epoch = math.ceil(self.n / recipe.batch_size)
        total = self.steps_per_epoch * recipe.epochs
        self.lrs = [recipe.lr * lr_factor(s, total, recipe.schedule, recipe.warmup) for s in range(total)]
        self.step = 0
        self.gen = torch.Generator(device=dev).manual_seed(recipe.seed)
        # Alternating flip (airbench): each image is mirrored in every other epoch, from a random start.
        alt = recipe.alt_flip and recipe.flip
        self.flip_start = torch.rand(self.n, device=dev, generator=self.gen) < 0.5 if alt else None

    def epoch(self, epoch: int, bar) -> float:
        """One pass over the training images; its mean loss. Raises _Diverged at a NaN or infinite loss."""
        data, recipe = self.data, self.recipe
        self.model.train()
        losses = torch.zeros(self.steps_per_epoch, device=self.dev)
        checked = 0
        for i, idx in enumerate(batches(self.n, recipe.batch_size, self.gen, self.dev), 1):
            flip = recipe.flip if self.flip_start is None else self.flip_start[idx] ^ bool(epoch % 2)
            x = augment(
                data.train_x[idx],
                data.mean,
                data.std,
                crop=recipe.crop,
                flip=flip,
                cutout_size=recipe.cutout,
                generator=self.gen,
            )
            x = x.contiguous(memory_format=torch.channels_last)
            set_lr(self.optimizer, self.lrs[self.step])
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.forward(x)
                with torch.no_grad():
                    soft = self.teacher(x) if self.teacher is not None else None
                loss = training_loss(logits, data.train_y[idx], recipe, soft)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            if self.average:
                self.average.update(self.step)
            losses[i - 1] = loss.detach()
            bar.update(1)
            if i % self.CHECK_EVERY == 0 or i == self.steps_per_epoch:
                bad = (~torch.isfinite(losses[checked:i])).nonzero()
                if len(bad):
                    s = checked + int(bad[0])
                    raise _Diverged(epoch, s + 1, losses[s].item())
                checked = i
        return losses.mean().item()

    def state_dict(self) -> dict[str, Any]:
        """Everything the next epoch depends on: weights, optimizer, step, the generator that
        draws batches and augmentation, the flip phases and the weight average."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "generator": self.gen.get_state(),
            "flip_start": self.flip_start,
            "average": (self.average.model.state_dict(), self.average.updates) if self.average else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])  # in place: the optimizer's and average's tensors stay bound
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.gen.set_state(state["generator"])
        if self.flip_start is not None:
            self.flip_start = state["flip_start"].to(self.dev)
        if self.average:
            weights, self.average.updates = state["average"]
            self.average.model.load_state_dict(weights)

    def release(self) -> None:
        """After a failed run on CUDA: drop the optimizer state and gradients, return the cached blocks."""
        self.optimizer.state.clear()
        self.model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def _checkpoint_key(model_or_genome: nn.Module | Genome, data: CifarData, recipe: Recipe, params: int) -> dict:
    """What a checkpoint must match to be resumed: the same model, recipe and training images."""
    genome = str(model_or_genome) if isinstance(model_or_genome, Genome) else None
    return {"genome": genome, "params": params, "recipe": recipe.to_dict(), "train_size": len(data.train_y)}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written beside and renamed over, so an interruption while saving keeps the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path | None, key: dict[str, Any], dev: torch.device) -> dict[str, Any] | None:
    """The checkpoint at `path` if it is one of this very training (else None: it is overwritten)."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=dev, weights_only=False)
    except Exception:  # a file cut short by a full disk, or not a checkpoint: start over
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def train(
    model_or_genome: nn.Module | Genome,
    data: CifarData,
    recipe: Recipe,
    device: str | torch.device | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    progress: bool = False,
    desc: str | None = None,
    teacher: nn.Module | None = None,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train for `recipe.epochs` epochs on `data.train_*`, evaluating on `data.val_*` after each.

    `callback(epoch, val_acc)` (epoch 1-based; val_acc None without a validation split) runs after
    each epoch; returning False stops the run early (status "ok", `stopped_early`). Exceptions it
    raises propagate unchanged. A NaN or infinite loss, or CUDA running out of memory, ends the run
    with status "failed" and a reason. A model whose head does not predict `data.num_classes`
    classes raises NasError before training. With `teacher` (a trained model, run in eval mode on
    the same augmented batches) and `recipe.kd_alpha` > 0, the loss is
    (1 - kd_alpha) * cross-entropy + kd_alpha * `distillation_loss`. The model that is evaluated
    and returned is the weight average when `recipe.ema` > 0, wrapped by `predictor` for
    evaluation when `recipe.tta` is on.

    `checkpoint`: a file where the run's state is saved after every epoch; a run that finds one
    of the same model, recipe and data there goes on from its last epoch (an interrupted hour-long
    training loses at most an epoch) and ends as the uninterrupted run would have. The caller
    deletes it once the result is saved.
    """
    dev = torch.device(device) if device is not None else default_device()
    if data.device != dev:
        data = data.to(dev)
    model = _prepared_model(model_or_genome, data, recipe, dev)
    loop = _Loop(model, data, recipe, dev, _prepared_teacher(teacher, data, recipe, dev))
    params = sum(p.numel() for p in model.parameters())
    final = loop.average.model if loop.average else model  # what is evaluated, saved and exported
    answer = predictor(final, recipe.tta)

    curve: list[dict[str, float]] = []
    status, failure, stopped_early = "ok", None, False
    train_time, images_seen, epoch, earlier_s = 0.0, 0, 0, 0.0
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    key = _checkpoint_key(model_or_genome, data, recipe, params)
    saved = _load_checkpoint(checkpoint, key, dev)
    if saved is not None:
        loop.load_state_dict(saved["loop"])
        curve, train_time, images_seen = saved["curve"], saved["train_time_s"], saved["images"]
        earlier_s = saved["wall_s"]
        if progress:
            print(f"resuming at epoch {len(curve) + 1}/{recipe.epochs} from {checkpoint}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    # One bar over all batches (on a terminal only), so a slow epoch still shows movement.
    desc = desc or (str(model_or_genome) if isinstance(model_or_genome, Genome) else "train")
    total = loop.steps_per_epoch * recipe.epochs
    with progress_bar(total, progress, unit="batch", leave=False, desc=desc, initial=loop.step) as bar:
        try:
            for epoch in range(len(curve) + 1, recipe.epochs + 1):
                t0 = time.perf_counter()
                train_loss = loop.epoch(epoch, bar)  # waits for the device, for train_time
                images_seen += len(data.train_y)
                train_time += time.perf_counter() - t0
                # No validation split (a final training on every image): nothing to measure per epoch.
                val_acc = evaluate(answer, data.val_x, data.val_y, data, bf16=recipe.bf16) if len(data.val_y) else None
                curve.append({"epoch": epoch, "train_loss": train_loss, "val_acc": val_acc})
                bar.set_postfix(
                    epoch=f"{epoch}/{recipe.epochs}",
                    loss=f"{train_loss:.3f}",
                    val="-" if val_acc is None else f"{val_acc:.4f}",
                )
                if checkpoint is not None:
                    wall_s = earlier_s + time.perf_counter() - start
                    _save_checkpoint(
                        checkpoint,
                        {
                            "key": key,
                            "loop": loop.state_dict(),
                            "curve": curve,
                            "train_time_s": train_time,
                            "images": images_seen,
                            "wall_s": wall_s,
                        },
                    )
                if callback is not None and callback(epoch, val_acc) is False:
                    stopped_early = True
                    break
        except _Diverged as e:
            status, failure = "failed", str(e)
        except torch.cuda.OutOfMemoryError:
            status = "failed"
            failure = f"CUDA out of memory at epoch {epoch} (batch size {recipe.batch_size}, {params} parameters)"
    if status == "failed" and dev.type == "cuda":
        loop.release()  # this run's tensors and cached blocks, so the next run has them
    return TrainResult(
        curve=curve,
        val_acc=curve[-1]["val_acc"] if curve else 0.0,
        status=status,
        failure=failure,
        epochs=len(curve),
        stopped_early=stopped_early,
        wall_time_s=earlier_s + time.perf_counter() - start,
        train_time_s=train_time,
        images_seen=images_seen,
        device=describe_device(dev),
        params=params,
        precision=training_precision(dev, recipe.bf16),
        model=final if status == "ok" else None,
    )
