"""A figure's JSON record, its target, the line printed for it, and the markdown section of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UsageError
from .measure import Measured
from .workloads import CIFAR_TRAIN_IMAGES, RECIPE_EPOCHS

# The targets: (device, comparison, value); a figure without one on this device reports meets_target null.
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "train_recipe": ("cuda", "<=", 30.0, "s"),        # ResNet18, 40 epochs
    "train_recipe_vgg16": ("cuda", "<=", 20.0, "s"),  # VGG16, 40 epochs
    "attack_resnet18": ("cuda", ">=", 30_000.0, "queries/s"),
    "table1": ("cuda", "<=", 90.0, "s"),
    "demo": ("cpu", "<=", 60.0, "s"),
    "retrieval_9k_sdc": ("cpu", "<=", 0.5, "s"),
    "retrieval_9k_adc": ("cpu", "<=", 0.5, "s"),
    "retrieval_1m_adc": ("cpu", "<=", 30.0, "s"),
    "sweep_memory": ("any", "<=", 32.0, "MB"),  # RSS growth from job 2 to the last: allocator noise only
    **{f"attack_cost_{loss}": ("any", "<=", 1.10, "x APD") for loss in ("aod", "basic", "margin", "center",
                                                                       "center_targeted", "far", "contrast")},
}

HIGHER_IS_BETTER = {"images/s", "queries/s"}


def record(figure: str, fast: float | None, baseline: float | None, unit: str, f: Measured | None,
           b: Measured | None, notes: dict[str, Any]) -> dict[str, Any]:
    ratio = None
    if fast and baseline:
        ratio = fast / baseline if unit in HIGHER_IS_BETTER else baseline / fast
    return {"figure": figure, "fast_value": None if fast is None else round(fast, 4),
            "baseline_value": None if baseline is None else round(baseline, 4), "unit": unit,
            "ratio": None if ratio is None else round(ratio, 2),
            "fast_peak_mb": f.peak if f else None, "baseline_peak_mb": b.peak if b else None,
            "fast_gpu_peak_mb": f.gpu_peak if f else None, "baseline_gpu_peak_mb": b.gpu_peak if b else None,
            "notes": {**notes, "fast_rss_start_mb": f.rss_start if f else None,
                      "baseline_rss_start_mb": b.rss_start if b else None,
                      "fast_cpu_share": f.cpu_share if f else None, "baseline_cpu_share": b.cpu_share if b else None,
                      "fast_others_cpu_share": f.others_share if f else None,
                      "baseline_others_cpu_share": b.others_share if b else None}}


def target_of(figure: str, device: str) -> tuple[str | None, Callable[[float], bool] | None]:
    t = TARGETS.get(figure)
    if t is None:
        return None, None
    dev, op, value, unit = t
    where = {"cuda": "GPU (one H100)", "cpu": "CPU (2 cores)", "any": "any device"}[dev]
    text = f"{op} {value:g} {unit} on {where}"
    if dev not in (device, "any"):
        return text, None
    return text, (lambda v: v <= value) if op == "<=" else (lambda v: v >= value)



def device_label(device: torch.device) -> str:
    from ..runtime import cpu_model

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    s = f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{s} {unit}".strip()


def line(rec: dict[str, Any]) -> str:
    u = rec["unit"]
    base = fmt(rec["baseline_value"], u)
    if rec["figure"].startswith("demo") and "cached_rerun_s" in rec["notes"]:
        base = f"n/a (cached re-run {fmt(rec['notes']['cached_rerun_s'], 's')})"
    ratio = "n/a" if rec["ratio"] is None else f"{rec['ratio']:.2f}x"
    peak = fmt(rec["fast_peak_mb"], "MB")
    if rec.get("fast_gpu_peak_mb") is not None:
        peak += f" (GPU {fmt(rec['fast_gpu_peak_mb'], 'MB')})"
    extra = f" | {rec['notes'].get('reason')}" if rec["fast_value"] is None and rec["notes"].get("reason") else ""
    return f"{rec['figure']}: fast {fmt(rec['fast_value'], u)} | baseline {base} | ratio {ratio} | peak {peak}{extra}"


DOCUMENT_KEYS = ("device", "machine", "date", "command", "versions", "records")  # what markdown() reads
RECORD_KEYS = ("figure", "fast_value", "baseline_value", "unit", "ratio", "fast_peak_mb", "baseline_peak_mb", "target",
               "meets_target", "command", "notes")


def read_document(path: Path) -> dict[str, Any]:
    """A benchmark's JSON file (``--out``) for ``--markdown``; a ``UsageError`` naming it when it is missing, not
    JSON, or not a benchmark's records."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"--markdown {path}: cannot read it ({exc.strerror}); give a benchmark's JSON file "
                         f"(--out, e.g. outputs/bench/cpu.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--markdown {path}: not JSON ({exc})") from None
    records = doc.get("records") if isinstance(doc, dict) else None
    missing = ["records (a list)"] if not isinstance(records, list) else [k for k in DOCUMENT_KEYS if k not in doc]
    missing += [f"{k} in record {i}" for i, r in enumerate(records or []) for k in RECORD_KEYS
                if not isinstance(r, dict) or k not in r]
    if missing:
        raise UsageError(f"--markdown {path}: not a benchmark's records (no {', '.join(missing[:3])}); give the JSON "
                         f"file a run wrote (--out, e.g. outputs/bench/cpu.json)")
    return doc


