"""The reproduction report: ``index.md`` and PNG figures in one folder, from any set of results records.

Sections: the paper's Tables 1-4 beside ours and the difference; all our records; mAP against code length
and attack; and, from the artifacts the jobs cached, the precision-recall curves (Fig. 5), retrieval
examples (Fig. 4) and soft centroid distributions (Fig. 3); beyond the paper (``beyond``): findings, the
per-cell winners, t-mAP and the budget curves with their gradient-masking check; defenses (``defense``): clean
against worst-case mAP, adaptive against plain attacks, masking checks and the Pareto figure. What the artifact
figures draw is saved beside them (``figure_data.json``), so that a build without the artifacts draws them again
while the records still hold the rows they were computed for; otherwise they are left out with a note saying why.
Every number is computed from the records or the artifacts.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..labels import is_paper_attack
from . import beyond, defense, figure_data, figures
from .artifacts import ArtifactMissing, ArtifactStore
from .paper import MISSING, Grid, comparisons, load_paper
from .records import Records, gather_records
from .tables import recipe_label, render_tables

RELOAD_TOLERANCE = 0.05  # mAP points between the records and the reloaded system before a note is written


@dataclass
class Report:
    """What goes into ``index.md`` (markdown blocks), and the figures and tables that also go to wandb."""

    out: Path
    blocks: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    grids: dict[str, Grid] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *blocks: str) -> None:
        self.blocks += blocks

    def figure(self, fig: Any, name: str, caption: str) -> None:
        path = figures.save(fig, self.out / f"{name}.png")
        self.figures.append(path)
        self.add(f"![{caption}]({path.name})", f"*{caption}*")

    def skip(self, what: str, why: str, note: bool = True) -> None:
        """Say in place, and under Notes unless ``note`` is False, that a figure is left out and why."""
        text = f"**{what}: not drawn.** {why}"
        self.notes += [text] if note else []
        self.add(text)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def paper_section(report: Report, rows: list[dict[str, Any]], stand_ins: dict[str, str] | None = None) -> None:
    """Tables 1-4: the paper's, ours and the difference (ours only where a record fills a cell); ``stand_ins``: our
    models that fill a paper model's cells in comparisons of their own (``paper.comparisons``)."""
    paper = load_paper()
    report.add("## 1. Our tables beside the paper's",
               f"The paper's numbers are data (`src/pqattack/report/paper_tables.json`, from {paper['source']}). "
               "Ours are the records' rows for the same dataset, model, code length, quantizer, attack, system and "
               "query source; mAP@k rows are not compared. A cell we did not run is `—`.")
    shown: set[int] = set()
    for comp in comparisons(rows, stand_ins):
        if comp.table not in shown:
            shown.add(comp.table)
            report.add(f"### Table {comp.table}", comp.paper.markdown())
            report.grids[f"table{comp.table}/paper"] = comp.paper
        if comp.filled:
            report.add(comp.ours.markdown(), comp.difference.markdown())
            slug = _slug(comp.recipe or "")
            report.grids[f"table{comp.table}/ours_{slug}"] = comp.ours
            report.grids[f"table{comp.table}/ours_minus_paper_{slug}"] = comp.difference
        else:
            report.add(f"**Table {comp.table}, ours: not run** (no record matches any of its cells).")


def peak_section(report: Report, rows: list[dict[str, Any]]) -> None:
    """How often eq. (6)'s peak (largest inner product) is the index's code (eq. 1, nearest codeword), per target
    and code length, on the clean queries: where they differ, APD with ``attack.peak=argmax`` (eq. 6 as printed)
    pushes away from a code the index does not use."""
    found: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r.get("peak_agreement") is not None and r["attack"] == "clean":
            target = (r.get("dataset_label") or r["dataset"], r["model"], r.get("quantizer", "kmeans"), recipe_label(r))
            found.setdefault(target, {})[int(r["bits"])] = r["peak_agreement"]
    if not found:
        return
    bits = sorted({b for v in found.values() for b in v})
    grid = Grid("**Peak agreement**: share of (query, sub-space) pairs where argmax_k <z_m, c_mk> (eq. 6) is the "
                "index's code argmin_k ||z_m - c_mk|| (eq. 1), clean queries (%)",
                ["dataset", "model", "quantizer", "recipe", *(f"{b} bits" for b in bits)],
                [[*t, *(f"{100 * v[b]:.1f}" if b in v else MISSING for b in bits)] for t, v in sorted(found.items())])
    report.add("### Eq. (6) against the index's eq. (1)", grid.markdown())
    report.grids["peak_agreement"] = grid


