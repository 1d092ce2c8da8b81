"""What the artifact figures show, computed from a job's reloaded artifacts: precision-recall curves
(Fig. 5), retrieval examples (Fig. 4) and soft centroid distributions (eq. 7, Fig. 3). ``figure_record`` keeps
all of it as JSON (``FIGURE_DATA`` in the report's folder), with the table cells it was computed for, so that a
later build without the artifacts (a fresh clone) draws the same figures while the records still hold those
cells unchanged (``saved_figure_record``)."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import RetrievalData
from ..labels import is_paper_attack
from ..metrics import mean_average_precision, precision_recall_at_ranks, relevance
from .artifacts import JobArtifacts
from .figures import ExampleRow
from .records import JobRecord, Records, SystemKey
from .tables import CELL_FIELDS, MODEL_ORDER, cell_key, order_key

ATTACKS = ("basic", "apd", "aod")
PAPER_MODELS = ("alexnet", "vgg16")
PAPER_FIGURE_BITS = 16  # the paper's Fig. 5 uses 16-bit codes
TOP_K = 10
FIGURE_DATA = "figure_data.json"  # the figure record, in the report's folder
FIGURE_DATA_FORMAT = 1
CELL_ATTACK, CELL_SYSTEM = CELL_FIELDS.index("attack"), CELL_FIELDS.index("system")
PR_POINTS = 300  # ranks kept per precision-recall curve: half spaced evenly, half geometrically (the first ranks)

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
        suite = bool((job.config.get("eval") or {}).get("suite"))  # several query sets, none of them the job's own
        if job.attack in ATTACKS and job.white_box and paper_setting and not suite and model in (
                None, job.target.model) and bits in (None, job.target.bits):
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


# --------------------------------------------------------------------------------------------- the figure record
def decimated(recall: np.ndarray, precision: np.ndarray, points: int = PR_POINTS) -> tuple[list[float], list[float]]:
    """A precision-recall curve at ``points`` ranks or fewer (the first and last included), for the record."""
    n = len(recall)
    ranks = np.unique(np.concatenate([np.linspace(0, n - 1, points // 2), np.geomspace(1, n, points // 2) - 1])
                      .round().astype(int))
    return [round(float(v), 6) for v in recall[ranks]], [round(float(v), 6) for v in precision[ranks]]


def png(image: np.ndarray | None) -> str | None:
    """An HxWx3 image (uint8, or float in [0, 1], stored at 8 bits) as base64 PNG."""
    from PIL import Image

    if image is None:
        return None
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def unpng(text: str | None) -> np.ndarray | None:
    from PIL import Image

    return None if text is None else np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def figure_record(setting: Setting, arts: dict[str, JobArtifacts], ranked: Ranked, paths: list[str]) -> dict[str, Any]:
    """Everything Figs. 5, 4 and 3 draw for ``setting``, as JSON: the curves, the example query's images, the
    centroid distributions, the recorded and reloaded mAPs, and the table cells (with their mAP) of the jobs'
    rows, by which a later build checks that the records still hold them."""
    query = pick_example_query(ranked)
    systems = list(dict.fromkeys(s for s, _ in ranked))
    examples = {s: [{"label": r.label, "query": png(r.query), "perturbation": png(r.perturbation),
                     "results": [png(i) for i in r.results], "relevant": [bool(v) for v in r.relevant]}
                    for r in example_rows(arts, ranked, s, query)] for s in systems}
    dist = centroid_distributions(arts, query)
    centroids = None
    if dist is not None:
        subspace, clean, attacked = dist
        first = arts[next(iter(attacked))]
        a = first.job.config["attack"]
        centroids = {"subspace": subspace, "M": int(first.codebooks.shape[0]), "K": int(first.codebooks.shape[1]),
                     "similarity": a.get("similarity"), "temperature": a.get("temperature"),
                     "clean": {k: [float(v) for v in p] for k, p in clean.items()},
                     "attacked": {k: [float(v) for v in p] for k, p in attacked.items()}}
    cells = [[list(cell_key(r)), r["map"]] for job in setting.jobs.values() for r in job.rows
             if (r["system"], r["attack"]) in ranked]
    return {"format": FIGURE_DATA_FORMAT, "setting": setting.describe, "model": setting.target.model,
            "bits": setting.target.bits, "jobs": paths, "cells": cells,
            "queries": len(next(iter(arts.values())).data.query),
            "record_maps": [[s, a, setting.record_map(s, a)] for s, a in ranked],
            "reloaded_maps": [[s, a, v] for (s, a), v in recomputed_maps(ranked, arts).items()],
            "pr": {s: {a: decimated(*curves) for a, curves in by_attack.items()}
                   for s, by_attack in pr_curves(ranked).items()},
            "example": {**query_description(arts, query), "amplify": perturbation_amplification(arts),
                        "rows": examples},
            "centroids": centroids}


def example_rows_of(record: dict[str, Any], system: str) -> list[ExampleRow]:
    return [ExampleRow(r["label"], unpng(r["query"]), unpng(r["perturbation"]), [unpng(i) for i in r["results"]],
                       r["relevant"]) for r in record["example"]["rows"][system]]


def saved_figure_record(path: Path, rows: list[dict[str, Any]], model: str | None = None, bits: int | None = None
                        ) -> tuple[dict[str, Any] | None, str]:
    """The figure record at ``path`` if ``rows`` still hold each of its cells with the same mAP (and it is of
    ``model`` / ``bits`` when given): ``(record, "")``, else ``(None, why not)``."""
    if not path.is_file():
        return None, f"no saved figure data ({path.name}) in {path.parent}"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"{path} is not readable JSON ({exc})"
    if not isinstance(record, dict) or record.get("format") != FIGURE_DATA_FORMAT:
        return None, f"{path} is not a figure record of format {FIGURE_DATA_FORMAT}"
    if model not in (None, record.get("model")) or bits not in (None, record.get("bits")):
        return None, f"{path} holds {record.get('setting')}, not the asked model={model} bits={bits}"
    held = {}
    for r in rows:
        held.setdefault(json.dumps(list(cell_key(r)), default=str), []).append(r["map"])
    for cell, value in record["cells"]:
        maps = held.get(json.dumps(cell, default=str), [])
        if not any(abs(m - value) < 1e-9 for m in maps):
            return None, (f"{path} was computed for rows that the records no longer hold unchanged "
                          f"({record['setting']}: {cell[CELL_ATTACK]} {cell[CELL_SYSTEM]} mAP {value:.2f}, the "
                          f"records: {', '.join(f'{m:.2f}' for m in maps) or 'no such row'})")
    return record, ""
