"""IVF-PQ against the exact PQ index (same codebooks): codes, exhaustive search, recall on a million vectors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from faiss.contrib.evaluation import knn_intersection_measure

from pqattack.quant import IVFPQIndex, PQIndex, search_past_ties, train_codebooks


@pytest.fixture(scope="module")
def small() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    db, q = torch.randn(5000, 32, generator=g), torch.randn(40, 32, generator=g)
    return train_codebooks(db, 4, 16, niter=5, seed=1), db, q


def test_exhaustive_ivf_equals_pq_adc(small) -> None:
    cb, db, q = small
    flat = PQIndex(cb, db)
    ivf = IVFPQIndex(cb, db, nlist=32, nprobe=32, train_size=2000)
    assert ivf.ntotal == flat.ntotal == 5000
    # the given codebooks are kept: stored and fresh codes equal PQIndex's
    assert torch.equal(ivf.stored_codes(), flat.db_codes)
    assert torch.equal(ivf.encode(q), flat.encode(q))
    # full ranking (k = N): the same distances, sorted, and every item once
    d_all, i_all = ivf.search(q, "adc", k=5000)
    d_ref, i_ref = flat.search(q, "adc")
    np.testing.assert_allclose(d_all.numpy(), d_ref.numpy(), rtol=1e-5, atol=1e-5)
    assert all(len(set(row.tolist())) == 5000 for row in i_all)
    # each returned distance is that item's exact ADC distance
    exact = torch.full((40, 5000), float("nan")).scatter_(1, i_ref, d_ref)
    np.testing.assert_allclose(d_all.numpy(), exact.gather(1, i_all).numpy(), rtol=1e-5, atol=1e-5)
    # top-k: same distances; ids equal up to ties at the k-th distance
    k = 50
    dk, ik = ivf.search(q, "adc", k=k)
    np.testing.assert_allclose(dk.numpy(), d_ref[:, :k].numpy(), rtol=1e-5, atol=1e-5)
    for row in range(len(q)):
        kth = d_ref[row, k - 1].item()
        strict = lambda d, i: set(i[d < kth - 1e-5].tolist())  # noqa: E731
        assert strict(dk[row], ik[row]) == strict(d_ref[row, :k], i_ref[row, :k])
    assert knn_intersection_measure(ik.numpy(), i_ref[:, :k].numpy()) >= 0.99  # 1.0 unless ids tie at the boundary


def test_ivf_ranking_past_ties_keeps_its_top_k(small) -> None:
    cb, db, q = small
    ivf = IVFPQIndex(cb, db, nlist=32, nprobe=2, train_size=2000)
    k = 50
    dk, ik = ivf.search(q, "adc", k=k)
    dp, ip = search_past_ties(lambda n: ivf.search(q, "adc", k=n), k, ivf.ntotal)
    assert torch.equal(dp[:, :k], dk) and torch.equal(ip[:, :k], ik)
    assert dp.shape[1] > k and ((dp[:, -1] > dp[:, k - 1]) | (ip[:, -1] < 0)).all()


def test_missing_results_are_minus_one_and_inf(small) -> None:
    cb, db, q = small
    ivf = IVFPQIndex(cb, db, nlist=64, nprobe=1, train_size=None)
    dist, ids = ivf.search(q, "adc", k=1000)  # one cell holds ~80 items: most slots are empty
    assert (ids == -1).any()
    assert torch.equal(ids == -1, torch.isinf(dist))
    assert (dist[ids == -1] > 0).all()
    found = ids != -1
    assert (found[:, 1:] <= found[:, :-1]).all()  # missing slots come last


def test_million_vectors_recall_grows_with_nprobe() -> None:
    """1M clustered vectors (1000 Gaussian blobs, d=64), M=8, K=256, nlist=1024: recall@100 vs exact PQ ADC."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(1000, 64, generator=g)
    db = centers[torch.randint(0, 1000, (1_000_000,), generator=g)] + torch.randn(1_000_000, 64, generator=g)
    q = centers[torch.randint(0, 1000, (200,), generator=g)] + torch.randn(200, 64, generator=g)
    cb = train_codebooks(db[:50_000], 8, 256, niter=10, seed=0)
    _, exact = PQIndex(cb, db).search(q, "adc", k=100)
    ivf = IVFPQIndex(cb, db, nlist=1024, train_size=65536, seed=0)
    assert ivf.ntotal == 1_000_000
    recall = {}
    for nprobe in (1, 16, 64):
        ivf.nprobe = nprobe
        dist, ids = ivf.search(q, "adc", k=100)
        assert torch.equal(ids == -1, torch.isinf(dist))
        recall[nprobe] = knn_intersection_measure(ids.numpy(), exact.numpy())
    # measured (seed 0): 0.890, 0.960, 0.984
    assert recall[1] <= 0.95, recall  # IVF prunes: one cell does not find everything
    assert recall[1] + 0.02 <= recall[16], recall
    assert recall[16] + 0.01 <= recall[64], recall
    assert recall[64] >= 0.95, recall


