"""tools/feature_ceiling.py: the rankings it compares a backbone's PQ mAP with, against brute force."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from .conftest import REPO

spec = importlib.util.spec_from_file_location("feature_ceiling", REPO / "tools" / "feature_ceiling.py")
feature_ceiling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(feature_ceiling)


def _expected_ap(dist: np.ndarray, rel: np.ndarray, draws: int, rng: np.random.Generator) -> float:
    """Mean over random tie orders of sklearn's AP of one ranking (ties broken by a random permutation)."""
    aps = []
    for _ in range(draws):
        order = np.lexsort((rng.permutation(len(dist)), dist))
        ranked = rel[order]
        aps.append(average_precision_score(ranked, -np.arange(len(ranked))) if ranked.any() else 0.0)
    return float(np.mean(aps))


def test_ceilings_match_brute_force(trained_demo, tmp_path: Path) -> None:  # noqa: ANN001
    from pqattack.cache import ArtifactCache
    from pqattack.runtime import Runtime

    _, data, target = trained_demo
    rt = Runtime(torch.device("cpu"), "fp32", ArtifactCache(tmp_path, enabled=False), progress=False)
    out = feature_ceiling.ceilings(target, data, rt)
    zq, zd = target.features["query"].numpy(), target.features["database"].numpy()
    ql, dl = data.query.labels.numpy(), data.database.labels.numpy()
    rel = ql[:, None] == dl[None, :]
    exact = np.mean([average_precision_score(rel[i], -np.linalg.norm(zd - zq[i], axis=1)) if rel[i].any() else 0.0
                     for i in range(len(zq))]) * 100
    assert abs(out["float"] - exact) < 0.02
    cq, cd = zq - zd.mean(0), zd - zd.mean(0)
    cq, cd = cq / np.linalg.norm(cq, axis=1, keepdims=True), cd / np.linalg.norm(cd, axis=1, keepdims=True)
    centred = np.mean([average_precision_score(rel[i], -np.linalg.norm(cd - cq[i], axis=1)) if rel[i].any() else 0.0
                       for i in range(len(cq))]) * 100
    assert abs(out["float_centred"] - centred) < 0.02 and abs(centred - exact) > 0.05  # the centring changes it
    with torch.no_grad():  # a cross-entropy backbone: its forward is the head of the raw embedding
        pq = target.backbone(data.query.images.float() / 255).argmax(-1).numpy()
        pd = target.backbone(data.database.images.float() / 255).argmax(-1).numpy()
    rng = np.random.default_rng(0)
    sampled = np.mean([_expected_ap((pq[i] != pd).astype(float), rel[i], 40, rng) for i in range(len(pq))]) * 100
    assert abs(out["predicted_class"] - sampled) < 1.5  # 40 random tie orders per query against the exact expectation
    assert 0 < out["posterior"] <= 100 and out["test_accuracy"] == target.test_accuracy
    assert {"pq_sdc", "pq_adc"} <= set(out)
