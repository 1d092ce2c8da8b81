"""What the artifact figures show, computed from a job's reloaded artifacts: precision-recall curves
(Fig. 5), retrieval examples (Fig. 4) and soft centroid distributions (eq. 7, Fig. 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import RetrievalData
from ..labels import is_paper_attack
from ..metrics import mean_average_precision, precision_recall_at_ranks, relevance
from .artifacts import JobArtifacts
from .figures import ExampleRow
from .records import JobRecord, Records, SystemKey
from .tables import MODEL_ORDER, order_key

ATTACKS = ("basic", "apd", "aod")
PAPER_MODELS = ("alexnet", "vgg16")
PAPER_FIGURE_BITS = 16  # the paper's Fig. 5 uses 16-bit codes
TOP_K = 10

#: the database ranked for each (system, 'clean' or attack): distances, ids and relevance, each [Q, N]
Ranked = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class Setting:
    """One retrieval system (dataset, model, quantizer, bits, checkpoint, codebooks) and its white-box jobs,
    one per attack; the figures compare its clean queries with each attack's."""

    target: SystemKey
    jobs: dict[str, JobRecord]  # attack -> job

    @property
    def describe(self) -> str:
        row = next(iter(self.jobs.values())).rows[0]
        return f"{row.get('dataset_label') or row['dataset']}, {row['model']}, {row['bits']} bits"

    def record_map(self, system: str, attack: str) -> float:
        """mAP of the records: the clean row of any of the jobs, or the attack job's row."""
        job = self.jobs[attack] if attack != "clean" else next(iter(self.jobs.values()))
        return next(r["map"] for r in job.rows if (r["attack"], r["system"]) == (attack, system))


def pick_setting(records: Records, model: str | None = None, bits: int | None = None) -> Setting | None:
    """The system with white-box jobs for the most attacks; ties go to 16 bits (the paper's Fig. 5), then to
    the paper's models. ``model`` and ``bits`` restrict the choice."""
    groups: dict[SystemKey, dict[str, JobRecord]] = {}
    for job in records.jobs:
        paper_setting = all(is_paper_attack(r) for r in job.rows)  # not the soft-assignment variants
        if job.attack in ATTACKS and job.white_box and paper_setting and model in (None, job.target.model) and bits in (
                None, job.target.bits):
            groups.setdefault(job.target, {}).setdefault(job.attack, job)
    if not groups:
        return None

    def score(item: tuple[SystemKey, dict[str, JobRecord]]) -> tuple:
        target, jobs = item
        return (len(jobs), target.bits == PAPER_FIGURE_BITS, target.model in PAPER_MODELS,
                -order_key(target.model, MODEL_ORDER)[0], -target.bits)

    target, jobs = max(sorted(groups.items(), key=lambda kv: str(kv[0])), key=score)
    return Setting(target, {a: jobs[a] for a in ATTACKS if a in jobs})


def query_features(arts: dict[str, JobArtifacts], attack: str) -> torch.Tensor:
    """Clean query features (as cached) or the attack's adversarial ones."""
    any_job = next(iter(arts.values()))
    return any_job.clean_query if attack == "clean" else arts[attack].adversarial_query


def rankings(arts: dict[str, JobArtifacts], systems: list[str]) -> Ranked:
    """Full rankings of the database ``(distances, ids, relevance)`` for each (system, clean or attack)."""
    first = next(iter(arts.values()))
    labels_q, labels_db = first.data.query.labels, first.data.database.labels
    out = {}
    for attack in ("clean", *arts):
        z = query_features(arts, attack)
        for system in systems:
            dist, ids = first.index.search(z, system)
            out[(system, attack)] = (dist, ids, relevance(labels_q, labels_db, ids))
    return out


