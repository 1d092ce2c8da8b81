"""In-memory image sets: uint8 tensors, decoded once and kept (on the GPU when there is one)."""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class RetrievalData:
    """A dataset cut into the paper's three parts: train (backbone), query and database (test split)."""

    name: str
    train: ImageSet
    query: ImageSet
    database: ImageSet
    classes: list[str] = field(default_factory=list)
    fingerprint: str = ""  # content hash of the source images, part of every downstream cache key

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
    from .imagefolder import DatasetError

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