def map_section(report: Report, rows: list[dict[str, Any]]) -> None:
    """mAP against code length and against attack, per dataset copy and recipe, from the white-box rows made with the
    paper's attack setting."""
    report.add("## 3. mAP against code length and attack (white-box)")
    white = [r for r in rows if not r.get("transfer") and r.get("topk") is None and is_paper_attack(r)]
    if not white:
        report.skip("mAP charts", "No white-box rows with mAP over the full ranking in the records.")
    by_label: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in white:
        by_label.setdefault(r.get("dataset_label") or r["dataset"], {}).setdefault(recipe_label(r), []).append(r)
    for label, recipes in by_label.items():
        for recipe, group in sorted(recipes.items()):
            # one pair of charts per recipe: models of one recipe side by side (several recipes: named in the file)
            name, title = (label, label) if len(recipes) == 1 else (f"{label} {recipe}", f"{label}, {recipe}")
            report.figure(figures.map_vs_bits(group, f"{title}: white-box mAP against code length"),
                          f"map_vs_bits_{_slug(name)}", f"{title}: mAP (%) against code length, per model and attack.")
            report.figure(figures.map_vs_attack(group, f"{title}: white-box mAP per attack"),
                          f"map_vs_attack_{_slug(name)}", f"{title}: mAP (%) per attack, per model and code length.")


def beyond_section(report: Report, rows: list[dict[str, Any]]) -> None:
    """Attacks beyond the paper (``report.beyond``): findings, the per-cell winners, t-mAP, the budget curves and
    their gradient-masking check; absent when the records hold none of these."""
    winners, tmap = beyond.winners_grid(rows), beyond.tmap_grid(rows)
    curves = beyond.budget_curves(rows)
    if winners is None and tmap is None and not curves and not beyond.transfer_boosts(rows):
        return
    report.add("## 7. Beyond the paper")
    found = beyond.findings(rows)
    if found:
        report.add("**Findings** (computed from the records):", "\n".join(f"- {f}" for f in found))
    for name, grid in (("beyond_winners", winners), ("targeted_tmap", tmap)):
        if grid is not None:
            report.add(grid.markdown())
            report.grids[name] = grid
    if curves:
        for axis in ("iters", "eps"):
            if any(c.axis == axis for c in curves):
                what = "PGD iterations" if axis == "iters" else "eps"
                report.figure(beyond.budget_figure(curves, axis, f"mAP against {what}"), f"budget_curves_{axis}",
                              f"mAP (%) against {what}, white-box, per attack and fixed "
                              f"{'eps' if axis == 'iters' else 'iterations'}.")
        grid = beyond.flags_grid(curves)
        report.add(grid.markdown())
        report.grids["budget_flags"] = grid


