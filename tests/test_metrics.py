"""mAP with tied distances: grouped AP against sklearn, expected AP against every tie order (exact enumeration) and
against the mean over random tie orders (sampled), mAP@k with the tie group that straddles k, both ``empty`` modes."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pqattack.metrics import (QueryAP, average_precision, average_precision_unranked, mean_average_precision,
                              query_average_precisions)


# --------------------------------------------------------------------------------------------- references
def ranked_ap(rel: np.ndarray, k: int | None = None) -> tuple[float, bool]:
    """AP (AP@k) of one ranked relevance vector, as the hashing codebases compute it after an argsort: precision
    at each relevant position of the top k, over the relevant items in the top k; and whether there is one."""
    top = rel[:k]
    if not top.any():
        return 0.0, False
    hits = np.cumsum(top)
    return float((hits / np.arange(1, len(top) + 1))[top].sum() / top.sum()), True


def random_tie_orders(dist: np.ndarray, rel: np.ndarray, draws: int, k: int | None, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """AP (``[draws, Q]``) and found (``[draws, Q]``) of ``draws`` rankings that sort by distance after a random
    shuffle, i.e. each tie group in a uniformly random order."""
    rng = np.random.default_rng(seed)
    ap, found = np.zeros((draws, len(dist))), np.zeros((draws, len(dist)))
    for t in range(draws):
        order = np.lexsort((rng.random(dist.shape), dist), axis=1)
        ranked = np.take_along_axis(rel, order, 1)
        for i in range(len(dist)):
            ap[t, i], found[t, i] = ranked_ap(ranked[i], k)
    return ap, found


def within_sampling_error(expected: np.ndarray, samples: np.ndarray, sigmas: float = 5.0) -> None:
    """Every column's exact value within ``sigmas`` standard errors of its sampled mean (std of the samples over
    sqrt(draws)); a column that never varies must match to float precision."""
    se = samples.std(0, ddof=1) / np.sqrt(len(samples))
    np.testing.assert_array_less(np.abs(samples.mean(0) - expected), sigmas * se + 1e-9)


def tied_data(q: int, n: int, levels: int, p_rel: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, levels, (q, n)).astype(np.float32), rng.random((q, n)) < p_rel


def sort_ranking(dist: np.ndarray, rel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    order = np.argsort(dist, 1, kind="stable")
    return torch.from_numpy(np.take_along_axis(dist, order, 1)), torch.from_numpy(np.take_along_axis(rel, order, 1))


# --------------------------------------------------------------------------------------------- grouped
@pytest.mark.parametrize("levels", [3, 20, 10_000])
def test_grouped_ap_matches_sklearn_with_ties(levels: int) -> None:
    dist, rel = tied_data(40, 300, levels, 0.25, levels)
    rel[:, 0] = True  # every query has a relevant item
    expected = np.array([average_precision_score(rel[i], -dist[i]) for i in range(len(dist))])
    ranked = average_precision(*sort_ranking(dist, rel))
    np.testing.assert_allclose(ranked.grouped, expected, atol=1e-12)
    # the same without a ranking, and with the database in another order
    perm = np.random.default_rng(0).permutation(dist.shape[1])
    np.testing.assert_array_equal(average_precision_unranked(dist[:, perm], rel[:, perm]).grouped, ranked.grouped)


@pytest.mark.parametrize("shift,dtype", [(0.0, np.float64), (-1.0, np.float32), (-1.0, np.float64)])
def test_distances_of_any_sign_and_width_tie_alike(shift: float, dtype: type) -> None:
    """float32 distances with a sign bit (an ADC distance just under 0), and float64 ones, go through the rank keys
    instead of the float bits: the same APs as the non-negative float32 distances they order like."""
    dist, rel = tied_data(20, 80, 6, 0.3, 1)
    ref = average_precision_unranked(dist, rel)
    got = average_precision_unranked((dist + shift).astype(dtype), rel)
    np.testing.assert_allclose(got.expected, ref.expected, atol=1e-14)
    np.testing.assert_array_equal(got.grouped, ref.grouped)
    # -0.0 and 0.0 are one distance: tied
    signed_zero = average_precision_unranked(np.array([[-0.0, 0.0, 1.0]], dtype=np.float32), np.array([[1, 0, 0]], bool))
    assert signed_zero.grouped[0] == 0.5 and signed_zero.expected[0] == pytest.approx(0.75)


def test_grouped_map_by_hand() -> None:
    """The grouped convention (map_grouped) on fixed rankings, worked out by hand."""
    dist = torch.tensor([[0.0, 0.0, 1.0, 1.0, 2.0]])
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    labels = torch.tensor([7, 1, 1, 7, 7])
    # groups {0, 1} {2, 3} {4}: relevant 0 -> 1/2 at the first group's end, 3 -> 2/4, 4 -> 3/5
    full = (1 / 2 + 2 / 4 + 3 / 5) / 3 * 100
    assert mean_average_precision(dist, ids, torch.tensor([7]), labels, ties="grouped") == pytest.approx(full)
    # @3: the group {2, 3} is cut after item 2; relevant in the top 3: item 0 at precision 1/2
    assert mean_average_precision(dist, ids, torch.tensor([7]), labels, topk=3, ties="grouped") == pytest.approx(50)
    # no ties: both conventions are the ranked AP
    no_ties = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    for ties in ("expected", "grouped"):
        assert mean_average_precision(no_ties, ids, torch.tensor([7]), labels, ties=ties) == pytest.approx(
            (1 + 2 / 4 + 3 / 5) / 3 * 100)
        assert mean_average_precision(no_ties, ids, torch.tensor([7]), labels, topk=1, ties=ties) == 100.0
        assert mean_average_precision(no_ties, ids, torch.tensor([9]), labels, ties=ties) == 0.0


# --------------------------------------------------------------------------------------------- expected
def test_expected_ap_by_hand() -> None:
    # [0, 0 | 1, 1], one relevant item per group: it is first in its group half the time.
    # group 1: (1 + 1/2) / 2; group 2: (2/3 + 2/4) / 2; AP = mean of the two = 2/3, whatever the database order
    dist = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    for rel in ([True, False, True, False], [False, True, False, True]):
        aps = average_precision(dist, torch.tensor([rel]))
        assert aps.expected[0] == pytest.approx(2 / 3) and aps.grouped[0] == pytest.approx(1 / 2)


def every_tie_order(row: np.ndarray, rel: np.ndarray):
    """Every ranking of ``row`` (ascending) that orders each tie group one of its n! ways."""
    groups = [np.flatnonzero(row == v) for v in np.unique(row)]
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield rel[np.concatenate(perms)]


def test_expected_ap_and_ap_at_k_equal_the_mean_over_every_tie_order() -> None:
    """Exact: groups of 3, 4 and 2 items (288 orders), every cut k, both ``empty`` modes."""
    row = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2], dtype=np.float32)
    for rel in (np.array([0, 1, 1, 1, 0, 1, 0, 1, 0], bool), np.array([0, 0, 0, 0, 1, 1, 0, 0, 1], bool)):
        results = [[ranked_ap(r, k) for r in every_tie_order(row, rel)] for k in range(1, 10)]
        for k, res in zip(range(1, 10), results):
            ap, found = np.array([a for a, _ in res]), np.array([f for _, f in res], float)
            aps = average_precision(row[None], rel[None], topk=k)
            assert aps.expected[0] == pytest.approx(ap.mean(), abs=1e-12), k
            assert aps.expected_found[0] == pytest.approx(found.mean(), abs=1e-12), k
            if found.any():  # drop: the mean AP over the orders that put a relevant item in the top k
                assert aps.mean("expected", "drop") == pytest.approx(ap[found > 0].mean() * 100, abs=1e-10), k


@pytest.mark.parametrize("levels", [3, 8])
def test_expected_ap_is_the_mean_over_random_tie_orders(levels: int) -> None:
    """Large tie groups (few distinct distances), single-label-like relevance, full ranking."""
    dist, rel = tied_data(30, 60, levels, 0.3, levels)
    aps = average_precision(*sort_ranking(dist, rel))
    ap, _ = random_tie_orders(dist, rel, draws=3000, k=None, seed=levels)
    within_sampling_error(aps.expected, ap)
    within_sampling_error(np.array([aps.mean() / 100]), ap.mean(1, keepdims=True))
    assert np.abs(aps.expected - aps.grouped).max() > 0.01  # the conventions differ on these ties
    # the database order does not matter
    perm = np.random.default_rng(1).permutation(dist.shape[1])
    np.testing.assert_allclose(average_precision_unranked(dist[:, perm], rel[:, perm]).expected, aps.expected,
                               atol=1e-14)


def multilabel_ranking(seed: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    q, n, c = 25, 70, 6
    ql, dl = torch.from_numpy(rng.random((q, c)) < 0.2), torch.from_numpy(rng.random((n, c)) < 0.2)
    dist = rng.integers(0, 4, (q, n)).astype(np.float32)
    order = np.argsort(dist, 1, kind="stable")
    return dist, torch.from_numpy(np.take_along_axis(dist, order, 1)), torch.from_numpy(order), ql, dl


@pytest.mark.parametrize("k", [None, 30])
def test_multilabel_expected_map_is_the_mean_over_random_tie_orders(k: int | None) -> None:
    dist, sorted_dist, ids, ql, dl = multilabel_ranking(4)
    rel = (ql.long() @ dl.long().T > 0).numpy()
    aps = query_average_precisions(sorted_dist, ids, ql, dl, topk=k)
    ap, found = random_tie_orders(dist, rel, draws=3000, k=k, seed=5)
    within_sampling_error(aps.expected, ap)
    within_sampling_error(aps.expected_found, found)
    assert mean_average_precision(sorted_dist, ids, ql, dl, topk=k) == pytest.approx(aps.expected.mean() * 100)


def straddling_data() -> tuple[np.ndarray, np.ndarray, int]:
    """Four distances, so the tie group at k = 25 straddles k for nearly every query; some have relevant items
    only from that group on, so whether their top k holds one depends on the tie order."""
    dist, rel = tied_data(40, 60, 4, 0.3, 7)
    sparse = np.random.default_rng(8).random((10, 60)) < 0.1
    rel[:10] = sparse & (dist[:10] >= np.sort(dist[:10], 1)[:, 24:25])
    return dist, rel, 25


@pytest.mark.parametrize("empty", ["zero", "drop"])
def test_expected_map_at_k_with_a_straddling_group(empty: str) -> None:
    dist, rel, k = straddling_data()
    sorted_dist, sorted_rel = sort_ranking(dist, rel)
    assert (sorted_dist[:, k - 1] == sorted_dist[:, k]).float().mean() > 0.9  # the group at k straddles k
    aps = average_precision(sorted_dist, sorted_rel, topk=k)
    assert ((aps.expected_found > 0.05) & (aps.expected_found < 0.95)).sum() >= 3
    ap, found = random_tie_orders(dist, rel, draws=4000, k=k, seed=8)
    within_sampling_error(aps.expected, ap)
    within_sampling_error(aps.expected_found, found)
    if empty == "zero":
        within_sampling_error(np.array([aps.mean(empty=empty) / 100]), ap.mean(1, keepdims=True))
    else:  # drop: the expected sum of APs over the expected number of queries with a relevant item in the top k
        assert aps.mean(empty=empty) == pytest.approx(aps.expected.sum() / aps.expected_found.sum() * 100)
        within_sampling_error(np.array([aps.expected.sum()]), ap.sum(1, keepdims=True))
        within_sampling_error(np.array([aps.expected_found.sum()]), found.sum(1, keepdims=True))
        # one query: its expected AP given a relevant item in its top k
        i = int(np.flatnonzero((aps.expected_found > 0.05) & (aps.expected_found < 0.95))[0])
        one = average_precision(sorted_dist[i:i + 1], sorted_rel[i:i + 1], topk=k)
        hit = found[:, i] > 0
        within_sampling_error(np.array([one.mean(empty="drop") / 100]), ap[hit, i:i + 1])
    # grouped: the ranking's own top k (its tie group cut at k), the queries without a relevant item there dropped
    top = sorted_rel[:, :k].numpy()
    grouped = [ranked_ap_grouped(sorted_dist[i, :k].numpy(), top[i]) for i in range(len(top))]
    kept = [g for g, t in zip(grouped, top) if t.any()] if empty == "drop" else grouped
    assert aps.mean("grouped", empty) == pytest.approx(np.mean(kept) * 100, abs=1e-10)


def ranked_ap_grouped(dist: np.ndarray, rel: np.ndarray) -> float:
    return average_precision_score(rel, -dist) if rel.any() else 0.0


def test_ranking_that_stops_inside_the_group_at_k() -> None:
    """A top-k list cut inside its tie group at k: the grouped mAP@k is defined, the expected one needs more."""
    dist = torch.tensor([[0.0, 1.0, 1.0]])
    rel = torch.tensor([[True, False, True]])
    cut = average_precision(dist, rel, topk=2, complete=False)
    assert np.isnan(cut.expected[0]) and cut.grouped[0] == 1.0
    with pytest.raises(ValueError, match="past its tie group at position k"):
        cut.mean()
    assert cut.mean("grouped") == 100.0
    # the same list, known to hold every item: half the orders rank item 2 second, AP@2 = (1 + 2/2) / 2 = 1;
    # the others rank item 1 second, AP@2 = 1 / 1 = 1
    whole = average_precision(dist, rel, topk=2)
    assert whole.expected[0] == pytest.approx(1.0) and whole.expected_found[0] == 1.0


def test_a_ranking_cut_at_k_is_not_taken_for_the_whole_database() -> None:
    """A top-k ranking of exactly k (or fewer) items from a larger database: its expected AP@k needs the items tied
    at the k-th distance beyond the cut, so it is unknown (NaN: ``mean`` says to search past the ties) unless
    ``tie_at_k`` counts them; it was once scored as if the k items were the whole database. Database labels
    [0, 1], both at distance 0 from a class-0 query, k = 1: AP@1 is 1 or 0 with equal chance, expected 0.5."""
    cut = query_average_precisions(torch.tensor([[0.0]]), torch.tensor([[0]]), torch.tensor([0]),
                                   torch.tensor([0, 1]), topk=1)
    assert np.isnan(cut.expected[0])
    with pytest.raises(ValueError, match="past its tie group at position k"):
        cut.mean()
    counted = average_precision(np.array([[0.0]]), np.array([[True]]), topk=1, complete=False,
                                tie_at_k=(np.array([2]), np.array([1])))
    assert counted.expected[0] == pytest.approx(0.5) and counted.expected_found[0] == pytest.approx(0.5)
    full = query_average_precisions(torch.tensor([[0.0, 0.0]]), torch.tensor([[0, 1]]), torch.tensor([0]),
                                    torch.tensor([0, 1]), topk=1)
    assert full.expected[0] == pytest.approx(0.5)
    short = average_precision(np.array([[0.0, 1.0]]), np.array([[True, False]]), topk=5, complete=False)
    assert np.isnan(short.expected[0]) and np.isnan(short.grouped[0])  # fewer than k items, more elsewhere
    held = average_precision(np.array([[0.0, 1.0]]), np.array([[False, True]]), topk=5)  # every item: AP@5 = AP
    assert held.expected[0] == pytest.approx(0.5) and held.grouped[0] == pytest.approx(0.5)


def test_bad_inputs_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="NaN"):
        average_precision_unranked(np.array([[0.0, np.nan]], np.float32), np.array([[True, False]]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision_unranked(np.array([[0.0, np.nan]]), np.array([[True, False]]))
    aps = QueryAP(*(np.zeros(1) for _ in range(4)))
    with pytest.raises(ValueError, match="ties='random': expected one of expected, grouped"):
        aps.mean("random")
    with pytest.raises(ValueError, match="empty='skip': expected one of zero, drop"):
        aps.mean(empty="skip")
    assert aps.mean(empty="drop") == 0.0  # no query has a relevant item in its top k
