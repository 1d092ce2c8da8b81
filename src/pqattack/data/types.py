"""In-memory image sets: uint8 tensors, decoded once and kept (on the GPU when there is one)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images as uint8 ``[N, 3, H, W]`` and labels as int64 ``[N]`` (single-label)."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None = None  # positions in the split this set was cut from

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"ImageSet.images must be uint8 [N, 3, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
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
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


def split_queries(test: ImageSet, num_queries: int, num_database: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split the test set with ``seed`` into disjoint query and database sets (the paper's protocol)."""
    n = len(test)
    if num_queries < 1 or num_database < 1 or num_queries + num_database > n:
        raise ValueError(f"dataset.num_queries ({num_queries}) + dataset.num_database ({num_database}) must be "
                         f"positive and at most the test split's {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return test.subset(perm[:num_queries]), test.subset(perm[num_queries:num_queries + num_database])
