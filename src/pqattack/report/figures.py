"""The report's figures, drawn with matplotlib (Agg): mAP against code length and against attack, the
precision-recall curves of the paper's Fig. 5, retrieval examples as in Fig. 4, and the soft centroid
distributions (eq. 7) of Fig. 3. The functions here only draw what they are given; ``figure_data``
computes it from records and artifacts.

Every figure has a fixed size (``FIGSIZE`` inches at ``DPI``), a title, axis labels and, where it shows more
than one series, a legend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .tables import ATTACK_ORDER, MODEL_ORDER, SYSTEM_ORDER, order_key, recipe_label  # noqa: E402

DPI = 100
FIGSIZE = {"map_vs_bits": (11, 4.5), "map_vs_attack": (11, 4.5), "pr_curves": (11, 4.5),
           "retrieval_examples": (13, 6), "centroid_distributions": (11, 4.5), "budget_curves": (13, 4.5),
           "pareto": (13, 6.5)}
ATTACK_COLOURS = {"clean": "tab:green", "basic": "tab:blue", "apd": "tab:orange", "aod": "tab:red",
                  "margin": "tab:purple", "center": "tab:brown", "center_targeted": "tab:pink", "far": "tab:olive",
                  "contrast": "tab:cyan",
                  "worst-case": "black"}
RELEVANT, IRRELEVANT = "tab:green", "tab:red"
MARKERS = "osD^vP*X"


def pixel_size(kind: str) -> tuple[int, int]:
    """(width, height) in pixels of a saved figure of ``kind``."""
    w, h = FIGSIZE[kind]
    return round(w * DPI), round(h * DPI)


def new_figure(kind: str, ncols: int = 1, **kw: Any) -> tuple[Figure, Any]:
    return plt.subplots(1, ncols, figsize=FIGSIZE[kind], dpi=DPI, layout="constrained", **kw)


def save(fig: Figure, path: Path) -> Path:
    """Write a PNG of the figure's fixed size (no tight bounding box) and close it."""
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _systems(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({r["system"] for r in rows}, key=lambda s: order_key(s, SYSTEM_ORDER))


def _target_name(row: dict[str, Any]) -> str:
    """The model, with its quantizer when it is not K-means (as in ``tables.markdown_table``)."""
    q = row.get("quantizer", "kmeans")
    return row["model"] + ("" if q == "kmeans" else f"+{q}")


def _series_namer(rows: list[dict[str, Any]]) -> Any:
    """A row's series in the mAP charts: its model (``_target_name``), with its recipe (``tables.recipe_label``,
    the seed included) where the rows hold that model under several, so that two recipes of one model are two
    series, not one drawn over the other in whatever order the rows came."""
    recipes: dict[str, set[str]] = {}
    for r in rows:
        recipes.setdefault(_target_name(r), set()).add(recipe_label(r))

    def name(r: dict[str, Any]) -> str:
        model = _target_name(r)
        return model + (f" ({recipe_label(r)})" if len(recipes[model]) > 1 else "")

    return name


def _models(rows: list[dict[str, Any]], name: Any = _target_name) -> list[str]:
    return sorted({name(r) for r in rows}, key=lambda m: order_key(m.split("+")[0].split(" ")[0], MODEL_ORDER) + (m,))


def _attacks(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({r["attack"] for r in rows}, key=lambda a: order_key(a, ATTACK_ORDER))


def map_vs_bits(rows: list[dict[str, Any]], title: str) -> Figure:
    """White-box mAP against code length: one line per model and attack, one panel per system."""
    systems = _systems(rows)
    fig, axes = new_figure("map_vs_bits", len(systems), sharey=True, squeeze=False)
    bits = sorted({int(r["bits"]) for r in rows})
    name = _series_namer(rows)
    for ax, system in zip(axes[0], systems):
        for mi, model in enumerate(_models(rows, name)):
            for attack in _attacks(rows):
                pts = sorted((int(r["bits"]), r["map"]) for r in rows
                             if (r["system"], name(r), r["attack"]) == (system, model, attack))
                if pts:
                    ax.plot(*zip(*pts), marker=MARKERS[mi % len(MARKERS)], color=ATTACK_COLOURS.get(attack),
                            linestyle="-" if mi % 2 == 0 else "--", label=f"{model}, {attack}")
        ax.set(title=system.upper(), xlabel="code length (bits)", ylabel="mAP (%)", xticks=bits, ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncols=2)
    fig.suptitle(title)
    return fig


def map_vs_attack(rows: list[dict[str, Any]], title: str) -> Figure:
    """White-box mAP for each attack (clean first): grouped bars per model and code length, one panel per system."""
    systems = _systems(rows)
    fig, axes = new_figure("map_vs_attack", len(systems), sharey=True, squeeze=False)
    attacks = _attacks(rows)
    name = _series_namer(rows)
    models = _models(rows, name)
    series = sorted({(name(r), int(r["bits"])) for r in rows}, key=lambda s: (models.index(s[0]), s[1]))
    width = 0.8 / max(1, len(series))
    for ax, system in zip(axes[0], systems):
        value = {(name(r), int(r["bits"]), r["attack"]): r["map"] for r in rows if r["system"] == system}
        for si, (model, b) in enumerate(series):
            xs = [i + (si - (len(series) - 1) / 2) * width for i in range(len(attacks))]
            ax.bar(xs, [value.get((model, b, a), np.nan) for a in attacks], width, label=f"{model}, {b} bits")
        ax.set(title=system.upper(), xlabel="attack", ylabel="mAP (%)", ylim=(0, 100))
        ax.set_xticks(range(len(attacks)), attacks)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def pr_curves(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], maps: dict[tuple[str, str], float],
              title: str) -> Figure:
    """Fig. 5: precision against recall (both averaged over queries at every rank) per attack and system.
    ``curves[system][attack] = (recall, precision)``; ``maps[(system, attack)]`` goes in the legend."""
    fig, axes = new_figure("pr_curves", len(curves), sharey=True, squeeze=False)
    for ax, (system, by_attack) in zip(axes[0], curves.items()):
        for attack, (recall, precision) in by_attack.items():
            ax.plot(recall, precision, color=ATTACK_COLOURS.get(attack),
                    label=f"{attack} (mAP {maps[(system, attack)]:.1f})")
        ax.set(title=system.upper(), xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


@dataclass
class ExampleRow:
    """One line of Fig. 4: a query (clean or adversarial), its perturbation, its top-ranked database images."""

    label: str
    query: np.ndarray | None            # HxWx3 uint8; None: this attack was not run
    perturbation: np.ndarray | None     # HxWx3 in [0, 1], amplified
    results: list[np.ndarray]
    relevant: list[bool]


def _image_axis(ax: Any, image: np.ndarray | None, frame: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.axis("off")
        return
    ax.imshow(image, interpolation="nearest")
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set(color=frame, linewidth=3.5)


def retrieval_examples(rows: list[ExampleRow], amplification: float, title: str) -> Figure:
    """Fig. 4: per line a query, the amplified perturbation and the top-k results; irrelevant results in
    red frames, relevant in green."""
    k = max(len(r.results) for r in rows)
    fig = plt.figure(figsize=FIGSIZE["retrieval_examples"], dpi=DPI, layout="constrained")
    axes = fig.subplots(len(rows), k + 2, squeeze=False)
    for i, row in enumerate(rows):
        _image_axis(axes[i][0], row.query)
        _image_axis(axes[i][1], row.perturbation)
        for j in range(k):
            has = j < len(row.results)
            _image_axis(axes[i][j + 2], row.results[j] if has else None,
                        (RELEVANT if row.relevant[j] else IRRELEVANT) if has else None)
        axes[i][0].axis("on")
        axes[i][0].set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=9)
        if row.query is None:
            axes[i][0].set_xticks([])
            axes[i][0].set_yticks([])
            for spine in axes[i][0].spines.values():
                spine.set_visible(False)
            axes[i][2].text(0, 0.5, "not run", fontsize=10, va="center")
    for j, name in enumerate(["query", f"perturbation x{amplification:.0f}"] + [f"rank {n}" for n in range(1, k + 1)]):
        axes[0][j].set_title(name, fontsize=9)  # titles stay visible on axes without an image
    fig.legend(handles=[Patch(edgecolor=RELEVANT, facecolor="none", linewidth=2, label="relevant (same class)"),
                        Patch(edgecolor=IRRELEVANT, facecolor="none", linewidth=2, label="irrelevant")],
               loc="outside lower center", ncols=2)
    fig.suptitle(title)
    return fig


def centroid_distributions(clean: dict[str, np.ndarray], attacked: dict[str, np.ndarray], title: str) -> Figure:
    """Fig. 3: the soft distribution of eq. (7) over the K centroids of one subspace, clean (green) against
    adversarial (red), one panel per attack, with the uniform 1/K for scale (the y axis is fitted to the data).
    ``clean[attack]`` and ``attacked[attack]`` are ``[K]``."""
    fig, axes = new_figure("centroid_distributions", len(attacked), sharey=True, squeeze=False)
    for ax, (attack, p_adv) in zip(axes[0], attacked.items()):
        k = np.arange(len(p_adv))
        ax.plot(k, clean[attack], marker="o", color=RELEVANT, label="clean query")
        ax.plot(k, p_adv, marker="s", color=IRRELEVANT, label=f"after {attack.upper()}")
        ax.axhline(1 / len(p_adv), color="grey", linestyle=":", label="uniform 1/K")
        ax.set(title=attack.upper(), xlabel="centroid k", ylabel="soft assignment p_mk (eq. 7)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig
