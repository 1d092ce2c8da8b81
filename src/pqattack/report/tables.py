"""Results records -> tables. Every number in a table is rendered from ``results.json`` rows, never typed."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

WORST = "worst-case"  # the attack name of a robust evaluation's per-query worst-case rows (``stages.suite``)
ATTACK_ORDER = ("clean", "basic", "apd", "aod", "margin", "center", "center_targeted")
SYSTEM_ORDER = ("sdc", "adc")


#: What a table cell is: the system under attack, the attack and its settings, and the recipe that made the
#: numbers (backbone epochs, PQN epochs, device, precision). Rows of one cell must agree on everything else.
CELL_FIELDS = ("dataset", "queries", "model", "quantizer", "bits", "M", "K", "attack", "system", "source_model",
               "source_bits",
               "similarity", "temperature", "peak", "eps", "step", "iters", "kappa", "margin_focus", "target_class",
               "temperature_final", "logit_norm", "restarts", "restart_pick", "momentum", "diversity",
               "step_schedule", "eot", "defense", "oblivious", "epochs", "pqn_epochs", "device", "precision")
PAPER_QUERIES = 1000  # the paper's CIFAR-10 protocol: 1,000 test images as queries
PAPER_ATTACK = {"similarity": "dot", "eps": 8 / 255, "step": 0.01, "iters": 5}
#: the loop options beyond the paper as a label shows them (a row holds None where an option is off)
LOOP_LABELS = {"temperature_final": "T->{:g}", "logit_norm": "logit-norm", "restarts": "restarts={}",
               "restart_pick": "pick={}", "momentum": "MI={:g}", "diversity": "DI={:g}", "step_schedule": "{}"}
MARGIN_KAPPA = 0.1  # conf/attack/margin.yaml's kappa: a label names another


class TableError(ValueError):
    """Rows that cannot be put in one table; the message names their source files."""


def default_temperature(row: dict[str, Any]) -> float:
    """The target's own soft-assignment temperature: 1 (eq. 7 as printed) for K-means, 1 / alpha for PQN."""
    return 1.0 / float(row["alpha"]) if row.get("quantizer") == "pqn" and row.get("alpha") else 1.0


def is_paper_attack(row: dict[str, Any]) -> bool:
    """Clean rows, and attacked rows made with the paper's soft assignment (the target's own temperature, the
    index's peak code) and budget."""
    if row.get("temperature") is not None and abs(float(row["temperature"]) - default_temperature(row)) > 1e-9:
        return False
    if row.get("peak") not in (None, "index"):
        return False
    if any(row.get(k) is not None for k in LOOP_LABELS) or row.get("defense") is not None or row.get("eot"):
        return False
    return all(row.get(k) is None or abs(float(row[k]) - v) < 1e-9 if k != "similarity" else row.get(k) in (None, v)
               for k, v in PAPER_ATTACK.items())


def attack_label(row: dict[str, Any]) -> str:
    """The attack's name, with the settings that differ from the defaults: ``aod (cos, T=0.1)``,
    ``margin (kappa=0.5, MI=1, restarts=4)``."""
    diff = []
    if row.get("similarity") not in (None, "dot"):
        diff.append(row["similarity"])
    if row.get("peak") not in (None, "index"):
        diff.append(f"peak={row['peak']}")
    if row.get("temperature") is not None and abs(float(row["temperature"]) - default_temperature(row)) > 1e-9:
        diff.append(f"T={row['temperature']:g}")
    for k, short in (("eps", "eps"), ("step", "step"), ("iters", "iters")):
        if row.get(k) is not None and abs(float(row[k]) - PAPER_ATTACK[k]) > 1e-9:
            diff.append(f"{short}={row[k] * 255:.0f}/255" if k == "eps" else f"{short}={row[k]:g}")
    if row.get("kappa") is not None and abs(float(row["kappa"]) - MARGIN_KAPPA) > 1e-9:
        diff.append(f"kappa={row['kappa']:g}")
    if row.get("margin_focus"):
        diff.append("focus")
    if row.get("target_class") is not None:
        diff.append(f"target={row['target_class']}")
    diff += [fmt.format(row[k]) for k, fmt in LOOP_LABELS.items() if row.get(k) is not None]
    if row.get("eot"):
        diff.append(f"EOT={row['eot']}")
    if row.get("oblivious"):
        diff.append("oblivious")
    return row["attack"] + (f" ({', '.join(diff)})" if diff else "")


