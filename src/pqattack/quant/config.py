"""The quantizer's and the index's settings (``conf/quantizer``, ``conf/index``), typed and checked in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

PQN_LOSSES = ("triplet", "ce", "triplet+ce")


def _check_pq(M: int, K: int) -> None:  # noqa: N803
    if M < 1:
        raise ConfigError(f"quantizer.M={M}: must be >= 1")
    if K < 2 or 2 ** round(math.log2(K)) != K or K > 2 ** 16:
        raise ConfigError(f"quantizer.K={K}: must be a power of two in [2, 65536]")


@dataclass
class KMeansConfig:
    """Post-hoc PQ: K-means in each of M sub-spaces of the database features (FAISS); bits = M log2(K)."""

    kind: str = "kmeans"
    M: int = 4  # noqa: N815
    K: int = 64  # noqa: N815
    niter: int = 25
    seed: int = 0

    @property
    def bits(self) -> int:
        return self.M * round(math.log2(self.K))

    def __post_init__(self) -> None:
        _check_pq(self.M, self.K)
        if self.niter < 1:
            raise ConfigError(f"quantizer.niter={self.niter}: must be >= 1")


@dataclass
class PQNConfig(KMeansConfig):
    """PQN (Yu et al. 2018): codebooks trained jointly with the backbone, softmax(alpha <x_m, c_mk>)."""

    kind: str = "pqn"
    alpha: float = 10.0
    loss: str = "triplet"
    margin: float = 0.1
    epochs: int = 10
    lr: float = 0.01
    init_samples: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha <= 0:
            raise ConfigError(f"quantizer.alpha={self.alpha}: must be > 0")
        if self.margin < 0:
            raise ConfigError(f"quantizer.margin={self.margin}: must be >= 0 (the triplet loss's margin)")
        if self.loss not in PQN_LOSSES:
            raise ConfigError(f"quantizer.loss={self.loss!r}: expected one of {', '.join(PQN_LOSSES)}")
        if self.epochs < 1 or self.lr <= 0:
            raise ConfigError(f"quantizer.epochs={self.epochs}, quantizer.lr={self.lr}: must be >= 1 and > 0")
        if self.K > self.init_samples:
            raise ConfigError(f"quantizer.K={self.K} is larger than quantizer.init_samples={self.init_samples}")


@dataclass
class IndexConfig:
    """How the database is searched: ``flat`` (exhaustive FAISS IndexPQ) or ``ivfpq`` (IVF-PQ, ADC at top k)."""

    kind: str = "flat"
    nlist: int = 1024
    nprobe: int = 16
    train_size: Optional[int] = 65536  # noqa: UP007 (OmegaConf reads the annotation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("flat", "ivfpq"):
            raise ConfigError(f"index.kind={self.kind!r}: expected flat or ivfpq")
        if self.kind == "ivfpq":
            if self.nlist < 1:
                raise ConfigError(f"index.nlist={self.nlist}: must be >= 1")
            if not 1 <= self.nprobe <= self.nlist:
                raise ConfigError(f"index.nprobe={self.nprobe}: must be in [1, index.nlist={self.nlist}]")
            if self.train_size is not None and self.train_size < 1:
                raise ConfigError(f"index.train_size={self.train_size}: must be >= 1, or null (the whole database)")
