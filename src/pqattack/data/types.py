"""In-memory image sets: uint8 tensors, decoded once and kept (on the GPU when there is one)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import torch


@dataclass
class ImageSet:
    """Images as uint8 ``[N, 3, H, W]``; labels int64 ``[N]`` (single-label) or bool ``[N, C]`` (multi-hot)."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None = None  # positions in the split this set was cut from

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"ImageSet.images must be uint8 [N, 3, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.ndim not in (1, 2) or (self.labels.ndim == 2 and self.labels.dtype != torch.bool):
            raise ValueError(f"ImageSet.labels must be int64 [N] or bool [N, C], got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"ImageSet: {self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], index if self.index is None else self.index[index])

    def digest(self, source: str) -> str:
        """Content address of this set within ``source`` (the split's files): image size, the positions of its
        items in the split, and their labels. 24 hex digits."""
        index = self.index if self.index is not None else torch.arange(len(self))
        h = hashlib.sha256(f"{source}:{tuple(self.images.shape[1:])}:{len(self)}:".encode())
        h.update(index.to(torch.int64).contiguous().numpy().tobytes())
        h.update(self.labels.contiguous().numpy().tobytes())
        return h.hexdigest()[:24]


@dataclass
class RetrievalData:
    """A dataset cut into the paper's three parts: train (backbone), query and database (test split)."""

    name: str
    train: ImageSet
    query: ImageSet
    database: ImageSet
    classes: list[str] = field(default_factory=list)
    fingerprint: str = ""  # content hash of the source files (names, sizes, times) or generator settings

    @cached_property
    def train_key(self) -> str:
        """What a backbone is trained on: the source, the image size, the actual training items and labels."""
        return self.train.digest(f"{self.name}:{self.fingerprint}:train")

    @cached_property
    def query_key(self) -> str:
        """The actual query items (positions in the test split, size, labels) of this source."""
        return self.query.digest(f"{self.name}:{self.fingerprint}:query")

    @cached_property
    def database_key(self) -> str:
        """The actual database items (positions, size, labels) of this source."""
        return self.database.digest(f"{self.name}:{self.fingerprint}:database")

    @property
    def key(self) -> str:
        """The whole split: train, query and database keys together."""
        return hashlib.sha256(f"{self.train_key}:{self.query_key}:{self.database_key}".encode()).hexdigest()[:24]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.train.labels.ndim == 2

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


def split_queries(test: ImageSet, num_queries: int, num_database: int | None, seed: int
                  ) -> tuple[ImageSet, ImageSet]:
    """Split the test set with ``seed`` into disjoint query and database sets (the paper's protocol);
    ``num_database=None`` takes every test image that is not a query."""
    from ..errors import DatasetError

    n = len(test)
    rest = n - num_queries if num_database is None else num_database
    if num_queries < 1 or rest < 1 or num_queries + rest > n:
        raise DatasetError(f"dataset.num_queries ({num_queries}) + dataset.num_database ({num_database}) must be "
                           f"positive and at most the test split's {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return test.subset(perm[:num_queries]), test.subset(perm[num_queries:num_queries + rest])


def concat(a: ImageSet, b: ImageSet, offset: int) -> ImageSet:
    """``a`` then ``b``; b's positions are shifted by ``offset`` (so they stay distinct from a's)."""
    ia = a.index if a.index is not None else torch.arange(len(a))
    ib = (b.index if b.index is not None else torch.arange(len(b))) + offset
    return ImageSet(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), torch.cat([ia, ib]))