def defense_section(report: Report, rows: list[dict[str, Any]]) -> None:
    """Defenses (``report.defense``): clean against worst-case mAP, adaptive against plain attacks on query
    transforms, the gradient-masking checks, the Pareto figure and the defended targets' budget curves; absent when
    the records hold no robust evaluation."""
    if not defense.has_defenses(rows):
        return
    report.add("## 8. Defenses", "Every defended target against the robust evaluation suite (`eval.suite`); the "
               "worst case is per query, over the suite's attacks.")
    grids = {"defense_summary": defense.summary_grid(rows), "defense_adaptive": defense.adaptive_grid(rows),
             "defense_masking": defense.masking_grid(rows)}
    for name, grid in grids.items():
        if grid is not None:
            report.add(grid.markdown())
            report.grids[name] = grid
    if any(len(v) >= defense.PARETO_MIN_POINTS for v in defense.pareto_points(rows).values()):
        report.figure(defense.pareto_figure(rows, "Clean against worst-case mAP"), "defense_pareto",
                      "Clean against worst-case mAP (%), the undefended target (square) and each adversarially "
                      "trained one (eps, beta, k).")
    curves = beyond.budget_curves(rows, defended=True)
    for axis in ("iters", "eps"):
        if any(c.axis == axis for c in curves):
            what = "PGD iterations" if axis == "iters" else "eps"
            report.figure(beyond.budget_figure(curves, axis, f"Defended targets: mAP against {what}"),
                          f"defense_budget_{axis}", f"Defended targets: mAP (%) against {what}; it must fall "
                          "monotonically (the gradient-masking check).")
    if curves:
        grid = beyond.flags_grid(curves)
        report.add(grid.markdown())
        report.grids["defense_budget_flags"] = grid


FIGURE_SECTIONS = (("Precision-recall curves", 5), ("Retrieval examples", 4), ("Centroid distributions", 3))


def _title(i: int) -> str:
    name, paper_figure = FIGURE_SECTIONS[i]
    return f"## {4 + i}. {name} (paper Fig. {paper_figure})"


def pr_section(report: Report, data: dict[str, Any]) -> None:
    """Fig. 5, and a check that the reloaded system gave the recorded mAP."""
    record_maps = {(s, a): v for s, a, v in data["record_maps"]}
    off = [f"{s.upper()} {a}: {record_maps[(s, a)]:.2f} recorded, {v:.2f} reloaded"
           for s, a, v in data["reloaded_maps"] if abs(v - record_maps[(s, a)]) > RELOAD_TOLERANCE]
    report.add(_title(0), f"System: {data['setting']} (the one with the most attacks, 16 bits first; `--model` "
               f"and `--bits` pick another); {len(data['jobs'])} white-box attack jobs: {', '.join(data['jobs'])}.")
    if off:
        report.notes.append(f"The reloaded artifacts of {data['setting']} do not give the recorded mAP ("
                            + "; ".join(off) + "): they may not be the ones the records were computed with.")
        report.add(report.notes[-1])
    curves = {s: {a: (np.asarray(r), np.asarray(p)) for a, (r, p) in by.items()} for s, by in data["pr"].items()}
    report.figure(figures.pr_curves(curves, record_maps, f"Precision-recall, {data['setting']}"), "pr_curves",
                  f"Precision and recall at every rank, averaged over the {data['queries']} queries (drawn through "
                  f"{figure_data.PR_POINTS} ranks or fewer); legend: mAP (%) of the records.")


def examples_section(report: Report, data: dict[str, Any]) -> None:
    """Fig. 4, one figure per system."""
    q, k = data["example"], figure_data.TOP_K
    report.add(_title(1), f"Query {q['query']} (class {q['class']}): the query whose precision@{k} falls most "
               "under the attacks, summed over attacks and systems. The perturbation is shown amplified "
               f"x{q['amplify']:.1f} around grey; frames: green relevant, red irrelevant.")
    for system in q["rows"]:
        title = f"Top-{k} retrieval, {system.upper()}, {data['setting']}, query {q['query']} ({q['class']})"
        report.figure(figures.retrieval_examples(figure_data.example_rows_of(data, system), q["amplify"], title),
                      f"retrieval_examples_{system}",
                      f"{system.upper()}: clean and adversarial queries with their top {k} database images.")


