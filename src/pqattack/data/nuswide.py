"""NUS-WIDE (Chua et al. 2009) from its standard distribution layout, as the paper uses it: the images of
the ``top_concepts`` (10) most frequent of the 81 concepts, multi-label, the official train/test split, 1,000
random test images as queries and the remaining images as the database.

Expected files under ``dataset.root`` (or ``dataset.root/NUS-WIDE``)::

    ImageList/TrainImagelist.txt                       one image path per line, e.g. actor\\0001_2124494179.jpg
    ImageList/TestImagelist.txt                        (161,789 and 107,859 lines in the real set)
    Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 per line, in TrainImagelist order
    Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt    one 0/1 per line, in TestImagelist order
    Flickr/<folder>/<file>.jpg                         the images (the last two parts of each list path)

List paths may use ``\\`` or ``/`` and may carry a prefix (``C:\\ImageData\\Flickr\\...``): only the last two
parts (folder and file) are used.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ..cache import ArtifactCache
from ..errors import DatasetError
from .imagefolder import decode_images, fingerprint_files
from .sources import DataSource
from .types import ImageSet, RetrievalData, concat, split_queries

log = logging.getLogger(__name__)

SPLITS = {"train": ("TrainImagelist.txt", "Train"), "test": ("TestImagelist.txt", "Test")}
DATABASES = ("rest", "test")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"NUS-WIDE: missing file {path}")
    return [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]


def image_path(root: Path, listed: str) -> Path:
    """``actor\\0001_2124494179.jpg`` (or ``C:\\ImageData\\Flickr\\actor\\...``) -> ``root/Flickr/actor/...``."""
    parts = [p for p in listed.replace("\\", "/").split("/") if p]
    return root / "Flickr" / parts[-2] / parts[-1] if len(parts) >= 2 else root / "Flickr" / parts[-1]


def read_concept_labels(label_dir: Path, split: str, num_images: int) -> tuple[list[str], torch.Tensor]:
    """All concepts' label files of one split: ``(names sorted, bool [num_images, num_concepts])``."""
    suffix = SPLITS[split][1]
    files = sorted(label_dir.glob(f"Labels_*_{suffix}.txt"))
    if not files:
        raise DatasetError(f"NUS-WIDE: no label files {label_dir}/Labels_<concept>_{suffix}.txt")
    names, columns = [], []
    for f in files:
        values = _read_lines(f)
        if len(values) != num_images:
            raise DatasetError(f"NUS-WIDE: {f} has {len(values)} lines, but the {split} image list has "
                               f"{num_images}")
        try:
            col = torch.tensor([int(v.split()[0]) for v in values], dtype=torch.int8)
        except ValueError:
            raise DatasetError(f"NUS-WIDE: {f} must hold one 0 or 1 per line") from None
        if not bool(((col == 0) | (col == 1)).all()):
            raise DatasetError(f"NUS-WIDE: {f} must hold one 0 or 1 per line")
        names.append(f.name[len("Labels_"):-len(f"_{suffix}.txt")])
        columns.append(col.bool())
    return names, torch.stack(columns, 1)