def recipe_label(row: dict[str, Any]) -> str:
    """How a row's numbers were made: ``2 epochs, cpu, bf16`` (``+ PQN 1 epoch`` for PQN targets; ``, 100 queries``
    when the row averages over another number of queries than the paper's protocol, ``PAPER_QUERIES``)."""
    if row.get("epochs") is None:
        return "recipe not recorded"
    def epochs(n: int) -> str:
        return f"{n} epoch{'s' if n != 1 else ''}"

    pqn = f" + PQN {epochs(row['pqn_epochs'])}" if row.get("pqn_epochs") is not None else ""
    queries = f", {row['queries']} queries" if row.get("queries") not in (None, PAPER_QUERIES) else ""
    return f"{epochs(row['epochs'])}{pqn}, {row.get('device', '?')}, {row.get('precision', '?')}{queries}"


def with_queries(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """A job's rows with ``queries`` (how many queries each averages over), taken from the job's config where a
    record made before rows carried it lacks it."""
    n = ((meta.get("config") or {}).get("dataset") or {}).get("num_queries")
    return [r if "queries" in r or n is None else {**r, "queries": int(n)} for r in rows]


def cell_key(row: dict[str, Any]) -> tuple:
    """The table cell a row fills; one row is kept per cell."""
    return tuple(row.get(k) for k in CELL_FIELDS)


def order_key(value: Any, order: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: known values in the paper's order, others after them by name."""
    return (order.index(value), "") if value in order else (len(order), str(value))


#: per-row diagnostics that records made before they existed lack: absent from one of two rows of a cell, they
#: are no disagreement (present in both, they must agree like every other field)
LATER_DIAGNOSTICS = frozenset({"first_relevant_rank", "precision_at_10", "map_chance", "map_floor",
                               "codes_changed_per_subspace",
                               "psnr", "ssim", "l2", "linf"})


def dedupe_rows(rows: list[dict[str, Any]], sources: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per cell: clean rows repeat across the jobs of one target. Rows of one cell must be identical;
    two that differ in anything (top k, seed, tie protocol, checkpoint, the mAP itself, ...) are not merged:
    ``TableError`` names their ``sources`` (a file per row) and the fields that differ. A diagnostic of
    ``LATER_DIAGNOSTICS`` that one of the two lacks is not compared; the row that has it is kept."""
    seen: dict[tuple, int] = {}
    out: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        cell = cell_key(r)
        if cell not in seen:
            seen[cell] = i
            out.append(r)
            continue
        first = rows[seen[cell]]
        diff = sorted(k for k in set(first) | set(r) if first.get(k) != r.get(k)
                      and not (k in LATER_DIAGNOSTICS and (first.get(k) is None or r.get(k) is None)))
        if not diff:
            if sum(first.get(k) is not None for k in LATER_DIAGNOSTICS) < sum(r.get(k) is not None
                                                                              for k in LATER_DIAGNOSTICS):
                out[out.index(first)] = r
                seen[cell] = i
            continue
        if diff:
            where = (f"{sources[seen[cell]]} and {sources[i]}" if sources else f"rows {seen[cell]} and {i}")
            shown = ", ".join(f"{k}: {first.get(k)!r} vs {r.get(k)!r}" for k in diff[:4])
            raise TableError(f"{where} both fill the cell {describe_cell(cell)} but differ in {shown}"
                             f"{' ...' if len(diff) > 4 else ''}; collect them into separate tables")
    return out


def describe_cell(cell: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(CELL_FIELDS, cell) if v is not None and k not in ("M", "K"))


MODEL_ORDER = ("resnet18", "resnet34", "resnet50", "vgg11", "vgg13", "vgg16", "alexnet", "smallcnn")


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def model_recipes(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each model's recipe label; a model with rows of two recipes cannot share a transfer matrix (TableError)."""
    found: dict[str, str] = {}
    for r in rows:
        label = recipe_label(r)
        if found.setdefault(r["model"], label) != label:
            raise TableError(f"model {r['model']} has rows of two recipes ({found[r['model']]}; {label}); collect "
                             f"them into separate tables")
    return found


def transfer_tables(rows: list[dict[str, Any]]) -> str:
    """Black-box matrices in the paper's layouts: Table 3 (rows: generation bits, columns: target bits,
    cells SDC / ADC, per model) and Table 4 (rows: source model, columns: target model, per system)."""
    # the matrices hold the quantizers that transfer rows were made for (a PQN model is another target than the
    # K-means one on the same backbone, with its own clean mAP and recipe)
    # ... and the query counts of the transfer rows (a 100-query budget sweep is another protocol)
    quantizers = {r["quantizer"] for r in rows if r.get("transfer")}
    queries = {r.get("queries") for r in rows if r.get("transfer")}
    rows = [{**r, "dataset": r.get("dataset_label") or r["dataset"]} for r in dedupe_rows(rows)
            if r["quantizer"] in quantizers and r.get("queries") in queries]
    recipes = model_recipes(rows)
    adv = [r for r in rows if r["attack"] != "clean" and "source_model" in r]
    clean = {(r["dataset"], r["model"], r["bits"], r["system"]): r["map"] for r in rows if r["attack"] == "clean"}
    adv = [{**r, "attack": attack_label(r)} for r in adv]  # MI, DI, restarts: rows of their own
    cell = {(r["dataset"], r["attack"], r["source_model"], r["source_bits"], r["model"], r["bits"], r["system"]):
            r["map"] for r in adv}
    out: list[str] = []
    same_model = [r for r in adv if r["source_model"] == r["model"]]
    if any(r["source_bits"] != r["bits"] for r in same_model):
        for ds, model, attack in sorted({(r["dataset"], r["model"], r["attack"]) for r in same_model}):
            bits = sorted({r["bits"] for r in same_model if (r["dataset"], r["model"]) == (ds, model)}
                          | {r["source_bits"] for r in same_model if (r["dataset"], r["model"]) == (ds, model)})
            lines = [f"**{ds}**, {model}, {attack.upper()} queries made at the row's code length, evaluated at the "
                     f"column's; mAP (%) SDC / ADC; recipe: {recipes[model]}", "", "| generated at | " + " | ".join(f"{b} bits" for b in bits)
                     + " |", "|" + "---|" * (len(bits) + 1)]
            lines.append("| clean | " + " | ".join(f"{_fmt(clean.get((ds, model, b, 'sdc')))} / "
                                                   f"{_fmt(clean.get((ds, model, b, 'adc')))}" for b in bits) + " |")
            for sb in bits:
                lines.append(f"| {sb} bits | " + " | ".join(
                    f"{_fmt(cell.get((ds, attack, model, sb, model, b, 'sdc')))} / "
                    f"{_fmt(cell.get((ds, attack, model, sb, model, b, 'adc')))}" for b in bits) + " |")
            out.append("\n".join(lines))
    same_bits = [r for r in adv if r["source_bits"] == r["bits"]]
    if any(r["source_model"] != r["model"] for r in same_bits):
        key = lambda m: order_key(m, MODEL_ORDER)  # noqa: E731
        for ds, b, attack in sorted({(r["dataset"], r["bits"], r["attack"]) for r in same_bits}):
            group = [r for r in same_bits if (r["dataset"], r["bits"], r["attack"]) == (ds, b, attack)]
            # columns: the models (targets, and single sources for the white-box diagonal); rows: every source, an
            # ensemble ("a+b") after the single models
            models = sorted({r["model"] for r in group} | {r["source_model"] for r in group
                                                           if "+" not in r["source_model"]}, key=key)
            sources = models + sorted({r["source_model"] for r in group} - set(models))
            ensemble = " (a+b: an ensemble)" if len(sources) > len(models) else ""
            lines = [f"**{ds}**, {b} bits, {attack.upper()} queries made on the row's model{ensemble}, "
                     f"evaluated on the column's; mAP (%); recipes: " + "; ".join(
                         f"{m} {recipes.get(m, '?')}" for m in models), "",
                     "| system | generated on | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 2)]
            for system in SYSTEM_ORDER:
                lines.append(f"| {system.upper()} | clean | " + " | ".join(_fmt(clean.get((ds, m, b, system)))
                                                                          for m in models) + " |")
                for sm in sources:
                    lines.append(f"| {system.upper()} | {sm} | " + " | ".join(
                        _fmt(cell.get((ds, attack, sm, b, m, b, system))) for m in models) + " |")
            out.append("\n".join(lines))
    return "\n\n".join(out) + ("\n" if out else "")


def render_tables(rows: list[dict[str, Any]]) -> str:
    """White-box rows in the Table 1 layout, then any transfer matrices."""
    white = [r for r in rows if not r.get("transfer")]
    return markdown_table(white) + ("\n" + transfer_tables(rows) if any(r.get("transfer") for r in rows) else "")


def recipe_heading(rows: list[dict[str, Any]]) -> str:
    """``; recipe: 2 epochs, cpu, bf16`` when every row has one recipe, else '' (the recipe is then a column)."""
    recipes = {recipe_label(r) for r in rows}
    return f"; recipe: {recipes.pop()}" if len(recipes) == 1 else ""


def markdown_table(rows: list[dict[str, Any]], value: str = "map", digits: int = 1) -> str:
    """The paper's Table 1 layout: one block per dataset; columns model x bits (x recipe, when rows of several
    recipes are mixed; else the recipe is in the heading); rows system x attack."""
    rows = dedupe_rows(rows)
    out: list[str] = []
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[r.get("dataset_label") or r["dataset"]].append(r)
    for dataset, drows in by_dataset.items():
        mixed = not recipe_heading(drows)

        def column(r: dict[str, Any]) -> tuple:
            return (r["model"], r.get("quantizer", "kmeans"), int(r["bits"]), r.get("defense") or "",
                    recipe_label(r) if mixed else "")

        cols = sorted({column(r) for r in drows})
        cell = {(r["system"], attack_label(r), *column(r)): r[value] for r in drows}
        topks = sorted({r.get("topk") or 0 for r in drows})
        scope = " / ".join(f"mAP@{k} (%)" if k else "mAP (%) over the full ranking" for k in topks)
        heading = f"**{dataset}**, {scope}" if value == "map" else f"**{dataset}**, {value}"
        lines = [heading + recipe_heading(drows), ""]
        header = ["system", "attack"] + [f"{m}{'' if q == 'kmeans' else '+' + q} {b}b" + (f" [{d}]" if d else "")
                                         + (f" ({rc})" if rc else "") for m, q, b, d, rc in cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        systems = sorted({r["system"] for r in drows}, key=lambda s: order_key(s, SYSTEM_ORDER))
        attacks = sorted({attack_label(r) for r in drows}, key=lambda a: order_key(a.split(" ")[0], ATTACK_ORDER) + (a,))
        for s in systems:
            for a in attacks:
                vals = [cell.get((s, a, *c)) for c in cols]
                lines.append("| " + " | ".join([s.upper(), a] + [_fmt(v, digits) for v in vals]) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"