def markdown(doc: dict[str, Any]) -> str:
    """A machine's section of docs/benchmarks.md from its JSON file."""
    v = doc["versions"]
    title = "GPU" if doc["device"] == "cuda" else "CPU"
    lines = [f"### {title}: {doc['machine']}", "",
             f"Measured {doc['date']} with `{doc['command']}`" + (" (quick sizes)" if doc.get("quick") else "") +
             f"; torch {v['torch']}, numpy {v['numpy']}, faiss {v['faiss']}, Python {v['python']}" +
             (f"; {doc['total_wall_s']} s in all." if "total_wall_s" in doc else "."), "",
             "| Figure | Fast | Baseline | Speed-up | Peak RSS fast / baseline (MB) | Target | Met | Command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["records"]:
        n = r["notes"]
        base = fmt(r["baseline_value"], r["unit"])
        if "cached_rerun_s" in n:
            base = f"n/a; cached re-run {fmt(n['cached_rerun_s'], 's')}"
        fast = fmt(r["fast_value"], r["unit"]) if r["fast_value"] is not None else "not run (see below)"
        if n.get("fast_projected"):
            fast += " (projected)"
        if n.get("baseline_projected") and r["baseline_value"] is not None:
            base += " (projected)"
        peaks = " / ".join(fmt(x) for x in (r["fast_peak_mb"], r["baseline_peak_mb"]))
        if r.get("fast_gpu_peak_mb") is not None:
            peaks += f" (GPU {fmt(r['fast_gpu_peak_mb'])} / {fmt(r.get('baseline_gpu_peak_mb'))})"
        met = {True: "yes", False: "**no**", None: "-"}[r["meets_target"]]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['figure']} | {fast} | {base} | {ratio} | {peaks} | {r['target'] or '-'} | {met} | "
                     f"`{r['command']}` |")
    details = []
    for r in doc["records"]:
        n = r["notes"]
        keep = {k: n[k] for k in ("fast_precision", "fast_images_per_s_fp32", "fast_images_per_s_bf16",
                                  "fast_queries_per_s_fp32", "fast_queries_per_s_bf16", "fast_map", "baseline_map",
                                  "fast_map_on_baseline_queries", "baseline_queries", "search_s", "map_s",
                                  "previous_path_s", "speedup_vs_previous_path", "search_full_ranking_s", "distances_s",
                                  "effective_tflops_fast", "flops_per_item",
                                  "rss_mb_after_each_job", "stage_seconds_fresh", "stage_seconds", "data",
                                  "recommendation", "reason", "fast_others_cpu_share", "baseline_others_cpu_share",
                                  "seconds_per_batch", "ratios_per_round", "bf16")
                if n.get(k) is not None}
        for k, val in n.items():
            if k.startswith("at_") and isinstance(val, dict):
                keep[k] = {x: val[x] for x in ("fast_s", "baseline_s", "previous_path_s", "fast_map") if x in val}
        if keep:
            details.append(f"- `{r['figure']}`: " + "; ".join(f"{k} {json.dumps(val)}" for k, val in keep.items()))
    unmet = [r for r in doc["records"] if r["meets_target"] is False]
    if unmet:
        lines += ["", "Targets not met on this machine:"]
        lines += [f"- `{r['figure']}`: {fmt(r['fast_value'], r['unit'])}, target {r['target']}. Limit: "
                  f"{r['notes'].get('limit', 'not measured')}" for r in unmet]
    other = []
    for r in doc["records"]:
        spec, flops = r.get("target_spec"), r["notes"].get("flops_per_item")
        if r["meets_target"] is None and spec and spec["device"] not in (doc["device"], "any") and flops:
            rate = spec["value"] if spec["unit"] != "s" else RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES / spec["value"]
            unit = "queries" if spec["unit"] == "queries/s" else "images"
            other.append(f"- `{r['figure']}` {r['target']}: {rate:,.0f} {unit}/s x {flops / 1e9:.2f} GFLOP (counted "
                         f"here) = {rate * flops / 1e12:.0f} TFLOP/s sustained")
    if other:
        lines += ["", "Targets of another device, not measured here; what they ask of the hardware:", "", *other]
    if details:
        lines += ["", "Details (from the JSON records):", "", *details]
    return "\n".join(lines) + "\n"


def section_id(doc: dict[str, Any]) -> str:
    """The markers' name of a record's section: ``cuda``, or ``cpu:<processor>`` (``cpu:amd-epyc``,
    ``cpu:intel-xeon-processor``), so that each CPU model keeps a section of its own."""
    if doc["device"] != "cpu":
        return str(doc["device"])
    processor = doc["machine"].split(",")[0].lower().replace("(r)", "").replace("(tm)", "")
    return "cpu:" + ("-".join(re.findall(r"[a-z0-9]+", processor)) or "unknown")


def update_document(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc``'s section into the markdown file ``path`` between its markers (appended when it has none).
    The markers count only on lines of their own (the prose may quote them); a section with a lone marker, or
    several, is refused before anything is written."""
    name = section_id(doc)
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = path.read_text() if path.is_file() else ""

    def lines_of(marker: str) -> list[re.Match[str]]:
        return list(re.finditer(rf"^[ \t]*{re.escape(marker)}[ \t]*$", text, flags=re.MULTILINE))

    starts, ends = lines_of(start), lines_of(end)
    if (len(starts), len(ends)) not in ((0, 0), (1, 1)) or (starts and ends[0].start() < starts[0].end()):
        raise UsageError(f"--update {path}: section {name} has {len(starts)} start and {len(ends)} end marker "
                         f"lines, or its end before its start; expected one of each, or neither (fix them by hand)")
    section = f"{start}\n{markdown(doc)}{end}"
    if starts:
        text = text[:starts[0].start()] + section + text[ends[0].end():]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)

