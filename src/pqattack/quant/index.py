"""FAISS-backed PQ index: encoding, ADC and SDC distances, rankings and the tie-aware mAP over them.

Distances are squared Euclidean, as in the paper's SDC/ADC definitions. Both systems use a per-query lookup table
``[M, Q, K]`` (ADC: ||y_m - c_mk||^2; SDC: the rows of FAISS's symmetric table ``[M, K, K]`` picked by the query's
own codes), summed over the sub-spaces at each database item's codes. The ADC table is one batched GEMM in torch,
||y_m||^2 + ||c_mk||^2 - 2 <y_m, c_mk>, FAISS's formula for sub-vectors of 16 dimensions or more. (FAISS's own
``compute_distance_tables`` took ~95 ms for this 0.3 ms job with its two OpenMP threads here, and its rounding
depends on its thread count.) So the ranking paths below and FAISS's heap search can differ in the last bit of a
distance, which can swap near-equal items: on real-valued features, mAPs differ by up to ~1e-5 points.

How it is made fast (``python -m pqattack.bench --figures retrieval_9k_adc,retrieval_9k_sdc,retrieval_1m_adc``;
docs/benchmarks.md):

- the table is gathered by the codes with ``numpy.take`` per sub-space (about a nanosecond per item and sub-space),
  two sub-spaces at once for K <= 64 (a ``[Q, K * K]`` table of pair sums), in blocks of queries so that no more
  than ``BLOCK_ITEMS`` distances exist at once;
- a full ranking sorts one int64 key per item, (distance bits << id bits) | id, with numpy's SIMD sort: distances
  ascending, ties in database order, no separate argsort;
- a short top k (k <= N / ``FAISS_TOPK_FRACTION``) goes through FAISS's heap search, which never writes the
  ``[Q, N]`` distances;
- the mAP over the full ranking (:meth:`PQIndex.mean_average_precision`) needs no ranking of the ids: one sort of
  (distance, relevance) keys per query row gives each relevant item's tie group
  (:func:`pqattack.metrics.average_precision.average_precision_unranked`);
- mAP@k ranks the top k; the expected AP@k needs the whole tie group at position k, which is counted over the
  database's distinct codes (an item's distance is its code's), not by ranking on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import faiss
import numpy as np
import torch

from ..metrics.average_precision import QueryAP, average_precision, average_precision_unranked, relevance
from ..metrics.ranking import ranking_diagnostics
from .codebooks import nbits_of

SYSTEMS = ("sdc", "adc")
BLOCK_ITEMS = 1 << 24  # distances held at once when ranking in blocks of queries (64 MiB as float32)
FAISS_TOPK_FRACTION = 8  # k <= N / 8: FAISS's heap search; longer rankings: gather + sort here
PAIR_TABLE_MAX = 4096  # K * K up to this (K <= 64): gather sub-spaces two at a time from a [Q, K * K] table


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


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _parallel_rows(fn, rows: int, *arrays: np.ndarray) -> list:  # noqa: ANN001
    """``fn(*[a[s] for a in arrays])`` over contiguous row blocks, one per thread (numpy's sort releases the GIL)."""
    n = min(_threads(), rows)
    if n <= 1:
        return [fn(*arrays)]
    bounds = np.linspace(0, rows, n + 1).astype(int)
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: fn(*[a[bounds[i]:bounds[i + 1]] for a in arrays]), range(n)))


def _sort_keys(dist: np.ndarray) -> tuple[np.ndarray, int]:
    """int64 keys ``[Q, n]`` that order like (distance, column): the float32's bits made monotone (negative
    floats reversed), shifted left by the id width, or'ed with the column."""
    id_bits = max(1, int(dist.shape[1] - 1).bit_length())
    bits = (dist + np.float32(0.0)).view(np.int32).astype(np.int64)  # + 0.0: -0.0 becomes +0.0, as equal
    np.bitwise_xor(bits, 0x7FFFFFFF, out=bits, where=bits < 0)
    bits <<= id_bits
    bits |= np.arange(dist.shape[1], dtype=np.int64)
    return bits, id_bits


def _from_keys(keys: np.ndarray, id_bits: int) -> tuple[np.ndarray, np.ndarray]:
    ids = keys & ((1 << id_bits) - 1)
    bits = keys >> id_bits
    np.bitwise_xor(bits, 0x7FFFFFFF, out=bits, where=bits < 0)
    return bits.astype(np.int32).view(np.float32), ids


