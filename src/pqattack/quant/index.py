"""FAISS-backed PQ index: encoding, ADC search, and SDC search (FAISS for 8-bit sub-codes, else an
M x K x K symmetric table). Distances are squared Euclidean, as in the paper's SDC/ADC definitions."""

from __future__ import annotations

import faiss
import numpy as np
import torch

from .codebooks import nbits_of

SYSTEMS = ("sdc", "adc")


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def unpack_codes(packed: np.ndarray, M: int, nbits: int) -> np.ndarray:  # noqa: N803
    """FAISS packs sub-codes little-endian into a bit string; return int64 ``[N, M]``."""
    if nbits == 8:
        return packed[:, :M].astype(np.int64)
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : M * nbits].reshape(len(packed), M, nbits)
    return (bits.astype(np.int64) << np.arange(nbits, dtype=np.int64)).sum(-1)


class PQIndex:
    """A database encoded with fixed codebooks ``[M, K, D/M]`` (K-means or learned, e.g. PQN)."""

    def __init__(self, codebooks: torch.Tensor, database: torch.Tensor | None = None) -> None:
        M, K, dsub = codebooks.shape  # noqa: N806
        self.M, self.K, self.d = M, K, M * dsub
        self.nbits = nbits_of(K)
        self.codebooks = codebooks.detach().float().cpu()
        self.index = faiss.IndexPQ(self.d, M, self.nbits)
        faiss.copy_array_to_vector(self.codebooks.numpy().ravel(), self.index.pq.centroids)
        self.index.pq.compute_sdc_table()
        self.index.is_trained = True
        self.sdc_table = torch.from_numpy(faiss.vector_to_array(self.index.pq.sdc_table).reshape(M, K, K).copy())
        self.db_codes: torch.Tensor | None = None
        if database is not None:
            self.add(database)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def encode(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Hard assignment q(x_m) = argmin_k ||x_m - c_mk||^2 (eq. 1), int64 ``[N, M]``."""
        packed = self.index.pq.compute_codes(_np(x))
        return torch.from_numpy(unpack_codes(packed, self.M, self.nbits))

    def add(self, database: torch.Tensor | np.ndarray) -> None:
        x = _np(database)
        self.index.add(x)
        codes = self.encode(x)
        self.db_codes = codes if self.db_codes is None else torch.cat([self.db_codes, codes])

    def search(self, queries: torch.Tensor | np.ndarray, system: str, k: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank the database for each query; ``(distances, ids)``, each ``[Q, k]``, nearest first.

        ``k=None`` ranks the whole database. ADC: d(y, q(x))^2 through FAISS. SDC: d(q(y), q(x))^2, through
        FAISS's SDC search for 8-bit sub-codes, else through the symmetric table ``[M, K, K]``.
        """
        if system not in SYSTEMS:
            raise ValueError(f"system={system!r}: expected one of {SYSTEMS}")
        k = self.ntotal if k is None else min(k, self.ntotal)
        q = _np(queries)
        if system == "adc" or self.nbits == 8:
            self.index.search_type = faiss.IndexPQ.ST_PQ if system == "adc" else faiss.IndexPQ.ST_SDC
            dist, ids = self.index.search(q, k)
            return torch.from_numpy(dist), torch.from_numpy(ids)
        dist = self.sdc_distances(self.encode(q))
        if k == self.ntotal:
            d_sorted, ids = torch.sort(dist, dim=1, stable=True)
        else:
            d_sorted, ids = torch.topk(dist, k, dim=1, largest=False, sorted=True)
        return d_sorted, ids

    def sdc_distances(self, query_codes: torch.Tensor) -> torch.Tensor:
        """``[Q, N]`` squared SDC distances sum_m T[m, b_m(y), b_m(x)] from the symmetric table."""
        assert self.db_codes is not None, "PQIndex.add() the database first"
        dist = torch.zeros(query_codes.shape[0], self.ntotal)
        for m in range(self.M):
            dist += self.sdc_table[m][query_codes[:, m]][:, self.db_codes[:, m]]
        return dist
