"""CIFAR-100 on the training device: loading (once per command), a stratified validation split,
batched augmentation.

The images stay uint8 tensors on the device (150 MB for the training set); every batch is cropped,
flipped, normalised and optionally cut out with tensor ops there, so there is no DataLoader and
no per-image PIL work. Loading goes through `torchvision.datasets.CIFAR100`, which md5-checks
the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from nas.errors import NasError
from nas.files import new_folders

FOLDER = "cifar-100-python"
PAD = 4  # random-crop padding, as torchvision's RandomCrop(32, padding=4)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder that holds (or will hold) `cifar-100-python/`: the argument, else
    `NAS_DATA_DIR`, else a per-user cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("NAS_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "nas" / "data"


def default_data_dir() -> Path:
    """`NAS_DATA_DIR`, else the per-user cache folder."""
    return resolve_data_dir(None)


@dataclass
class CifarData:
    """uint8 images (N, 3, 32, 32) and int64 labels on one device, plus the normalisation
    statistics of the training part (per channel, in [0, 1] units)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: str | torch.device) -> CifarData:
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)
            },
        )


# ---------------------------------------------------------------- loading


def _expected_files() -> list[tuple[str, str]]:
    # Read at call time, so tests can point torchvision's checksums at fixture files.
    from torchvision.datasets import CIFAR100

    return [
        *(tuple(f) for f in CIFAR100.train_list + CIFAR100.test_list),
        (CIFAR100.meta["filename"], CIFAR100.meta["md5"]),
    ]


def _check_files(root: Path, download: bool) -> None:
    """Raise NasError for a corrupt file; download missing files, or say where to put them."""
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import check_integrity

    folder = root / FOLDER
    for p in (root, folder):
        if p.exists() and not p.is_dir():
            raise NasError(
                f"CIFAR-100 data folder {p} is not a folder (pass --data-dir or set NAS_DATA_DIR "
                f"to the folder that holds, or will hold, '{FOLDER}/')"
            )
    missing = []
    for name, md5 in _expected_files():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif not check_integrity(str(path), md5):
            # Reported rather than silently re-downloaded over: the user may have put it there.
            raise NasError(
                f"CIFAR-100 file {path} is corrupt (md5 mismatch); delete it to re-download "
                f"or replace it with a good copy"
            )
    if not missing:
        return
    where = f"put the '{FOLDER}/' folder into {root.resolve()}/ (or pass --data-dir / set NAS_DATA_DIR)"
    if not download:
        raise NasError(f"CIFAR-100 not found ({folder / missing[0]} is missing); {where}")
    try:
        # The folder exists only once there is something in it: a failed download leaves nothing.
        with new_folders(root) as created:
            try:
                CIFAR100(str(root), train=True, download=True)
            except BaseException:
                if created:  # our own partial archive, in a folder we just made
                    (root / CIFAR100.filename).unlink(missing_ok=True)
                raise
    except Exception as e:  # network, disk or archive errors all end the same way for the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NasError(f"CIFAR-100 not found in {root.resolve()} and the download failed ({reason}); {where}") from None


