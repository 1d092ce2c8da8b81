"""Mean average precision over a ranking whose distances tie.

PQ distances tie massively (every database item with the same code is at the same distance; with SDC at 16 bits
there are only 65,536 cells), so AP depends on how tied items are ordered. One kernel computes two conventions,
neither of which depends on the order of the database:

- ``expected`` (the headline ``map``): the expected AP when the items of each tie group are ordered uniformly at
  random (McSherry & Najork, ECIR 2008), exact, in closed form. Codebases that rank with ``argsort`` compute one
  draw of it (which one depends on the database order); their mean over orders is this number.
- ``grouped`` (``map_grouped``): sklearn's ``average_precision_score``: a tie group enters the ranking at once and
  each of its relevant items gets the precision at the group's end.

Neither needs the ranking's order: one sort per query of (distance, relevance) keys puts each tie group's
relevant items at its end, and the counts before and through each group follow by position.

mAP@k keeps the usual normaliser, the number of relevant items in the top k. Under the random order, the group
that straddles position k puts a hypergeometric number of its relevant items in the top k, and the normaliser
depends on it; :func:`_straddling_group` sums over that number exactly. This needs the whole straddling group: a
ranking cut at k goes on past the group's end (``quant.index.search_past_ties``), or holds every item, or comes
with the group's counts (``PQIndex`` counts them over its distinct codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

TIES = ("expected", "grouped")
EMPTY = ("zero", "drop")
_FLOAT32_INF_BITS = 0x7F800000


@lru_cache(maxsize=8)
def _harmonic(n: int) -> np.ndarray:
    """Harmonic numbers H(0..n), float64 ``[n + 1]``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))])