def rank(dist: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(distances, ids)`` ``[Q, k]`` of a ``[Q, N]`` float32 distance matrix: nearest first, ties by id."""
    n = dist.shape[1]
    k = n if k is None else min(k, n)

    def block(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, id_bits = _sort_keys(d)
        if k < n:
            keys = np.partition(keys, k - 1, axis=1)[:, :k]
        keys.sort(axis=1)
        return _from_keys(keys, id_bits)

    parts = _parallel_rows(block, dist.shape[0], dist)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def search_past_ties(search: Callable[[int], tuple[torch.Tensor, torch.Tensor]], k: int, total: int,
                     threshold: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A top-k ranking continued past the tie group at position k: ``search(n)`` (a ``(distances, ids)`` top n,
    ``[Q, n]``, ascending) for the smallest n tried (k + k / 8 + 16, then doubling, at most ``total``) at which
    every row ends at a larger distance than its k-th (or than its ``threshold``), or with a missing result
    (id -1), or holds all ``total`` items. The expected mAP@k needs the whole group that straddles position k."""
    n = min(total, k + k // 8 + 16)
    while True:
        dist, ids = search(n)
        if n >= total:  # every item (also when k is larger than the database)
            return dist, ids
        past = dist[:, -1].numpy() > (dist[:, k - 1].numpy() if threshold is None else threshold)
        if bool((past | (ids[:, -1] < 0).numpy()).all()):
            return dist, ids
        n = min(total, 2 * n)


class PQIndex:
    """A database encoded with fixed codebooks ``[M, K, D/M]`` (K-means or learned, e.g. PQN)."""

    def __init__(self, codebooks: torch.Tensor, database: torch.Tensor | None = None) -> None:
        M, K, dsub = codebooks.shape  # noqa: N806
        self.M, self.K, self.d = M, K, M * dsub
        self.nbits = nbits_of(K)
        self.codebooks = codebooks.detach().float().cpu()
        self.index = self._empty_faiss_index()
        self.sdc_table = torch.from_numpy(faiss.vector_to_array(self.index.pq.sdc_table).reshape(M, K, K).copy())
        self.db_codes: torch.Tensor | None = None
        self._codes_by_space: np.ndarray | None = None  # [M, N] intp, the gather indices
        self._distinct: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # see _distinct_codes
        if database is not None:
            self.add(database)

    def _empty_faiss_index(self) -> faiss.IndexPQ:
        """A FAISS ``IndexPQ`` with these codebooks (and their SDC table), no items."""
        index = faiss.IndexPQ(self.d, self.M, self.nbits)
        faiss.copy_array_to_vector(self.codebooks.numpy().ravel(), index.pq.centroids)
        index.pq.compute_sdc_table()
        index.is_trained = True
        return index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def encode(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Hard assignment q(x_m) = argmin_k ||x_m - c_mk||^2 (eq. 1), int64 ``[N, M]``."""
        packed = self.index.pq.compute_codes(_np(x))
        return torch.from_numpy(unpack_codes(packed, self.M, self.nbits))

    def add(self, database: torch.Tensor | np.ndarray) -> None:
        """Encode (once) and append to the FAISS index and to ``db_codes``."""
        packed = self.index.pq.compute_codes(_np(database))
        self.index.add_sa_codes(packed)
        codes = torch.from_numpy(unpack_codes(packed, self.M, self.nbits))
        self.db_codes = codes if self.db_codes is None else torch.cat([self.db_codes, codes])
        self._codes_by_space = None
        self._distinct = None

    def _pairs(self) -> bool:
        """Gather two sub-spaces at once (a ``[Q, K * K]`` table of their sums per pair) when that table is small."""
        return self.M % 2 == 0 and self.K * self.K <= PAIR_TABLE_MAX

    def _gather_indices(self, codes: np.ndarray) -> np.ndarray:
        """The gather indices of codes ``[N, M]``: ``[M, N]`` (or ``[M/2, N]`` pair indices b_2j * K + b_2j+1), intp."""
        codes = codes.T.astype(np.intp)
        if self._pairs():
            codes = codes[0::2] * self.K + codes[1::2]
        return np.ascontiguousarray(codes)

    def _codes_t(self) -> np.ndarray:
        """The database's gather indices, cached."""
        assert self.db_codes is not None, "PQIndex.add() the database first"
        if self._codes_by_space is None:
            self._codes_by_space = self._gather_indices(self.db_codes.numpy())
        return self._codes_by_space

    def _distinct_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The database's distinct codes, FAISS-packed ``[U, code_size]``; its item ids grouped by distinct code,
        ascending within each ``[N]``; and where each code's items start in them ``[U + 1]``. Cached."""
        if self._distinct is None:
            packed = faiss.vector_to_array(self.index.codes).reshape(self.ntotal, -1)
            unique, inverse = np.unique(packed, axis=0, return_inverse=True)
            inverse = inverse.ravel()
            starts = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(unique)))])
            self._distinct = (unique, np.argsort(inverse, kind="stable"), starts)
        return self._distinct

    # ----------------------------------------------------------------------------------------- distances
    def lookup_tables(self, queries: torch.Tensor | np.ndarray, system: str) -> np.ndarray:
        """float32 ``[M, Q, K]``: ADC ||y_m - c_mk||^2; SDC the table rows T[m, b_m(y), :] of the query's codes."""
        if system not in SYSTEMS:
            raise ValueError(f"system={system!r}: expected one of {SYSTEMS}")
        if system == "adc":  # ||y_m||^2 + ||c_mk||^2 - 2 <y_m, c_mk>: one batched GEMM (see the module doc)
            y = torch.as_tensor(_np(queries)).view(-1, self.M, self.d // self.M).transpose(0, 1)  # [M, Q, D/M]
            c = self.codebooks
            tables = torch.baddbmm((y * y).sum(-1, keepdim=True) + (c * c).sum(-1)[:, None, :], y, c.transpose(1, 2),
                                   alpha=-2)
            return tables.numpy()
        return self._sdc_tables(self.encode(queries))

    def _sdc_tables(self, query_codes: torch.Tensor) -> np.ndarray:
        table = self.sdc_table.numpy()
        qc = query_codes.numpy().T  # [M, Q]
        return np.ascontiguousarray(table[np.arange(self.M)[:, None], qc])

    def _gather(self, tables: np.ndarray, out: np.ndarray | None = None, codes: np.ndarray | None = None
                ) -> np.ndarray:
        """``[Q, N]`` = sum_m tables[m, q, code_m(x)] over the database (or the gather indices ``codes``). With pairs:
        (T_0 + T_1) + (T_2 + T_3) + ..., each pair's sums made once per table entry; equal codes always get equal
        distances."""
        codes = self._codes_t() if codes is None else codes
        if self._pairs():
            tables = np.ascontiguousarray(tables[0::2, :, :, None] + tables[1::2, :, None, :]).reshape(
                self.M // 2, tables.shape[1], self.K * self.K)
        if out is None:
            out = np.empty((tables[0].shape[0], codes.shape[1]), dtype=np.float32)
        # mode="clip": the codes are in range, and with out= it avoids numpy's buffered copy of mode="raise"
        dist = np.take(tables[0], codes[0], axis=1, out=out, mode="clip")
        buf = np.empty_like(dist)
        for m in range(1, len(codes)):
            dist += np.take(tables[m], codes[m], axis=1, out=buf, mode="clip")
        return dist

    def distances(self, queries: torch.Tensor | np.ndarray, system: str) -> torch.Tensor:
        """``[Q, N]`` float32 squared distances to every database item: ADC d(y, q(x))^2, SDC d(q(y), q(x))^2."""
        return torch.from_numpy(self._gather(self.lookup_tables(queries, system)))

    def sdc_distances(self, query_codes: torch.Tensor) -> torch.Tensor:
        """``[Q, N]`` squared SDC distances sum_m T[m, b_m(y), b_m(x)] from the symmetric table."""
        return torch.from_numpy(self._gather(self._sdc_tables(query_codes)))

    def _block_rows(self) -> int:
        return max(1, BLOCK_ITEMS // max(1, self.ntotal))

    # ----------------------------------------------------------------------------------------- search
    def _heap_search(self, k: int, system: str) -> bool:
        """A short top k (ADC, or SDC with 8-bit sub-codes) goes through FAISS's heap search."""
        return k * FAISS_TOPK_FRACTION <= self.ntotal and (system == "adc" or self.nbits == 8)

    def search(self, queries: torch.Tensor | np.ndarray, system: str, k: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank the database for each query; ``(distances, ids)``, each ``[Q, k]``, nearest first.

        ``k=None`` ranks the whole database. ADC: d(y, q(x))^2; SDC: d(q(y), q(x))^2. A short top k goes through
        FAISS's heap search (ADC, or SDC with 8-bit sub-codes); otherwise the lookup tables are gathered in
        blocks of queries and sorted here (ties in database order).
        """
        if system not in SYSTEMS:
            raise ValueError(f"system={system!r}: expected one of {SYSTEMS}")
        k = self.ntotal if k is None else min(k, self.ntotal)
        return self._search(queries, system, k, self._heap_search(k, system))

    def _search(self, queries: torch.Tensor | np.ndarray, system: str, k: int, heap: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if heap:
            self.index.search_type = faiss.IndexPQ.ST_PQ if system == "adc" else faiss.IndexPQ.ST_SDC
            dist, ids = self.index.search(_np(queries), k)
            return torch.from_numpy(dist), torch.from_numpy(ids)
        tables = self.lookup_tables(queries, system)
        nq, rows = tables.shape[1], self._block_rows()
        out_d, out_i = np.empty((nq, k), dtype=np.float32), np.empty((nq, k), dtype=np.int64)
        for lo in range(0, nq, rows):
            out_d[lo:lo + rows], out_i[lo:lo + rows] = rank(self._gather(tables[:, lo:lo + rows]), k)
        return torch.from_numpy(out_d), torch.from_numpy(out_i)

    def _codes_at(self, queries: np.ndarray, system: str, kth: np.ndarray, nearer: int, heap: bool
                  ) -> list[np.ndarray]:
        """Per query, the distinct codes (indices into :meth:`_distinct_codes`) at exactly the distance ``kth[q]``,
        in the arithmetic of the ranking: FAISS's heap search over an index of the distinct codes (of which at most
        ``nearer`` are nearer than ``kth[q]``), or the gathered tables."""
        unique = self._distinct_codes()[0]
        if heap:
            index = self._empty_faiss_index()
            index.search_type = self.index.search_type
            index.add_sa_codes(unique)
            dist, ids = search_past_ties(lambda n: tuple(map(torch.from_numpy, index.search(queries, n))),
                                         min(nearer + 1, len(unique)), len(unique), threshold=kth)
            return [i[d == t] for d, i, t in zip(dist.numpy(), ids.numpy(), kth)]
        gather = self._gather_indices(unpack_codes(unique, self.M, self.nbits))
        tables, rows, codes = self.lookup_tables(queries, system), max(1, BLOCK_ITEMS // len(unique)), []
        for lo in range(0, len(kth), rows):
            dist = self._gather(tables[:, lo:lo + rows], codes=gather)
            codes += [np.flatnonzero(d == t) for d, t in zip(dist, kth[lo:lo + rows])]
        return codes

    def _tie_at_k(self, queries: torch.Tensor | np.ndarray, system: str, dist: torch.Tensor, ids: torch.Tensor,
                  rel: torch.Tensor, k: int, heap: bool, query_labels: torch.Tensor, db_labels: torch.Tensor
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the items and the relevant items of the whole database at its k-th distance: counted in the
        top-n ranking ``dist, ids, rel`` where it goes on past that distance (or holds everything), else over the
        distinct codes at that distance (an item's distance is its code's), whose items' relevance is
        :func:`~pqattack.metrics.average_precision.relevance`'s, in blocks of queries."""
        d, kth = dist.numpy(), dist[:, k - 1].numpy()
        at = d == kth[:, None]
        size, relevant = at.sum(1), (rel.numpy() & at).sum(1)
        open_rows = np.flatnonzero(at[:, -1]) if d.shape[1] < self.ntotal else np.zeros(0, dtype=np.int64)
        if not open_rows.size:
            return size, relevant
        _, items, starts = self._distinct_codes()
        code_of = np.empty(self.ntotal, dtype=np.int64)
        code_of[items] = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
        nearer = max(len(np.unique(code_of[i[dd < t]])) for i, dd, t in zip(ids[open_rows].numpy(), d[open_rows],
                                                                           kth[open_rows]))
        found = {}
        for q, codes in zip(open_rows, self._codes_at(_np(queries)[open_rows], system, kth[open_rows], nearer, heap)):
            if not np.isin(code_of[ids[q].numpy()[at[q]]], codes).all():
                raise RuntimeError(f"the items at query {q}'s k-th distance {kth[q]!r} are not all at that distance "
                                   f"in a search of the distinct codes: the two {system.upper()} searches differ")
            lengths = starts[codes + 1] - starts[codes]
            found[q] = items[np.repeat(starts[codes] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())]
            size[q] = len(found[q])
        order = open_rows[np.argsort(-size[open_rows], kind="stable")]
        lo = 0
        while lo < len(order):  # rows of similar length together, -1 pads (never relevant)
            chunk = order[lo:lo + max(1, min(64, BLOCK_ITEMS // max(1, size[order[lo]])))]
            block = np.full((len(chunk), size[chunk[0]]), -1, dtype=np.int64)
            for row, q in zip(block, chunk):
                row[:size[q]] = found[q]
            relevant[chunk] = relevance(query_labels[chunk], db_labels, torch.from_numpy(block)).sum(1).numpy()
            lo += len(chunk)
        return size, relevant

    # ----------------------------------------------------------------------------------------- mAP
    def average_precisions(self, queries: torch.Tensor | np.ndarray, system: str, query_labels: torch.Tensor,
                           db_labels: torch.Tensor, topk: int | None = None) -> QueryAP:
        """Per-query APs, both tie conventions (:class:`~pqattack.metrics.average_precision.QueryAP`), over the full ranking
        or at ``topk``: those of ``metrics.query_average_precisions`` on this index's rankings.

        Over the full ranking, no ranking is materialised
        (:func:`~pqattack.metrics.average_precision.average_precision_unranked`), and distances exist for one block of
        queries at a time. At ``topk``: the ranking of ``search(topk)`` (and a few more items), and the tie group
        that straddles position k counted over the whole database (:meth:`_tie_at_k`).
        """
        ql, dl = query_labels.cpu(), db_labels.cpu()
        if topk is not None and topk < self.ntotal:  # search(topk)'s ranking and a few more; the tie group at k
            heap = self._heap_search(topk, system)
            dist, ids = self._search(queries, system, min(self.ntotal, topk + topk // 8 + 16), heap)
            rel = relevance(ql, dl, ids)
            tie = self._tie_at_k(queries, system, dist, ids, rel, topk, heap, ql, dl)
            return average_precision(dist, rel, topk, tie_at_k=tie)
        parts = []
        for dist, rel in self._distance_blocks(queries, system, ql, dl):
            parts += _parallel_rows(average_precision_unranked, len(dist), dist, rel)
        return QueryAP.concat(parts)

    def _distance_blocks(self, queries: torch.Tensor | np.ndarray, system: str, query_labels: torch.Tensor,
                         db_labels: torch.Tensor) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(distances, relevance)`` ``[q, N]`` to every database item (in database order) for blocks of queries;
        the distances' buffer is reused, so each block is to be used before the next."""
        ql, dl = query_labels.cpu(), db_labels.cpu()
        tables = self.lookup_tables(queries, system)
        nq, n, rows = tables.shape[1], self.ntotal, self._block_rows()
        single = ql.ndim == 1
        buf = np.empty((min(rows, nq), n), dtype=np.float32)
        for lo in range(0, nq, rows):
            hi = min(lo + rows, nq)
            dist = self._gather(tables[:, lo:hi], out=buf[: hi - lo])
            if single:  # relevance() of the ranking (0..N-1), without gathering labels per query
                rel = dl.numpy()[None, :] == ql[lo:hi].numpy()[:, None]
            else:
                rel = relevance(ql[lo:hi], dl, torch.arange(n).expand(hi - lo, n)).numpy()
            yield dist, rel

    def ranking_diagnostics(self, queries: torch.Tensor | np.ndarray, system: str, query_labels: torch.Tensor,
                            db_labels: torch.Tensor, k: int = 10) -> dict[str, np.ndarray]:
        """Per query, over the full ranking and as expectations under random tie order
        (:func:`~pqattack.metrics.ranking.ranking_diagnostics`): ``first_relevant_rank`` (NaN without a relevant
        item), ``precision_at_k``, ``chance_ap``, the expected AP of a ranking in random order, and ``floor_ap``, the
        AP of the worst ranking, every relevant item after every other: the lowest AP any attack can reach."""
        out: dict[str, list[np.ndarray]] = {"first_relevant_rank": [], "precision_at_k": [], "chance_ap": [],
                                            "floor_ap": []}
        for dist, rel in self._distance_blocks(queries, system, query_labels, db_labels):
            rank, precision = ranking_diagnostics(dist, rel, k)
            out["first_relevant_rank"].append(rank)
            out["precision_at_k"].append(precision)
            out["chance_ap"].append(average_precision_unranked(np.zeros_like(dist), rel).expected)
            out["floor_ap"].append(average_precision_unranked(rel.astype(np.float32), rel).expected)
        return {name: np.concatenate([np.zeros(0)] + parts) for name, parts in out.items()}

    def mean_average_precision(self, queries: torch.Tensor | np.ndarray, system: str, query_labels: torch.Tensor,
                               db_labels: torch.Tensor, topk: int | None = None, ties: str = "expected",
                               empty: str = "zero") -> float:
        """mAP in percent (0-100), the same number as ``metrics.mean_average_precision`` on this index's
        rankings: over the full ranking or at ``topk``; ``ties`` and ``empty`` as in
        :meth:`~pqattack.metrics.average_precision.QueryAP.mean`."""
        return self.average_precisions(queries, system, query_labels, db_labels, topk).mean(ties, empty)
