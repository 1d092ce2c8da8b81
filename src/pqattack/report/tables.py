"""Results records -> tables. Every number in a table is rendered from ``results.json`` rows, never typed."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..labels import LOOP_OPTIONS, attack_label, joined_epochs

ATTACK_ORDER = ("clean", "basic", "apd", "aod", "margin", "center", "center_targeted", "far", "contrast")
SYSTEM_ORDER = ("sdc", "adc")


#: What a table cell is: the system under attack, the attack and its settings, and the recipe that made the
#: numbers (backbone epochs, PQN epochs, device, precision). Rows of one cell must agree on everything else.
CELL_FIELDS = ("dataset", "queries", "model", "quantizer", "bits", "M", "K", "attack", "system", "source_model",
               "source_bits", "source_epochs",
               "similarity", "temperature", "peak", "eps", "step", "iters", "kappa", "margin_focus", "target_class",
               *LOOP_OPTIONS, "defense", "oblivious", "epochs", "pqn_epochs", "device", "precision", "seed")
PAPER_QUERIES = 1000  # the paper's CIFAR-10 protocol: 1,000 test images as queries


class TableError(ValueError):
    """Rows that cannot be put in one table; the message names their source files."""


def recipe_label(row: dict[str, Any]) -> str:
    """How a row's numbers were made: ``2 epochs, cpu, bf16`` (``+ PQN 1 epoch`` for PQN targets; ``, 100 queries``
    when the row averages over another number of queries than the paper's protocol, ``PAPER_QUERIES``; ``, seed 1``
    for a seed other than 0, which trains another backbone)."""
    if row.get("epochs") is None:
        return "recipe not recorded"
    def epochs(n: int) -> str:
        return f"{n} epoch{'s' if n != 1 else ''}"

    pqn = f" + PQN {epochs(row['pqn_epochs'])}" if row.get("pqn_epochs") is not None else ""
    queries = f", {row['queries']} queries" if row.get("queries") not in (None, PAPER_QUERIES) else ""
    seed = f", seed {row['seed']}" if row.get("seed") not in (None, 0) else ""
    return f"{epochs(row['epochs'])}{pqn}, {row.get('device', '?')}, {row.get('precision', '?')}{queries}{seed}"


def source_epochs_of(config: dict[str, Any]) -> int | str | None:
    """The epochs of the backbone(s) that made a job's adversarial queries, from the job's config: each transfer
    source's recipe (``recipes.<model>`` in a preset with per-model recipes, else the job's ``trainer``), '+'-joined
    for an ensemble; the job's own for a white-box job; None for a saved set (``transfer.source``)."""
    transfer = config.get("transfer") or {}
    if transfer.get("source") or not config.get("trainer"):
        return None
    named = transfer.get("source_model")
    names = named if isinstance(named, list) else [named] if named else [config["model"]["name"]]
    recipes = config.get("recipes") or {}
    return joined_epochs([(recipes.get(n) or config["trainer"])["max_epochs"] for n in names])


def with_record_fields(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """A job's rows with the fields that records made before rows carried them lack, taken from the job's config:
    ``queries`` (how many queries each averages over) and, on attacked rows, ``source_epochs``."""
    config = meta.get("config") or {}
    n = (config.get("dataset") or {}).get("num_queries")
    source_epochs = source_epochs_of(config) if config else None
    out = []
    for r in rows:
        if "queries" not in r and n is not None:
            r = {**r, "queries": int(n)}
        if "source_model" in r and "source_epochs" not in r and source_epochs is not None:
            r = {**r, "source_epochs": source_epochs}
        out.append(r)
    return out


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
                               "psnr", "ssim", "l2", "linf", "checkpoint_sha256"})


def later_setting_defaults() -> dict[str, Any]:
    """Row fields of defense settings (``defense_<setting>``, ``DefenseConfig.row_fields``) with their schema default
    (``defense.config.setting_defaults``): a row made before a setting existed lacks its field."""
    from ..defense.config import setting_defaults

    return {f"defense_{k}": v for k, v in setting_defaults().items() if k != "kind"}


def _agree(k: str, a: Any, b: Any, setting_defaults: dict[str, Any]) -> bool:
    """Whether two rows of one cell agree on field ``k`` (see ``dedupe_rows``)."""
    if a == b or (k in LATER_DIAGNOSTICS and (a is None or b is None)):
        return True
    return k in setting_defaults and (a is None or b is None) and (b if a is None else a) == setting_defaults[k]


