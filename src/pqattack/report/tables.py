"""Results records -> tables. Every number in a table is rendered from ``results.json`` rows, never typed."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

ATTACK_ORDER = ("clean", "basic", "apd", "aod")
SYSTEM_ORDER = ("sdc", "adc")


def _order(value: Any, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), str(value))


def load_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of every ``results.json`` given (files, or folders searched recursively)."""
    rows: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            rows += json.loads(f.read_text())["rows"]
    return rows


def dedupe_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep one row per (dataset, model, quantizer, bits, M, K, attack, system): clean rows repeat across jobs."""
    seen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = tuple(r.get(k) for k in ("dataset", "model", "quantizer", "bits", "M", "K", "attack", "system"))
        seen.setdefault(key, r)
    return list(seen.values())


def markdown_table(rows: list[dict[str, Any]], value: str = "map", digits: int = 1) -> str:
    """The paper's Table 1 layout: one block per dataset; columns model x bits; rows system x attack."""
    rows = dedupe_rows(rows)
    out: list[str] = []
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[r.get("dataset_label") or r["dataset"]].append(r)
    for dataset, drows in by_dataset.items():
        cols = sorted({(r["model"], r.get("quantizer", "kmeans"), int(r["bits"])) for r in drows})
        cell = {(r["system"], r["attack"], r["model"], r.get("quantizer", "kmeans"), int(r["bits"])): r[value]
                for r in drows}
        lines = [f"**{dataset}**, mAP (%) over the full ranking" if value == "map" else f"**{dataset}**, {value}", ""]
        header = ["system", "attack"] + [f"{m}{'' if q == 'kmeans' else '+' + q} {b}b" for m, q, b in cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        systems = sorted({r["system"] for r in drows}, key=lambda s: _order(s, SYSTEM_ORDER))
        attacks = sorted({r["attack"] for r in drows}, key=lambda a: _order(a, ATTACK_ORDER))
        for s in systems:
            for a in attacks:
                vals = [cell.get((s, a, *c)) for c in cols]
                lines.append("| " + " | ".join([s.upper(), a] + ["-" if v is None else f"{v:.{digits}f}"
                                                                   for v in vals]) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"
