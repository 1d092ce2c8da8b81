"""Whole-job figures: ``make demo`` and ``experiment=table1`` end to end, and the memory of a sweep's jobs in one
process; each runs ``python -m pqattack`` in a subprocess."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .measure import Measured, release_memory, rss_mb, run_measured
from .records import record
from .workloads import REPO, TINY, cifar_folder


def stage_seconds(sweep_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in sorted(sweep_dir.glob("*/results.json")):
        for k, v in json.loads(p.read_text())["meta"].get("timings_s", {}).items():
            if k != "total":
                key = "attack" if k.startswith("attack_") else k
                out[key] = round(out.get(key, 0.0) + v, 2)
    return out


def figure_demo(device: torch.device, sz: dict[str, Any], extra: list[str] | None = None,
                name: str = "demo") -> list[dict[str, Any]]:
    """``make demo`` (``python -m pqattack experiment=demo``) with a fresh cache, then again on the same cache."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PQATTACK_CACHE": str(Path(tmp) / "cache"), "PYTHONWARNINGS": "ignore"}
        cmd = [sys.executable, "-m", "pqattack", "experiment=demo", *(extra or [])]
        wall, peak, _ = run_measured([*cmd, f"hydra.sweep.dir={tmp}/sweep1"], env, REPO)
        stages = stage_seconds(Path(tmp) / "sweep1")
        wall2, peak2, _ = run_measured([*cmd, f"hydra.sweep.dir={tmp}/sweep2"], env, REPO)
    notes = {"command": "python -m pqattack experiment=demo " + " ".join(extra or []),
             "fresh_cache_s": round(wall, 2), "cached_rerun_s": round(wall2, 2), "cached_rerun_peak_mb": peak2,
             "stage_seconds_fresh": stages,
             "baseline": "none: no plain switch exists; the second run (same cache) is reported as cached_rerun_s"}
    train = stages.get("train", 0.0)
    if train:
        notes["limit"] = (f"backbone training is {train:.1f} s of the {wall:.1f} s ({100 * train / wall:.0f} %): "
                          f"smallcnn, 8 epochs x 4,000 images, fp32 on {torch.get_num_threads()} CPU threads")
    fast = Measured(wall, peak, None, {})
    return [record(name, wall, None, "s", fast, None, notes)]


def figure_table1(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """``experiment=table1`` end to end from the JPEG files (fresh cache: decoding, 2 x 40 epochs, features,
    K-means, 18 attacks). GPU only."""
    if device.type != "cuda":
        notes = {"status": "not run on this device",
                 "reason": "GPU only: two 40-epoch trainings on 50,000 images take hours on CPU cores "
                           "(see train_recipe); run `python -m pqattack.bench --device cuda --figures table1`"}
        return [record("table1", None, None, "s", None, None, notes)]
    if cifar_folder() is None:
        raise RuntimeError("table1 needs data/cifar10-jpeg (make data)")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PQATTACK_CACHE": str(Path(tmp) / "cache"), "PYTHONWARNINGS": "ignore"}
        wall, peak, _ = run_measured([sys.executable, "-m", "pqattack", "experiment=table1", "progress=false",
                                      f"hydra.sweep.dir={tmp}/sweep"], env, REPO)
        stages = stage_seconds(Path(tmp) / "sweep")
    notes = {"stage_seconds": stages, "baseline": "not applicable (no plain end-to-end variant)",
             "what": "python -m pqattack experiment=table1, fresh cache, from data/cifar10-jpeg"}
    return [record("table1", wall, None, "s", Measured(wall, peak, None, {}), None, notes)]


class RssAfterJob(Callback):
    """Hydra callback of the ``sweep_memory`` figure: after each job of a sweep (in the sweep's process), the resident
    memory after ``gc`` and ``malloc_trim``, and the job's wall seconds, appended as a JSON line to ``out``."""

    def __init__(self, out: str) -> None:
        self.out, self.start = Path(out), 0.0

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        seconds = round(time.perf_counter() - self.start, 2)
        release_memory()
        with self.out.open("a") as f:
            f.write(json.dumps({"rss_mb": rss_mb(), "seconds": seconds,
                                "overrides": list(config.hydra.overrides.task)}) + "\n")


def figure_sweep_memory(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """RSS after each job of a sweep that Hydra's basic launcher runs in one process (``python -m pqattack -m``):
    tiny synthetic jobs over attacks x bits sharing one cache; the growth from job 2 (everything warm) to the last."""
    n = sz["sweep_jobs"]
    attacks, bits = ("basic", "apd", "aod")[:min(3, n)], (16, 24)[:math.ceil(n / 3)]
    with tempfile.TemporaryDirectory() as tmp:
        readings = Path(tmp) / "rss.jsonl"
        env = {**os.environ, "PQATTACK_CACHE": str(Path(tmp) / "cache"), "PYTHONWARNINGS": "ignore"}
        cmd = [sys.executable, "-m", "pqattack", "-m", *TINY, f"bits={','.join(map(str, bits))}",
               f"attack={','.join(attacks)}", f"hydra.sweep.dir={tmp}/sweep",
               f"+hydra.callbacks.rss_after_job._target_={RssAfterJob.__module__}.RssAfterJob",
               f"+hydra.callbacks.rss_after_job.out={readings}"]
        _, peak, _ = run_measured(cmd, env, REPO)
        jobs = [json.loads(x) for x in readings.read_text().splitlines()] if readings.exists() else []
    expected = len(attacks) * len(bits)
    if len(jobs) != expected or expected < 2:  # Hydra only warns when a callback fails: no reading, no growth
        raise RuntimeError(f"sweep_memory: {len(jobs)} RSS readings for the sweep's {expected} jobs (at least 2 "
                           f"needed); the RssAfterJob callback did not run after every job")
    rss = [j["rss_mb"] for j in jobs]
    growth = round(rss[-1] - rss[1], 1)
    notes = {"jobs": [" ".join(o for o in j["overrides"] if o.startswith(("attack=", "bits="))) for j in jobs],
             "rss_mb_after_each_job": rss, "job_seconds": [j["seconds"] for j in jobs],
             "growth_from_job_2_mb": growth,
             "config": "tests' TINY job (synthetic, smallcnn width 8), one sweep process (python -m pqattack -m), "
                       "one cache",
             "what": "value = RSS after the last job minus RSS after job 2 (gc + malloc_trim before each reading, in a "
                     "Hydra callback after each job); peak: the sweep process's peak RSS"}
    return [record("sweep_memory", growth, None, "MB", Measured(growth, peak, None, {}), None, notes)]