def centroid_section(report: Report, data: dict[str, Any]) -> None:
    """Fig. 3: the eq. (7) distribution of one query in one subspace, before and after APD and AOD."""
    report.add(_title(2))
    c = data["centroids"]
    if c is None:
        report.skip(FIGURE_SECTIONS[2][0], f"No APD or AOD job for {data['setting']}.")
        return
    q = data["example"]
    title = f"Soft assignment (eq. 7), query {q['query']} ({q['class']}), subspace {c['subspace']} of {c['M']}"
    clean = {a: np.asarray(p) for a, p in c["clean"].items()}
    attacked = {a: np.asarray(p) for a, p in c["attacked"].items()}
    report.figure(figures.centroid_distributions(clean, attacked, title), "centroid_distributions",
                  f"The distribution over the {c['K']} centroids of subspace {c['subspace']} (the clean query's most "
                  "peaked one), before (green) and after (red) each attack; eq. (7) with attack.similarity="
                  f"{c['similarity']}, attack.temperature={c['temperature']}.")


def artifact_sections(report: Report, records: Records, store: ArtifactStore, model: str | None,
                      bits: int | None) -> None:
    """Figs. 5, 4 and 3 of the paper, for one system picked by ``figure_data.pick_setting``, computed from the
    reloaded artifacts and saved as ``figure_data.FIGURE_DATA`` in the report's folder. Without the artifacts, the
    saved figure data is drawn while the records still hold its cells unchanged; else the figures are skipped with
    a note."""
    setting = figure_data.pick_setting(records, model, bits)
    saved = report.out / figure_data.FIGURE_DATA
    try:
        if setting is None:
            raise ArtifactMissing("no white-box attack job with its config and cache keys (a job's own "
                                  "results.json) in the inputs" + (f" for model={model}" if model else "")
                                  + (f" bits={bits}" if bits else ""))
        arts = {attack: store.load(job) for attack, job in setting.jobs.items()}
    except ArtifactMissing as exc:
        why = f"The artifacts of {setting.describe} could not be reloaded: {exc}." if setting else f"{exc}."
        why = why[0].upper() + why[1:]
        data, why_not = figure_data.saved_figure_record(saved, records.rows, model, bits)
        if data is not None:
            report.notes.append(f"Figs. 5, 4 and 3 are drawn from `{saved.name}`, saved by the build that reloaded "
                                f"the artifacts of {data['setting']}; the records hold each of its "
                                f"{len(data['cells'])} rows unchanged. {why}")
            draw_artifact_sections(report, data)
            return
        names = [name.lower() for name, _ in FIGURE_SECTIONS]
        why = f"{why} Nor could the saved figure data serve: {why_not}."
        report.notes.append(f"**{', '.join(names[:-1]).capitalize()} and {names[-1]}: not drawn.** {why}")
        for i, (name, _) in enumerate(FIGURE_SECTIONS):
            report.add(_title(i))
            report.skip(name, why, note=False)
        return
    systems = sorted({r["system"] for j in setting.jobs.values() for r in j.rows},
                     key=lambda s: figures.SYSTEM_ORDER.index(s))
    ranked = figure_data.rankings(arts, systems)
    data = figure_data.figure_record(setting, arts, ranked, [_display(j.path) for j in setting.jobs.values()])
    saved.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    draw_artifact_sections(report, data)


def draw_artifact_sections(report: Report, data: dict[str, Any]) -> None:
    pr_section(report, data)
    examples_section(report, data)
    centroid_section(report, data)


def sources_section(report: Report, records: Records) -> None:
    """The jobs the rows came from (training epochs, accuracy, device), and cells the inputs disagree on."""
    gone = records.collected_jobs
    report.add("## Sources", f"{len(records.files)} records files, {len(records.jobs) + len(gone)} jobs"
               + (f" ({len(gone)} of them known from the records files only, their own folders absent)" if gone
                  else "") + f", {len(records.rows)} rows after removing repeats.")
    grid = Grid("**Jobs**", ["results", "dataset", "model", "bits", "attack", "epochs", "test accuracy (%)",
                             "device", "precision"], [])

    def add(results: str, dataset: str, model: str, bits: Any, attack: str, meta: dict[str, Any]) -> None:
        grid.rows.append([results, dataset, model, str(bits), attack,
                          str((meta.get("config") or {}).get("trainer", {}).get("max_epochs", "?")),
                          "-" if meta.get("test_accuracy") is None else f"{meta['test_accuracy']:.1f}",
                          meta.get("device", "?"), meta.get("precision", "?")])

    def suite(meta: dict[str, Any]) -> str | None:
        members = ((meta.get("config") or {}).get("eval") or {}).get("suite")
        return f"suite of {len(members)}" if members else None

    for j in records.jobs:
        r = j.rows[0]
        add(_display(j.path), r.get("dataset_label") or r["dataset"], r["model"], r["bits"],
            suite(j.meta) or j.attack or "none", j.meta)
    for path, meta in gone:
        cfg = meta.get("config") or {}
        add(f"{Path(meta.get('job_dir', '?')) / 'results.json'} (in {_display(path)})",
            meta.get("dataset_label") or (cfg.get("dataset") or {}).get("name", "?"),
            (cfg.get("model") or {}).get("name", "?"), cfg.get("bits", "?"),
            suite(meta) or (cfg.get("attack") or {}).get("name", "?"), meta)
    if grid.rows:
        report.add(grid.markdown())


