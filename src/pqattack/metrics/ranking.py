"""Diagnostics of rankings with tied distances, as expectations under a uniformly random order of tied items (the
convention of the headline mAP): the rank of the first relevant item and precision@k."""

from __future__ import annotations

import numpy as np


def ranking_diagnostics(dist: np.ndarray, rel: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """For distances ``[Q, N]`` in any order and their relevance ``[Q, N]`` (bool): per query the expected (1-based)
    rank of the first relevant item (NaN without one) and the expected precision@k, float64 ``[Q]`` each.

    First relevant: with d* the smallest distance of a relevant item, s items strictly nearer, and n items at d* of
    which r relevant, the first of the r lands at s + (n + 1) / (r + 1) on average. Precision@k: with d_k the k-th
    smallest distance, the items nearer than d_k are all in the top k, and the k - (those items) remaining slots
    draw from the n items at d_k, r of them relevant: (relevant nearer + r (k - nearer) / n) / k.
    """
    rel = rel.astype(bool, copy=False)
    k = min(k, dist.shape[1])
    d_rel = np.where(rel, dist, np.inf)
    first = d_rel.min(1, keepdims=True)
    at_first = dist == first
    rank = (dist < first).sum(1) + (at_first.sum(1) + 1) / ((rel & at_first).sum(1) + 1)
    rank = np.where(np.isfinite(first[:, 0]), rank, np.nan)
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1:k]
    nearer, at_kth = dist < kth, dist == kth
    before = nearer.sum(1)
    precision = ((rel & nearer).sum(1) + (rel & at_kth).sum(1) * (k - before) / at_kth.sum(1)) / k
    return rank.astype(np.float64), precision.astype(np.float64)
