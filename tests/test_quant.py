"""The FAISS-backed PQ index against brute force in numpy: codes, ADC and SDC distances and rankings."""

import numpy as np
import pytest
import torch

from pqattack.quant import PQIndex, train_codebooks


def brute(codebooks: np.ndarray, db: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, k, dsub = codebooks.shape
    def codes(x):  # argmin_k ||x_m - c_mk||^2  (eq. 1)
        sub = x.reshape(len(x), m, 1, dsub)
        return ((sub - codebooks[None]) ** 2).sum(-1).argmin(-1)
    cq, cd = codes(q), codes(db)
    recon = lambda c: codebooks[np.arange(m)[None], c].reshape(len(c), -1)  # noqa: E731
    adc = ((q[:, None, :] - recon(cd)[None]) ** 2).sum(-1)        # d(y, q(x))^2
    sdc = ((recon(cq)[:, None, :] - recon(cd)[None]) ** 2).sum(-1)  # d(q(y), q(x))^2
    return cd, adc, sdc


@pytest.mark.parametrize("M,K", [(4, 16), (4, 64), (2, 256), (4, 512)])
def test_index_matches_brute_force(M: int, K: int) -> None:  # noqa: N803
    rng = np.random.default_rng(M * K)
    d = 32
    db = rng.standard_normal((1200, d)).astype(np.float32)
    q = rng.standard_normal((30, d)).astype(np.float32)
    cb = train_codebooks(torch.from_numpy(db), M, K, niter=5, seed=1)
    assert cb.shape == (M, K, d // M)
    index = PQIndex(cb, torch.from_numpy(db))
    cd, adc, sdc = brute(cb.numpy(), db, q)
    # FAISS codes equal the argmin assignment
    assert np.array_equal(index.db_codes.numpy(), cd)
    for system, ref in (("adc", adc), ("sdc", sdc)):
        dist, ids = index.search(torch.from_numpy(q), system)
        assert ids.shape == (30, 1200)
        # every database item appears once, distances ascending
        assert all(len(set(row.tolist())) == 1200 for row in ids)
        assert (dist[:, 1:] >= dist[:, :-1] - 1e-5).all()
        # distances equal the brute-force distances of the returned items
        np.testing.assert_allclose(dist.numpy(), np.take_along_axis(ref, ids.numpy(), 1), rtol=1e-4, atol=1e-4)
        # top-k is a prefix of the full ranking's distances
        dk, _ = index.search(torch.from_numpy(q), system, k=10)
        np.testing.assert_allclose(dk.numpy(), dist[:, :10].numpy(), rtol=1e-5, atol=1e-5)


def test_sdc_uses_faiss_for_8bit_codes_and_table_otherwise() -> None:
    """A short SDC top k goes through FAISS's heap search with 8-bit sub-codes and through the gathered tables
    otherwise; both give the distances of the brute-force SDC table, for the items they return."""
    rng = np.random.default_rng(0)
    db = rng.standard_normal((600, 16)).astype(np.float32)
    k = 16
    for K in (16, 256):  # noqa: N806
        codebooks = train_codebooks(torch.from_numpy(db), 4, K, niter=3)
        index = PQIndex(codebooks, torch.from_numpy(db))
        assert index._heap_search(k, "sdc") == (K == 256)
        dist, ids = index.search(torch.from_numpy(db[:5]), "sdc", k=k)
        table = brute(codebooks.numpy(), db, db[:5])[2]  # numpy, from the reconstructed codes
        np.testing.assert_allclose(dist.numpy(), np.sort(table, 1)[:, :k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dist.numpy(), np.take_along_axis(table, ids.numpy(), 1), rtol=1e-4, atol=1e-5)


def test_codebook_errors_name_the_key() -> None:
    x = torch.randn(100, 30)
    with pytest.raises(ValueError, match="quantizer.M"):
        train_codebooks(x, 4, 16)
    with pytest.raises(ValueError, match="quantizer.K"):
        train_codebooks(torch.randn(100, 32), 4, 128)
    with pytest.raises(ValueError, match="power of two"):
        train_codebooks(torch.randn(100, 32), 4, 24)
