"""IVF-PQ index for databases of millions of items: FAISS ``IndexIVFPQ`` over the GIVEN PQ codebooks.

The PQ part is not retrained and encodes the raw vectors (``by_residual = False``), so the codes and the ADC
distances ||y - q(x)||^2 are exactly those of :class:`~pqattack.quant.index.PQIndex` with the same codebooks; the
inverted file (a coarse K-means quantizer with ``nlist`` cells) only prunes which items are visited: a query scans
the ``nprobe`` cells nearest to it. With ``nprobe == nlist`` the search is exhaustive and equals ``PQIndex``'s ADC.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from .codebooks import nbits_of
from .index import _np, unpack_codes

SDC_UNSUPPORTED = "IVF-PQ supports ADC only: set system=adc or index=flat"


class IVFPQIndex:
    """ADC search over an inverted file of PQ codes; codebooks ``[M, K, D/M]`` are used as given.

    The coarse quantizer (``IndexFlatL2`` with ``nlist`` centroids) is trained with FAISS K-means on a random
    subset (seeded by ``seed``) of ``train_size`` vectors of the first database added (all of them when
    ``train_size`` is None or larger). Search results that do not exist (fewer than ``k`` items in the probed
    cells) come back as id ``-1`` with distance ``+inf``.
    """

    def __init__(self, codebooks: torch.Tensor, database: torch.Tensor | np.ndarray | None = None, nlist: int = 1024,
                 nprobe: int = 16, train_size: int | None = 65536, seed: int = 0) -> None:
        M, K, dsub = codebooks.shape  # noqa: N806
        self.M, self.K, self.d = M, K, M * dsub
        self.nbits = nbits_of(K)
        if nlist < 1:
            raise ValueError(f"index.nlist={nlist} must be >= 1")
        if train_size is not None and train_size < 1:
            raise ValueError(f"index.train_size={train_size} must be >= 1 (or None for the whole database)")
        self.nlist, self.train_size, self.seed = nlist, train_size, seed
        self._check_nprobe(nprobe)
        self.codebooks = codebooks.detach().float().cpu()
        self.quantizer = faiss.IndexFlatL2(self.d)  # kept referenced here: the IVF index does not own it
        self.index = faiss.IndexIVFPQ(self.quantizer, self.d, nlist, M, self.nbits)
        self.index.by_residual = False  # PQ-encode x itself, not x - coarse centroid: codes as in PQIndex
        faiss.copy_array_to_vector(self.codebooks.numpy().ravel(), self.index.pq.centroids)
        self.index.nprobe = nprobe
        if database is not None:
            self.add(database)

    def _check_nprobe(self, nprobe: int) -> None:
        if not 1 <= nprobe <= self.nlist:
            raise ValueError(f"index.nprobe={nprobe} must be between 1 and index.nlist={self.nlist}")

    @property
    def nprobe(self) -> int:
        """Number of inverted lists (coarse cells) visited per query."""
        return self.index.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._check_nprobe(value)
        self.index.nprobe = value

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, x: torch.Tensor | np.ndarray) -> None:
        """Train the coarse quantizer only (K-means on a seeded subset of ``x``); the PQ codebooks stay as given."""
        x = _np(x)
        if self.train_size is not None and len(x) > self.train_size:
            gen = torch.Generator().manual_seed(self.seed)
            sub = torch.randperm(len(x), generator=gen)[: self.train_size].sort().values.numpy()
            x = x[sub]
        if self.nlist > len(x):
            raise ValueError(f"index.nlist={self.nlist} is larger than the {len(x)} vectors the coarse quantizer "
                             "is trained on (see index.train_size)")
        km = faiss.Kmeans(self.d, self.nlist, niter=20, seed=self.seed, verbose=False,
                          max_points_per_centroid=max(256, -(-len(x) // self.nlist)))  # no silent subsampling
        km.train(x)
        self.quantizer.reset()
        self.quantizer.add(km.centroids)
        # Do NOT call self.index.train(): it would re-run K-means on the PQ codebooks. The coarse quantizer has
        # its nlist centroids and the PQ centroids are set, so the index is ready.
        self.index.is_trained = True

    def add(self, database: torch.Tensor | np.ndarray) -> None:
        """Append vectors (ids continue from ``ntotal``); the first call trains the coarse quantizer on them."""
        x = _np(database)
        if not self.is_trained:
            self.train(x)
        self.index.add(x)

    def encode(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Hard assignment q(x_m) = argmin_k ||x_m - c_mk||^2 (eq. 1), int64 ``[N, M]``, as ``PQIndex.encode``."""
        packed = self.index.pq.compute_codes(_np(x))
        return torch.from_numpy(unpack_codes(packed, self.M, self.nbits))

    def stored_codes(self) -> torch.Tensor:
        """The PQ codes held in the inverted lists, int64 ``[ntotal, M]`` in id order (for checks)."""
        from faiss.contrib.inspect_tools import get_invlist

        codes = np.zeros((self.ntotal, self.index.code_size), dtype=np.uint8)
        for lst in range(self.nlist):
            ids, packed = get_invlist(self.index.invlists, lst)
            codes[ids] = packed
        return torch.from_numpy(unpack_codes(codes, self.M, self.nbits))

    def search(self, queries: torch.Tensor | np.ndarray, system: str, k: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k by ADC, d(y, q(x))^2 = ||y - q(x)||^2, over the ``nprobe`` nearest cells; ``(distances, ids)``,
        each ``[Q, k]``, nearest first. Missing results are id ``-1``, distance ``+inf``.

        Only ``system="adc"``; ``k`` is required (IVF does not rank the whole database: use mAP@k).
        """
        if system != "adc":
            raise ValueError(f"system={system!r}: {SDC_UNSUPPORTED}")
        if k is None:
            raise ValueError("IVF-PQ does not rank the whole database: give k (evaluate mAP@k), or set index=flat")
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        if not self.is_trained:
            raise RuntimeError("IVFPQIndex.add() the database first")
        k = min(k, max(self.ntotal, 1))
        dist, ids = self.index.search(_np(queries), k)
        dist[ids < 0] = np.inf  # FAISS fills missing slots with id -1 and distance FLT_MAX
        return torch.from_numpy(dist), torch.from_numpy(ids)


def recall_at_k_with_ties(approx_dist: torch.Tensor, exact_dist: torch.Tensor, rtol: float = 1e-5) -> float:
    """Recall@k that does not depend on how ties at the k-th distance are broken: the share of the exact
    top k (``[Q, k]`` distances, ascending) matched by approximate results (``[Q, >= k]`` distances of distinct
    items, +inf when missing) at a distance no larger than the exact k-th. Valid when both searches compute
    the same distance per item, as IVF-PQ and flat PQ ADC with the same codebooks do (up to float rounding:
    FAISS and the flat index's torch tables sum in different orders, hence ``rtol``); with no ties at the
    k-th distance it is the plain recall@k (``faiss.contrib.evaluation.knn_intersection_measure``)."""
    k = exact_dist.shape[1]
    kth = exact_dist[:, -1:].double()
    close = approx_dist[:, :k].double() <= kth + rtol * kth.abs().clamp_min(1e-12)
    return float(close.sum(1).clamp_max(k).double().mean() / k)
