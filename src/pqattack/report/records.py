"""The records a report is built from: jobs (one ``results.json`` each, with the resolved config and cache keys)
and rows (one mAP each), gathered from any mix of run folders, sweep folders and records files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .tables import dedupe_rows

#: folders inside run folders that hold no records (skipped when searching a folder)
NOT_RECORDS = {"wandb", "csv", "adversarial_queries", ".hydra", ".cache"}


@dataclass
class Job:
    """One job's ``results.json``: its rows and its meta (``config``, ``cache_keys``, ``precision``, ...)."""

    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def attack_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["attack"] != "clean"]

    @property
    def attack(self) -> str | None:
        """The job's adversarial query set ('basic', 'apd', 'aod'), None for a clean-only job."""
        return self.attack_rows[0]["attack"] if self.attack_rows else None

    @property
    def white_box(self) -> bool:
        return not any(r.get("transfer") for r in self.attack_rows)

    @property
    def target(self) -> tuple:
        """What the job evaluates: dataset, model, quantizer, bits and the checkpoint and codebooks it used."""
        r, keys = self.rows[0], self.meta.get("cache_keys", {})
        return (r["dataset"], r["model"], r.get("quantizer", "kmeans"), int(r["bits"]), keys.get("checkpoint"),
                keys.get("codebooks"))


@dataclass
class Records:
    """Everything found in the inputs: the jobs (for figures that reload artifacts) and the rows (for tables)."""

    files: list[Path]
    jobs: list[Job]
    rows: list[dict[str, Any]]
    conflicts: list[tuple[dict[str, Any], dict[str, Any]]]  # same cell, different values: (kept, dropped)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = isinstance(doc, dict) and isinstance(doc.get("rows"), list) and isinstance(doc.get("meta"), dict)
    return doc if ok else None


def _candidates(source: Path, exclude: Path | None) -> list[Path]:
    if source.is_file():
        return [source]
    found = []
    for p in sorted(source.rglob("*.json")):
        inside = p.relative_to(source).parts[:-1]
        if NOT_RECORDS & set(inside) or (exclude is not None and exclude in p.resolve().parents):
            continue
        found.append(p)
    return found


def collect(sources: Iterable[str | Path], exclude: Path | None = None) -> Records:
    """Jobs and rows from files or folders (searched recursively; ``exclude``, e.g. the report's own folder,
    is skipped). A collected file (a sweep's ``results.json``, or ``report.tables``' record) adds its jobs'
    own ``results.json`` where they still exist, and its rows; rows repeated across jobs are kept once."""
    exclude = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    for s in sources:
        files += _candidates(Path(s), exclude)
    jobs: dict[Path, Job] = {}
    collected_rows: list[dict[str, Any]] = []
    used: list[Path] = []
    pending = list(files)
    while pending:
        path = pending.pop(0)
        doc = _read(path)
        if doc is None or path.resolve() in jobs:
            continue
        used.append(path)
        if "config" in doc["meta"]:
            jobs[path.resolve()] = Job(path, doc["meta"], doc["rows"])
            continue
        collected_rows += doc["rows"]
        for j in doc["meta"].get("jobs", []):
            job_file = Path(j.get("job_dir", "")) / "results.json"
            if j.get("job_dir") and job_file.is_file():
                pending.append(job_file)
    job_list = sorted(jobs.values(), key=lambda j: str(j.path))
    all_rows = [r for j in job_list for r in j.rows] + collected_rows
    rows = dedupe_rows(all_rows)
    kept = {id(r) for r in rows}
    by_cell = {_cell(r): r for r in rows}
    conflicts = [(by_cell[_cell(r)], r) for r in all_rows
                 if id(r) not in kept and r["map"] != by_cell[_cell(r)]["map"]]
    return Records(used, job_list, rows, conflicts)


def _cell(row: dict[str, Any]) -> tuple:
    """The cell a row fills: the key ``tables.dedupe_rows`` keeps one row per."""
    return tuple(row.get(k) for k in ("dataset", "model", "quantizer", "bits", "M", "K", "attack", "system",
                                      "source_model", "source_bits"))
