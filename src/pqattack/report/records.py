"""The records a report is built from: jobs (one ``results.json`` each, with the resolved config and cache keys)
and rows (one mAP each), gathered from any mix of run folders, sweep folders and records files."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from .tables import dedupe_rows, with_record_fields

#: folders of a run that hold no records (not searched, nor are hidden folders such as .hydra or .cache)
NOT_RECORDS = {"wandb", "csv", "adversarial_queries"}


@dataclass
class JobRecord:
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
    def target(self) -> "SystemKey":
        """The retrieval system the job evaluates."""
        r, keys = self.rows[0], self.meta.get("cache_keys", {})
        return SystemKey(r["dataset"], r["model"], r.get("quantizer", "kmeans"), int(r["bits"]), keys.get("checkpoint"),
                      keys.get("codebooks"))


class SystemKey(NamedTuple):
    """A retrieval system: jobs with the same target share backbone, features, codebooks and clean rows."""

    dataset: str
    model: str
    quantizer: str
    bits: int
    checkpoint: str | None  # cache keys
    codebooks: str | None


@dataclass
class Records:
    """Everything found in the inputs: the jobs (for figures that reload artifacts), the rows (for tables), and the
    metas of jobs that collected files name but whose own folders are gone (``(records file, job meta)``; a fresh
    clone's ``results/``), for the list of sources."""

    files: list[Path]
    jobs: list[JobRecord]
    rows: list[dict[str, Any]]
    collected_jobs: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = isinstance(doc, dict) and isinstance(doc.get("rows"), list) and isinstance(doc.get("meta"), dict)
    return doc if ok else None


def _candidates(source: Path, exclude: Path | None) -> list[Path]:
    """``source`` itself, or the JSON files under it; hidden folders, ``NOT_RECORDS`` and ``exclude`` are
    not entered."""
    if source.is_file():
        return [source]
    found = []
    for folder, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in NOT_RECORDS
                         and (exclude is None or (Path(folder) / d).resolve() != exclude))
        found += [Path(folder) / n for n in sorted(names) if n.endswith(".json")]
    return found


def gather_records(sources: Iterable[str | Path], exclude: Path | None = None) -> Records:
    """Jobs and rows from files or folders (searched recursively; ``exclude``, e.g. the report's own folder,
    is skipped). A collected file (a sweep's ``results.json``, or ``report.collect``' record) adds its jobs'
    own ``results.json`` where they still exist, and its rows; rows repeated across jobs are kept once, and rows
    of one cell that differ stop the collection (``tables.TableError``, naming both files)."""
    exclude = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    for s in sources:
        files += _candidates(Path(s), exclude)
    jobs: list[JobRecord] = []
    collected: list[tuple[Path, list[dict[str, Any]]]] = []
    used: list[Path] = []
    seen: set[Path] = set()
    gone: dict[str, tuple[Path, dict[str, Any]]] = {}
    pending = list(files)
    while pending:
        path = pending.pop(0)
        doc = None if path.resolve() in seen else _read(path)
        seen.add(path.resolve())
        if doc is None:
            continue
        used.append(path)
        if "config" in doc["meta"]:
            jobs.append(JobRecord(path, doc["meta"], with_record_fields(doc["rows"], doc["meta"])))
            continue
        collected.append((path, doc["rows"]))
        for i, j in enumerate(doc["meta"].get("jobs", [])):
            job_file = Path(j.get("job_dir", "")) / "results.json"
            if j.get("job_dir") and job_file.is_file():
                pending.append(job_file)
            else:  # a job of several collected files is listed once
                gone.setdefault(j.get("job_dir") or f"{path}#{i}", (path, j))
    job_list = sorted(jobs, key=lambda j: str(j.path))
    sourced = [(str(j.path), r) for j in job_list for r in j.rows] + [(str(p), r) for p, rows in collected for r in rows]
    return Records(used, job_list, dedupe_rows([r for _, r in sourced], [p for p, _ in sourced]),
                   list(gone.values()))
