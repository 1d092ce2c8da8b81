"""Mean average precision over a ranking, with ties counted the way sklearn's ``average_precision_score``
counts them: items at equal distance enter the ranking together, so the result does not depend on the
order of the database."""

from __future__ import annotations

import torch


def tie_groups(sorted_dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For distances ``[Q, n]`` sorted ascending: the first and last position of each position's group of
    equal distances, two int64 ``[Q, n]``."""
    q, n = sorted_dist.shape
    pos = torch.arange(n, device=sorted_dist.device).expand(q, n)
    new_group = torch.ones(q, n, dtype=torch.bool, device=sorted_dist.device)
    new_group[:, 1:] = sorted_dist[:, 1:] != sorted_dist[:, :-1]
    start = torch.where(new_group, pos, 0).cummax(1).values
    group_end = torch.ones_like(new_group)
    group_end[:, :-1] = new_group[:, 1:]
    end = torch.where(group_end, pos, n - 1).flip(1).cummin(1).values.flip(1)
    return start, end


def average_precision(sorted_dist: torch.Tensor, sorted_rel: torch.Tensor, num_relevant: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Per-query AP from distances ``[Q, n]`` sorted ascending and their relevance ``[Q, n]`` (bool).

    AP = (1 / R) * sum_i rel_i * P(g_i), where g_i is the end of the tie group of position i and P the
    precision there. ``num_relevant`` is R; by default the relevant items in the ranking (for a ranking
    cut at k this gives the usual mAP@k). Queries with R = 0 get AP = 0.
    """
    n = sorted_rel.shape[1]
    rel = sorted_rel.to(torch.float64)
    cum_rel = rel.cumsum(1)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=rel.device)
    _, end_idx = tie_groups(sorted_dist)
    precision_at_end = (cum_rel / pos).gather(1, end_idx)
    r = rel.sum(1) if num_relevant is None else num_relevant.to(torch.float64)
    ap = (rel * precision_at_end).sum(1) / r.clamp_min(1)
    return torch.where(r > 0, ap, torch.zeros_like(ap))


def relevance(query_labels: torch.Tensor, db_labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[Q, k]`` bool: does ranked item ``ids[q, i]`` share the query's label."""
    return db_labels[ids] == query_labels[:, None]


def mean_average_precision(sorted_dist: torch.Tensor, ids: torch.Tensor, query_labels: torch.Tensor,
                           db_labels: torch.Tensor, topk: int | None = None) -> float:
    """mAP in percent (0-100) over the full ranking, or mAP@topk when ``topk`` is given."""
    if topk is not None:
        sorted_dist, ids = sorted_dist[:, :topk], ids[:, :topk]
    rel = relevance(query_labels.cpu(), db_labels.cpu(), ids.cpu())
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