def _sorted_keys(dist: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """One unsigned key per item, each row sorted: ``key >> 1`` orders and ties as the distance, the lowest bit is
    the relevance, so each tie group's relevant items come last in it.

    float32 distances without a sign bit: the float's bits shifted left (their order is the floats'); any other
    distances (float64, negative, -0.0): the rank of the distance among the row's distinct values. NaN is an
    error."""
    if dist.dtype == np.float32 and dist.size and dist.view(np.uint32).max() <= _FLOAT32_INF_BITS:
        keys = dist.view(np.uint32) << np.uint32(1)  # no sign bit (nor NaN): bits in the floats' order
        keys |= rel
        keys.sort(axis=1)
        return keys
    d = dist.astype(np.float64, copy=False)
    if np.isnan(d).any():
        raise ValueError("distances contain NaN: mAP is undefined")
    order = np.lexsort((rel, d), axis=1)
    d = np.take_along_axis(d, order, 1)
    keys = np.zeros(d.shape, dtype=np.uint64)
    np.cumsum(d[:, 1:] != d[:, :-1], axis=1, out=keys[:, 1:])
    keys <<= np.uint64(1)
    keys |= np.take_along_axis(rel, order, 1)
    return keys


def _precision_sums(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of :func:`_sorted_keys`: the expected and the grouped sum of precisions at the relevant items, and
    their number; float64, float64, int64 ``[B]``.

    A tie group holds positions N+1..N+n, r of its items relevant, after R relevant items. Grouped (sklearn): each
    of its relevant items gets the precision at the group's end, (R + r) / (N + n). Expected, under a uniformly
    random order of the group: the item at position N+j is relevant with probability r/n, and given that,
    (j-1)(r-1)/(n-1) of the group's items before it are relevant in expectation, so the group contributes
    sum_{j=1..n} (r/n) (R + 1 + (j-1) a) / (N + j) = (r/n) (n a + (R + 1 - a (N + 1)) (H(N+n) - H(N))),
    a = (r-1)/(n-1), H the harmonic numbers; a group of one item contributes as in the grouped sum.

    The relevant items of a group are its last r keys, so R, r and N + n are positions; N is the position of the
    group's first relevant item unless the key before it has the same distance (then a binary search).
    """
    b, n = keys.shape
    flat = keys.ravel()
    pos = np.flatnonzero((flat & 1).astype(bool))
    item_start = np.searchsorted(pos, np.arange(b + 1) * n)
    counts = np.diff(item_start)
    expected, grouped = np.zeros(b), np.zeros(b)
    if not pos.size:
        return expected, grouped, counts
    row = pos // n
    value = flat[pos]
    first = np.ones(len(pos), dtype=bool)  # the first relevant item of a tie group
    np.not_equal(value[1:], value[:-1], out=first[1:])
    first[item_start[1:-1][item_start[1:-1] < len(pos)]] = True
    starts = np.flatnonzero(first)
    group_row = row[starts]
    rel_before = starts - item_start[group_row]
    rel_through = np.append(starts[1:], len(pos)) - item_start[group_row]
    first_pos = pos[starts]
    key = flat[first_pos]
    before = first_pos - group_row * n
    through = before + (rel_through - rel_before)
    # non-relevant items tied with the group come just before its relevant ones (key - 1): find where it starts
    tied = np.flatnonzero((flat[first_pos - 1] == key - 1) & (before > 0))
    if tied.size:
        bounds = np.searchsorted(group_row[tied], np.arange(b + 1))
        for i in np.flatnonzero(np.diff(bounds)):
            sel = tied[bounds[i]:bounds[i + 1]]
            before[sel] = np.searchsorted(keys[i], key[sel] - 1, side="left")
    at_end = rel_through / through  # sklearn's precision at the group's end
    per_item = at_end[np.cumsum(first) - 1]
    for i in np.flatnonzero(counts):
        grouped[i] = per_item[item_start[i]:item_start[i + 1]].sum()
    multi = np.flatnonzero(through - before > 1)
    if multi.size:
        h = _harmonic(n)
        nb, nt, rb, rt = before[multi], through[multi], rel_before[multi], rel_through[multi]
        r, size = rt - rb, nt - nb
        a = (r - 1) / (size - 1)
        group_sum = r / size * (size * a + (rb + 1 - a * (nb + 1)) * (h[nt] - h[nb]))
        expected += np.bincount(group_row[multi], weights=group_sum - r * at_end[multi], minlength=b)
    expected += grouped
    return expected, grouped, counts


def _straddling_group(pre_sum: float, before: int, n: int, rel_before: int, r: int, m: int, h: np.ndarray
                      ) -> tuple[float, float]:
    """Expected AP@k and the probability that the top k holds a relevant item, when the first m of a tie group of
    n items (r relevant; N = ``before`` items and R = ``rel_before`` relevant ones before it) land in the top k.

    X, the group's relevant items in the top k, is hypergeometric (n, r, m). Given X = x, those x items are spread
    uniformly over the m slots, so their expected precision sum f(x) is :func:`_precision_sums`'s formula with
    n -> m, r -> x. The groups before are independent of X: E[AP@k] = sum_x P(X = x) (pre_sum + f(x)) / (R + x),
    with ``pre_sum`` their expected precision sum and terms with R + x = 0 counted as 0."""
    x = np.arange(max(0, m - (n - r)), min(r, m) + 1, dtype=np.float64)
    # log P(X = x) up to a constant, from P(x + 1) / P(x) = (r - x)(m - x) / ((x + 1)(n - r - m + x + 1))
    step = np.log((r - x[:-1]) * (m - x[:-1])) - np.log((x[:-1] + 1) * (n - r - m + x[:-1] + 1))
    log_p = np.concatenate([[0.0], np.cumsum(step)])
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    a = (x - 1) / max(m - 1, 1)
    part = x / m * (m * a + (rel_before + 1 - a * (before + 1)) * (h[before + m] - h[before]))
    hits = rel_before + x
    ap = np.divide(pre_sum + part, hits, out=np.zeros_like(x), where=hits > 0)
    return float(p @ ap), float(p[hits > 0].sum())


@dataclass(frozen=True)
class QueryAP:
    """Per-query APs (float64 ``[Q]``) under both tie conventions, and whether each query's top k holds a
    relevant item (``expected_found``: its probability under random tie order; ``grouped_found``: 0 or 1)."""

    expected: np.ndarray
    grouped: np.ndarray
    expected_found: np.ndarray
    grouped_found: np.ndarray

    @classmethod
    def concat(cls, parts: list["QueryAP"]) -> "QueryAP":
        """The queries of several blocks, in order."""
        return cls(*(np.concatenate([np.zeros(0)] + [getattr(p, f) for p in parts]) for f in
                     ("expected", "grouped", "expected_found", "grouped_found")))

    def mean(self, ties: str = "expected", empty: str = "zero") -> float:
        """mAP in percent (0-100); NaN without queries.

        ``empty="zero"``: the mean over all queries, a query without a relevant item in its top k counting 0
        (DeepHash-pytorch's ``CalcTopMap``). ``empty="drop"``: such queries are left out (thulab/DeepHash's
        ``get_mAPs``); under ``ties="expected"`` a query whose top k holds a relevant item only for some orders of
        the tie group at k (no relevant item before the group) counts with that probability: mAP = sum of the
        expected APs / sum of the probabilities, i.e. the probability-weighted mean of each query's expected AP
        given a relevant item in its top k (0 when no query can have one).
        """
        if ties not in TIES:
            raise ValueError(f"ties={ties!r}: expected one of {', '.join(TIES)}")
        if empty not in EMPTY:
            raise ValueError(f"empty={empty!r}: expected one of {', '.join(EMPTY)}")
        ap = self.expected if ties == "expected" else self.grouped
        if np.isnan(ap).any():
            raise ValueError("the expected mAP@k needs each ranking to go on past its tie group at position k "
                             "(or to hold every item): search with quant.index.search_past_ties")
        if ap.size == 0:
            return float("nan")
        if empty == "zero":
            return float(ap.mean()) * 100.0
        weight = (self.expected_found if ties == "expected" else self.grouped_found).sum()
        return float(ap.sum() / weight) * 100.0 if weight > 0 else 0.0


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _distances(dist: torch.Tensor | np.ndarray) -> np.ndarray:
    d = _numpy(dist)
    return d if d.dtype in (np.float32, np.float64) else d.astype(np.float64)


def _per_query(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def average_precision_unranked(dist: torch.Tensor | np.ndarray, rel: torch.Tensor | np.ndarray) -> QueryAP:
    """Per-query APs over the full ranking from distances ``[Q, n]`` in any order (e.g. the database's) and
    their relevance ``[Q, n]`` (bool); a query with no relevant item gets AP 0."""
    expected, grouped, counts = _precision_sums(_sorted_keys(_distances(dist), _numpy(rel).astype(bool, copy=False)))
    found = (counts > 0).astype(np.float64)
    return QueryAP(_per_query(expected, counts), _per_query(grouped, counts), found, found.copy())


def average_precision(sorted_dist: torch.Tensor | np.ndarray, sorted_rel: torch.Tensor | np.ndarray,
                      topk: int | None = None, complete: bool | np.ndarray = True,
                      tie_at_k: tuple[np.ndarray, np.ndarray] | None = None) -> QueryAP:
    """Per-query APs of rankings: distances ``[Q, n]`` ascending and their relevance ``[Q, n]`` (bool).

    ``topk``: AP@k, normalised by the relevant items in the top k: grouped over the ranking's first k items (the
    tie group at k cut there, its items as ranked); expected over the random orders of every tie group, the one
    that straddles position k included (:func:`_straddling_group`). That group is counted in the ranking, which
    must then go on past it or hold every item (``complete``, bool or per query ``[Q]``; elsewhere the expected
    AP@k is NaN), unless ``tie_at_k`` gives, per query, how many items and relevant items of the whole database
    are at the k-th distance. A query with no relevant item in its top k gets AP 0.
    """
    d = _distances(sorted_dist)
    rel = _numpy(sorted_rel).astype(bool, copy=False)
    q, n = d.shape
    whole = np.broadcast_to(np.asarray(complete, dtype=bool), (q,))
    if topk is None or (topk >= n and tie_at_k is None and whole.all()):
        return average_precision_unranked(d, rel)
    if topk > n:  # a ranking shorter than k that does not hold every item: its AP@k is unknown
        full = average_precision_unranked(d, rel)
        return QueryAP(*(np.where(whole, getattr(full, f), np.nan) for f in
                         ("expected", "grouped", "expected_found", "grouped_found")))
    k = int(topk)
    kth = d[:, k - 1:k]
    _, grouped, top = _precision_sums(_sorted_keys(d[:, :k], rel[:, :k]))
    pre_sums, _, rel_before = _precision_sums(_sorted_keys(d[:, :k], rel[:, :k] & (d[:, :k] < kth)))
    before = (d < kth).sum(1)
    if tie_at_k is None:
        size, rel_at = (d == kth).sum(1), (rel & (d == kth)).sum(1)
        known = np.broadcast_to(np.asarray(complete, dtype=bool), (q,)) | (before + size < n)
    else:
        size, rel_at = (np.asarray(c, dtype=np.int64) for c in tie_at_k)
        known = np.ones(q, dtype=bool)
    expected, found = np.full(q, np.nan), np.full(q, np.nan)
    h = _harmonic(int((before + size).max()))
    for i in np.flatnonzero(known):
        expected[i], found[i] = _straddling_group(pre_sums[i], int(before[i]), int(size[i]), int(rel_before[i]),
                                                  int(rel_at[i]), k - int(before[i]), h)
    return QueryAP(expected, _per_query(grouped, top), found, (top > 0).astype(np.float64))


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


def query_average_precisions(sorted_dist: torch.Tensor, ids: torch.Tensor, query_labels: torch.Tensor,
                              db_labels: torch.Tensor, topk: int | None = None,
                              tie_at_k: tuple[np.ndarray, np.ndarray] | None = None) -> QueryAP:
    """Per-query APs of rankings ``(sorted_dist, ids)`` ``[Q, n]`` over the full ranking, or at ``topk``
    (``tie_at_k`` as in :func:`average_precision`). A row that holds fewer than every database item counts as
    complete when it ends with id -1 (the search ran out of items)."""
    ql, dl = query_labels.cpu(), db_labels.cpu()
    if ql.ndim == 1 and ql.dtype == dl.dtype == torch.int64 and ql.numel() and dl.numel() and \
            -(1 << 15) <= min(ql.min(), dl.min()) and max(ql.max(), dl.max()) < (1 << 15):
        ql, dl = ql.to(torch.int16), dl.to(torch.int16)  # class ids: the same equalities, a cheaper gather
    ids = ids.cpu()
    complete = (ids[:, -1] < 0).numpy() | (ids.shape[1] >= len(dl)) if ids.numel() else True
    return average_precision(sorted_dist, relevance(ql, dl, ids), topk, complete, tie_at_k)


def mean_average_precision(sorted_dist: torch.Tensor, ids: torch.Tensor, query_labels: torch.Tensor,
                           db_labels: torch.Tensor, topk: int | None = None, ties: str = "expected",
                           empty: str = "zero") -> float:
    """mAP in percent (0-100) over the full ranking, or mAP@topk; ``ties`` and ``empty`` as in
    :meth:`QueryAP.mean`."""
    return query_average_precisions(sorted_dist, ids, query_labels, db_labels, topk).mean(ties, empty)


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


@dataclass(frozen=True)
class PairedDifference:
    """mAP(a) - mAP(b) in points over the same queries, a percentile bootstrap interval of it (queries resampled
    with replacement, the pairs kept), and the share of queries whose AP is lower under ``a`` than under ``b``
    (``lower``) and higher (``higher``; ties in neither)."""

    difference: float
    low: float
    high: float
    lower: float
    higher: float


def paired_difference(a: QueryAP, b: QueryAP, ties: str = "expected", empty: str = "zero", draws: int = 2000,
                      level: float = 0.95, seed: int = 0) -> PairedDifference:
    """How far ``a``'s mAP is below or above ``b``'s on the same queries, and how sure that is: a difference of a
    tenth of a point between two attacks on 1,000 queries can be noise, and an unpaired interval (each mAP's own)
    overstates that noise, since one query's AP under two attacks moves together. Each draw resamples the queries
    and computes both mAPs with ``QueryAP.mean`` (so ``empty="drop"``'s weights follow the draw)."""
    if a.expected.shape != b.expected.shape:
        raise ValueError(f"paired_difference: {a.expected.shape[0]} and {b.expected.shape[0]} queries; the two "
                         f"must score the same queries")
    if not 0 < level < 1 or draws < 1:
        raise ValueError(f"paired_difference: level={level} must lie in (0, 1) and draws={draws} be at least 1")
    n = a.expected.shape[0]
    rng = np.random.default_rng(seed)
    fields = QueryAP.__dataclass_fields__
    diffs = np.empty(draws)
    for i in range(draws):
        pick = rng.integers(0, n, n)
        diffs[i] = (QueryAP(*(getattr(a, f)[pick] for f in fields)).mean(ties, empty)
                    - QueryAP(*(getattr(b, f)[pick] for f in fields)).mean(ties, empty))
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    ap_a, ap_b = (a.expected, b.expected) if ties == "expected" else (a.grouped, b.grouped)
    return PairedDifference(a.mean(ties, empty) - b.mean(ties, empty), float(low), float(high),
                            float((ap_a < ap_b).mean()), float((ap_a > ap_b).mean()))
