"""Defenses, from the records: clean against worst-case mAP per defense and code length, the robustness factor over
the undefended target, what an adaptive attack takes back from a query transform (oblivious against adaptive), the
gradient-masking checks (100 steps against 5; eps 16/255 against 8/255; budget curves) and the clean-against-robust
Pareto figure across ``defense.eps`` and ``defense.beta``. Everything is computed from rows."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..labels import PAPER_ATTACK, WORST, attack_label
from .paper import Grid
from .tables import recipe_label

BETA = re.compile(r", beta=([0-9.e+-]+)")  # the beta of a defense label (AdversarialTrainingConfig.label)
PARETO_MIN_POINTS = 3  # a target's defenses drawn in the Pareto figure: the undefended one and at least two trained
SERIES_MARKERS = "o^vD<>ph*"  # with the ten default colours: 90 series of a panel drawn alike by neither


def _target(row: dict[str, Any]) -> tuple:
    """The retrieval system a row measures, without its defense: dataset, model, quantizer, bits, system, recipe."""
    return (row.get("dataset_label") or row["dataset"], row["model"], row.get("quantizer", "kmeans"), int(row["bits"]),
            row["system"], recipe_label(row))


def _model(target: tuple) -> str:
    """``fastnet+pqn`` (``fastnet`` for a K-means target)."""
    return target[1] + ("" if target[2] == "kmeans" else f"+{target[2]}")


def _model_namer(targets: Iterable[tuple]) -> Callable[[tuple], str]:
    """``_model``, followed by the recipe (``fastnet (2 epochs, cpu, fp32, seed 1)``) where the targets hold that
    model with several recipes (another seed, epochs or query count), so that their rows are told apart."""
    recipes: dict[tuple, set[str]] = defaultdict(set)
    for t in targets:
        recipes[t[:3]].add(t[5])
    return lambda t: f"{_model(t)} ({t[5]})" if len(recipes[t[:3]]) > 1 else _model(t)


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r.get("transfer") and r.get("topk") is None]


def has_defenses(rows: list[dict[str, Any]]) -> bool:
    """Whether the records hold a robust evaluation (a worst case over a suite) or a defended target."""
    return any(r["attack"] == WORST or r.get("defense") for r in _rows(rows))


@dataclass
class Summary:
    target: tuple
    defense: str
    clean: float | None
    worst: float | None
    paper_best: float | None  # the lowest mAP of PQ-AG's three attacks at the paper's budget (adaptive)
    suite: list[str]


def summaries(rows: list[dict[str, Any]]) -> list[Summary]:
    """Per target and defense ('none' for undefended): clean, the worst case over the suite and the best of the
    paper's attacks at its budget."""
    out: dict[tuple, Summary] = {}
    for r in _rows(rows):
        key = (_target(r), r.get("defense") or "none")
        s = out.setdefault(key, Summary(key[0], key[1], None, None, None, []))
        if r["attack"] == "clean":
            s.clean = r["map"]
        elif r["attack"] == WORST:
            s.worst, s.suite = r["map"], list(r.get("suite") or [])
        elif r["attack"] in ("basic", "apd", "aod") and attack_label(r) == r["attack"] and not r.get("oblivious"):
            s.paper_best = r["map"] if s.paper_best is None else min(s.paper_best, r["map"])
    return [s for _, s in sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1]))
            if s.worst is not None or s.defense != "none"]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary_grid(rows: list[dict[str, Any]]) -> Grid:
    """Clean and worst-case mAP per target and defense, the robustness factor (worst case over the undefended
    target's worst case) and the clean cost (points of clean mAP lost). A factor whose defended suite lacks one of
    the undefended suite's attacks (its worst case may be too high) is marked ``†``; a suite with more attacks
    (adaptive ones, behind a transform) can only lower the defended worst case."""
    found = summaries(rows)
    undefended = {s.target: s for s in found if s.defense == "none"}
    name = _model_namer(s.target for s in found)
    body = []
    for s in found:
        base = undefended.get(s.target)
        factor = cost = None
        if base is not None and s.defense != "none":
            if base.worst and s.worst is not None:
                factor = f"{s.worst / base.worst:.2f}x" + ("" if set(base.suite) <= set(s.suite) else " †")
            if base.clean is not None and s.clean is not None:
                cost = base.clean - s.clean
        body.append([name(s.target), str(s.target[3]),
                     s.target[4].upper(), s.defense, _fmt(s.clean), _fmt(s.paper_best), _fmt(s.worst),
                     "-" if factor is None else factor, _fmt(cost), str(len(s.suite))])
    return Grid("**Defenses**: clean mAP, the best of PQ-AG's attacks at its budget, the per-query worst case over "
                "the suite (of as many attacks as the last column says), the worst case relative to the undefended "
                "target's (†: the defended suite lacks some of the undefended suite's attacks), and the clean mAP "
                "lost (%)",
                ["model", "bits", "system", "defense", "clean", "best PQ-AG", "worst case", "vs undefended",
                 "clean cost", "attacks"], body)


