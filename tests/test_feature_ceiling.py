"""tools/feature_ceiling.py: the rankings it compares a backbone's PQ mAP with, against brute force; and
tools/feature_ceiling.py and tools/soft_assignment_stats.py on a real job's folder: what they refuse, and what they
do when the job's cache lacks an entry."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from .conftest import REPO, TINY, refused, run_job, write_records


def tool(name: str):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


feature_ceiling, soft_assignment_stats = tool("feature_ceiling"), tool("soft_assignment_stats")
CLEAN_ONLY = [o for o in TINY if not o.startswith("attack.")] + ["attack=none"]


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
    sampled = np.mean([_expected_ap((pq[i] != pd).astype(float), rel[i], 100, rng) for i in range(len(pq))]) * 100
    # 100 random tie orders per query against the exact expectation (the grouped convention is points away)
    grouped = np.mean([average_precision_score(rel[i], -(pq[i] != pd).astype(float)) if rel[i].any() else 0.0
                       for i in range(len(pq))]) * 100
    assert abs(grouped - sampled) > 1  # what the tolerance below tells apart (2.4 points here)
    assert abs(out["predicted_class"] - sampled) < 0.3
    assert 0 < out["posterior"] <= 100 and out["test_accuracy"] == target.test_accuracy
    assert {"pq_sdc", "pq_adc"} <= set(out)


@pytest.mark.parametrize("name", ["feature_ceiling", "soft_assignment_stats"])
def test_a_folder_that_is_no_job_is_one_line_and_exit_code_2(name: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A missing folder, a sweep's folder (its jobs named), a folder without records: before any cache is opened."""
    main = {"feature_ceiling": feature_ceiling.main, "soft_assignment_stats": soft_assignment_stats.main}[name]
    write_records(tmp_path / "sweep", {"0_a": [*CLEAN_ONLY, f"cache.dir={tmp_path / 'no-cache'}"],
                                       "1_b": [*CLEAN_ONLY, "bits=24", f"cache.dir={tmp_path / 'no-cache'}"]})
    (tmp_path / "empty").mkdir()
    for folder, message in [("missing", "missing: no such folder"),
                            ("sweep", "a sweep's folder; give one of its jobs' folders: 0_a, 1_b"),
                            ("empty", "results.json: no such file")]:
        code, err = refused(main, [str(tmp_path / folder)], capsys)
        assert code == 2 and err.startswith("usage error: ") and message in err, err
    assert not (tmp_path / "no-cache").exists()


def test_feature_ceiling_stops_on_what_the_cache_lacks_and_builds_it_only_when_told(
        tmp_path: Path, shared_cache: Path, capsys: pytest.CaptureFixture) -> None:
    """A job whose checkpoint its cache lacks (it ran on another machine) stops the tool with one line naming the job
    and the entry, and nothing is trained or added to the cache; --build trains it; a job whose dataset is not here
    is the one-line data error of a job, exit 2."""
    cache = tmp_path / "cache"
    shutil.copytree(shared_cache, cache)
    run_job(CLEAN_ONLY, tmp_path / "job", cache)
    shutil.rmtree(cache / "checkpoint")

    def entries() -> set[Path]:
        return {p for p in cache.glob("*/*") if p.is_dir()}

    before = entries()
    code, err = refused(feature_ceiling.main, [str(tmp_path / "job")], capsys)
    assert code == 3 and re.search(r"job: checkpoint \w+ is not in the cache .*--build", err), err
    assert entries() == before
    feature_ceiling.main([str(tmp_path / "job"), "--build"])
    out = capsys.readouterr()
    assert json.loads(out.out)["model"] == "smallcnn" and "note: built checkpoint/" in out.err
    [job] = write_records(tmp_path / "cifar", {"0": ["dataset=cifar10", f"dataset.root={tmp_path / 'no-data'}",
                                                     "dataset.download=false", "model=smallcnn", "device=cpu",
                                                     f"cache.dir={cache}"]})
    code, err = refused(feature_ceiling.main, [str(job)], capsys)
    assert code == 2 and err.startswith("data error: ") and "no-data" in err, err


def test_soft_assignment_stats_on_a_job_and_on_what_its_cache_lacks(tmp_path: Path, shared_cache: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(shared_cache, cache)
    run_job(CLEAN_ONLY, tmp_path / "job", cache)
    soft_assignment_stats.main([str(tmp_path / "job"), "--temperature", "0.5"])
    assert "queries 60, M 4, K 16" in capsys.readouterr().out
    code, err = refused(soft_assignment_stats.main, [str(tmp_path / "job"), "--temperature", "0"], capsys)
    assert code == 2 and "--temperature 0.0: must be > 0" in err, err
    shutil.rmtree(cache / "codebooks")
    code, err = refused(soft_assignment_stats.main, [str(tmp_path / "job")], capsys)
    assert code == 3 and re.search(r"job: codebooks \w+ is not in the cache", err), err
