"""PQ codebooks: K-means in each of the M subspaces (eq. 1), with FAISS."""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np
import torch


log = logging.getLogger(__name__)


def nbits_of(K: int) -> int:  # noqa: N803
    nbits = int(round(math.log2(K)))
    if 2 ** nbits != K:
        raise ValueError(f"quantizer.K={K} must be a power of two (K = 2^bits per sub-code)")
    return nbits


def train_codebooks(features: torch.Tensor, M: int, K: int, niter: int = 25, seed: int = 0,  # noqa: N803
                    verbose: bool = False) -> torch.Tensor:
    """K-means per subspace on ``features [N, D]``; returns centroids ``[M, K, D/M]`` (float32)."""
    n, d = features.shape
    if d % M:
        raise ValueError(f"quantizer.M={M} must divide the feature dimension {d}")
    if K > n:
        raise ValueError(f"quantizer.K={K} is larger than the {n} database vectors it is trained on")
    pq = faiss.ProductQuantizer(d, M, nbits_of(K))
    pq.cp.niter = niter
    pq.cp.seed = seed
    pq.cp.verbose = verbose
    pq.cp.max_points_per_centroid = max(256, math.ceil(n / K))  # use every vector: no silent subsampling
    pq.cp.min_points_per_centroid = 1  # few vectors per centroid (e.g. K=512 on 9,000) are said once, below
    if n < 39 * K:
        log.info("K-means: %d vectors for %d centroids per sub-space (%.1f each; FAISS advises 39)", n, K, n / K)
    pq.verbose = verbose
    pq.train(np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32))
    return torch.from_numpy(faiss.vector_to_array(pq.centroids).reshape(M, K, d // M).copy())