APPARENT_MIN = 2.0  # mAP points: below this, a transform shows no apparent robustness to take back


def adaptive_grid(rows: list[dict[str, Any]]) -> Grid | None:
    """For query transforms: each of PQ-AG's attacks oblivious of the transform against the same attack through it
    (BPDA), and the strongest adaptive attack of the suite (the lowest mAP of a member made through the transform:
    more steps, restarts, EOT); the undefended target's mAP under that attack; and the share of the transform's
    apparent robustness that each adaptive attack takes back, (oblivious - adaptive) / (oblivious - undefended),
    where the apparent robustness is at least ``APPARENT_MIN`` points."""
    rs = _rows(rows)
    undefended = {(_target(r), r["attack"]): r["map"] for r in rs if not r.get("defense")
                  and attack_label(r) == r["attack"]}
    pairs: dict[tuple, dict[bool, float]] = {}
    strongest: dict[tuple, tuple[float, str]] = {}
    for r in rs:
        if r.get("oblivious") is None or r["attack"] in ("clean", WORST):
            continue
        if not r["oblivious"] and abs(float(r["eps"]) - PAPER_ATTACK["eps"]) < 1e-9:  # at the paper's budget
            key = (_target(r), r["defense"])
            if key not in strongest or r["map"] < strongest[key][0]:
                strongest[key] = (r["map"], attack_label(r))
        if attack_label({**r, "oblivious": None}) == r["attack"]:  # the paper's setting
            pairs.setdefault((_target(r), r["defense"], r["attack"]), {})[bool(r["oblivious"])] = r["map"]

    def share(oblivious: float, adaptive: float, und: float | None) -> str:
        if und is None:
            return "-"
        if oblivious - und < APPARENT_MIN:
            return "none apparent"
        return f"{(oblivious - adaptive) / (oblivious - und) * 100:.0f}%"

    body = []
    name = _model_namer(t for t, _, _ in pairs)
    for (target, defense, attack), maps in sorted(pairs.items()):
        if True not in maps or False not in maps:
            continue
        und = undefended.get((target, attack))
        best, label = strongest[(target, defense)]
        body.append([name(target), str(target[3]), target[4].upper(), defense, attack, _fmt(und),
                     _fmt(maps[True]), _fmt(maps[False]), share(maps[True], maps[False], und), f"{label} {best:.1f}",
                     share(maps[True], best, und)])
    if not body:
        return None
    return Grid("**Adaptive against plain**: mAP (%) of each of PQ-AG's attacks oblivious of the query transform "
                "and through it (BPDA), the undefended target's, the strongest adaptive attack of the suite, and the "
                "share of the apparent robustness (oblivious over undefended) each adaptive attack takes back",
                ["model", "bits", "system", "defense", "attack", "undefended", "oblivious", "adaptive", "taken back",
                 "strongest adaptive", "taken back by it"], body)


def masking_grid(rows: list[dict[str, Any]]) -> Grid | None:
    """The gradient-masking checks per defended target: APD's mAP at the most steps recorded at 8/255 must not exceed
    its 5-step mAP, and at the largest eps recorded (with the most steps that 8/255 has too) it must be below its
    8/255 mAP at those steps (rows of those budgets, where the records have them). Plain APD's rows are compared
    with each other; where a target has no plain APD at more steps, its many-step APD of another step schedule
    stands in, named in the cell. Other variants (the bare reference, restarts, EOT, a dither) are other attacks."""
    rs = [r for r in _rows(rows) if r.get("defense") and r["attack"] == "apd" and not r.get("oblivious")
          and r.get("restarts") is None and not r.get("eot") and not r.get("dither")]
    by: dict[tuple, dict[str, dict[tuple[float, int], float]]] = {}  # target -> step schedule -> budget -> mAP
    for r in rs:
        schedule = r.get("step_schedule") or ""  # "": the constant step, plain APD
        if attack_label({**r, "eps": PAPER_ATTACK["eps"], "iters": PAPER_ATTACK["iters"], "oblivious": None}) != \
                "apd" + (f" ({schedule})" if schedule else ""):
            continue  # the bare reference, another similarity or temperature: another attack
        by.setdefault((_target(r), r["defense"]), {}).setdefault(schedule, {})[
            (round(float(r["eps"]) * 255), int(r["iters"]))] = r["map"]

    def most_steps(grid: dict[tuple[float, int], float]) -> tuple[float, int] | None:
        return max((k for k in grid if k[0] == 8 and k[1] > 5), default=None, key=lambda k: k[1])

    body = []
    name = _model_namer(t for t, _ in by)
    for (target, defense), schedules in sorted(by.items()):
        grid = schedules.get("", {})
        five = grid.get((8, 5))
        schedule = next((sc for sc in sorted(schedules) if most_steps(schedules[sc])), "")  # plain APD first
        many_of = schedules.get(schedule, {})
        many = most_steps(many_of)
        named = f" ({schedule})" if schedule else ""
        wide = max((k for k in grid if k[0] > 8 and (8, k[1]) in grid), default=None)  # the largest eps, most steps
        at8 = grid.get((8, wide[1])) if wide else None
        if five is None or (many is None and wide is None):
            continue
        steps = "-" if many is None else (f"{many_of[many]:.1f}{named} <= {five:.1f}: "
                                          f"{'ok' if many_of[many] <= five else 'FLAG'}")
        eps = ("-" if wide is None or at8 is None else
               f"{grid[wide]:.1f} < {at8:.1f}: {'ok' if grid[wide] < at8 else 'FLAG'}")
        body.append([name(target), str(target[3]), target[4].upper(), defense, steps, eps])
    if not body:
        return None
    return Grid("**Gradient-masking checks** of the defended targets: APD at the most steps recorded against 5 steps "
                "(must not be higher), and at the largest eps against 8/255 (must be lower), mAP (%)",
                ["model", "bits", "system", "defense", "many steps vs 5", "large eps vs 8/255"], body)


