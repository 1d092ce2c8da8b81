"""The report's pages beyond the paper (report/beyond.py): per-cell winners, findings, t-mAP and the budget curves'
gradient-masking check, on hand-made rows whose answers are known; and the section in a built report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pqattack.report import beyond

BUDGET = dict(similarity="dot", temperature=1.0, eps=8 / 255, step=0.01, iters=5)


def row(attack: str, system: str, value: float, bits: int = 16, **kw) -> dict:
    return {"dataset": "cifar10", "dataset_label": "CIFAR-10", "model": "fastnet", "quantizer": "kmeans",
            "bits": bits, "M": 4, "K": 16 if bits == 16 else 512, "epochs": 10, "device": "cpu", "precision": "bf16",
            "attack": attack, "system": system, "map": value, "topk": None, "transfer": False,
            **({} if attack == "clean" else BUDGET), **kw}


def cells() -> list[dict]:
    rows = []
    for bits, (basic, apd, aod, margin, center, apd_mi) in ((16, (10.0, 8.0, 9.0, 18.0, 5.5, 7.0)),
                                                             (36, (9.0, 7.0, 8.0, 20.0, 7.5, 6.0))):
        rows += [row("clean", "sdc", 80.0, bits), row("basic", "sdc", basic, bits), row("apd", "sdc", apd, bits),
                 row("aod", "sdc", aod, bits), row("margin", "sdc", margin, bits, kappa=0.1),
                 row("center", "sdc", center, bits), row("apd", "sdc", apd_mi, bits, momentum=1.0),
                 # a larger budget is no cell of the paper's budget: left out of the winners
                 row("center", "sdc", 0.5, bits, eps=16 / 255),
                 # eq. (7)'s other settings belong to the soft-assignment study: neither side
                 row("apd", "sdc", 1.0, bits, similarity="l2"), row("apd", "sdc", 1.0, bits, peak="argmax")]
    return rows


def test_cell_winners_pick_the_best_of_each_side_at_the_paper_budget() -> None:
    winners = {w.cell[4]: w for w in beyond.cell_winners(cells())}
    assert set(winners) == {16, 36}
    assert winners[16].paper == ("apd", 8.0) and winners[16].beyond == ("center", 5.5)
    assert winners[16].gain == pytest.approx(2.5) and winners[16].clean == 80.0
    # APD with momentum is an attack beyond the paper (a loop option), and wins the 36-bit cell
    assert winners[36].paper == ("apd", 7.0) and winners[36].beyond == ("apd (MI=1)", 6.0)
    assert winners[36].gain == pytest.approx(1.0)


def test_findings_count_the_cells_and_the_gaps_to_apd() -> None:
    text = beyond.findings(cells())
    assert text[0].startswith("In 1 of 2 cells") and "largest gain is +2.5" in text[0] and "smallest +1.0" in text[0]
    assert text[1] == "Strongest of PQ-AG's attacks, cells won: apd 2."
    assert "center 1" in text[2] and "apd (MI=1) 1" in text[2]
    gaps = beyond.mean_gap_to_apd(cells())
    assert gaps["margin"] == pytest.approx(((18 - 8) + (20 - 7)) / 2)
    assert gaps["apd (MI=1)"] == pytest.approx(-1.0) and "apd" not in gaps
    assert beyond.findings([row("clean", "sdc", 80.0), row("apd", "sdc", 8.0)]) == []
    floored = [{**r, "map_floor": 5.2} if r["attack"] == "clean" else r for r in cells()]
    assert beyond.cell_winners(floored)[0].floor == 5.2 and beyond.cell_winners(cells())[0].floor is None
    assert any("is 5.2-5.2; the best of PQ-AG's attacks is 1.8-2.8 points above it in the 2 cells" in f
               for f in beyond.findings(floored))


def test_transfer_boosts_compare_each_booster_with_plain_pgd_cell_by_cell() -> None:
    def t(source: str, value: float, **kw) -> dict:
        return row("aod", "sdc", value, model="vgg16", source_model=source, transfer=True, **kw)

    rows = [t("fastnet", 50.0), t("fastnet", 45.0, momentum=1.0), t("fastnet", 52.0, diversity=0.5),
            t("resnet18", 40.0), t("resnet18", 38.0, momentum=1.0), t("resnet18", 39.0, diversity=0.5),
            t("alexnet", 30.0, momentum=1.0),  # no plain row for this source: not compared
            row("aod", "sdc", 20.0, model="vgg16")]  # white-box: not a transfer cell
    # plain transfer from another recipe of the source, or at another budget, is no comparison for the boosters
    # (once, whichever of two source recipes' plain rows came last stood for plain PGD)
    others = [t("fastnet", 70.0, source_epochs=20), t("fastnet", 10.0, eps=16 / 255, momentum=1.0),
              t("resnet18", 90.0, iters=100)]
    assert beyond.transfer_boosts(rows + others) == beyond.transfer_boosts(others[:1] + rows + others[1:])
    rows += others
    boosts = beyond.transfer_boosts(rows)
    assert boosts["aod (MI=1)"] == (2, 2, pytest.approx(-3.5))
    assert boosts["aod (DI=0.5)"] == (1, 2, pytest.approx(0.5))
    assert beyond.findings(rows) == [
        "Transfer, aod (DI=0.5): below plain PGD's transfer in 1 of 2 black-box cells, +0.5 mAP points on average.",
        "Transfer, aod (MI=1): below plain PGD's transfer in 2 of 2 black-box cells, -3.5 mAP points on average."]


def test_tmap_grid_lists_the_targeted_rows_with_their_budget() -> None:
    rows = [row("center_targeted", "sdc", 11.0, iters=i, tmap=t, tmap_clean=10.0) for i, t in ((5, 60.0), (100, 91.0))]
    grid = beyond.tmap_grid([*rows, row("apd", "sdc", 8.0)])
    assert grid is not None and [r[6] for r in grid.rows] == ["5", "100"]
    assert [r[9] for r in grid.rows] == ["60.0", "91.0"] and grid.rows[0][7] == "8/255"
    assert beyond.tmap_grid([row("apd", "sdc", 8.0)]) is None


def test_budget_curves_flag_a_rise_with_more_steps_or_a_larger_eps() -> None:
    rows = []
    for iters, value in ((1, 40.0), (2, 30.0), (5, 20.0), (10, 21.0), (20, 10.0)):  # 5 -> 10 rises by 1.0
        rows.append(row("apd", "sdc", value, iters=iters))
    for eps, value in ((1, 60.0), (2, 50.0), (4, 30.0), (16, 1.0)):  # with eps 8 at iters 5 (20.0): monotone
        rows.append(row("apd", "sdc", value, eps=eps / 255))
    curves = beyond.budget_curves(rows)
    by_axis = {(c.axis, round(c.fixed, 6)): c for c in curves}
    iters_curve = by_axis[("iters", round(8 / 255, 6))]
    assert [p[0] for p in iters_curve.points] == [1, 2, 5, 10, 20]
    assert iters_curve.rises() == [(5, 10, pytest.approx(1.0))]
    eps_curve = by_axis[("eps", 5)]
    assert [round(p[0] * 255) for p in eps_curve.points] == [1, 2, 4, 8, 16] and eps_curve.rises() == []
    assert iters_curve.rises(tolerance=1.5) == []
    grid = beyond.flags_grid(curves)
    assert "(1 flagged)" in grid.title and grid.rows == [["fastnet", "16", "SDC", "apd", "against iters at eps 8/255",
                                                          "5", "10", "+1.0"]]
    pqn = beyond.budget_curves([{**r, "quantizer": "pqn"} for r in rows])
    assert beyond.flags_grid(pqn).rows[0][0] == "fastnet+pqn"
    fig = beyond.budget_figure(pqn, "iters", "t")
    assert [ax.get_title() for ax in fig.axes] == ["fastnet+pqn 16b SDC"]


def test_a_built_report_has_the_section_and_its_figures(tmp_path: Path) -> None:
    from PIL import Image

    from pqattack.report.build import build_report

    rows = cells() + [row("apd", "sdc", v, iters=i) for i, v in ((1, 40.0), (2, 30.0), (10, 6.0), (20, 5.0))]
    rows += [row("center_targeted", "sdc", 11.0, tmap=90.0, tmap_clean=10.0)]
    (tmp_path / "run").mkdir()
    meta = {"config": {"model": {"name": "fastnet"}}, "device": "cpu"}
    (tmp_path / "run" / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    index = build_report([tmp_path / "run"], tmp_path / "report", cache_dir=tmp_path / "no-cache").read_text()
    assert "## 7. Beyond the paper" in index and "In 1 of 2 cells" in index
    assert "**Targeted attacks**" in index and "**Gradient-masking check**" in index
    assert Image.open(tmp_path / "report" / "budget_curves_iters.png").size == (1300, 450)
