"""Beyond the paper, from the records: which attack wins each Table 1 cell and by how much, the targeted attacks'
t-mAP, and the budget curves (mAP against iterations and eps) with the gradient-masking check: more steps or a
larger eps must never raise mAP. Everything here is computed from rows; nothing is typed by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..labels import LOOP_LABELS, PAPER_ATTACK, WORST, attack_label, is_paper_attack
from .paper import Grid
from .tables import recipe_label

PAPER_ATTACKS = ("basic", "apd", "aod")
GAIN_TARGET = 2.0  # mAP points: a new attack "beats" PQ-AG's in a cell when it is at least this far below the best
RISE_TOLERANCE = 0.5  # mAP points a budget curve may rise before it is flagged (over 100 queries, one query whose
#                      AP moves by 50 points moves the mean by 0.5)


def _cell(row: dict[str, Any]) -> tuple:
    return (row.get("dataset_label") or row["dataset"], row["model"], recipe_label(row), row.get("quantizer", "kmeans"),
            int(row["bits"]), row["system"], row.get("defense") or "")


def _at_paper_budget(row: dict[str, Any]) -> bool:
    return all(row.get(k) is not None and abs(float(row[k]) - PAPER_ATTACK[k]) < 1e-9 for k in ("eps", "step", "iters"))


def _white_box(rows: list[dict[str, Any]], defended: bool = False) -> list[dict[str, Any]]:
    """The attacked white-box rows over the full ranking, of undefended targets (of defended ones with ``defended``;
    the worst case over a suite is no attack of its own)."""
    return [r for r in rows if r["attack"] not in ("clean", WORST) and not r.get("transfer")
            and r.get("topk") is None and bool(r.get("defense")) == defended]


def is_beyond(row: dict[str, Any]) -> bool:
    """An attack beyond the paper: a new loss, or a loop option on (restarts, MI, DI, schedules, annealing). PQ-AG's
    losses at other settings of eq. (7) (similarity, temperature, APD's peak code) are neither side: they are the
    soft-assignment study's."""
    return row["attack"] not in PAPER_ATTACKS or any(row.get(k) is not None for k in LOOP_LABELS)


@dataclass
class CellWinner:
    cell: tuple
    clean: float | None
    paper: tuple[str, float]   # the best of PQ-AG's attacks (label, mAP)
    beyond: tuple[str, float]  # the best attack beyond the paper
    floor: float | None = None  # the mAP of the worst rankings (every relevant item last), where recorded

    @property
    def gain(self) -> float:
        """mAP points by which the best new attack is below the best of PQ-AG's (negative: PQ-AG's wins)."""
        return self.paper[1] - self.beyond[1]


def cell_winners(rows: list[dict[str, Any]]) -> list[CellWinner]:
    """Per Table 1 cell (dataset, model, recipe, quantizer, bits, system), at the paper's budget and white-box: the
    best of basic/APD/AOD as the paper runs them against the best untargeted attack beyond the paper; cells that
    lack either side are left out. A targeted attack's rows count too: their mAP is the untargeted one."""
    clean = {_cell(r): r["map"] for r in rows if r["attack"] == "clean" and r.get("topk") is None}
    floor = {_cell(r): r["map_floor"] for r in rows if r.get("map_floor") is not None and r.get("topk") is None}
    paper: dict[tuple, tuple[str, float]] = {}
    beyond: dict[tuple, tuple[str, float]] = {}
    for r in _white_box(rows):
        if not _at_paper_budget(r):
            continue
        side = beyond if is_beyond(r) else paper if r["attack"] in PAPER_ATTACKS and is_paper_attack(r) else None
        if side is None:
            continue
        c = _cell(r)
        if c not in side or r["map"] < side[c][1]:
            side[c] = (attack_label(r), float(r["map"]))
    return [CellWinner(c, clean.get(c), paper[c], beyond[c], floor.get(c)) for c in sorted(set(paper) & set(beyond))]


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Short findings, each a sentence computed from the records: which attack wins where, and by how much."""
    return [*winner_findings(cell_winners(rows)),
            *(f"Transfer, {label}: below plain PGD's transfer in {wins} of {n} black-box cells, {change:+.1f} mAP "
              f"points on average." for label, (wins, n, change) in transfer_boosts(rows).items()),
            *gap_findings(mean_gap_to_apd(rows))]


def winner_findings(winners: list[CellWinner]) -> list[str]:
    """The white-box sentences: how often and by how much the new attacks win, who wins, the room to the floor."""
    if not winners:
        return []
    n = len(winners)
    beaten = [w for w in winners if w.gain >= GAIN_TARGET]
    out = [f"In {len(beaten)} of {n} cells (white-box, the paper's budget) an attack beyond the paper is at least "
           f"{GAIN_TARGET:g} mAP points below the best of PQ-AG's basic/APD/AOD; the largest gain is "
           f"{max(w.gain for w in winners):+.1f} points, the smallest {min(w.gain for w in winners):+.1f}."]
    best_paper: dict[str, int] = {}
    best_new: dict[str, int] = {}
    for w in winners:
        best_paper[w.paper[0]] = best_paper.get(w.paper[0], 0) + 1
        best_new[w.beyond[0]] = best_new.get(w.beyond[0], 0) + 1
    out.append("Strongest of PQ-AG's attacks, cells won: " +
               ", ".join(f"{k} {v}" for k, v in sorted(best_paper.items(), key=lambda kv: -kv[1])) + ".")
    out.append("Strongest attack beyond the paper, cells won: " +
               ", ".join(f"{k} {v}" for k, v in sorted(best_new.items(), key=lambda kv: -kv[1])) + ".")
    floored = [w for w in winners if w.floor is not None]
    if floored:
        room = [w.paper[1] - w.floor for w in floored]
        out.append(f"The lowest mAP any attack can reach (every relevant item ranked last) is "
                   f"{min(w.floor for w in floored):.1f}-{max(w.floor for w in floored):.1f}; the best of PQ-AG's "
                   f"attacks is {min(room):.1f}-{max(room):.1f} points above it in the {len(floored)} cells that "
                   f"record it, so a gain of {GAIN_TARGET:g} points is out of reach where that room is smaller.")
    return out


def gap_findings(per_attack: dict[str, float]) -> list[str]:
    if not per_attack:
        return []
    return ["Mean mAP against APD in the same cell (points; negative: stronger than APD): " +
            ", ".join(f"{k} {v:+.1f}" for k, v in sorted(per_attack.items(), key=lambda kv: kv[1])) + "."]


def transfer_boosts(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int, float]]:
    """Per transfer booster (a loop option on a transfer row: MI, DI, ...), over the black-box cells (source model
    other than the target, or other code length) where the same attack also ran plain: (cells where the booster
    gives the lower mAP, cells, mean mAP change in points; negative: the booster transfers better). Both at the
    paper's budget, from sources of one recipe (``source_epochs``)."""
    plain: dict[tuple, float] = {}
    boosted: dict[str, dict[tuple, float]] = {}
    for r in rows:
        if not r.get("transfer") or r["attack"] == "clean" or r.get("topk") is not None or not _at_paper_budget(r):
            continue
        key = (_cell(r), r["attack"], str(r.get("source_model")), r.get("source_bits"), str(r.get("source_epochs")))
        label = attack_label(r)
        if label == r["attack"]:
            plain[key] = r["map"]
        else:
            boosted.setdefault(label, {})[key] = r["map"]
    out = {}
    for label, cells in sorted(boosted.items()):
        both = [k for k in cells if k in plain]
        if both:
            out[label] = (sum(cells[k] < plain[k] for k in both), len(both),
                          sum(cells[k] - plain[k] for k in both) / len(both))
    return out


def mean_gap_to_apd(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per attack label, its mean mAP minus APD's over the cells where both ran (white-box, paper budget)."""
    apd = {_cell(r): r["map"] for r in _white_box(rows) if _at_paper_budget(r) and attack_label(r) == "apd"}
    gaps: dict[str, list[float]] = {}
    for r in _white_box(rows):
        label = attack_label(r)
        if label != "apd" and _at_paper_budget(r) and _cell(r) in apd:
            gaps.setdefault(label, []).append(r["map"] - apd[_cell(r)])
    return {k: sum(v) / len(v) for k, v in gaps.items()}


def cell_model(cell: tuple) -> str:
    """The model column of a cell: the backbone, with ``+pqn`` (its quantizer) unless K-means codebooks."""
    return cell[1] if cell[3] == "kmeans" else f"{cell[1]}+{cell[3]}"


def winners_grid(rows: list[dict[str, Any]]) -> Grid | None:
    winners = cell_winners(rows)
    if not winners:
        return None
    return Grid("**Beyond the paper, white-box at the paper's budget**: per cell, the best of PQ-AG's attacks and "
                "the best attack beyond it; mAP (%); gain: how far the new one is below (positive: it wins)",
                ["dataset", "model", "recipe", "bits", "system", "clean", "floor", "best of PQ-AG", "mAP",
                 "best beyond", "mAP ", "gain"],
                [[w.cell[0], cell_model(w.cell), w.cell[2],
                  str(w.cell[4]), w.cell[5].upper(), "—" if w.clean is None else f"{w.clean:.1f}",
                  "—" if w.floor is None else f"{w.floor:.1f}", w.paper[0],
                  f"{w.paper[1]:.1f}", w.beyond[0], f"{w.beyond[1]:.1f}", f"{w.gain:+.1f}"] for w in winners])


def tmap_grid(rows: list[dict[str, Any]]) -> Grid | None:
    """The targeted rows: t-mAP (relevance: the target class) of the clean and the adversarial queries, beside
    the untargeted mAP, per cell and budget."""
    found = [r for r in _white_box(rows) if r.get("tmap") is not None]
    if not found:
        return None
    found.sort(key=lambda r: (_cell(r), r.get("iters") or 0, r.get("eps") or 0))
    return Grid("**Targeted attacks**: t-mAP (%), relevance = the query's target class, over the queries not of "
                "that class already; mAP (%) with the true class",
                ["dataset", "model", "recipe", "bits", "system", "attack", "iters", "eps", "t-mAP clean",
                 "t-mAP", "mAP"],
                [[_cell(r)[0], r["model"], recipe_label(r), str(r["bits"]), r["system"].upper(),
                  r["attack"], str(r.get("iters")), f"{float(r['eps']) * 255:.0f}/255", f"{r['tmap_clean']:.1f}",
                  f"{r['tmap']:.1f}", f"{r['map']:.1f}"] for r in found])


@dataclass
class Curve:
    """mAP against one budget axis (``iters`` or ``eps``) with the other fixed, for one cell and attack."""

    cell: tuple
    attack: str
    axis: str
    fixed: float
    points: list[tuple[float, float]]  # (budget, mAP), the budget ascending

    def rises(self, tolerance: float = RISE_TOLERANCE) -> list[tuple[float, float, float]]:
        """(from, to, by how much) wherever more budget raised mAP by more than ``tolerance`` points."""
        return [(a[0], b[0], b[1] - a[1]) for a, b in zip(self.points, self.points[1:]) if b[1] - a[1] > tolerance]


def _attack_without_budget(row: dict[str, Any]) -> str:
    return attack_label({**row, "eps": PAPER_ATTACK["eps"], "iters": PAPER_ATTACK["iters"]})


def budget_curves(rows: list[dict[str, Any]], min_points: int = 3, defended: bool = False) -> list[Curve]:
    """Every curve of at least ``min_points`` budgets in the white-box rows (of undefended targets, or of defended
    ones with ``defended``): mAP against iterations at each eps, and against eps at each number of iterations."""
    groups: dict[tuple, dict[tuple[float, int], float]] = {}
    for r in _white_box(rows, defended):
        if r.get("eps") is None or r.get("iters") is None:
            continue
        groups.setdefault((_cell(r), _attack_without_budget(r)), {})[(float(r["eps"]), int(r["iters"]))] = r["map"]
    curves = []
    for (cell, attack), grid in sorted(groups.items()):
        for axis, fixed_index in (("iters", 0), ("eps", 1)):
            for fixed in sorted({k[fixed_index] for k in grid}):
                pts = sorted((k[1 - fixed_index], v) for k, v in grid.items() if k[fixed_index] == fixed)
                if len(pts) >= min_points:
                    curves.append(Curve(cell, attack, axis, fixed, pts))
    return curves


def _budget(axis: str, value: float) -> str:
    return f"{value * 255:.0f}/255" if axis == "eps" else f"{value:g}"


def flags_grid(curves: list[Curve]) -> Grid:
    rises = [(c, r) for c in curves for r in c.rises()]
    return Grid(f"**Gradient-masking check**: {len(curves)} budget curves; a rise of more than {RISE_TOLERANCE:g} "
                f"mAP points with more budget is flagged ({len(rises)} flagged)",
                ["model", "bits", "system", "attack", "curve", "from", "to", "mAP rise"],
                [[cell_model(c.cell) + (f" [{c.cell[6]}]" if c.cell[6] else ""), str(c.cell[4]), c.cell[5].upper(),
                  c.attack,
                  f"against {c.axis} at {'eps' if c.axis == 'iters' else 'iters'} "
                  f"{_budget('eps' if c.axis == 'iters' else 'iters', c.fixed)}", _budget(c.axis, a),
                  _budget(c.axis, b), f"+{d:.1f}"] for c, (a, b, d) in rises])


def budget_figure(curves: list[Curve], axis: str, title: str) -> Any:
    """One panel per (model, bits, system), a line per (attack, the fixed budget); log-scale budget axis."""
    from .figures import new_figure

    panels = sorted({(cell_model(c.cell), c.cell[4], c.cell[5], c.cell[6]) for c in curves if c.axis == axis})
    fig, axes = new_figure("budget_curves", ncols=max(1, len(panels)), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for c in curves:
            if c.axis == axis and (cell_model(c.cell), c.cell[4], c.cell[5], c.cell[6]) == panel:
                xs = [p[0] * 255 if axis == "eps" else p[0] for p in c.points]
                other = "eps" if axis == "iters" else "iters"
                ax.plot(xs, [p[1] for p in c.points], marker="o", ms=3,
                        label=f"{c.attack}, {other} {_budget(other, c.fixed)}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("PGD iterations" if axis == "iters" else "eps (/255)")
        ax.set_ylabel("mAP (%)")
        ax.set_title(f"{panel[0]} {panel[1]}b {panel[2].upper()}" + (f"\n{panel[3]}" if panel[3] else ""), fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return fig
