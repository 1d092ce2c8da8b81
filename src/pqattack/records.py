"""A job's records: its rows (one mAP per system and query set, with what made it) and ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .attacks import LOSS_IGNORES, OFF_VALUES
from .config import JobConfig, load_job
from .data import RetrievalData, top1_hit
from .errors import ConfigError, UsageError
from .labels import LOOP_OPTIONS, attack_label, joined_epochs
from .metrics import QueryAP
from .report import render_tables
from .runtime import Runtime
from .stages.keys import is_off
from .stages.target import Target
from .transfer import AdversarialSet, source_jobs


CHECKPOINT_DIGEST_CHARS = 16  # of the checkpoint's sha256 in a row: enough to tell two trainings apart


def describe(job: JobConfig, data: RetrievalData, dataset_label: str) -> dict[str, Any]:
    """What a row is about: the dataset (and how many queries it asks), the model and the quantizer (with the code
    length)."""
    q = job.quantizer
    defense = job.defense.row_fields() if job.defense.kind != "none" else {}  # undefended rows: as before defenses
    return {"dataset": data.name, "dataset_label": dataset_label, "queries": len(data.query), "model": job.model["name"],
            "quantizer": q.kind, "bits": q.bits, "M": q.M, "K": q.K, **defense}


def recipe_fields(job: JobConfig, target: Target, rt: Runtime) -> dict[str, Any]:
    """Row fields that say how the numbers were made: the backbone's epochs (and PQN's, with its alpha), the device
    type, the precision, the seed, and the checkpoint and codebooks keys (which hold every recipe and data
    setting), with ``checkpoint_sha256``, the start of the checkpoint's content digest in the cache: a key names a
    configuration, and two trainings of one configuration that came out different tell apart by it."""
    q = job.quantizer
    pqn = {"pqn_epochs": int(q.epochs), "alpha": float(q.alpha)} if job.pqn else {}  # type: ignore[attr-defined]
    digest = rt.cache.digest("checkpoint", target.checkpoint_key) if rt.cache.enabled else None
    return {"epochs": int(job.trainer["max_epochs"]), **pqn, "device": rt.device.type, "precision": rt.precision,
            "seed": job.seed, "checkpoint": target.checkpoint_key, "codebooks": target.codebooks_key,
            **({"checkpoint_sha256": digest[:CHECKPOINT_DIGEST_CHARS]} if digest else {})}


def score_fields(scored: dict[str, Any], job: JobConfig) -> dict[str, Any]:
    """Row fields of one system's score: ``map`` (the ``eval.ties`` convention), ``map_grouped`` (sklearn's),
    ``ties``, with ``eval.topk`` also ``empty`` (both maps follow it); for index=ivfpq the index and its
    recall@k; over the full ranking, the diagnostics (means over the queries, expected under random tie order):
    ``first_relevant_rank`` (1-based, over the queries that have a relevant item), ``precision_at_10`` (%) and
    ``map_chance``, the mAP of rankings in random order (%), and ``map_floor``, the mAP of the worst rankings (every
    relevant item last): the lowest any attack can reach (%)."""
    empty = job.empty if job.topk is not None else "zero"
    out: dict[str, Any] = {"map": round(scored["aps"].mean(job.ties, empty), 4),
                           "map_grouped": round(scored["aps"].mean("grouped", empty), 4), "ties": job.ties}
    if job.topk is not None:
        out["empty"] = empty
    if "recall" in scored:
        out.update(index="ivfpq", nlist=job.index.nlist, nprobe=job.index.nprobe, recall=round(scored["recall"], 4))
    if "diagnostics" in scored:
        d = scored["diagnostics"]
        ranks = d["first_relevant_rank"][np.isfinite(d["first_relevant_rank"])]
        out.update(first_relevant_rank=round(float(ranks.mean()), 2) if ranks.size else None,
                   precision_at_10=round(float(d["precision_at_k"].mean()) * 100, 4))
        if job.topk is None:
            out["map_chance"] = round(float(d["chance_ap"].mean()) * 100, 4)
            out["map_floor"] = round(float(d["floor_ap"].mean()) * 100, 4)
    return out


def clean_rows(base: dict[str, Any], scored: dict[str, dict[str, Any]], job: JobConfig) -> list[dict[str, Any]]:
    return [{**base, "attack": "clean", "system": s, **score_fields(v, job), "topk": job.topk}
            for s, v in scored.items()]


def perceptibility(adversarial: torch.Tensor, clean: torch.Tensor) -> dict[str, Any]:
    """How visible the perturbation is, adversarial against clean queries in [0, 1]: ``linf`` (the largest pixel
    change), ``l2`` (the mean over queries of the perturbation's l2 norm), ``psnr`` (dB, the mean over the queries
    that changed) and ``ssim`` (the mean over queries; torchmetrics, Gaussian window 11, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    adv, ref = adversarial.float(), clean.float()
    diff = (adv - ref).flatten(1)
    mse = diff.pow(2).mean(1)
    changed = mse > 0
    psnr = (10 * torch.log10(1 / mse[changed])).mean().item() if changed.any() else None
    ssim = structural_similarity_index_measure(adv, ref, data_range=1.0).item()
    return {"linf": round(diff.abs().max().item(), 5), "l2": round(diff.norm(dim=1).mean().item(), 5),
            "psnr": None if psnr is None else round(psnr, 3), "ssim": round(ssim, 5)}


def targeted_fields(targeted: dict[str, Any], targets: torch.Tensor, data: RetrievalData, job: JobConfig
                    ) -> dict[str, Any]:
    """t-mAP (%): mAP with the target class as the relevant one, adversarial (``tmap``) and clean (``tmap_clean``)
    queries, over the queries that are not of their target class already (``tmap_queries`` of them)."""
    labels = data.query.labels
    own = (labels == targets) if labels.ndim == 1 else labels.bool().gather(1, targets[:, None]).squeeze(1)
    keep = (~own).numpy()
    empty = job.empty if job.topk is not None else "zero"

    def mean(aps: QueryAP) -> float:
        return round(QueryAP(*(getattr(aps, f)[keep] for f in QueryAP.__dataclass_fields__)).mean(job.ties, empty), 4)

    return {"tmap": mean(targeted["aps"]), "tmap_clean": mean(targeted["clean_aps"]), "tmap_queries": int(keep.sum())}


#: the attack settings a row carries (None where its loss ignores them)
ROW_SETTINGS = ("similarity", "temperature", "peak", "eps", "step", "iters", "kappa", "margin_focus", "target_class",
                *LOOP_OPTIONS)


def source_epochs(job: JobConfig, adv: AdversarialSet) -> int | str | None:
    """The epochs of the backbone(s) that made ``adv``, as the set records them; for a set made before sets
    recorded them, this job's sources' (None for such a set saved elsewhere, ``transfer.source``)."""
    recorded = adv.meta["source"].get("epochs")
    if recorded is not None or job.transfer.get("source"):
        return recorded
    return joined_epochs([s.trainer["max_epochs"] for s in source_jobs(job) or [job]])


def attack_settings(adv: AdversarialSet) -> dict[str, Any]:
    """The attack settings an adversarial set's rows carry: those its loss reads, loop options at their off value as
    None."""
    made = adv.meta["attack"]
    return {k: None if k in LOSS_IGNORES.get(made.get("loss"), ()) or is_off(made.get(k), k)
            or made.get(k) == OFF_VALUES.get(k) else made.get(k) for k in ROW_SETTINGS}


def adaptive_fields(job: JobConfig) -> dict[str, Any]:
    """Behind a query transform, whether the attack ignored it (``oblivious``); nothing otherwise."""
    return {"oblivious": job.attack.oblivious} if job.defense.transform else {}


def set_label(base: dict[str, Any], job: JobConfig, adv: AdversarialSet) -> str:
    """The attack label (``labels.attack_label``) the rows of ``adv`` will carry, without scoring it."""
    return attack_label({**base, "attack": adv.meta["attack"]["name"], **attack_settings(adv), **adaptive_fields(job)})


def attacked_rows(base: dict[str, Any], scored: dict[str, dict[str, Any]], job: JobConfig, adv: AdversarialSet,
                  data: RetrievalData, codes_changed: torch.Tensor, logits: torch.Tensor | None,
                  targeted: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows of an adversarial query set: its source (white-box, transfer, or an ensemble of sources joined by
    '+'), its settings (those its loss reads; loop options at their off value as None), the share of sub-codes it
    changed (overall and per sub-space, from ``codes_changed`` ``[Q, M]`` bool), how visible it is
    (:func:`perceptibility`), the classifier's accuracy on it, and for a targeted set its t-mAP."""
    src, made = adv.meta["source"], adv.meta["attack"]
    setting = attack_settings(adv)
    adversarial = adv.images.float() / (255 if adv.images.dtype == torch.uint8 else 1)
    seen = perceptibility(adversarial, data.query.images.float() / 255)
    extra = {} if logits is None else {
        "query_accuracy": round(float(top1_hit(logits, data.query.labels).float().mean()) * 100, 2)}
    transfer = (src["model"], src["bits"], src["quantizer"]) != (base["model"], base["bits"], base["quantizer"])
    changed = codes_changed.float()
    flips = {"codes_changed": round(float(changed.mean()), 4),
             "codes_changed_per_subspace": [round(float(v), 4) for v in changed.mean(0)]}
    adaptive = adaptive_fields(job)
    return [{**base, "attack": made["name"], "system": s, **score_fields(v, job), "topk": job.topk,
             "source_model": src["model"], "source_bits": src["bits"], "source_epochs": source_epochs(job, adv),
             "transfer": transfer, **setting, **flips,
             **adaptive,
             **seen, **extra,
             **({} if targeted is None else targeted_fields(targeted[s], adv.targets, data, job))}
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


def job_meta(job_dir: Path) -> dict[str, Any]:
    """The meta of the job whose output folder is ``job_dir`` (its ``results.json``: the config, the cache keys); a
    ``UsageError`` naming the folder when it is no job's folder (missing, without records, a sweep's folder: its
    jobs are named), for the tools that read one job's artifacts."""
    path = Path(job_dir) / "results.json"
    if not Path(job_dir).is_dir():
        raise UsageError(f"{job_dir}: no such folder (give a job's output folder, which holds its results.json)")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (a job's output folder holds its results.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable job record ({exc})") from None
    meta = doc.get("meta") if isinstance(doc, dict) else None
    if isinstance(meta, dict) and "config" not in meta and isinstance(meta.get("jobs"), list):
        jobs = [Path(j["job_dir"]).name for j in meta["jobs"] if isinstance(j, dict) and j.get("job_dir")]
        raise UsageError(f"{job_dir}: a sweep's folder; give one of its jobs' folders: "
                         f"{', '.join(jobs[:6]) + (', ...' if len(jobs) > 6 else '') or 'none finished'}")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise UsageError(f"{path}: no meta.config (not a job's results.json)")
    return meta


def job_of(job_dir: Path) -> tuple[JobConfig, Any]:
    """The typed job and the config (``DictConfig``) of the job whose output folder is ``job_dir`` (``job_meta``); a
    config it no longer passes (a job of another version of the framework) is a ``ConfigError`` naming the folder."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(job_meta(job_dir)["config"])
    try:
        return load_job(cfg), cfg
    except ConfigError as exc:
        raise ConfigError(f"{job_dir}: {exc}") from None
