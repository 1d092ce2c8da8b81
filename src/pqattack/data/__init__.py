"""Stage 1, data: image sets decoded once into uint8 tensors, split into train / query / database."""

from .imagefolder import DatasetError
from .sources import CIFAR10Source, DataSource, SyntheticSource
from .synthetic import make_synthetic
from .types import ImageSet, RetrievalData, split_queries

__all__ = ["CIFAR10Source", "DataSource", "DatasetError", "ImageSet", "RetrievalData", "SyntheticSource",
           "make_synthetic", "split_queries"]