def dedupe_rows(rows: list[dict[str, Any]], sources: list[str] | None = None,
                generations: list[int] | None = None) -> list[dict[str, Any]]:
    """One row per cell: clean rows repeat across the jobs of one target. Rows of one cell must be identical;
    two that differ in anything (top k, tie protocol, checkpoint, the mAP itself, ...) are not merged:
    ``TableError`` names their ``sources`` (a file per row) and the fields that differ. A diagnostic of
    ``LATER_DIAGNOSTICS`` that one of the two lacks is not compared, nor a defense setting that one lacks and the
    other holds at its default (``later_setting_defaults``); the row that has more of them is kept.

    ``generations`` (one int per row) lets a re-run replace a record's rows: of two differing rows of one cell,
    the one of the higher generation is kept; within one generation they still conflict."""
    setting_defaults = later_setting_defaults()
    later = LATER_DIAGNOSTICS | set(setting_defaults)
    seen: dict[tuple, int] = {}
    out: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        cell = cell_key(r)
        if cell not in seen:
            seen[cell] = i
            out.append(r)
            continue
        first = rows[seen[cell]]
        diff = sorted(k for k in set(first) | set(r) if not _agree(k, first.get(k), r.get(k), setting_defaults))
        if not diff:
            if sum(first.get(k) is not None for k in later) < sum(r.get(k) is not None for k in later):
                out[out.index(first)] = r
                seen[cell] = i
            continue
        if generations is not None and generations[i] != generations[seen[cell]]:
            if generations[i] > generations[seen[cell]]:
                out[out.index(first)] = r
                seen[cell] = i
            continue
        if diff:
            where = (f"{sources[seen[cell]]} and {sources[i]}" if sources else f"rows {seen[cell]} and {i}")
            shown = ", ".join(f"{k}: {first.get(k)!r} vs {r.get(k)!r}" for k in diff[:4])
            twice = ("checkpoint_sha256" in diff and first.get("checkpoint") == r.get("checkpoint"))
            raise TableError(f"{where} both fill the cell {describe_cell(cell)} but differ in {shown}"
                             f"{' ...' if len(diff) > 4 else ''}; "
                             + ("they come from two trainings of one checkpoint configuration that did not give the "
                                "same weights: re-run every record of that checkpoint from one training, or none"
                                if twice else "collect them into separate tables"))
    return out


def describe_cell(cell: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(CELL_FIELDS, cell) if v is not None and k not in ("M", "K"))


MODEL_ORDER = ("resnet18", "resnet34", "resnet50", "vgg11", "vgg13", "vgg16", "alexnet", "smallcnn")


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def source_recipe(row: dict[str, Any]) -> str | None:
    """The recipe label of the backbone(s) that made an attacked row's queries (its ``source_epochs``, with the
    row's device and precision), or None where the row does not record it."""
    return None if row.get("source_epochs") is None else recipe_label({**row, "epochs": row["source_epochs"]})


def recipe_names(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows for the transfer matrices, with each model named once per recipe, and each name's recipe label. A
    model whose rows (as a target, or as a source) all come from one recipe keeps its name; one with several
    becomes ``model (recipe)``, as target and as source, so that its recipes are rows and columns of their own. A
    source whose rows do not record their recipe takes its model's only one (``TableError`` when it has several)."""
    labels: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        labels[r["model"]].add(recipe_label(r))
        if r.get("source_model") and "+" not in r["source_model"] and source_recipe(r):
            labels[r["source_model"]].add(source_recipe(r))  # type: ignore[arg-type]
    several = {m for m, found in labels.items() if len(found) > 1}

    def name(model: str, label: str) -> str:
        return f"{model} ({label})" if model in several else model

    out, recipes = [], {}
    for r in rows:
        renamed = {**r, "model": name(r["model"], recipe_label(r))}
        recipes[renamed["model"]] = recipe_label(r)
        if r.get("source_model"):
            src, label = r["source_model"], source_recipe(r)
            mixed = [m for m in src.split("+") if m in several]
            if label is None and mixed:
                raise TableError(f"rows made on {src} do not record the recipe of their source (source_epochs), "
                                 f"and {', '.join(mixed)} has rows of several recipes ("
                                 f"{'; '.join(sorted(labels[mixed[0]]))}); collect them into separate tables")
            if label is not None and mixed:
                renamed["source_model"] = name(src, label) if "+" not in src else f"{src} ({label})"
        out.append(renamed)
    return out, recipes


def transfer_tables(rows: list[dict[str, Any]]) -> str:
    """Black-box matrices in the paper's layouts: Table 3 (rows: generation bits, columns: target bits,
    cells SDC / ADC, per model) and Table 4 (rows: source model, columns: target model, per system), of the
    undefended targets."""
    # the matrices hold the quantizers that transfer rows were made for (a PQN model is another target than the
    # K-means one on the same backbone, with its own clean mAP and recipe)
    # ... and the query counts of the transfer rows (a 100-query budget sweep is another protocol)
    # ... and the undefended targets only: a defended target's rows (its clean mAP behind a transform, its suite)
    # would take the undefended target's cells, whose keys name no defense (the defense section shows them)
    quantizers = {r["quantizer"] for r in rows if r.get("transfer") and not r.get("defense")}
    queries = {r.get("queries") for r in rows if r.get("transfer") and not r.get("defense")}
    rows = [{**r, "dataset": r.get("dataset_label") or r["dataset"]} for r in dedupe_rows(rows)
            if r["quantizer"] in quantizers and r.get("queries") in queries and not r.get("defense")]
    rows, recipes = recipe_names(rows)
    adv = [r for r in rows if r["attack"] != "clean" and "source_model" in r]
    clean = {(r["dataset"], r["model"], r["bits"], r["system"]): r["map"] for r in rows if r["attack"] == "clean"}
    adv = [{**r, "attack": attack_label(r)} for r in adv]  # MI, DI, restarts: rows of their own
    cell = {(r["dataset"], r["attack"], r["source_model"], r["source_bits"], r["model"], r["bits"], r["system"]):
            r["map"] for r in adv}
    out: list[str] = []
    same_model = [r for r in adv if r["source_model"] == r["model"]]
    # a matrix per group that holds a black-box cell: an attack whose rows are all white-box (a suite member
    # beside transferred queries) would be a diagonal-only matrix
    for ds, model, attack in sorted({(r["dataset"], r["model"], r["attack"]) for r in same_model
                                     if r["source_bits"] != r["bits"]}):
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
    key = lambda m: order_key(m, MODEL_ORDER)  # noqa: E731
    for ds, b, attack in sorted({(r["dataset"], r["bits"], r["attack"]) for r in same_bits
                                 if r["source_model"] != r["model"]}):
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
