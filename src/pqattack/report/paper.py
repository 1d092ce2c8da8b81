"""The paper's Tables 1-4 (``paper_tables.json``, transcribed from the paper) beside ours, in the paper's
layouts: for each table the paper's numbers, ours from the records, and ours minus the paper's, cell by cell.
A cell we did not run is shown as ``—``; nothing is filled in that the records do not hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

from ..labels import is_paper_attack
from .tables import recipe_label

PAPER_TABLES = Path(__file__).with_name("paper_tables.json")
MISSING = "—"
SYSTEMS = ("sdc", "adc")


@cache
def load_paper() -> dict[str, Any]:
    """``paper_tables.json``: metadata and ``cells``, one per printed number (SDC and ADC separately)."""
    return json.loads(PAPER_TABLES.read_text())


def paper_cells(table: int) -> list[dict[str, Any]]:
    return [c for c in load_paper()["cells"] if c["table"] == table]


def experiment_key(record: dict[str, Any]) -> tuple:
    """What a number measures: a paper cell and a results row with the same key are the same experiment.
    Clean queries and white-box attacks have the target as their source."""
    return (record["dataset"], record.get("quantizer", "kmeans"), record["model"], int(record["bits"]),
            record["attack"], record["system"], record.get("source_model") or record["model"],
            int(record.get("source_bits") or record["bits"]))


def same_recipe_source(row: dict[str, Any]) -> bool:
    """Whether a row measures what the paper's cell of its key does: clean and white-box rows do; a transferred
    row only when its queries come from another model or code length (``transfer`` rows from another instance of
    the target's own model and code length, a seed or a saved set, are not white-box) trained with the target's
    recipe (``source_epochs``, where the row records it): the paper's sources and targets share one recipe."""
    if not row.get("transfer"):
        return True
    if (row.get("source_model") or row["model"]) == row["model"] and int(row.get("source_bits") or row["bits"]) \
            == int(row["bits"]):
        return False
    return row.get("source_epochs") is None or str(row["source_epochs"]) == str(row.get("epochs"))


def stand_in_rows(rows: list[dict[str, Any]], ours: str, paper_model: str) -> list[dict[str, Any]]:
    """``ours``'s rows as ``paper_model``'s, for a comparison of their own: as a target, and as a source (also in an
    ensemble ``a+b``). A row whose queries come from the real ``paper_model`` is left out: in that comparison the
    name stands for ``ours``, and such a row would pass for a white-box one."""
    out = []
    for r in rows:
        if r["model"] != ours:
            continue
        sources = (r.get("source_model") or ours).split("+")
        if paper_model in sources:
            continue
        renamed = {**r, "model": paper_model}
        if r.get("source_model"):
            renamed["source_model"] = "+".join(paper_model if s == ours else s for s in sources)
        out.append(renamed)
    return out


@dataclass
class Grid:
    """A table as text cells: ``title`` (a bold caption line), ``columns`` and ``rows``; markdown or wandb."""

    title: str
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [self.title, "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Layout:
    """How the paper prints a table: row header cells and column label of a cell, and whether a printed
    cell holds the SDC / ADC pair (Tables 2 and 3) or one system (the system is then a row header)."""

    caption: str
    row_header: tuple[str, ...]
    row: Callable[[dict[str, Any]], tuple[str, ...]]
    column: Callable[[dict[str, Any]], str]
    paired: bool


def _source(cell: dict[str, Any], field: str, suffix: str = "") -> str:
    return "clean" if cell["attack"] == "clean" else f"{cell[field]}{suffix}"


LAYOUTS = {
    1: Layout("white-box attacks, rows: system x attack, columns: dataset, model, code length",
              ("system", "attack"), lambda c: (c["system"].upper(), c["attack"]),
              lambda c: f"{load_paper()['datasets'][c['dataset']]} {c['model']} {c['bits']}b", paired=False),
    2: Layout("white-box attacks on the jointly trained PQN target (quantizer 'pqn')",
              ("model", "attack"), lambda c: (c["model"], c["attack"]), lambda c: f"{c['bits']} bits", paired=True),
    3: Layout("bits transferability of AOD: rows: code length the queries were generated at, columns: code length "
              "of the target", ("model", "generated at"),
              lambda c: (c["model"], _source(c, "source_bits", " bits")), lambda c: f"{c['bits']} bits", paired=True),
    4: Layout("model transferability of AOD at 16 bits: rows: system x model the queries were generated on, "
              "columns: target model", ("system", "generated on"),
              lambda c: (c["system"].upper(), _source(c, "source_model")), lambda c: c["model"], paired=False),
}


def _fmt(value: float | None, signed: bool = False) -> str:
    return MISSING if value is None else (f"{value:+.1f}" if signed else f"{value:.1f}")


def _slots(table: int) -> tuple[list[tuple[str, ...]], list[str], dict[tuple, list[dict[str, Any]]]]:
    """Row headers and columns in the paper's order, and the paper cells of each (row, column) slot."""
    layout, rows, columns, slots = LAYOUTS[table], [], [], {}
    for c in paper_cells(table):
        r, col = layout.row(c), layout.column(c)
        rows += [r] if r not in rows else []
        columns += [col] if col not in columns else []
        slots.setdefault((r, col), []).append(c)
    return rows, columns, slots


@dataclass
class Comparison:
    """One paper table beside ours: three grids of the same layout, and the rows each of our cells came from."""

    table: int
    paper: Grid
    ours: Grid
    difference: Grid
    matched: dict[tuple, dict[str, Any]]  # experiment_key -> our row, for every filled cell
    recipe: str | None = None  # how our numbers were made (``tables.recipe_label``)

    @property
    def filled(self) -> int:
        return len(self.matched)


def _labels_note(table: int, matched: dict[tuple, dict[str, Any]]) -> str:
    """Which copy of each of the table's datasets our numbers come from, or 'not run'."""
    notes = []
    for ds in dict.fromkeys(c["dataset"] for c in paper_cells(table)):
        labels = sorted({r.get("dataset_label") or r["dataset"] for k, r in matched.items() if k[0] == ds})
        name = load_paper()["datasets"][ds]
        notes.append(f"{name} from {', '.join(labels)}" if labels else f"{name} not run")
    return "; ".join(notes)


def compare(table: int, rows: list[dict[str, Any]], recipe: str | None = None) -> Comparison:
    """Paper, ours and ours minus paper for ``table``, from ``rows`` of one ``recipe`` (named in the headings).
    Rows with ``topk`` set (mAP@k) are not compared: the paper's mAP is over the full ranking; nor are attacks
    with other settings than the paper's."""
    layout = LAYOUTS[table]
    ours_by_key: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("topk") is None and is_paper_attack(r) and same_recipe_source(r):
            ours_by_key.setdefault(experiment_key(r), r)
    row_keys, columns, slots = _slots(table)
    matched: dict[tuple, dict[str, Any]] = {}
    grids: dict[str, list[list[str]]] = {"paper": [], "ours": [], "difference": []}
    for rk in row_keys:
        line = {name: list(rk) for name in grids}
        for col in columns:
            cells = sorted(slots.get((rk, col), []), key=lambda c: SYSTEMS.index(c["system"]))
            texts: dict[str, list[str]] = {name: [] for name in grids}
            for c in cells:
                ours = ours_by_key.get(experiment_key(c))
                if ours is not None:
                    matched[experiment_key(c)] = ours
                texts["paper"].append(_fmt(c["map"]))
                texts["ours"].append(_fmt(None if ours is None else ours["map"]))
                texts["difference"].append(_fmt(None if ours is None else ours["map"] - c["map"], signed=True))
            for name in grids:
                line[name].append(" / ".join(texts[name]) if texts[name] else "")
        for name in grids:
            grids[name].append(line[name])
    header = [*layout.row_header, *columns]
    unit = "mAP (%) over the full ranking" + ("; each cell SDC / ADC" if layout.paired else "")
    systems = "SDC: query and database quantized (symmetric); ADC: database only (asymmetric)"
    return Comparison(
        table,
        Grid(f"**Table {table}, paper**: {layout.caption}; {unit}. {systems}.", header, grids["paper"]),
        Grid(f"**Table {table}, ours, {recipe}** (our numbers: {_labels_note(table, matched)}): {unit}.", header,
             grids["ours"]),
        Grid(f"**Table {table}, ours ({recipe}) minus paper** (mAP points; {MISSING}: not run).", header,
             grids["difference"]),
        matched, recipe)


def comparisons(rows: list[dict[str, Any]], stand_ins: dict[str, str] | None = None) -> list[Comparison]:
    """All four tables, one comparison per recipe that fills any of a table's cells (a table no record fills gets
    one empty comparison): numbers of different recipes are never mixed in one grid. ``stand_ins`` maps a model
    of ours to a paper model it stands in for (``{"fastnet": "vgg16"}``): its rows fill that model's cells in
    comparisons of their own, whose headings say so."""
    groups = [(rc, [r for r in rows if recipe_label(r) == rc]) for rc in sorted({recipe_label(r) for r in rows})]
    for ours, paper_model in (stand_ins or {}).items():
        renamed = stand_in_rows(rows, ours, paper_model)
        groups += [(f"{ours} standing in for {paper_model}, {rc}", [r for r in renamed if recipe_label(r) == rc])
                   for rc in sorted({recipe_label(r) for r in renamed})]
    out = []
    for t in sorted(LAYOUTS):
        found = [compare(t, group, rc) for rc, group in groups]
        out += [c for c in found if c.filled] or [compare(t, [])]
    return out
