"""Shared fixtures: a tiny, learnable CIFAR-100 in torchvision's exact `cifar-100-python` layout."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

FIXTURE_CLASSES = 100
FIXTURE_TRAIN_PER_CLASS = 20
FIXTURE_TEST_PER_CLASS = 5


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images a small network can tell apart after a few epochs, even cropped and flipped:
    the class picks a colour (c % 10) and a stripe pattern (c // 10), plus pixel noise."""
    n = len(labels)
    colours = np.array(
        [
            [230, 25, 75],
            [60, 180, 75],
            [255, 225, 25],
            [0, 130, 200],
            [245, 130, 48],
            [145, 30, 180],
            [70, 240, 240],
            [240, 50, 230],
            [128, 128, 0],
            [255, 255, 255],
        ],
        dtype=np.float32,
    )
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    patterns = []
    # Stripes along y, x or one diagonal (a flip turns it into the other diagonal, which no class
    # uses) at periods 4, 6, 8; rings; flat colour.
    for coord, period in (
        (yy, 4),
        (xx, 4),
        (yy + xx, 4),
        (yy, 6),
        (xx, 6),
        (yy + xx, 6),
        (yy, 8),
        (xx, 8),
        (np.hypot(yy - 16, xx - 16), 6),
        (yy * 0, 1),
    ):
        patterns.append(0.5 + 0.5 * np.cos(2 * np.pi * coord / period))
    patterns = np.stack(patterns)  # (10, 32, 32) in [0, 1]
    img = colours[labels % 10][:, :, None, None] * (0.35 + 0.65 * patterns[labels // 10][:, None])
    img = img + rng.normal(0, 12, size=(n, 3, 32, 32))
    return np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072)


def _write(path: Path, obj: dict) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar100(
    root: Path,
    train_per_class: int = FIXTURE_TRAIN_PER_CLASS,
    test_per_class: int = FIXTURE_TEST_PER_CLASS,
    seed: int = 0,
) -> dict[str, str]:
    """Write `root/cifar-100-python/{train,test,meta}` as torchvision reads them; return file -> md5.

    The real files are Python-2 pickles whose keys (b'data', b'fine_labels', ...) load as str
    with torchvision's encoding='latin1', so from Python 3 the keys are written as str."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(FIXTURE_CLASSES), per_class)
        rng.shuffle(labels)
        md5[name] = _write(
            folder / name,
            {
                "data": _images(labels, rng),
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "filenames": [f"img_{name}_{i:05d}.png" for i in range(len(labels))],
                "batch_label": f"{name}ing batch 1 of 1",
            },
        )
    md5["meta"] = _write(
        folder / "meta",
        {
            "fine_label_names": [f"class{c:02d}" for c in range(FIXTURE_CLASSES)],
            "coarse_label_names": [f"super{c:02d}" for c in range(FIXTURE_CLASSES // 5)],
        },
    )
    return md5


# `python LAUNCHER_FILE MD5_JSON nas-args...`: a nas process (tests that start real ones) that
# patches torchvision's CIFAR-100 checksums to the fixture files' md5s before running the CLI.
# It restores Python's Ctrl-C handler: a test suite started in the background of a
# non-interactive shell ignores SIGINT, and its children would inherit that.
LAUNCHER = """
import json, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from torchvision.datasets import CIFAR100
md5 = json.loads(sys.argv[1])
CIFAR100.train_list = [["train", md5["train"]]]
CIFAR100.test_list = [["test", md5["test"]]]
CIFAR100.meta = {**CIFAR100.meta, "md5": md5["meta"]}
from nas.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="session")
def _cifar_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar100(root)


def use_fixture_checksums(monkeypatch: pytest.MonkeyPatch, md5: dict[str, str]) -> None:
    """Point torchvision's CIFAR-100 checksums at the fixture files, so its md5 check runs for real."""
    from torchvision.datasets import CIFAR100

    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})


