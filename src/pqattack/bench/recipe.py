"""Figures derived from other measurements: the recipe's wall time projected from this run's training
throughput (CPU), the training times and Table 1's wall time from a GPU run's table1 records, and torch.compile
against eager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from .jobs import stage_seconds
from .measure import Measured, measure
from .records import record
from .training import framework_fit
from .workloads import CIFAR_TRAIN_IMAGES, RECIPE_EPOCHS, training_images


def derive_recipe(records: list[dict[str, Any]], device: str) -> dict[str, Any] | None:
    """On the CPU the recipe's wall time is projected, so it is derived from the ``train_resnet18`` record of this run
    (same throughputs) instead of measuring them again."""
    src = next((r for r in records if r["figure"] == "train_resnet18"), None)
    if src is None:
        return None
    n = src["notes"]
    work = RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES
    rec = {**src, "figure": "train_recipe", "unit": "s", "fast_value": round(work / src["fast_value"], 1),
           "baseline_value": round(work / src["baseline_value"], 1), "ratio": src["ratio"]}
    rec["notes"] = {"fast_projected": True, "baseline_projected": True, "derived_from": "train_resnet18",
                    "from_command": src["command"],
                    "what": f"{RECIPE_EPOCHS} epochs x {CIFAR_TRAIN_IMAGES} images, ResNet18 "
                            f"(conf/trainer/default.yaml)",
                    "fast": f"{work} images / {src['fast_value']:.1f} images/s ({n['fast_precision']}, batch "
                            f"{n['fast_batch']}); at fp32: {work / n['fast_images_per_s_fp32']:.0f} s "
                            f"(precision=auto runs {n.get('framework_precision_auto', '?')} here)",
                    "baseline": f"{work} images / {src['baseline_value']:.1f} images/s",
                    "data": n.get("data"), "limit": n.get("limit"), "flops_per_item": n.get("flops_per_item")}
    return rec



def figure_train_compile(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """Training with ``trainer.compile=true`` against without (the framework's precision on the device): steady
    images/s of each, and whether the compile time pays off within the recipe's 40 epochs."""
    arch = sz["compile_arch"]
    batch, w, s = sz["train_batch_fast"], sz["train_warmup"], sz["train_steps"]
    images, labels, source = training_images(batch * (w + s))
    precision = "bf16" if device.type == "cuda" else "fp32"
    fits: dict[bool, tuple[float, float]] = {}
    peaks: dict[bool, Measured] = {}
    for compiled in (False, True):
        def run(c: bool = compiled) -> tuple[float, dict[str, Any]]:
            rate, fit_s = framework_fit(arch, images, labels, device, precision, batch, 1, w, s, compile=c)
            return rate, {"fit_s": fit_s}
        m = measure(device, run)
        fits[compiled], peaks[compiled] = (m.value, m.extra["fit_s"]), m
    (eager, eager_fit), (fast, fast_fit) = fits[False], fits[True]
    compile_s = max(0.0, fast_fit - eager_fit)  # the same batches: the difference is compilation (and its warm-up)
    saved_per_epoch = CIFAR_TRAIN_IMAGES / eager - CIFAR_TRAIN_IMAGES / fast
    break_even = compile_s / saved_per_epoch if saved_per_epoch > 0 else None
    notes = {"data": source, "arch": arch, "precision": precision, "batch": batch, "warmup_batches": w,
             "timed_batches": s, "compile_s": round(compile_s, 1), "eager_fit_s": round(eager_fit, 1),
             "compiled_fit_s": round(fast_fit, 1),
             "break_even_epochs": None if break_even is None else round(break_even, 1),
             "pays_within_recipe": break_even is not None and break_even < RECIPE_EPOCHS,
             "fast": "training.fit with trainer.compile=true (torch.compile of the backbone's feature extractor)",
             "baseline": "training.fit, eager (trainer.compile=false, the default)"}
    return [record("train_compile", fast, eager, "images/s", peaks[True], peaks[False], notes)]


def table1_status(run: Path) -> dict[str, Any]:
    """``status.json`` of a run of ``experiment=table1`` (tools/gpu-run's table1 stage folder); a ``UsageError``
    naming ``--table1-run`` when ``run`` is not such a folder (checked before any figure runs)."""
    path = run / "status.json"
    what = "a table1 stage folder of tools/gpu-run holds status.json and sweep/"
    try:
        status = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--table1-run {run}: cannot read {path} ({exc.strerror}); {what}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--table1-run {run}: {path} is not JSON ({exc})") from None
    commands = status.get("commands") if isinstance(status, dict) else None
    if not isinstance(commands, list) or not any(isinstance(c, dict) and c.get("name") == "sweep" for c in commands):
        raise UsageError(f"--table1-run {run}: {path} records no sweep command; {what}")
    return status


def figures_from_table1(run: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recipe's training times and Table 1's end-to-end time, read from a run of ``experiment=table1``
    (tools/gpu-run's table1 stage folder: ``status.json`` with the command's wall time and whether the cache was
    fresh, and the sweep's job records) instead of training the same backbones again. The baselines are projected
    from this run's ``train_<arch>`` baseline throughput."""
    status = table1_status(run)
    sweep = next(c for c in status["commands"] if c.get("name") == "sweep")
    jobs = [json.loads(p.read_text()) for p in sorted((run / "sweep").glob("*/results.json"))]
    out = []
    for arch, figure in (("resnet18", "train_recipe"), ("vgg16", "train_recipe_vgg16")):
        built = next((j for j in jobs if j["meta"]["config"]["model"]["arch"] == arch
                      and any(b.startswith("checkpoint/") for b in j["meta"]["cache_builds"])), None)
        if built is None:
            continue
        cfg, train = built["meta"]["config"], built["meta"]["training"]
        images = cfg["dataset"].get("num_train") or CIFAR_TRAIN_IMAGES
        work = cfg["trainer"]["max_epochs"] * images
        base = next((r for r in records if r["figure"] == f"train_{arch}"), None)
        base_s = work / base["baseline_value"] if base and base["baseline_value"] else None
        notes = {"what": f"{cfg['trainer']['max_epochs']} epochs x {images} images, {arch}, batch "
                         f"{cfg['trainer']['batch_size']}, {built['meta']['precision']} (experiment=table1's own "
                         f"training)", "from": str(run / "sweep"), "epoch_seconds": train.get("epoch_seconds"),
                 "baseline_projected": True, "baseline": f"{work} images / the baseline's images/s in train_{arch}"}
        out.append(record(figure, train["train_seconds"], base_s, "s", Measured(train["train_seconds"], None, None, {}),
                          None, notes))
    fresh = bool(status.get("fresh_cache")) and status.get("status") == "ok"
    notes = {"what": "python -m pqattack experiment=table1, from the JPEG files, as run by tools/gpu-run's table1 stage",
             "command": "python " + " ".join(sweep["argv"]), "stage_seconds": stage_seconds(run / "sweep"),
             "baseline": "not applicable (no plain end-to-end variant)"}
    if not fresh:
        notes["reason"] = "the table1 run did not start from an empty cache, or did not finish"
    wall = sweep["wall_s"] if fresh else None
    out.append(record("table1", wall, None, "s", Measured(wall or 0.0, None, None, {}), None, notes))
    return out

