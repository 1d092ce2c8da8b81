"""A job's records: its rows (one mAP per system and query set, with what made it) and ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .attacks import LOSS_IGNORES
from .config import JobConfig
from .data import RetrievalData, top1_hit
from .report import render_tables
from .runtime import Runtime
from .stages.target import Target
from .transfer import AdversarialSet


def describe(job: JobConfig, data: RetrievalData, dataset_label: str) -> dict[str, Any]:
    """What a row is about: the dataset, the model and the quantizer (with the code length)."""
    q = job.quantizer
    return {"dataset": data.name, "dataset_label": dataset_label, "model": job.model["name"], "quantizer": q.kind,
            "bits": q.bits, "M": q.M, "K": q.K}


def recipe_fields(job: JobConfig, target: Target, rt: Runtime) -> dict[str, Any]:
    """Row fields that say how the numbers were made: the backbone's epochs (and PQN's, with its alpha), the device
    type, the precision, the seed, and the checkpoint and codebooks keys (which hold every recipe and data
    setting)."""
    q = job.quantizer
    pqn = {"pqn_epochs": int(q.epochs), "alpha": float(q.alpha)} if job.pqn else {}  # type: ignore[attr-defined]
    return {"epochs": int(job.trainer["max_epochs"]), **pqn, "device": rt.device.type, "precision": rt.precision,
            "seed": job.seed, "checkpoint": target.checkpoint_key, "codebooks": target.codebooks_key}


def score_fields(scored: dict[str, Any], job: JobConfig) -> dict[str, Any]:
    """Row fields of one system's score: ``map`` (the ``eval.ties`` convention), ``map_grouped`` (sklearn's),
    ``ties``, with ``eval.topk`` also ``empty`` (both maps follow it); for index=ivfpq the index and its
    recall@k."""
    empty = job.empty if job.topk is not None else "zero"
    out: dict[str, Any] = {"map": round(scored["aps"].mean(job.ties, empty), 4),
                           "map_grouped": round(scored["aps"].mean("grouped", empty), 4), "ties": job.ties}
    if job.topk is not None:
        out["empty"] = empty
    if "recall" in scored:
        out.update(index="ivfpq", nlist=job.index.nlist, nprobe=job.index.nprobe, recall=round(scored["recall"], 4))
    return out


def clean_rows(base: dict[str, Any], scored: dict[str, dict[str, Any]], job: JobConfig) -> list[dict[str, Any]]:
    return [{**base, "attack": "clean", "system": s, **score_fields(v, job), "topk": job.topk}
            for s, v in scored.items()]


def attacked_rows(base: dict[str, Any], scored: dict[str, dict[str, Any]], job: JobConfig, adv: AdversarialSet,
                  data: RetrievalData, codes_changed: float, logits: torch.Tensor | None) -> list[dict[str, Any]]:
    """Rows of an adversarial query set: its source (white-box or transfer), its settings (those its loss reads),
    the share of sub-codes it changed, its L-inf distance and the classifier's accuracy on it."""
    src, made = adv.meta["source"], adv.meta["attack"]
    setting = {k: None if k in LOSS_IGNORES.get(made.get("loss"), ()) else made.get(k)
               for k in ("similarity", "temperature", "peak", "eps", "step", "iters")}
    linf = (adv.images.float() / (255 if adv.images.dtype == torch.uint8 else 1)
            - data.query.images.float() / 255).abs().max().item()
    extra = {} if logits is None else {
        "query_accuracy": round(float(top1_hit(logits, data.query.labels).float().mean()) * 100, 2)}
    transfer = (src["model"], src["bits"], src["quantizer"]) != (base["model"], base["bits"], base["quantizer"])
    return [{**base, "attack": made["name"], "system": s, **score_fields(v, job), "topk": job.topk,
             "source_model": src["model"], "source_bits": src["bits"], "transfer": transfer, **setting,
             "codes_changed": round(codes_changed, 4), "linf": round(linf, 5), **extra}
            for s, v in scored.items()]


def write_results(output_dir: Path, results: dict[str, Any]) -> Path:
    """``results.json`` (atomically) and ``results.md`` in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
    (output_dir / "results.md").write_text(render_tables(results["rows"]))
    return path