def pr_curves(ranked: Ranked) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``curves[system][attack] = (recall, precision)`` at every rank, averaged over queries (Fig. 5)."""
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (system, attack), (dist, _, rel) in ranked.items():
        precision, recall = precision_recall_at_ranks(dist, rel)
        curves.setdefault(system, {})[attack] = (recall.numpy(), precision.numpy())
    return curves


def recomputed_maps(ranked: Ranked, arts: dict[str, JobArtifacts]) -> dict[tuple[str, str], float]:
    """mAP of the reloaded system (at the jobs' ``eval.topk``, ``eval.ties`` and ``eval.empty``, as recorded), to
    check the artifacts against the records. Records made before ``eval.ties`` existed hold the grouped mAP."""
    first = next(iter(arts.values()))
    ev = first.job.config.get("eval") or {}
    topk, ties, empty = ev.get("topk"), ev.get("ties", "grouped"), ev.get("empty", "zero")
    return {k: mean_average_precision(dist, ids, first.data.query.labels, first.data.database.labels, topk=topk,
                                      ties=ties, empty=empty if topk is not None else "zero")
            for k, (dist, ids, _) in ranked.items()}


def precision_at_k(ranked: Ranked, k: int = TOP_K) -> dict[tuple[str, str], torch.Tensor]:
    """Per-query precision among the first ``k`` results (database order within ties)."""
    return {key: rel[:, :k].float().mean(1) for key, (_, _, rel) in ranked.items()}


def pick_example_query(ranked: Ranked) -> int:
    """The query whose precision@10 falls most under the attacks (summed over attacks and systems)."""
    p_at_k = precision_at_k(ranked)
    drop = sum(p_at_k[(s, "clean")] - p for (s, a), p in p_at_k.items() if a != "clean")
    return int(torch.argmax(drop))


def hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 HxWx3 for display; float images in [0, 1] are rounded to 8 bits."""
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()


def amplification(eps: float) -> float:
    """Maps the L-inf ball [-eps, eps] onto the displayable [0, 1] around grey 0.5."""
    return 0.5 / eps


def perturbation_amplification(arts: dict[str, JobArtifacts]) -> float:
    """``amplification`` of the largest budget among the jobs."""
    return amplification(max(a.job.config["attack"]["eps"] for a in arts.values()))


def amplified_perturbation(clean: torch.Tensor, adversarial: torch.Tensor, amplify: float) -> np.ndarray:
    """HxWx3 in [0, 1]: grey 0.5 plus ``amplify`` times the perturbation (``clean`` uint8; ``adversarial`` uint8, or
    float in [0, 1] without 8-bit rounding)."""
    scale = 255.0 if adversarial.dtype == torch.uint8 else 1.0
    delta = adversarial.float().cpu() / scale - clean.float().cpu() / 255.0
    return (delta * amplify + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()


def example_rows(arts: dict[str, JobArtifacts], ranked: Ranked, system: str, query: int) -> list[ExampleRow]:
    """Fig. 4 for one query: the clean query, then each attack's adversarial query and amplified perturbation,
    each with its top 10 database images and whether each shares the query's label."""
    data = next(iter(arts.values())).data
    clean_image = data.query.images[query]
    amplify = perturbation_amplification(arts)
    p_at_k = precision_at_k(ranked)
    out = []
    for attack in ("clean", *ATTACKS):
        if (system, attack) not in ranked:
            out.append(ExampleRow(f"{attack.upper()}\n(not run)", None, None, [], []))
            continue
        _, ids, rel = ranked[(system, attack)]
        top = ids[query, :TOP_K]
        precision = p_at_k[(system, attack)]
        label = f"{attack.upper()}\nP@{TOP_K} {precision[query]:.1f}\n(all queries {precision.mean():.2f})"
        if attack == "clean":
            image, perturbation = clean_image, None
        else:
            image = arts[attack].adversarial[query]
            perturbation = amplified_perturbation(clean_image, image, amplify)
        out.append(ExampleRow(label, hwc(image), perturbation, [hwc(data.database.images[i]) for i in top],
                              rel[query, :TOP_K].tolist()))
    return out


@torch.no_grad()
def soft_assignment(arts: JobArtifacts, z: torch.Tensor) -> np.ndarray:
    """``[M, K]`` soft distribution of eq. (7) for one feature vector, with the attack's similarity."""
    model = arts.retrieval_model()
    logits = model.assignment_logits(z[None].to(arts.runtime.device).float())[0]
    return torch.softmax(logits, dim=-1).cpu().numpy()


def centroid_distributions(arts: dict[str, JobArtifacts], query: int
                           ) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """Fig. 3 for one query: ``(subspace, clean, attacked)`` with ``[K]`` distributions per attack (APD, AOD),
    in the subspace where the clean distribution has its highest peak. None without APD and AOD jobs."""
    attacks = [a for a in ("apd", "aod") if a in arts]
    if not attacks:
        return None
    clean = {a: soft_assignment(arts[a], arts[a].clean_query[query]) for a in attacks}
    attacked = {a: soft_assignment(arts[a], arts[a].adversarial_query[query]) for a in attacks}
    subspace = int(np.argmax(clean[attacks[0]].max(axis=1)))
    return subspace, {a: p[subspace] for a, p in clean.items()}, {a: p[subspace] for a, p in attacked.items()}


def class_name(data: RetrievalData, query: int) -> str:
    """The query's class; multi-label: every concept of the query, joined by +."""
    labels = data.query.labels[query]
    if labels.ndim == 1:
        return "+".join(data.classes[c] for c in torch.nonzero(labels).squeeze(1).tolist())
    label = int(labels)
    return data.classes[label] if label < len(data.classes) else str(label)


def query_description(arts: dict[str, JobArtifacts], query: int) -> dict[str, Any]:
    data = next(iter(arts.values())).data
    return {"query": query, "class": class_name(data, query), "test_index": int(data.query.index[query])
            if data.query.index is not None else query}
