"""Collect ``results.json`` records (runs or sweep folders) into one committed table with its provenance:
``python -m pqattack.report.collect <dirs...> --out results/<name> --title ... --command ...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..attacks.config import OFF_VALUES
from ..defense.config import AdversarialTrainingConfig, defense_config, setting_defaults
from .defense import has_defenses, summary_markdown
from .tables import TableError, dedupe_rows, render_tables, with_record_fields


RUN_ONLY_KEYS = ("resume", "progress", "log_level", "cache")  # config keys that do not change what a job computes


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _off(key: str, value: Any) -> bool:
    """Whether ``value`` is a setting's off value: what a record made before the setting existed computed with (a
    defense setting's: its schema default, ``defense=none`` for a record without a defense)."""
    group, _, name = key.rpartition(".")
    defaults = setting_defaults() if group == "defense" else {}
    return (value in (None, False, 0, [], "") or OFF_VALUES.get(name) == value
            or (name in defaults and defaults[name] == value))


def same_job(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two job records ran one configuration: equal in every setting but the run-only ones, a setting that
    one of them lacks (added to the framework after it ran) counting as equal when the other has it off."""
    if not a.get("config") or not b.get("config"):
        return False
    la, lb = (_leaves({k: v for k, v in m["config"].items() if k not in RUN_ONLY_KEYS}) for m in (a, b))
    return all(la[k] == lb[k] if k in la and k in lb else _off(k, la.get(k, lb.get(k))) for k in la.keys() | lb.keys())


def supersedes(later: dict[str, Any], earlier: dict[str, Any]) -> bool:
    """Whether a later job record remakes every row of an earlier one: the same configuration (``same_job``), or
    the same but for a robust evaluation whose members include all of the earlier one's (its rows, the worst case
    among them, are all made again)."""
    if same_job(later, earlier):
        return True
    suites = [list((m.get("config") or {}).get("eval", {}).get("suite") or []) for m in (later, earlier)]
    if not suites[1] or not set(map(str, suites[1])) <= set(map(str, suites[0])):
        return False
    strip = [{**m, "config": {**m["config"], "eval": {**m["config"]["eval"], "suite": []}}} for m in (later, earlier)]
    return same_job(*strip)


def write_table(sources: list[str | Path], out_prefix: str | Path, title: str, command: str,
                replace: bool = False) -> Path:
    """Collect rows from ``sources`` into ``<out_prefix>.json`` and render ``<out_prefix>.md`` with the
    command, hardware, versions and wall time taken from the records' own metadata.

    ``replace``: the sources are generations, oldest first (a committed record, then the re-run of the jobs a fix
    changed). A later source's row replaces an earlier source's row of its cell, and a later job replaces the
    record of an earlier job with its configuration; rows and jobs no later source re-made are kept."""
    files: list[Path] = []
    generation_of: list[int] = []
    for generation, s in enumerate(sources):
        s = Path(s)
        if not s.exists():
            raise TableError(f"source {s} does not exist (a results.json, or a run or sweep folder holding them)")
        found = [s] if s.is_file() else sorted(s.rglob("results.json"))
        if not found:
            raise TableError(f"source {s} holds no results.json (a run or sweep folder holds one per job)")
        per_job = [f for f in found if "jobs" not in json.loads(f.read_text())["meta"]]
        files += per_job or found  # a sweep folder: its jobs' own records, not the collected copy too
        generation_of += [generation] * len(per_job or found)
    jobs = [json.loads(f.read_text()) for f in files]
    for j in jobs:
        j["rows"] = with_record_fields(j["rows"], j["meta"])
    for f, j in zip(files, jobs):
        j["meta"].setdefault("job_dir", str(f.parent))  # lets the report reload the job's artifacts
    sourced_metas = [(g, m) for g, j in zip(generation_of, jobs) for m in (j["meta"].get("jobs") or [j["meta"]])]
    if replace:  # an earlier job that a later source ran again (or with a larger suite) is gone with its rows
        sourced_metas = [(g, m) for g, m in sourced_metas
                         if not any(g2 > g and supersedes(m2, m) for g2, m2 in sourced_metas)]
    job_metas = [m for _, m in sourced_metas]
    rows = dedupe_rows([r for j in jobs for r in j["rows"]], [str(f) for f, j in zip(files, jobs) for _ in j["rows"]],
                       [g for g, j in zip(generation_of, jobs) for _ in j["rows"]] if replace else None)
    devices = sorted({m.get("device", "?") for m in job_metas})
    job_seconds = sum(float((m.get("timings_s") or {}).get("total", 0.0)) for m in job_metas)

    def checkpoint_of(m: dict[str, Any]) -> tuple[str, str]:
        """The job's last-trained checkpoint: its name, and the meta key of its training record."""
        cfg = m.get("config") or {}
        kind = cfg.get("quantizer", {}).get("kind", "kmeans")
        name = m.get("model") or cfg.get("model", {}).get("name", "?")
        record = "training"
        if kind != "kmeans":
            name, record = f"{name}+{kind} {cfg.get('bits')}b", "pqn_training"
        defense = defense_config(cfg.get("defense"))
        if isinstance(defense, AdversarialTrainingConfig):  # a checkpoint of its own, named as its rows name it
            name, record = f"{name} {defense.label()}", "defense_training"
        return name, record

    def recipe_of(m: dict[str, Any]) -> str:
        cfg = m.get("config") or {}
        epochs = (cfg.get("trainer") or {}).get("max_epochs")
        return f"{epochs} epochs, {m.get('precision', '?')}" + (f", seed {cfg['seed']}" if cfg.get("seed") else "")

    recipes: dict[str, set[str]] = {}
    for m in job_metas:
        recipes.setdefault(checkpoint_of(m)[0], set()).add(recipe_of(m))

    def named(m: dict[str, Any]) -> tuple[str, str]:
        """``checkpoint_of``, with the recipe where the jobs hold that checkpoint name with several (two seeds,
        two epoch counts), so that their training times and accuracies are not taken for one another's."""
        name, record = checkpoint_of(m)
        return (f"{name} ({recipe_of(m)})" if len(recipes[name]) > 1 else name), record

    train_seconds = {}
    for m in job_metas:
        name, record = named(m)
        t = m.get(record) or {}
        if t.get("train_seconds") is not None:
            train_seconds[name] = t["train_seconds"]
    versions = job_metas[0].get("versions", {}) if job_metas else {}
    accuracy = {named(m)[0]: m.get("test_accuracy") for m in job_metas if m.get("test_accuracy") is not None}
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    record = {"meta": {"title": title, "command": command, "devices": devices, "versions": versions,
                       "sum_of_job_seconds": round(job_seconds, 1), "training_seconds_per_checkpoint": train_seconds,
                       "sources": [str(f) for f in files], "jobs": job_metas}, "rows": rows}
    (out_prefix.with_suffix(".json")).write_text(json.dumps(record, indent=1, default=str))
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"Hardware: {', '.join(devices)}. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
             "", f"Wall time of these jobs, summed: {job_seconds / 60:.1f} min. Backbone training when its checkpoint "
             f"was built (then cached): " + ", ".join(f"{k} {t / 60:.1f} min" for k, t in sorted(train_seconds.items()))
             + ".",
             "", "Backbone test accuracy (%, query + database images): "
             + (", ".join(f"{k} {v:.1f}" for k, v in sorted(accuracy.items())) or "not measured (no classifier head "
                "on the retrieval feature: a triplet-only PQN)") + ".", "", render_tables(rows)]
    if has_defenses(rows):
        lines += ["", summary_markdown(rows)]
    (out_prefix.with_suffix(".md")).write_text("\n".join(lines))
    return out_prefix.with_suffix(".md")


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Render results.json records (files or folders) as one table.")
    p.add_argument("sources", nargs="+")
    p.add_argument("--out", required=True, help="output prefix, e.g. results/table1_cpu")
    p.add_argument("--title", default="Results")
    p.add_argument("--command", required=True,
                   help="the command that produced the records (every results page names its command)")
    p.add_argument("--replace", action="store_true",
                   help="the sources are generations, oldest first: a later source's rows and jobs replace an earlier "
                        "one's of the same cell or configuration (a committed record, then the jobs a fix re-ran)")
    a = p.parse_args(argv)
    try:
        print(write_table(a.sources, a.out, a.title, a.command, replace=a.replace))
    except TableError as exc:
        print(f"table error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