def pareto_points(rows: list[dict[str, Any]]) -> dict[tuple, list[tuple[str, float, float]]]:
    """Per target: (label, clean mAP, worst-case mAP) of the undefended model and of each adversarially trained one."""
    out: dict[tuple, list[tuple[str, float, float]]] = {}
    for s in summaries(rows):
        if s.clean is None or s.worst is None or not (s.defense == "none" or s.defense.startswith("adv")):
            continue
        out.setdefault(s.target, []).append((s.defense, s.clean, s.worst))
    return out


def pareto_series(points: list[tuple[str, float, float]]) -> dict[str, list[tuple[float | None, float, float]]]:
    """The points of one target as series: the defenses that differ only in ``beta`` form one series (its label
    without beta), each point (beta, clean, worst case), beta ascending; the undefended target is a series of one."""
    series: dict[str, list[tuple[float | None, float, float]]] = {}
    for label, clean, worst in points:
        beta = BETA.search(label)
        key = BETA.sub("", label) if beta else label
        series.setdefault(key, []).append((float(beta.group(1)) if beta else None, clean, worst))
    for pts in series.values():
        pts.sort(key=lambda p: -1.0 if p[0] is None else p[0])
    return series


def pareto_figure(rows: list[dict[str, Any]], title: str) -> Any:
    """Clean against worst-case mAP, a panel per (model, bits, system) with at least ``PARETO_MIN_POINTS`` points
    (the undefended target and its adversarially trained versions): a line per series of ``pareto_series`` (one
    training radius, ...) through its beta values, each point marked with its beta."""
    from .figures import new_figure

    points = {t: p for t, p in pareto_points(rows).items() if len(p) >= PARETO_MIN_POINTS}
    panels = sorted(points)
    panel_name = _model_namer(panels)
    fig, axes = new_figure("pareto", ncols=max(1, len(panels)), squeeze=False)
    for ax, target in zip(axes[0], panels):
        series = pareto_series(points[target])
        trained = sorted(k for k in series if k != "none")
        for key, pts in sorted(series.items()):
            name = "undefended" if key == "none" else key.removeprefix("adv (").removesuffix(")")
            if key == "none":
                style = {"marker": "s", "color": "black"}
            else:  # past ten series the colours repeat: the marker changes
                i = trained.index(key)
                style = {"marker": SERIES_MARKERS[i // 10 % len(SERIES_MARKERS)], "color": f"C{i % 10}"}
            ax.plot([p[1] for p in pts], [p[2] for p in pts], lw=0.8, ms=4, label=name, **style)
            for beta, clean, worst in pts:
                if beta is not None:
                    ax.annotate(f"{beta:g}", (clean, worst), fontsize=6, xytext=(3, 2), textcoords="offset points")
        cleans = [c for _, c, _ in points[target]]
        ax.set_xlim(max(0.0, min(cleans) - 5), min(100.0, max(cleans) + 5))
        ax.set_ylim(0, max(w for _, _, w in points[target]) * 1.2)
        ax.set_xlabel("clean mAP (%)")
        ax.set_ylabel("worst-case mAP (%)")
        ax.set_title(f"{panel_name(target)} {target[3]}b {target[4].upper()}", fontsize=8)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: it hides no point
    fig.suptitle(f"{title} (at each point: beta)")
    return fig


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The defense tables of a results file: summary, adaptive against plain, masking checks."""
    blocks = [summary_grid(rows).markdown()]
    for grid in (adaptive_grid(rows), masking_grid(rows)):
        if grid is not None:
            blocks.append(grid.markdown())
    return "\n\n".join(blocks) + "\n"


__all__ = ["adaptive_grid", "has_defenses", "masking_grid", "pareto_figure", "pareto_points", "pareto_series",
           "summaries", "summary_grid", "summary_markdown"]