@pytest.fixture
def cifar_dir(_cifar_files: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding a tiny fixture `cifar-100-python/` (20 train / 5 test images per class),
    with torchvision's checksums patched to match. Do not modify it: it is shared by the session."""
    root, md5 = _cifar_files
    use_fixture_checksums(monkeypatch, md5)
    monkeypatch.delenv("NAS_DATA_DIR", raising=False)
    return root


@pytest.fixture
def cifar_data(cifar_dir: Path):
    """The fixture dataset loaded on the CPU, 200 validation images (2 per class)."""
    from nas.data import load_cifar100

    return load_cifar100(cifar_dir, device="cpu", val_size=200, seed=0, download=False)


@pytest.fixture(autouse=True)
def _calibration_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrations (nas.plan) go to a test-session file, not the user's ~/.cache."""
    monkeypatch.setenv("NAS_CALIBRATION_CACHE", str(tmp_path_factory.getbasetemp() / "calibration.json"))


# ---------------------------------------------------------------- random genomes of every space file


def builtin_space_names() -> list[str]:
    """The space files nas ships: tests over all of them cover every family that has one."""
    from nas.spaces import BUILTIN_SPACES_DIR

    return sorted(p.stem for p in BUILTIN_SPACES_DIR.glob("*.toml"))


def option_values(check, rng) -> list:
    """Every allowed value of an option (a sample of a numeric range, with its ends)."""
    if hasattr(check, "choices"):
        return list(check.choices)
    if hasattr(check, "int_range"):
        lo, hi = check.int_range
        return [lo, hi, rng.randint(lo, hi)]
    lo, hi = check.float_range
    return [0, 0.0, lo, 0.1, 0.25, 1 / 3, 1e-7, hi - 1e-9, rng.uniform(lo, hi)]


def random_genome(space_name: str, rng, options: dict | None = None, max_width: int = 600, max_other: int = 7):
    """A genome of the space's family with random genes (not only inside the space's ranges:
    widths up to `max_width`, other genes up to `max_other`) and random options (each option
    kept from the space file, or drawn from its allowed values)."""
    from nas.spaces import Genome, load_space

    sp = load_space(space_name)
    family = sp.family
    if options is None:
        options = dict(sp.options)
        for key, check in family.option_checks.items():
            if rng.random() < 0.5:
                options[key] = rng.choice(option_values(check, rng))
    stages = options["stages"]
    genes = {}
    for name in family.gene_names(options):
        high = max_width if family.gene_roles[name] == "width" else max_other
        allowed = family.gene_choices.get(name) or range(family.lowest(name), high + 1)
        values = [rng.choice(allowed) for _ in range(stages if name in family.per_stage else 1)]
        genes[name] = values if name in family.per_stage else values[0]
    return Genome.from_dict({"space": sp.name, "family": family.name, "genes": genes, "options": options})


class PlantedTraining:
    """A stand-in for `nas.training.train` (patch `nas.objective.train`, where searches call it)
    for tests of what nas records: no network is trained, each genome gets a learning curve rising
    to a planted accuracy that depends on its parameter count, depth and genes and the recipe's
    seed, so searches write their real trial and study records with distinct, repeatable results
    in milliseconds. The `fail_on`-th
    training (counted from 1) diverges, as a NaN loss does."""

    def __init__(self, fail_on: int | None = None):
        self.fail_on, self.calls = fail_on, 0

    @staticmethod
    def accuracy(genome, seed: int = 0) -> float:
        import math
        import zlib

        from nas.counting import count_params

        luck = zlib.crc32(genome.to_json().encode()) % 1000 / 1000  # repeatable across processes
        depth = sum(genome.genes.get("depth", [1]))  # deeper is better: a walk has a way up
        return 0.03 * math.log(count_params(genome)) - 0.15 + 0.01 * depth + 0.01 * luck + 0.004 * seed

    def __call__(self, genome, data, recipe, device=None, callback=None, **_):
        from nas.counting import count_params
        from nas.training import TrainResult, _Diverged

        self.calls += 1
        final, curve, failure = self.accuracy(genome, recipe.seed), [], None
        for epoch in range(1, recipe.epochs + 1):
            if self.calls == self.fail_on:
                failure = str(_Diverged(epoch, 1, float("nan")))  # the real trainer's words
                break
            acc = final * (0.5 + 0.5 * epoch / recipe.epochs)
            curve.append({"epoch": epoch, "train_loss": 4.6 - 0.3 * epoch, "val_acc": acc})
            if callback is not None and callback(epoch, acc) is False:
                break
        return TrainResult(
            curve=curve,
            val_acc=curve[-1]["val_acc"] if curve else 0.0,
            status="failed" if failure else "ok",
            failure=failure,
            epochs=len(curve),
            stopped_early=len(curve) < recipe.epochs and not failure,
            wall_time_s=12.5,
            train_time_s=10.0,
            images_seen=0,
            device="cpu",
            params=count_params(genome),
        )


def plan_for_tests(calibration, **fields):
    """A search plan (nas.plan.Plan) of conv-shape at 10k, 15,000 training images x 4 epochs, 5,000
    validated, a 20-minute limit, with `calibration` and any fields given over these."""
    from nas.plan import Plan

    base = dict(
        space="conv-shape",
        searcher="tpe",
        budget=10_000,
        band=(9000, 10_000),
        device="cpu",
        bf16=False,
        train_images=15_000,
        val_images=5_000,
        epochs=4,
        pruner="none",
        trials=None,
        time_limit_s=1200,
    )
    return Plan(**{**base, **fields}, calibration=calibration)
