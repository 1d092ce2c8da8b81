"""mAP against sklearn's average precision, on random rankings with many ties."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pqattack.metrics import average_precision, mean_average_precision


@pytest.mark.parametrize("levels", [3, 20, 10_000])
def test_average_precision_matches_sklearn_with_ties(levels: int) -> None:
    rng = np.random.default_rng(levels)
    q, n = 40, 300
    dist = rng.integers(0, levels, (q, n)).astype(np.float32)  # few levels = many ties
    rel = rng.random((q, n)) < 0.25
    rel[:, 0] = True  # every query has a relevant item
    expected = np.array([average_precision_score(rel[i], -dist[i]) for i in range(q)])
    order = np.argsort(dist, 1, kind="stable")
    ours = average_precision(torch.from_numpy(np.take_along_axis(dist, order, 1)),
                             torch.from_numpy(np.take_along_axis(rel, order, 1))).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_ties_make_ap_independent_of_database_order() -> None:
    dist = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    a = average_precision(dist, torch.tensor([[True, False, True, False]]))
    b = average_precision(dist, torch.tensor([[False, True, False, True]]))
    assert torch.allclose(a, b) and abs(float(a) - 0.5) < 1e-12


def test_map_by_hand_and_topk() -> None:
    # ranked relevance 1 0 1 0 (no ties): AP = (1/1 + 2/3) / 2
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    ids = torch.tensor([[0, 1, 2, 3]])
    db_labels = torch.tensor([7, 1, 7, 2])
    got = mean_average_precision(dist, ids, torch.tensor([7]), db_labels)
    assert got == pytest.approx((1 + 2 / 3) / 2 * 100)
    # mAP@1 counts only the first item
    assert mean_average_precision(dist, ids, torch.tensor([7]), db_labels, topk=1) == pytest.approx(100.0)
    # no relevant item at all -> AP 0
    assert mean_average_precision(dist, ids, torch.tensor([9]), db_labels) == 0.0
