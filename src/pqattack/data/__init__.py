"""Stage 1, data: image sets decoded once into uint8 tensors, split into train / query / database."""

from ..errors import DatasetError
from .labels import is_multilabel, shares_label, top1_hit
from .nuswide import NUSWIDESource
from .sources import CIFAR10Source, DataSource, ImageFolderSource, SyntheticSource
from .synthetic import make_synthetic
from .types import ImageSet, RetrievalData, concat, split_queries

__all__ = ["CIFAR10Source", "DataSource", "DatasetError", "ImageFolderSource", "ImageSet", "NUSWIDESource",
           "RetrievalData", "SyntheticSource", "concat", "is_multilabel", "make_synthetic", "shares_label",
           "split_queries", "top1_hit"]