def log_to_wandb(report: Report, rows: list[dict[str, Any]]) -> None:
    """Send the report's tables (wandb.Table) and figures (wandb.Image) to a run, offline unless WANDB_MODE
    says otherwise."""
    import wandb

    run = wandb.init(project="pqattack", job_type="report", dir=str(report.out),
                     mode=os.environ.get("WANDB_MODE", "offline"), config={"report": str(report.out)})
    columns = sorted({k for r in rows for k in r})
    tables = {name: wandb.Table(columns=g.columns, data=g.rows) for name, g in report.grids.items()}
    tables["records"] = wandb.Table(columns=columns, data=[[str(r.get(c)) for c in columns] for r in rows])
    run.log({**tables, **{f"figures/{p.stem}": wandb.Image(str(p)) for p in report.figures}})
    run.finish()


def build_report(sources: list[str | Path], out: str | Path, cache_dir: str | Path | None = None,
                 model: str | None = None, bits: int | None = None, use_wandb: bool = False,
                 command: str = "", stand_ins: dict[str, str] | None = None) -> Path:
    """Write ``out/index.md``, the PNG figures and ``out/report.json`` (the rows used); return index.md."""
    out = Path(out)
    missing = [str(s) for s in sources if not Path(s).exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)} (give results folders or "
                                f"results.json files)")
    records = gather_records(sources, exclude=out)
    if not records.rows:
        raise FileNotFoundError(f"no results records (results.json with rows and meta) in "
                                f"{', '.join(map(str, sources))}")
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    report.add("# Reproduction report: Adversarial Attack on Deep Product Quantization Network (PQ-AG, AAAI 2020)",
               f"Built with `{command or 'python -m pqattack.report'}` from {len(records.files)} records files "
               "(listed under Sources).")
    paper_section(report, records.rows, stand_ins)
    report.add("## 2. All our records", "Every row, in the layout of Table 1 (and the transfer matrices of "
               "Tables 3-4 where there are transfer rows); mAP (%), systems SDC and ADC.", render_tables(records.rows))
    peak_section(report, records.rows)
    map_section(report, records.rows)
    artifact_sections(report, records, ArtifactStore(cache_dir), model, bits)
    beyond_section(report, records.rows)
    defense_section(report, records.rows)
    sources_section(report, records)
    if report.notes:
        report.blocks[2:2] = ["**Notes**", "\n".join(f"- {n}" for n in report.notes)]
    index = out / "index.md"
    index.write_text("\n\n".join(report.blocks) + "\n")
    drawn = {p.name for p in report.figures}
    for stale in out.glob("*.png"):  # an earlier build's figure that this one did not draw
        if stale.name not in drawn and stale.name.startswith((*figures.FIGSIZE, "defense_")):
            stale.unlink()
    (out / "report.json").write_text(json.dumps(
        {"sources": [str(f) for f in records.files], "figures": [p.name for p in report.figures],
         "notes": report.notes, "rows": records.rows}, indent=1, default=str))
    if use_wandb:
        log_to_wandb(report, records.rows)
    return index
