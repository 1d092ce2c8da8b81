"""The orchestrator: one job, as the data flow it is: validate, runtime, data, resume, target, clean rows,
adversarial set (or the robust evaluation's suite), attacked rows, write, log. The stages (``stages/``) do the work; every stage's output is an
artifact in the content-addressed cache, keyed by everything that determines it, so a sweep over attacks and bits
trains each backbone, extracts its features and runs K-means once."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .cache import ArtifactCache, spec_key
from .config import JobConfig, container, dataset_source, load_job
from .data import RetrievalData
from .loggers import log_results
from .records import attacked_rows, clean_rows, describe, recipe_fields, write_results
from .runtime import Runtime, device_name, resolve_device, resolve_precision, resolve_progress, versions
from .stages.attack import adversarial_set, check_attack_data
from .stages.data import load_data
from .stages.keys import artifact_keys, results_spec
from .stages.suite import evaluate_suite
from .stages.target import build_target, peak_agreement, score, score_set, targeted_scores

log = logging.getLogger(__name__)


def stale_artifacts(meta: dict[str, Any], job: JobConfig, data: RetrievalData, precision: str,
                    device: torch.device) -> list[str]:
    """The artifacts whose keys in the cached results' ``meta`` differ from this job's on the data it loaded: the
    results key holds the config only, the artifact keys the data's items too (a resumed job whose images changed
    is computed again)."""
    now = artifact_keys(job, data, precision, device)
    recorded = meta.get("cache_keys", {})
    return sorted(k for k in recorded.keys() & now.keys() if recorded[k] != now[k])


def run(cfg: DictConfig, output_dir: Path, loggers: list | None = None) -> Path:
    """Run one job: the clean rows and the rows of one adversarial query set (white-box or transferred); write
    ``results.json``, ``results.md`` and the adversarial set in ``output_dir``; return the results' path."""
    t_start = time.perf_counter()
    job = load_job(cfg)
    device = resolve_device(cfg.device)
    rt = Runtime(device, resolve_precision(cfg.precision, device), ArtifactCache(cfg.cache.dir, cfg.cache.enabled),
                 progress=resolve_progress(cfg.progress), estimate=cfg.progress is not False)
    torch.manual_seed(job.seed)
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest algorithms (eval and attacks too)
        torch.backends.cudnn.benchmark = True
    results_key = spec_key("results", results_spec(job, rt.precision))
    found = rt.cache.load("results", results_key) if cfg.get("resume") and rt.cache.enabled else None

    with rt.timed("data"):
        source = dataset_source(cfg.dataset)
        data = load_data(cfg, source, rt)
    if found is not None:
        if not (changed := stale_artifacts(found[1]["results"]["meta"], job, data, rt.precision, device)):
            log.info("resume: this job's results are complete in the cache; not recomputed")
            return write_results(output_dir, {**found[1]["results"], "resumed": True})
        log.info("resume: the cached results were made with another %s (the data changed); recomputing",
                 ", ".join(changed))
    label = getattr(source, "describe", lambda: data.name)()
    check_attack_data(job, data)
    target = build_target(job, data, rt, loggers or [])
    base = {**describe(job, data, label), **recipe_fields(job, target, rt),
            "peak_agreement": round(peak_agreement(target, target.features["query"]), 4)}
    with rt.timed("eval_clean"):
        rows = clean_rows(base, score(target, target.features["query"], data, job.systems, job.topk), job)

    if job.suite:
        rows += evaluate_suite(job, data, target, base, lambda j: describe(j, data, label), rt, attacked_rows)
    adv = adversarial_set(job, data, target, lambda j: describe(j, data, label), rt)
    if adv is not None:
        rt.keys["adversarial_queries"] = adv.key
        with rt.timed("eval_adversarial"):
            scored = score_set(target, adv.images, adv.key, data, job, rt)
            targeted = None if adv.targets is None else targeted_scores(target, scored.z, data, adv.targets,
                                                                        job.systems, job.topk)
        rows += attacked_rows(base, scored.scores, job, adv, data, scored.changed, scored.logits, targeted)
        adv.save(output_dir / "adversarial_queries")

    rt.timings["total"] = round(time.perf_counter() - t_start, 3)
    meta = {"config": container(cfg), "versions": versions(), "device": device_name(device),
            "precision": rt.precision, "seed": job.seed, "cache_keys": rt.keys, "cache_hits": rt.cache.hits,
            "cache_builds": rt.cache.builds, "timings_s": rt.timings, "test_accuracy": target.test_accuracy,
            "dataset_label": label, **rt.info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = write_results(output_dir, {"meta": meta, "rows": rows})
    if rt.cache.enabled:
        rt.cache.save("results", results_key, {}, {"results": {"meta": meta, "rows": rows}},
                      inputs=rt.cache.inputs_of(rt.keys))  # resumed only while these are what made the rows
    log_results(loggers or [], rows, job, data, target.index, target.features["query"],
                None if adv is None else (adv.images, scored.z))
    return path