def check_data(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Before a command writes anything: the data folder holds CIFAR-100's files, or they are
    downloaded now; else a one-line NasError saying where to put them. The checksums are checked
    when the files are read. Returns the folder."""
    root = resolve_data_dir(data_dir)
    if not all((root / FOLDER / name).is_file() for name, _ in _expected_files()):
        _check_files(root, download)
    return root


def _read_split(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision.datasets import CIFAR100

    ds = CIFAR100(str(root), train=train, download=False)
    x = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # torchvision gives NHWC
    return x, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


@dataclass(frozen=True)
class CifarArrays:
    """CIFAR-100 as read from disk, before any split: uint8 (N, 3, 32, 32) images and int64
    labels as numpy arrays on the CPU, and the class names."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]


def read_cifar100(data_dir: str | Path | None = None, download: bool = True) -> CifarArrays:
    """Check (downloading what is missing, if allowed) and decode the CIFAR-100 training and
    test batches. Slow (md5 of every file, unpickling): `CifarSource` calls it once per command."""
    root = resolve_data_dir(data_dir)
    _check_files(root, download)
    try:
        x, y, classes = _read_split(root, train=True)
        test_x, test_y, _ = _read_split(root, train=False)
    except RuntimeError as e:  # torchvision's own md5 check, e.g. a file changed since ours
        raise NasError(f"CIFAR-100 in {root / FOLDER} could not be read: {e}") from None
    return CifarArrays(x, y, test_x, test_y, classes)


def stratified_split(labels: np.ndarray, n_take: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (taken, rest): `n_take` indices spread over the classes as evenly as possible
    (per-class counts differ by at most one), chosen at random with `seed`; both sorted."""
    n = len(labels)
    if not 0 <= n_take <= n:
        raise NasError(f"cannot take {n_take} of {n} images")
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = labels[perm]
    rank = np.empty(n, dtype=np.int64)  # position of each image among its class, in shuffled order
    for c in np.unique(shuffled):
        m = shuffled == c
        rank[m] = np.arange(m.sum())
    # Round robin over classes: all rank-0 images first (in random class order), then rank 1, ...
    order = np.lexsort((np.arange(n), rank))
    return np.sort(perm[order[:n_take]]), np.sort(perm[order[n_take:]])


MIN_PER_CLASS = 5  # fewer training images per class than this cannot give a meaningful accuracy
CLASSES = 100


def check_subset(subset: int | None, classes: int = CLASSES) -> None:
    """NasError unless `subset` (training images kept, None = all) holds a few images per class."""
    if subset is not None and subset < MIN_PER_CLASS * classes:
        raise NasError(
            f"subset must be at least {MIN_PER_CLASS * classes:,} training images "
            f"({MIN_PER_CLASS} per class of {classes}), got {subset:,}"
        )


def split_cifar100(
    arrays: CifarArrays,
    device: str | torch.device = "cpu",
    val_size: int = 5000,
    seed: int = 0,
    subset: int | None = None,
) -> CifarData:
    """`arrays` as uint8 tensors on `device`, with `val_size` training images held out for
    validation (seeded, stratified by class; 0 holds none out). `subset` keeps only that many of
    the remaining training images (also stratified), for quick runs; validation and test are not
    reduced."""
    check_subset(subset)
    x, y = arrays.train_x, arrays.train_y
    if not 0 <= val_size < len(y):  # 0: train on every training image (a final training)
        raise NasError(f"val_size must be between 0 and {len(y) - 1}, got {val_size}")
    val_idx, train_idx = stratified_split(y, val_size, seed)
    if subset is not None:
        if not 0 < subset <= len(train_idx):
            raise NasError(f"subset must be between 1 and {len(train_idx)}, got {subset}")
        keep, _ = stratified_split(y[train_idx], subset, seed + 1)
        train_idx = train_idx[keep]
    train_x = x[train_idx]
    # Statistics of the training part only: the validation images must not leak into training.
    pixels = train_x.transpose(1, 0, 2, 3).reshape(3, -1)
    mean = torch.tensor([p.mean(dtype=np.float64) / 255 for p in pixels], dtype=torch.float32)
    std = torch.tensor([p.std(dtype=np.float64) / 255 for p in pixels], dtype=torch.float32)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return CifarData(
        train_x=t(train_x),
        train_y=t(y[train_idx]),
        val_x=t(x[val_idx]),
        val_y=t(y[val_idx]),
        test_x=t(arrays.test_x),
        test_y=t(arrays.test_y),
        num_classes=len(arrays.classes),
        mean=mean.to(device),
        std=std.to(device),
        classes=list(arrays.classes),
    )


class CifarSource:
    """CIFAR-100 from one folder onto one device, read from disk at most once (at the first
    request, so a command that turns out to have nothing to train reads nothing). A command that
    needs several splits, like a sweep (each budget's search split, all 50,000 images for the final
    trainings, test images for each export's check), derives them all from that one read."""

    def __init__(self, data_dir: str | Path | None = None, device: str | torch.device = "cpu", download: bool = True):
        self.data_dir, self.device, self.download = data_dir, device, download
        self._arrays: CifarArrays | None = None
        self._splits: dict[tuple[int, int, int | None], CifarData] = {}

    def arrays(self) -> CifarArrays:
        if self._arrays is None:
            self._arrays = read_cifar100(self.data_dir, self.download)
        return self._arrays

    def split(self, val_size: int = 5000, seed: int = 0, subset: int | None = None) -> CifarData:
        """The data set split as `split_cifar100` does it, made once per (val_size, seed, subset)."""
        check_subset(subset)  # before reading anything
        key = (val_size, seed, subset)
        if key not in self._splits:
            self._splits[key] = split_cifar100(self.arrays(), self.device, val_size, seed, subset)
        return self._splits[key]

    def test_images(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` (default all) test images and labels, on the CPU."""
        a = self.arrays()
        return torch.from_numpy(np.ascontiguousarray(a.test_x[:n])), torch.from_numpy(a.test_y[:n])


def load_cifar100(
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    val_size: int = 5000,
    seed: int = 0,
    download: bool = True,
    subset: int | None = None,
) -> CifarData:
    """CIFAR-100 read from `data_dir` and split onto `device` (see `split_cifar100`)."""
    return CifarSource(data_dir, device, download).split(val_size, seed, subset)


def load_test_images(data_dir: str | Path | None = None, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` (default all) CIFAR-100 test images (uint8, N x 3 x 32 x 32) and labels, on
    the CPU, without reading or splitting the training set. NasError when not found (no download)."""
    root = resolve_data_dir(data_dir)
    _check_files(root, download=False)
    x, y, _ = _read_split(root, train=False)
    return torch.from_numpy(np.ascontiguousarray(x[:n])), torch.from_numpy(y[:n])


# ---------------------------------------------------------------- batches and augmentation


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32, standardised per channel."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (-mean / std).view(1, -1, 1, 1)
    return torch.addcmul(shift, x.float(), scale)  # one fused pass instead of three


def crop_flip(
    x: torch.Tensor,
    crop: bool = True,
    flip: bool | torch.Tensor = True,
    generator: torch.Generator | None = None,
    pad: int = PAD,
) -> torch.Tensor:
    """Random 32x32 crops of the zero-padded batch (torchvision's RandomCrop(32, padding=4)) when
    `crop`, mirrored left-right where `flip` says: True flips a random half, a bool tensor (one
    per image) flips exactly those. One gather does both, on the uint8 images."""
    b, c, h, w = x.shape
    dev = x.device
    if crop:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=dev, generator=generator)
    else:
        dy = dx = torch.zeros((b, 1, 1), dtype=torch.int64, device=dev)
    if flip is True:
        flip = torch.rand(b, device=dev, generator=generator) < 0.5
    cols = torch.arange(w, device=dev).view(1, 1, w)
    if isinstance(flip, torch.Tensor):
        cols = torch.where(flip.view(b, 1, 1), w - 1 - cols, cols)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    index = ((dy + rows) * x.shape[3] + dx + cols).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def random_crop(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = PAD) -> torch.Tensor:
    """Random 32x32 crops of the zero-padded batch, not flipped."""
    return crop_flip(x, True, False, generator, pad)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    return crop_flip(x, False, True, generator)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a size x size square (clipped at the border) at a random centre of each image.
    Applied after normalisation, zero is the mean colour."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (b, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    lo = size // 2
    inside = (ys >= cy - lo) & (ys < cy - lo + size) & (xs >= cx - lo) & (xs < cx - lo + size)
    return x.masked_fill(inside[:, None], 0.0)


def augment(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    crop: bool = True,
    flip: bool | torch.Tensor = True,
    cutout_size: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A training batch: uint8 (B, 3, 32, 32) -> augmented, normalised float32. `flip`: True for
    a random half, False for none, or a bool tensor saying which images to mirror."""
    if crop or flip is not False:
        x = crop_flip(x, crop, flip, generator)
    x = normalize(x, mean, std)
    if cutout_size > 0:
        x = cutout(x, cutout_size, generator)
    return x


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    shuffle: bool = True,
):
    """Index tensors of consecutive batches over range(n), in a fresh random order if `shuffle`."""
    order = torch.randperm(n, device=device, generator=generator) if shuffle else torch.arange(n, device=device)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]