class NUSWIDESource(DataSource):
    """Multi-label NUS-WIDE; labels are multi-hot bool ``[N, top_concepts]``. See the module docstring."""

    name = "nuswide"
    label = "NUS-WIDE"

    def __init__(self, root: str = "data", top_concepts: int = 10, image_size: int = 32, database: str = "rest",
                 skip_missing: bool = False, **kw: object) -> None:
        super().__init__(**kw)
        self.root = Path(root).expanduser()
        self.top_concepts, self.image_size = int(top_concepts), int(image_size)
        self.database, self.skip_missing = str(database), bool(skip_missing)
        if self.database not in DATABASES:
            raise DatasetError(f"dataset.database={database!r}: expected rest (every image that is not a query, "
                               f"the paper's protocol) or test (the test images that are not queries)")

    def folder(self) -> Path:
        for cand in (self.root / "NUS-WIDE", self.root / "nus-wide", self.root / "nuswide", self.root):
            if (cand / "ImageList").is_dir():
                return cand
        raise DatasetError(f"NUS-WIDE not found under dataset.root={self.root}: expected {self.root}/ImageList/"
                           f"TrainImagelist.txt (or in {self.root}/NUS-WIDE/), Groundtruth/TrainTestLabels/"
                           f"Labels_<concept>_{{Train,Test}}.txt and Flickr/<folder>/<image>.jpg; see "
                           f"src/pqattack/data/nuswide.py")

    def check_present(self) -> None:
        self.folder()

    def describe(self) -> str:
        return "NUS-WIDE"

    def select(self, root: Path) -> tuple[list[str], dict[str, tuple[list[Path], torch.Tensor]]]:
        """The top concepts (by frequency over train + test, ties by name) and, per split, the files and
        multi-hot labels of the images that carry at least one of them."""
        label_dir = root / "Groundtruth" / "TrainTestLabels"
        splits: dict[str, tuple[list[Path], torch.Tensor]] = {}
        names: list[str] | None = None
        for split, (list_name, _) in SPLITS.items():
            files = [image_path(root, ln) for ln in _read_lines(root / "ImageList" / list_name)]
            split_names, labels = read_concept_labels(label_dir, split, len(files))
            if names is not None and split_names != names:
                raise DatasetError(f"NUS-WIDE: the Train and Test label files in {label_dir} name different "
                                   f"concepts")
            names = split_names
            splits[split] = (files, labels)
        assert names is not None
        if not 1 <= self.top_concepts <= len(names):
            raise DatasetError(f"dataset.top_concepts={self.top_concepts}: must be in [1, {len(names)}]")
        counts = splits["train"][1].sum(0) + splits["test"][1].sum(0)
        order = sorted(range(len(names)), key=lambda c: (-int(counts[c]), names[c]))[: self.top_concepts]
        top = [names[c] for c in order]
        out = {}
        for split, (files, labels) in splits.items():
            y = labels[:, order]
            keep = y.any(1)
            kept = [f for f, k in zip(files, keep.tolist()) if k]
            y = y[keep]
            missing = [i for i, f in enumerate(kept) if not f.is_file()]
            if missing and not self.skip_missing:
                shown = ", ".join(str(kept[i]) for i in missing[:3])
                raise DatasetError(f"NUS-WIDE: {len(missing)} of the {len(kept)} selected {split} images are "
                                   f"missing, e.g. {shown}; restore them, or set dataset.skip_missing=true to "
                                   f"leave them out")
            if missing:
                log.warning("NUS-WIDE: leaving out %d missing %s images (dataset.skip_missing=true)", len(missing),
                            split)
                present = torch.ones(len(kept), dtype=torch.bool)
                present[missing] = False
                kept = [f for f, p in zip(kept, present.tolist()) if p]
                y = y[present]
            out[split] = (kept, y)
        return top, out

    def load(self, cache: ArtifactCache) -> RetrievalData:
        root = self.folder()
        top, splits = self.select(root)
        (tr_files, tr_y), (te_files, te_y) = splits["train"], splits["test"]
        h = hashlib.sha256()
        for split, (files, y) in splits.items():
            h.update(split.encode() + y.numpy().tobytes() + fingerprint_files(files).encode())
        fp = h.hexdigest()
        spec = {"fingerprint": fp, "image_size": self.image_size, "concepts": top}

        def build() -> tuple[dict[str, torch.Tensor], dict]:
            log.info("decoding %d NUS-WIDE images at %dx%d (once; then cached)", len(tr_files) + len(te_files),
                     self.image_size, self.image_size)
            tr = decode_images(tr_files, self.image_size, resize=True, progress=self.progress)
            te = decode_images(te_files, self.image_size, resize=True, progress=self.progress)
            return ({"train_x": torch.from_numpy(tr), "test_x": torch.from_numpy(te)},
                    {"source": str(root), "num_train": len(tr_files), "num_test": len(te_files), "concepts": top})

        tensors, _, _ = cache.get_or_build("images", spec, build)
        train = ImageSet(tensors["train_x"], tr_y)
        test = ImageSet(tensors["test_x"], te_y)
        train = self._train_subset(train)
        if self.database == "test":
            query, database = split_queries(test, self.num_queries, self.num_database, self.split_seed)
        else:  # the paper: queries from the test split, every other selected image is the database
            query, test_rest = split_queries(test, self.num_queries, None, self.split_seed)
            database = concat(test_rest, ImageSet(tensors["train_x"], tr_y), offset=len(test))
            if self.num_database is not None:
                if not 0 < self.num_database <= len(database):
                    raise DatasetError(f"dataset.num_database={self.num_database}: must be in [1, {len(database)}]"
                                       f" (or null: all {len(database)})")
                perm = torch.randperm(len(database), generator=torch.Generator().manual_seed(self.split_seed))
                database = database.subset(perm[: self.num_database].sort().values)
        return RetrievalData(self.name, train, query, database, top, fp)
