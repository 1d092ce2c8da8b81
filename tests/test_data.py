"""Data: the synthetic set, the ImageFolder reader on real JPEG files, the seeded query/database split."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pqattack.cache import ArtifactCache
from pqattack.data import CIFAR10Source, DatasetError, ImageSet, SyntheticSource, make_synthetic, split_queries


def test_synthetic_is_deterministic_balanced_and_uint8() -> None:
    a, la = make_synthetic(200, seed=3)
    b, lb = make_synthetic(200, seed=3)
    c, _ = make_synthetic(200, seed=4)
    assert a.dtype == np.uint8 and a.shape == (200, 3, 32, 32)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert np.bincount(la).tolist() == [20] * 10
    # classes differ in their mean colour: a linear probe would already separate some
    means = np.stack([a[la == k].mean((0, 2, 3)) for k in range(10)])
    assert np.unique(means.round(0), axis=0).shape[0] == 10


def test_split_is_seeded_and_disjoint() -> None:
    test = ImageSet(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).clone(),
                    torch.arange(100))
    q1, d1 = split_queries(test, 10, 80, seed=0)
    q2, _ = split_queries(test, 10, 80, seed=0)
    q3, _ = split_queries(test, 10, 80, seed=1)
    assert torch.equal(q1.labels, q2.labels) and not torch.equal(q1.labels, q3.labels)
    assert not set(q1.labels.tolist()) & set(d1.labels.tolist())
    with pytest.raises(DatasetError, match="dataset.num_queries"):
        split_queries(test, 30, 80, seed=0)


def write_tree(root: Path, classes: list[str], per_class: int, size: int = 32) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i:04d}.png")


def test_imagefolder_reads_real_files_and_caches_them(tmp_path: Path) -> None:
    root = tmp_path / "data" / "cifar10-jpeg"
    write_tree(root, ["cat", "dog", "ship"], per_class=6)
    cache = ArtifactCache(tmp_path / "cache")
    src = CIFAR10Source(root=str(tmp_path / "data"), num_queries=4, num_database=10)
    data = src.load(cache)
    assert data.classes == ["cat", "dog", "ship"] and len(data.train) == 18
    assert len(data.query) == 4 and len(data.database) == 10
    png = np.asarray(Image.open(root / "train" / "dog" / "0002.png"))
    assert torch.equal(data.train.images[8], torch.from_numpy(png.copy()).permute(2, 0, 1))  # file order, class order
    assert cache.builds and src.describe() == "CIFAR-10 (JPEG copy)"
    again = CIFAR10Source(root=str(tmp_path / "data"), num_queries=4, num_database=10).load(cache)
    assert cache.hits and torch.equal(again.train.images, data.train.images)


def test_broken_image_is_named(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tree(root, ["a", "b"], per_class=3)
    bad = root / "train" / "b" / "0001.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="0001.png"):
        CIFAR10Source(root=str(root), num_queries=2, num_database=3).load(ArtifactCache(tmp_path / "c"))


def test_wrong_size_is_named_unless_resize(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tree(root, ["a", "b"], per_class=3, size=40)
    with pytest.raises(DatasetError, match="40x40.*dataset.resize"):
        CIFAR10Source(root=str(root), num_queries=2, num_database=3).load(ArtifactCache(tmp_path / "c"))
    data = CIFAR10Source(root=str(root), num_queries=2, num_database=3, resize=True).load(ArtifactCache(tmp_path / "c"))
    assert data.train.images.shape[-2:] == (32, 32)


def test_class_folders_must_match(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tree(root, ["a", "b"], per_class=2)
    (root / "test" / "b").rename(root / "test" / "c")
    with pytest.raises(DatasetError, match="class folders differ"):
        CIFAR10Source(root=str(root), num_queries=1, num_database=2).load(ArtifactCache(tmp_path / "c"))


def test_missing_data_offline_says_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="PQATTACK_DATA"):
        CIFAR10Source(root=str(tmp_path / "none"), num_queries=1, num_database=2, download=False).load(
            ArtifactCache(tmp_path / "c"))


def test_a_failed_download_leaves_no_folder_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped ``dataset.root`` with ``download`` on: torchvision makes the folder, then the download fails (here
    through a proxy that refuses every connection, as on a machine without network); the error names the root and
    the folders the attempt made are gone, while an existing parent stays."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    root = tmp_path / "typo" / "data"
    with pytest.raises(DatasetError, match="torchvision download failed") as err:
        CIFAR10Source(root=str(root), num_queries=1, num_database=2, download=True).load(ArtifactCache(tmp_path / "c"))
    assert f"dataset.root={root}" in str(err.value)
    assert not (tmp_path / "typo").exists() and tmp_path.is_dir()


def test_check_present_looks_for_each_sources_files(tmp_path: Path) -> None:
    """What the command and a sweep's check call before any job runs: a missing folder is one ``DatasetError``
    naming ``dataset.root``; a folder that is there, or CIFAR-10 with ``download`` on, passes."""
    from pqattack.data.nuswide import NUSWIDESource
    from pqattack.data.sources import ImageFolderSource

    none = str(tmp_path / "none")
    for source in (CIFAR10Source(root=none, num_queries=1, num_database=2, download=False),
                   ImageFolderSource(root=none, num_queries=1, num_database=2),
                   NUSWIDESource(root=none, num_queries=1, num_database=2)):
        with pytest.raises(DatasetError, match=f"dataset.root={none}"):
            source.check_present()
    CIFAR10Source(root=none, num_queries=1, num_database=2, download=True).check_present()
    ImageFolderSource(root=str(tmp_path), num_queries=1, num_database=2).check_present()


def test_synthetic_source_builds_the_three_parts() -> None:
    src = SyntheticSource(num_train=300, num_test=100, num_queries=10, num_database=50, num_classes=5)
    data = src.load(ArtifactCache("/nonexistent", enabled=False))
    assert data.num_classes == 5 and (len(data.train), len(data.query), len(data.database)) == (300, 10, 50)
    assert data.fingerprint == src.load(ArtifactCache("/nonexistent", enabled=False)).fingerprint
