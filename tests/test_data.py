"""nas.data: loading through torchvision (fixture files), the split, batched augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from nas.data import (
    augment,
    batches,
    cutout,
    default_data_dir,
    load_cifar100,
    normalize,
    random_crop,
    random_flip,
    resolve_data_dir,
    stratified_split,
)
from nas.errors import NasError


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("NAS_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "nas" / "data"


def test_load_fixture_through_torchvision(cifar_dir):
    d = load_cifar100(cifar_dir, val_size=200, seed=0, download=False)
    assert d.num_classes == 100 and d.classes[:2] == ["class00", "class01"]
    assert d.train_x.shape == (1800, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.val_x.shape == (200, 3, 32, 32) and d.test_x.shape == (500, 3, 32, 32)
    assert d.train_y.dtype == torch.int64 and len(d.train_y) == 1800
    assert d.mean.shape == (3,) and torch.all((d.std > 0.05) & (d.std < 0.5))
    # The train + val images are exactly the fixture's training set, each image once.
    raw = np.concatenate([d.train_x.numpy(), d.val_x.numpy()]).reshape(2000, -1)
    assert len(np.unique(raw, axis=0)) == 2000


def test_environment_variable_is_used(cifar_dir, monkeypatch):
    monkeypatch.setenv("NAS_DATA_DIR", str(cifar_dir))
    assert len(load_cifar100(val_size=100, download=False).val_y) == 100


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(100), 45)
    val, rest = stratified_split(labels, 1050, seed=3)
    counts = np.bincount(labels[val], minlength=100)
    assert counts.min() == 10 and counts.max() == 11 and counts.sum() == 1050
    assert len(np.intersect1d(val, rest)) == 0 and len(val) + len(rest) == len(labels)
    again, _ = stratified_split(labels, 1050, seed=3)
    other, _ = stratified_split(labels, 1050, seed=4)
    assert np.array_equal(val, again) and not np.array_equal(val, other)


def test_loaded_split_is_stratified_and_subset(cifar_dir):
    d = load_cifar100(cifar_dir, val_size=300, seed=1, download=False, subset=500)
    assert torch.bincount(d.val_y, minlength=100).tolist() == [3] * 100
    assert len(d.train_y) == 500 and torch.bincount(d.train_y, minlength=100).min() == 5
    with pytest.raises(NasError, match="val_size"):
        load_cifar100(cifar_dir, val_size=2000, download=False)  # nothing left to train on
    every = load_cifar100(cifar_dir, val_size=0, download=False)  # a final training: every training image
    assert len(every.train_y) == 2000 and len(every.val_y) == 0


def test_source_reads_the_files_once_for_every_split(cifar_dir, monkeypatch):
    """A sweep's search split, its final trainings' full set and its exports' test images come
    from one read, and equal what separate loads give."""
    import nas.data
    from nas.data import CifarSource, load_test_images

    reads = []
    real_read = nas.data.read_cifar100
    monkeypatch.setattr(nas.data, "read_cifar100", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    source = CifarSource(cifar_dir, "cpu", download=False)
    assert reads == []  # nothing is read before something asks for data
    search = source.split(val_size=200, subset=500)
    every = source.split(val_size=0)
    images, labels = source.test_images(100)
    assert source.split(val_size=200, subset=500) is search
    assert len(reads) == 1
    assert len(search.train_y) == 500 and len(search.val_y) == 200 and len(every.train_y) == 2000
    alone = load_cifar100(cifar_dir, val_size=200, subset=500, download=False)
    assert torch.equal(search.train_x, alone.train_x) and torch.equal(search.val_y, alone.val_y)
    assert torch.equal(search.mean, alone.mean) and torch.equal(every.test_x, alone.test_x)
    assert torch.equal(images, load_test_images(cifar_dir, 100)[0]) and len(labels) == 100
    with pytest.raises(NasError, match="subset must be at least 500"):
        CifarSource(cifar_dir / "never-read").split(subset=10)


def test_missing_data_offline_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    root = tmp_path / "nowhere" / "data"
    with pytest.raises(NasError) as e:
        load_cifar100(root)
    msg = str(e.value)
    assert "\n" not in msg and "download failed" in msg
    assert f"put the 'cifar-100-python/' folder into {root.resolve()}/" in msg
    assert not (tmp_path / "nowhere").exists()  # the folders made for the download are gone again
    with pytest.raises(NasError, match="is missing"):
        load_cifar100(root, download=False)
    assert not (tmp_path / "nowhere").exists()  # no download, no folder


def test_failed_download_removes_its_partial_archive_and_folder(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    def cut_off(url, download_root, **kwargs):
        (Path(download_root) / CIFAR100.filename).write_bytes(b"half an archive")
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", cut_off)
    with pytest.raises(NasError, match="download failed"):
        load_cifar100(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "mine"  # a folder the user made is kept, with what was already in it
    kept.mkdir()
    (kept / "notes.txt").write_text("x")
    with pytest.raises(NasError, match="download failed"):
        load_cifar100(kept)
    assert (kept / "notes.txt").exists()


def test_data_dir_that_is_a_file_is_named_as_such(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(NasError, match=f"CIFAR-100 data folder {f} is not a folder"):
        load_cifar100(f)


@pytest.mark.parametrize("subset", [1, 499])
def test_subset_needs_five_images_per_class(subset, tmp_path):
    with pytest.raises(NasError, match=f"subset must be at least 500 training images .*got {subset}"):
        load_cifar100(tmp_path / "never-read", subset=subset)
    assert not (tmp_path / "never-read").exists()


def test_corrupt_file_is_reported_not_used(cifar_dir, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(cifar_dir, copy)
    test_file = copy / "cifar-100-python" / "test"
    raw = bytearray(test_file.read_bytes())
    raw[-100] ^= 0xFF
    test_file.write_bytes(bytes(raw))

    def no_download(*args, **kwargs):
        raise AssertionError("a corrupt file must not be downloaded over")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_download)
    with pytest.raises(NasError, match=f"{test_file} is corrupt"):
        load_cifar100(copy)


def _batch(n: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = _batch()
    out = random_crop(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    shifts = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(padded[i, :, dy : dy + 32, dx : dx + 32], out[i])
        ]
        assert found, f"image {i} is not a crop"
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # offsets differ across the batch


def test_flip_mirrors_about_half_the_images():
    x = _batch(200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 60 < sum(flipped) < 140


def test_normalize_and_cutout():
    x = _batch(8)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    z = normalize(x, mean, std)
    ref = (x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert z.dtype == torch.float32 and torch.allclose(z, ref, atol=1e-5)
    c = cutout(z + 10, 8, torch.Generator().manual_seed(0))
    zeroed = (c == 0).all(1).sum((1, 2))  # zeroed pixels per image (all channels)
    assert torch.all(zeroed > 0) and torch.all(zeroed <= 64)
    out = augment(x, mean, std, cutout_size=8, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32


def test_augmentation_is_seeded():
    x = _batch()
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    a = augment(x, mean, std, cutout_size=6, generator=torch.Generator().manual_seed(7))
    b = augment(x, mean, std, cutout_size=6, generator=torch.Generator().manual_seed(7))
    c = augment(x, mean, std, cutout_size=6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batches_cover_every_index_once():
    got = torch.cat(list(batches(103, 25, torch.Generator().manual_seed(0))))
    assert sorted(got.tolist()) == list(range(103))
    assert [len(b) for b in batches(103, 25)] == [25, 25, 25, 25, 3]


@pytest.mark.realdata
def test_real_data_loads():
    import os

    root = os.environ.get("NAS_DATA_DIR")
    if not root or not (Path(root) / "cifar-100-python").is_dir():
        pytest.skip("set NAS_DATA_DIR to a folder holding cifar-100-python/")
    d = load_cifar100(root, val_size=5000, download=False)
    assert len(d.train_y) == 45000 and len(d.test_y) == 10000
    assert torch.bincount(d.val_y).tolist() == [50] * 100