def test_errors_name_the_config_keys(small) -> None:
    cb, db, q = small
    ivf = IVFPQIndex(cb, db, nlist=16, nprobe=4, train_size=1000)
    with pytest.raises(ValueError, match="system=adc or index=flat"):
        ivf.search(q, "sdc", k=10)
    with pytest.raises(ValueError, match="give k"):
        ivf.search(q, "adc")
    with pytest.raises(ValueError, match=r"index\.nprobe=17.*index\.nlist=16"):
        ivf.nprobe = 17
    with pytest.raises(ValueError, match=r"index\.nprobe"):
        ivf.nprobe = 0
    assert ivf.nprobe == 4
    with pytest.raises(ValueError, match=r"index\.nprobe=32.*index\.nlist=16"):
        IVFPQIndex(cb, nlist=16, nprobe=32)
    with pytest.raises(ValueError, match=r"index\.nlist"):
        IVFPQIndex(cb, nlist=0, nprobe=1)
    with pytest.raises(ValueError, match=r"index\.nlist=2000 .* 1000 vectors"):
        IVFPQIndex(cb, db, nlist=2000, nprobe=1, train_size=1000)


def test_ivfpq_job_reports_map_at_k_and_recall(tmp_path: Path, shared_cache: Path) -> None:
    """index=ivfpq jobs (in-process): exhaustive probing equals the flat index (recall 1, same mAP@k); probing 1 of
    16 cells reports a recall below 1; the wrong system is a start-up error."""
    from pqattack.errors import ConfigError

    from .conftest import TINY, run_job

    common = [*TINY, "attack=basic", "system=adc", "eval.topk=50"]
    runs = {}
    for name, extra in (("flat", []), ("all", ["index=ivfpq", "index.nlist=16", "index.nprobe=16"]),
                        ("one", ["index=ivfpq", "index.nlist=16", "index.nprobe=1"]),
                        ("grouped", ["eval.ties=grouped", "eval.empty=drop"])):
        runs[name] = {r["attack"]: r for r in run_job([*common, *extra], tmp_path / name, shared_cache)["rows"]}
    for attack in ("clean", "basic"):
        assert "recall" not in runs["flat"][attack]
        assert runs["all"][attack]["recall"] == 1.0
        # same distances (up to float rounding): the expected mAP@k does not depend on how ties at k are broken
        assert runs["all"][attack]["map"] == pytest.approx(runs["flat"][attack]["map"], abs=0.01)
        assert runs["all"][attack]["map_grouped"] == pytest.approx(runs["flat"][attack]["map_grouped"], abs=0.2)
        # both conventions in every row; eval.ties picks the headline, eval.empty is recorded with eval.topk
        for name, (ties, empty) in (("flat", ("expected", "zero")), ("grouped", ("grouped", "drop"))):
            row = runs[name][attack]
            assert (row["ties"], row["empty"], row["topk"]) == (ties, empty, 50)
        assert runs["grouped"][attack]["map"] == runs["grouped"][attack]["map_grouped"]
        assert runs["grouped"][attack]["map_grouped"] >= runs["flat"][attack]["map_grouped"]  # drop >= zero
        assert 0 < runs["one"][attack]["recall"] < 1
        assert (runs["one"][attack]["index"], runs["one"][attack]["nprobe"]) == ("ivfpq", 1)
    with pytest.raises(ConfigError, match="index=ivfpq searches with ADC only; set system=adc"):
        run_job([*TINY, "index=ivfpq", "eval.topk=50"], tmp_path / "bad", shared_cache)
    assert not (tmp_path / "bad").exists()


def test_recall_with_ties_ignores_how_ties_are_broken() -> None:
    from pqattack.quant import recall_at_k_with_ties

    exact = torch.tensor([[0.1, 0.2, 0.2]])        # items a, b tied with c at the 3rd place
    tied_other = torch.tensor([[0.1, 0.2, 0.2]])   # the approx search returned the tied d instead of c
    assert recall_at_k_with_ties(tied_other, exact) == 1.0
    assert recall_at_k_with_ties(torch.tensor([[0.1, 0.2, 0.3]]), exact) == pytest.approx(2 / 3)
    assert recall_at_k_with_ties(torch.tensor([[0.1, float("inf"), float("inf")]]), exact) == pytest.approx(1 / 3)
