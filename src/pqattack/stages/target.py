"""Stage 3: the retrieval system under evaluation: backbone, clean features, codebooks (K-means or PQN's) and the
PQ index; and its scores (per-query AP) for a set of query features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import JobConfig
from ..data import RetrievalData
from ..errors import CacheError, ConfigError
from ..models import Backbone
from ..metrics import query_average_precisions
from ..quant import IVFPQIndex, PQIndex, recall_at_k_with_ties, search_past_ties, train_codebooks
from ..runtime import Runtime
from .backbone import train_backbone, train_pqn
from .defense import adversarial_training, defended_backbone, fresh_draws
from .features import Classifier, check_finite, classifier_of, clean_features, embed
from .keys import codebooks_spec


@dataclass
class Target:
    """A retrieval system under evaluation: backbone, clean features, codebooks and the PQ index."""

    backbone: Backbone
    checkpoint_key: str
    features: dict[str, torch.Tensor]
    codebooks: torch.Tensor
    codebooks_key: str
    index: PQIndex
    ivf: IVFPQIndex | None = None  # index=ivfpq: searched instead of ``index`` (ADC @k); ``index`` gives the exact top k
    classify: Classifier | None = None  # the head on the features it was trained on (None: no valid head)
    test_accuracy: float | None = None  # classify's top-1 accuracy on the query + database images


def check_codebooks(codebooks: torch.Tensor, M: int, K: int, dim: int, name: str) -> None:  # noqa: N803
    """Codebooks must be ``[M, K, dim / M]`` and finite."""
    expected = (M, K, dim // M)
    if tuple(codebooks.shape) != expected:
        raise CacheError(f"{name}: shape {tuple(codebooks.shape)}, expected (M, K, D/M) = {expected}; delete it")
    check_finite(name, codebooks)


def pq_codebooks(job: JobConfig, database: torch.Tensor, feat_key: str, rt: Runtime) -> tuple[torch.Tensor, str]:
    """K-means codebooks (eq. 1) on the database features, cached."""
    q = job.quantizer

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"codebooks": train_codebooks(database, q.M, q.K, niter=q.niter, seed=q.seed)}, {}

    with rt.timed("codebooks"):
        tensors, _, key = rt.cache.get_or_build("codebooks", codebooks_spec(job, feat_key), build)
    check_codebooks(tensors["codebooks"], q.M, q.K, database.shape[1], f"codebooks {key}")
    rt.keys["codebooks"] = key
    return tensors["codebooks"], key


def build_target(job: JobConfig, data: RetrievalData, rt: Runtime, loggers: list) -> Target:
    """Train or load the backbone, its features, codebooks and index (each from the cache when there)."""
    backbone, ckpt_key = train_backbone(job, data, rt, loggers)
    if job.pqn:
        rt.keys["base_checkpoint"] = ckpt_key
        backbone, ckpt_key, codebooks = train_pqn(job, data, backbone, ckpt_key, rt, loggers)
        if job.defense.adversarial:
            backbone, ckpt_key, codebooks = adversarial_training(job, data, backbone, ckpt_key, codebooks, rt, loggers)
        classify = classifier_of(job, backbone, codebooks)
        feats, acc = clean_features(job, data, backbone, ckpt_key, rt, classify)
        cb_key = rt.keys["codebooks"] = ckpt_key  # the learned codebooks live in the PQN checkpoint
    else:
        if job.defense.adversarial:
            backbone, ckpt_key, _ = adversarial_training(job, data, backbone, ckpt_key, None, rt, loggers)
        classify = classifier_of(job, backbone, None)
        feats, acc = clean_features(job, data, backbone, ckpt_key, rt, classify)
        codebooks, cb_key = pq_codebooks(job, feats["database"], rt.keys["features"], rt)
    if job.defense.transform:  # the queries pass the transform; the database is indexed as it is
        backbone = defended_backbone(job, backbone)
        fresh_draws(backbone, "evaluate clean queries")
        feats = {**feats, "query": embed(backbone, data.query.images, rt, job.eval_batch_size, "query features",
                                         job.subvectors)[0]}
    with rt.timed("index"):
        index = PQIndex(codebooks, feats["database"])
        ivf = None
        if job.index.kind == "ivfpq":
            ix = job.index
            try:
                ivf = IVFPQIndex(codebooks, feats["database"], nlist=ix.nlist, nprobe=ix.nprobe,
                                 train_size=ix.train_size, seed=ix.seed)
            except ValueError as exc:
                raise ConfigError(f"{exc} (the database has {len(feats['database'])} items)") from None
    return Target(backbone, ckpt_key, feats, codebooks, cb_key, index, ivf, classify, acc)


def peak_agreement(target: Target, query_z: torch.Tensor) -> float:
    """The share of (query, sub-space) pairs where eq. (6)'s peak, argmax_k <z_m, c_mk>, is the code the index
    assigns (eq. 1, argmin_k ||z_m - c_mk||^2), on the clean queries."""
    m, k, dsub = target.codebooks.shape
    dots = torch.einsum("bmd,mkd->bmk", query_z.float().view(-1, m, dsub), target.codebooks.float())
    return float((dots.argmax(-1) == target.index.encode(query_z)).float().mean())


def score(target: Target, query_z: torch.Tensor, data: RetrievalData, systems: list[str], topk: int | None,
          query_labels: torch.Tensor | None = None, diagnostics: bool = True) -> dict[str, dict[str, Any]]:
    """Per system, the per-query APs (``aps``) against ``query_labels`` (default: the queries' own) and, over the
    full ranking of the flat index with ``diagnostics``, the per-query ``diagnostics`` of
    ``PQIndex.ranking_diagnostics`` (first relevant rank, precision@10, chance AP); with index=ivfpq, the APs of the
    IVF search at ``topk`` (continued past the tie group at k) and its recall@k of the exact PQ (flat ADC) top k."""
    labels = data.query.labels if query_labels is None else query_labels
    if target.ivf is None:
        out = {s: {"aps": target.index.average_precisions(query_z, s, labels, data.database.labels, topk=topk)}
               for s in systems}
        if diagnostics:
            for s in systems:
                out[s]["diagnostics"] = target.index.ranking_diagnostics(query_z, s, labels, data.database.labels)
        return out
    assert topk is not None and systems == ["adc"]
    approx, ids = search_past_ties(lambda n: target.ivf.search(query_z, "adc", k=n), topk, target.ivf.ntotal)
    exact, _ = target.index.search(query_z, "adc", k=topk)
    return {"adc": {"aps": query_average_precisions(approx, ids, labels, data.database.labels, topk=topk),
                    "recall": recall_at_k_with_ties(approx, exact)}}


def target_labels(targets: torch.Tensor, data: RetrievalData) -> torch.Tensor:
    """Target classes ``[Q]`` as query labels: as they are for single-label data, one-hot concepts for multi-label."""
    if data.database.labels.ndim == 1:
        return targets
    return torch.nn.functional.one_hot(targets, data.database.labels.shape[1]).bool()


@dataclass
class ScoredSet:
    """An adversarial query set on the target: its features ``z`` and classifier ``logits`` (None without a
    classifier), its per-system ``scores`` (``score``) and which sub-space codes it ``changed`` [Q, M]."""

    z: torch.Tensor
    logits: torch.Tensor | None
    scores: dict[str, dict[str, Any]]
    changed: torch.Tensor


def score_set(target: Target, images: torch.Tensor, key: str, data: RetrievalData, job: JobConfig,
              rt: Runtime) -> ScoredSet:
    """Evaluate the adversarial ``images`` (the set of cache key ``key``) on the target: a random query transform's
    draws restarted for this pass, the features checked finite, scored per system, their codes against the clean
    queries'."""
    fresh_draws(target.backbone, f"evaluate {key}")
    z, logits = embed(target.backbone, images, rt, job.eval_batch_size, "adversarial features", job.subvectors,
                      target.classify)
    check_finite("adversarial features", z)
    scores = score(target, z, data, job.systems, job.topk)
    return ScoredSet(z, logits, scores, target.index.encode(z) != target.index.encode(target.features["query"]))


def targeted_scores(target: Target, adversarial_z: torch.Tensor, data: RetrievalData, targets: torch.Tensor,
                    systems: list[str], topk: int | None) -> dict[str, dict[str, Any]]:
    """Per system, the per-query APs with the target class as the relevant one (t-mAP's), of the adversarial
    queries (``aps``) and of the clean ones (``clean_aps``, the level without an attack)."""
    labels = target_labels(targets, data)
    adv = score(target, adversarial_z, data, systems, topk, labels, diagnostics=False)
    clean = score(target, target.features["query"], data, systems, topk, labels, diagnostics=False)
    return {s: {"aps": adv[s]["aps"], "clean_aps": clean[s]["aps"]} for s in systems}
