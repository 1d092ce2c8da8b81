"""Dataset sources, instantiated from ``conf/dataset/*.yaml`` through ``_target_``.

Each source's ``load(cache)`` returns a ``RetrievalData``: train images for the backbone, and the test
split cut with a seed into queries and database.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from ..cache import ArtifactCache
from ..errors import DatasetError
from .imagefolder import decode_images, fingerprint_files, list_image_folder
from .synthetic import make_synthetic
from .types import ImageSet, RetrievalData, split_queries

log = logging.getLogger(__name__)


class DataSource:
    name = "base"
    progress = True  # progress bars while decoding images (the job's ``progress``; stages.data.load_data sets it)

    def __init__(self, num_queries: int, num_database: int | None, split_seed: int = 0,
                 num_train: int | None = None, **_: object) -> None:
        self.num_queries = int(num_queries)
        self.num_database = None if num_database is None else int(num_database)
        self.split_seed = int(split_seed)
        self.num_train = None if num_train is None else int(num_train)

    def _train_subset(self, train: ImageSet) -> ImageSet:
        """The training images, or a seeded subset of ``dataset.num_train`` of them."""
        if self.num_train is None:
            return train
        if not 0 < self.num_train <= len(train):
            raise DatasetError(f"dataset.num_train={self.num_train}: must be in [1, {len(train)}]")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed))
        return train.subset(perm[: self.num_train].sort().values)

    def _assemble(self, train: ImageSet, test: ImageSet, classes: list[str], fingerprint: str) -> RetrievalData:
        train = self._train_subset(train)
        query, database = split_queries(test, self.num_queries, self.num_database, self.split_seed)
        return RetrievalData(self.name, train, query, database, classes, fingerprint)

    def check_present(self) -> None:
        """Raise ``DatasetError`` when the source's files are plainly not where its config points (a look at the
        folders, nothing read): called before a job or a sweep starts, so that a mistyped ``dataset.root`` stops
        it at once instead of after the jobs before it."""

    def load(self, cache: ArtifactCache) -> RetrievalData:
        raise NotImplementedError


class SyntheticSource(DataSource):
    """Procedural shapes-and-colours images (``data.synthetic``); nothing to download."""

    name = "synthetic"

    def __init__(self, num_train: int = 4000, num_test: int = 1200, num_classes: int = 10, image_size: int = 32,
                 noise: float = 0.12, hue_jitter: float = 0.08, seed: int = 0, **kw: object) -> None:
        super().__init__(**kw)
        self.num_train_total, self.num_test = int(num_train), int(num_test)
        self.num_classes, self.image_size, self.noise, self.seed = int(num_classes), int(image_size), noise, int(seed)
        self.hue_jitter = hue_jitter

    def load(self, cache: ArtifactCache) -> RetrievalData:
        tr_x, tr_y = make_synthetic(self.num_train_total, self.seed, self.num_classes, self.image_size, self.noise,
                                    self.hue_jitter)
        te_x, te_y = make_synthetic(self.num_test, self.seed + 1, self.num_classes, self.image_size, self.noise,
                                    self.hue_jitter)
        fp = hashlib.sha256(f"synthetic:{self.num_train_total}:{self.num_test}:{self.num_classes}:"
                            f"{self.image_size}:{self.noise}:{self.hue_jitter}:{self.seed}".encode()).hexdigest()
        classes = [f"class{c}" for c in range(self.num_classes)]
        return self._assemble(ImageSet(torch.from_numpy(tr_x), torch.from_numpy(tr_y)),
                              ImageSet(torch.from_numpy(te_x), torch.from_numpy(te_y)), classes, fp)


class ImageFolderSource(DataSource):
    """Any ImageFolder tree: ``root/{train,test}/<class>/<image>``, or ``root/<class>/<image>`` cut into train
    and test with ``split_seed`` (``test_fraction`` of each class to test). Images of any size are resized to
    ``image_size`` x ``image_size`` when ``resize`` is set (else a differently sized image is an error naming
    it). Decoded images are cached, so the files are read once per machine."""

    name = "imagefolder"

    def __init__(self, root: str = "data/images", image_size: int = 32, resize: bool = True,
                 test_fraction: float = 0.2, **kw: object) -> None:
        super().__init__(**kw)
        self.root = Path(root).expanduser()
        self.image_size, self.resize = int(image_size), bool(resize)
        self.test_fraction = float(test_fraction)
        if not 0 < self.test_fraction < 1:  # checked here, at start-up, even where train/ and test/ make it unused
            raise DatasetError(f"dataset.test_fraction={test_fraction}: must be in (0, 1), the share of each class "
                               f"that goes to test when dataset.root has no train/ and test/ folders")

    def describe(self) -> str:
        return f"ImageFolder {self.root}"

    def _folder(self) -> Path | None:
        return self.root if (self.root / "train").is_dir() and (self.root / "test").is_dir() else None

    def check_present(self) -> None:
        if not self.root.is_dir():
            raise DatasetError(f"dataset.root={self.root}: no such folder (expected {self.root}/{{train,test}}/"
                               f"<class>/<image> or {self.root}/<class>/<image>)")

    def load(self, cache: ArtifactCache) -> RetrievalData:
        folder = self._folder()
        if folder is not None:
            return self._load_folder(folder, cache)
        self.check_present()
        classes, files, labels = list_image_folder(self.root)
        y = torch.tensor(labels, dtype=torch.int64)
        gen = torch.Generator().manual_seed(self.split_seed)
        test_mask = torch.zeros(len(files), dtype=torch.bool)
        for c in range(len(classes)):  # stratified: test_fraction of every class (at least one image)
            members = torch.nonzero(y == c).squeeze(1)
            take = max(1, round(len(members) * self.test_fraction))
            test_mask[members[torch.randperm(len(members), generator=gen)[:take]]] = True
        tr = [f for f, t in zip(files, test_mask.tolist()) if not t]
        te = [f for f, t in zip(files, test_mask.tolist()) if t]
        return self._decode_and_assemble(tr, y[~test_mask].tolist(), te, y[test_mask].tolist(), classes, cache,
                                         self.root, {"split": ["seeded", self.split_seed, self.test_fraction]})

    def _load_folder(self, folder: Path, cache: ArtifactCache) -> RetrievalData:
        tr_classes, tr_files, tr_labels = list_image_folder(folder / "train")
        te_classes, te_files, te_labels = list_image_folder(folder / "test")
        if tr_classes != te_classes:
            raise DatasetError(f"{folder}: train and test class folders differ: train={tr_classes}, "
                               f"test={te_classes}")
        return self._decode_and_assemble(tr_files, tr_labels, te_files, te_labels, tr_classes, cache, folder, {})

    def _decode_and_assemble(self, tr_files: list[Path], tr_labels: list[int], te_files: list[Path],
                             te_labels: list[int], classes: list[str], cache: ArtifactCache, folder: Path,
                             extra_spec: dict) -> RetrievalData:
        fp = fingerprint_files(tr_files + te_files)
        spec = {"fingerprint": fp, "image_size": self.image_size, "resize": self.resize, **extra_spec}

        def build() -> tuple[dict[str, torch.Tensor], dict]:
            log.info("decoding %d images from %s (once; then cached)", len(tr_files) + len(te_files), folder)
            tr = decode_images(tr_files, self.image_size, self.resize, self.progress)
            te = decode_images(te_files, self.image_size, self.resize, self.progress)
            return ({"train_x": torch.from_numpy(tr), "test_x": torch.from_numpy(te)},
                    {"source": str(folder), "num_train": len(tr_files), "num_test": len(te_files)})

        tensors, _, _ = cache.get_or_build("images", spec, build)
        train = ImageSet(tensors["train_x"], torch.tensor(tr_labels, dtype=torch.int64))
        test = ImageSet(tensors["test_x"], torch.tensor(te_labels, dtype=torch.int64))
        return self._assemble(train, test, classes, fp)


class CIFAR10Source(ImageFolderSource):
    """CIFAR-10 from an ImageFolder tree (``train/<class>/*``, ``test/<class>/*``) or torchvision's copy.

    ``root`` is searched for ``cifar10-jpeg/{train,test}``, ``{train,test}`` and torchvision's
    ``cifar-10-batches-py``; with none there, torchvision's download is tried when ``download`` is set.
    Decoded images are cached, so the JPEGs are read once per machine.
    """

    name = "cifar10"
    label = "CIFAR-10"

    def __init__(self, root: str = "data", image_size: int = 32, resize: bool = False, download: bool = True,
                 **kw: object) -> None:
        super().__init__(root=root, image_size=image_size, resize=resize, **kw)
        self.download = bool(download)

    def _folder(self) -> Path | None:
        for cand in (self.root / "cifar10-jpeg", self.root):
            if (cand / "train").is_dir() and (cand / "test").is_dir():
                return cand
        return None

    def describe(self) -> str:
        return "CIFAR-10 (JPEG copy)" if self._folder() is not None else "CIFAR-10"

    def _missing(self, why: str = "") -> DatasetError:
        return DatasetError(
            f"CIFAR-10 not found under dataset.root={self.root} (env PQATTACK_DATA){why}. Looked for "
            f"{self.root}/cifar10-jpeg/{{train,test}}/<class>/*.jpg, {self.root}/{{train,test}}/<class>/* and "
            f"{self.root}/cifar-10-batches-py. Put it there, e.g. `mkdir -p {self.root} && tar -C {self.root} -xJf "
            f"../shared/data/cifar10-jpeg.tar.xz`, or set dataset.root / PQATTACK_DATA to its folder.")

    def check_present(self) -> None:
        """A local copy, or ``download`` set (whether the download works is known only by trying it)."""
        if self._folder() is None and not (self.root / "cifar-10-batches-py").is_dir() and not self.download:
            raise self._missing(" and dataset.download=false")

    def load(self, cache: ArtifactCache) -> RetrievalData:
        folder = self._folder()
        if folder is not None:
            return self._load_folder(folder, cache)
        self.check_present()
        return self._load_torchvision()

    def _load_torchvision(self) -> RetrievalData:
        """torchvision's copy, downloaded when ``download`` is set and none is there. A failed download leaves
        nothing behind: the folders it made (a mistyped ``dataset.root``) are removed."""
        from torchvision.datasets import CIFAR10

        made = [p for p in (self.root, *self.root.parents) if not p.exists()]
        try:
            tr = CIFAR10(str(self.root), train=True, download=self.download)
            te = CIFAR10(str(self.root), train=False, download=self.download)
        except Exception as exc:  # offline download failures come in many types
            if made:
                shutil.rmtree(made[-1], ignore_errors=True)
            raise self._missing(f" (torchvision download failed: {type(exc).__name__}: {exc})") from None
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
        fp = hashlib.sha256(tr.data.tobytes()[:1 << 20] + te.data.tobytes()[:1 << 20]).hexdigest()
        return self._assemble(ImageSet(to_t(tr.data), torch.tensor(tr.targets)),
                              ImageSet(to_t(te.data), torch.tensor(te.targets)), list(tr.classes), fp)
