"""Mean average precision over a ranking, with ties counted the way sklearn's ``average_precision_score``
counts them: items at equal distance enter the ranking together, so the result does not depend on the
order of the database."""

from __future__ import annotations

import numpy as np
import torch


def tie_groups(sorted_dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For distances ``[Q, n]`` sorted ascending: the first and last position of each position's group of
    equal distances, two int64 ``[Q, n]``.

    On the CPU through numpy: a global group id per position (cumsum of the group starts over the flattened
    rows; every row starts a group), then each group's first and last position by lookup."""
    q, n = sorted_dist.shape
    if sorted_dist.device.type == "cpu" and sorted_dist.dtype in (torch.float32, torch.float64):
        d = sorted_dist.detach().numpy()
        starts = np.ones((q, n), dtype=bool)
        np.not_equal(d[:, 1:], d[:, :-1], out=starts[:, 1:])
        ends = np.ones_like(starts)
        ends[:, :-1] = starts[:, 1:]
        gid = np.cumsum(starts.ravel()) - 1
        offset = (np.arange(q, dtype=np.int64) * n)[:, None]
        start = np.flatnonzero(starts)[gid].reshape(q, n)
        end = np.flatnonzero(ends)[gid].reshape(q, n)
        start -= offset
        end -= offset
        return torch.from_numpy(start), torch.from_numpy(end)
    pos = torch.arange(n, device=sorted_dist.device).expand(q, n)
    new_group = torch.ones(q, n, dtype=torch.bool, device=sorted_dist.device)
    new_group[:, 1:] = sorted_dist[:, 1:] != sorted_dist[:, :-1]
    start = torch.where(new_group, pos, 0).cummax(1).values
    group_end = torch.ones_like(new_group)
    group_end[:, :-1] = new_group[:, 1:]
    end = torch.where(group_end, pos, n - 1).flip(1).cummin(1).values.flip(1)
    return start, end


def _precision_sum(sorted_row: np.ndarray, relevant_sorted: np.ndarray) -> float:
    """sum over the relevant items of the tie-aware precision at their distance d: (relevant items at distance
    <= d) / (items at distance <= d), two binary searches; both inputs sorted ascending."""
    if relevant_sorted.size == 0:
        return 0.0
    return float(np.divide(np.searchsorted(relevant_sorted, relevant_sorted, side="right"),
                           np.searchsorted(sorted_row, relevant_sorted, side="right")).sum())


def average_precision_unranked(dist: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Per-query tie-aware AP (sklearn's ``average_precision_score`` on the scores -dist) from UNSORTED float
    distances ``[Q, n]`` and relevance ``[Q, n]`` (bool), float64 ``[Q]``; queries with no relevant item get 0.
    Equal to :func:`average_precision` on the sorted ranking, without ranking (values are sorted, ids are not)."""
    srt = np.sort(dist, axis=1)
    out = np.zeros(len(dist))
    for i in range(len(dist)):
        rd = np.sort(dist[i][rel[i]])
        if rd.size:
            out[i] = _precision_sum(srt[i], rd) / rd.size
    return out


def average_precision(sorted_dist: torch.Tensor, sorted_rel: torch.Tensor, num_relevant: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Per-query AP from distances ``[Q, n]`` sorted ascending and their relevance ``[Q, n]`` (bool).

    AP = (1 / R) * sum_i rel_i * P(g_i), where g_i is the end of the tie group of position i and P the
    precision there. ``num_relevant`` is R; by default the relevant items in the ranking (for a ranking
    cut at k this gives the usual mAP@k). Queries with R = 0 get AP = 0.

    On the CPU (float distances, bool relevance, no NaN) through numpy, per query: with rd the relevant
    items' distances (ascending, as ranked), P(g_i) = #(rd <= d_i) / #(ranked <= d_i), two binary searches.
    """
    if (sorted_dist.device.type == "cpu" and sorted_rel.device.type == "cpu" and sorted_rel.dtype == torch.bool
            and sorted_dist.dtype in (torch.float32, torch.float64)):
        d, rel_np = sorted_dist.detach().numpy(), sorted_rel.numpy()
        if not np.isnan(d).any():
            sums = np.array([_precision_sum(d[i], d[i][rel_np[i]]) for i in range(d.shape[0])])
            r_np = rel_np.sum(1).astype(np.float64) if num_relevant is None else \
                num_relevant.detach().cpu().numpy().astype(np.float64)
            return torch.from_numpy(np.where(r_np > 0, sums / np.maximum(r_np, 1), 0.0))
    n = sorted_rel.shape[1]
    rel = sorted_rel.to(torch.float64)
    cum_rel = rel.cumsum(1)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=rel.device)
    _, end_idx = tie_groups(sorted_dist)
    precision_at_end = (cum_rel / pos).gather(1, end_idx)
    r = rel.sum(1) if num_relevant is None else num_relevant.to(torch.float64)
    ap = (rel * precision_at_end).sum(1) / r.clamp_min(1)
    return torch.where(r > 0, ap, torch.zeros_like(ap))


def relevance(query_labels: torch.Tensor, db_labels: torch.Tensor, ids: torch.Tensor, chunk: int = 128
              ) -> torch.Tensor:
    """``[Q, k]`` bool: is ranked item ``ids[q, i]`` relevant to query q.

    Single-label (int ``[N]``): the same class. Multi-label (multi-hot ``[N, C]``, e.g. NUS-WIDE): at least
    one shared concept. Ids of -1 (no result) are never relevant.
    """
    valid = ids >= 0
    safe = ids.clamp_min(0)
    if query_labels.ndim == 1:
        return (db_labels[safe] == query_labels[:, None]) & valid
    if query_labels.shape[1] <= 63:  # concepts as bits of one int64: one AND per pair
        weights = 1 << torch.arange(query_labels.shape[1], dtype=torch.int64)
        q_bits = (query_labels.bool().long() * weights).sum(1)
        db_bits = (db_labels.bool().long() * weights).sum(1)
        return ((db_bits[safe] & q_bits[:, None]) != 0) & valid
    out = torch.empty(ids.shape, dtype=torch.bool)
    q, db = query_labels.bool(), db_labels.bool()
    for lo in range(0, ids.shape[0], chunk):
        out[lo:lo + chunk] = (db[safe[lo:lo + chunk]] & q[lo:lo + chunk, None]).any(-1)
    return out & valid


def mean_average_precision(sorted_dist: torch.Tensor, ids: torch.Tensor, query_labels: torch.Tensor,
                           db_labels: torch.Tensor, topk: int | None = None) -> float:
    """mAP in percent (0-100) over the full ranking, or mAP@topk when ``topk`` is given."""
    if topk is not None:
        sorted_dist, ids = sorted_dist[:, :topk], ids[:, :topk]
    ql, dl = query_labels.cpu(), db_labels.cpu()
    if ql.ndim == 1 and ql.dtype == dl.dtype == torch.int64 and ql.numel() and dl.numel() and \
            -(1 << 15) <= min(ql.min(), dl.min()) and max(ql.max(), dl.max()) < (1 << 15):
        ql, dl = ql.to(torch.int16), dl.to(torch.int16)  # class ids: the same equalities, a cheaper gather
    rel = relevance(ql, dl, ids.cpu())
    return float(average_precision(sorted_dist.cpu(), rel).mean()) * 100.0


def precision_recall_at_ranks(sorted_dist: torch.Tensor, sorted_rel: torch.Tensor,
                              num_relevant: torch.Tensor | None = None, chunk: int = 256
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision and recall at every rank 1..n, averaged over queries (the PR curves of the paper's Fig. 5).

    Inputs as for :func:`average_precision`. Items at equal distance are counted the way the tie-aware mAP
    counts them: at the end of a tie group the counts are exact (sklearn's ``precision_recall_curve`` points),
    inside a group the relevant ones are spread evenly (their expected number under any order of the group),
    so the curve does not depend on the order of the database. Returns two float64 tensors ``[n]``; queries
    with no relevant item count as recall 0.
    """
    q, n = sorted_rel.shape
    pos = torch.arange(n, device=sorted_rel.device)
    precision_sum = torch.zeros(n, dtype=torch.float64, device=sorted_rel.device)
    recall_sum = torch.zeros_like(precision_sum)
    for lo in range(0, q, chunk):
        dist, rel = sorted_dist[lo:lo + chunk], sorted_rel[lo:lo + chunk].to(torch.float64)
        rows = rel.shape[0]
        start, end = tie_groups(dist)
        cum_rel = torch.cat([torch.zeros(rows, 1, dtype=torch.float64, device=rel.device), rel.cumsum(1)], 1)
        before = cum_rel.gather(1, start)
        in_group = cum_rel.gather(1, end + 1) - before
        hits = before + in_group * (pos - start + 1) / (end - start + 1)
        r = rel.sum(1, keepdim=True) if num_relevant is None else num_relevant[lo:lo + chunk, None].to(torch.float64)
        precision_sum += (hits / (pos + 1)).sum(0)
        recall_sum += torch.where(r > 0, hits / r.clamp_min(1), torch.zeros_like(hits)).sum(0)
    return precision_sum / q, recall_sum / q
