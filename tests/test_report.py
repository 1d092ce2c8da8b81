"""The reproduction report: built from a real sweep through ``python -m pqattack.report``; its tables against
the records they came from, its figures as PNGs of the expected size, the wandb copy, the paper's numbers,
the reloaded artifacts and the precision-recall computation."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_recall_curve

from pqattack.metrics import mean_average_precision, precision_recall_at_ranks
from pqattack.report import figures
from pqattack.report.__main__ import main as report_main
from pqattack.report.artifacts import ArtifactStore
from pqattack.report.paper import MISSING, load_paper, paper_cells
from pqattack.report.records import gather_records
from pqattack.report.tables import recipe_label

from .conftest import TINY, load_results, run_sweep

ATTACKS = ("basic", "apd", "aod")


# --------------------------------------------------------------------------------------------- helpers
def markdown_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every markdown table in ``text`` by the first line of the paragraph above it: (header, rows)."""
    tables, caption = {}, None
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("|"):
            cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
            tables[caption] = (cells[0], cells[2:])
        elif lines:
            caption = lines[0]
    return tables


def table_starting(tables: dict, prefix: str) -> tuple[list[str], list[list[str]]]:
    found = [v for k, v in tables.items() if k and k.startswith(prefix)]
    assert len(found) == 1, f"{len(found)} tables captioned {prefix!r}: {list(tables)}"
    return found[0]


def job_rows(sweep: Path) -> list[dict]:
    return [r for f in sorted(sweep.glob("*/results.json")) for r in load_results(f)["rows"]]


def fmt(v: float) -> str:
    return f"{v:.1f}"


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """A real 3 attacks x 2 code lengths sweep on the synthetic set (one backbone, from the shared cache), its jobs
    run in-process and collected as the sweep's Hydra callback collects them."""
    cwd = tmp_path_factory.mktemp("report_sweep")
    run_sweep([[*TINY, f"attack={a}", f"bits={b}"] for a in ATTACKS for b in (16, 24)], cwd / "sweep", shared_cache)
    return cwd / "sweep"


@pytest.fixture(scope="module")
def transfer_sweep(sweep: Path, shared_cache: Path) -> Path:
    """AOD queries made at 16 and 24 bits, evaluated at both (Table 3's layout); the attacks come from the cache."""
    run_sweep([[*TINY, "attack=aod", f"bits={b}", f"transfer.source_bits={s}"] for b in (16, 24) for s in (16, 24)],
              sweep.parent / "transfer", shared_cache)
    return sweep.parent / "transfer"


@pytest.fixture(scope="module")
def report(sweep: Path) -> Path:
    """``python -m pqattack.report <sweep> --out <folder> --wandb`` in a subprocess, wandb offline."""
    out = sweep.parent / "report"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "pqattack.report", str(sweep), "--out", str(out), "--wandb"],
                          cwd=sweep.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stdout.strip().splitlines()[-1] == f"report: {out / 'index.md'}"
    return out


# --------------------------------------------------------------------------------------------- the report
def test_every_figure_is_a_png_of_its_size_and_none_is_skipped(report: Path) -> None:
    index = (report / "index.md").read_text()
    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", index)
    assert "not drawn" not in index
    kinds = {}
    for name in linked:
        kind = next(k for k in figures.FIGSIZE if name.startswith(k))
        kinds.setdefault(kind, []).append(name)
        with Image.open(report / name) as im:
            assert im.format == "PNG"
            assert im.size == figures.pixel_size(kind), name
    # no budget sweep (test_report_beyond.py) and no defenses (test_defense.py) here
    assert set(kinds) == set(figures.FIGSIZE) - {"budget_curves", "pareto"}
    assert sorted(kinds["retrieval_examples"]) == ["retrieval_examples_adc.png", "retrieval_examples_sdc.png"]
    assert sorted(p.name for p in report.glob("*.png")) == sorted(linked)


def test_our_records_table_shows_each_job_row(report: Path, sweep: Path) -> None:
    header, rows = table_starting(markdown_tables((report / "index.md").read_text()), "**synthetic**")
    assert header == ["system", "attack", "smallcnn 16b", "smallcnn 24b"]
    shown = {(r[0].lower(), r[1], int(col.split()[-1][:-1])): cell for r in rows
             for col, cell in zip(header[2:], r[2:])}
    expected = {(r["system"], r["attack"], r["bits"]): fmt(r["map"]) for r in job_rows(sweep)}
    assert len(expected) == 2 * 4 * 2 and shown == expected


def test_paper_tables_show_paper_numbers_and_nothing_of_ours_for_synthetic(report: Path) -> None:
    tables = markdown_tables((report / "index.md").read_text())
    header, rows = table_starting(tables, "**Table 1, paper**")
    cells = {c["model"]: c for c in paper_cells(1) if (c["dataset"], c["bits"], c["attack"], c["system"])
             == ("cifar10", 16, "clean", "sdc")}
    assert rows[0][:2] == ["SDC", "clean"] and rows[0][header.index("CIFAR-10 vgg16 16b")] == fmt(cells["vgg16"]["map"])
    for t in (1, 2, 3, 4):
        assert f"**Table {t}, ours: not run**" in (report / "index.md").read_text()


def test_wandb_run_holds_the_figures_and_tables(report: Path) -> None:
    runs = list((report / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    images = list(runs[0].glob("files/media/images/figures/*.png"))
    assert len(images) == len(list(report.glob("*.png")))
    tables = runs[0] / "files" / "media" / "table"
    logged = {str(p.relative_to(tables)).rsplit("_", 2)[0] for p in tables.glob("**/*.table.json")}
    # no 'ours' grids (none filled); the peak agreement of the job's clean queries
    assert logged == {"records", "peak_agreement", *(f"table{t}/paper" for t in (1, 2, 3, 4))}
    records = json.loads(next(runs[0].glob("files/media/table/records_*.table.json")).read_text())
    assert len(records["data"]) == len(json.loads((report / "report.json").read_text())["rows"])


def test_paper_comparison_cells_come_from_the_records(sweep: Path, transfer_sweep: Path, tmp_path: Path) -> None:
    """Jobs relabelled as CIFAR-10 vgg16 fill the paper's layouts; their cache is gone, so the artifact
    figures are skipped with a note, and the charts from rows are still drawn."""
    for f in sorted([*sweep.glob("*/results.json"), *transfer_sweep.glob("*/results.json")]):
        res = load_results(f)
        res["meta"]["config"]["cache"]["dir"] = str(tmp_path / "deleted-cache")
        res["rows"] = [{**r, "dataset": "cifar10", "dataset_label": "CIFAR-10 (JPEG copy)", "model": "vgg16",
                        **({"source_model": "vgg16"} if "source_model" in r else {})} for r in res["rows"]]
        folder = tmp_path / "in" / f.parent.parent.name / f.parent.name
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(res))
    report_main([str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    index = (tmp_path / "out" / "index.md").read_text()
    rows = {(r["system"], r["attack"], r["bits"]): r["map"] for r in job_rows(sweep)}
    made_at = {(r["system"], r["source_bits"], r["bits"]): r["map"] for r in job_rows(transfer_sweep)
               if r["attack"] == "aod"}
    paper = {(c["table"], c["system"], c["attack"], c["model"], c["bits"], c.get("source_bits")): c["map"]
             for c in load_paper()["cells"] if c["dataset"] == "cifar10"}
    tables = markdown_tables(index)

    # Table 1: one cell per system x attack x column
    caption = next(k for k in tables if k and k.startswith("**Table 1, ours, "))
    assert "CIFAR-10 from CIFAR-10 (JPEG copy)" in caption and "NUS-WIDE not run" in caption
    recipe = caption.removeprefix("**Table 1, ours, ").split("**")[0]
    assert recipe == recipe_label(job_rows(sweep)[0])
    header, ours = tables[caption]
    _, diff = table_starting(tables, f"**Table 1, ours ({recipe}) minus paper**")
    filled = 0
    for line, dline in zip(ours, diff):
        system, attack = line[0].lower(), line[1]
        for col, cell, dcell in zip(header[2:], line[2:], dline[2:]):
            dataset, model, b = col.rsplit(" ", 2)
            bits = int(b[:-1])
            if (dataset, model) == ("CIFAR-10", "vgg16") and bits in (16, 24):
                ours_map = rows[(system, attack, bits)]
                assert cell == fmt(ours_map)
                assert dcell == f"{ours_map - paper[(1, system, attack, model, bits, None)]:+.1f}"
                filled += 1
            else:
                assert cell == dcell == MISSING
    assert filled == 2 * 4 * 2

    # Table 3 (cells SDC / ADC): rows: code length the queries were made at, columns: evaluated at
    header, ours = table_starting(tables, f"**Table 3, ours, {recipe}**")
    by_row = {(r[0], r[1]): dict(zip(header[2:], r[2:])) for r in ours}

    def pair(values: dict, *key: object) -> str:
        return f"{fmt(values[('sdc', *key)])} / {fmt(values[('adc', *key)])}"

    assert by_row[("vgg16", "clean")]["16 bits"] == pair(rows, "clean", 16)
    assert by_row[("vgg16", "24 bits")]["24 bits"] == pair(rows, "aod", 24)
    for source in (16, 24):
        for target in (16, 24):
            assert by_row[("vgg16", f"{source} bits")][f"{target} bits"] == pair(made_at, source, target)
    not_run = f"{MISSING} / {MISSING}"
    assert by_row[("vgg16", "16 bits")]["36 bits"] == by_row[("vgg16", "36 bits")]["16 bits"] == not_run
    assert by_row[("alexnet", "clean")]["16 bits"] == not_run

    # Table 4: 16 bits only, vgg16 column: clean and the vgg16 -> vgg16 diagonal
    header, ours = table_starting(tables, f"**Table 4, ours, {recipe}**")
    by_row = {(r[0], r[1]): dict(zip(header[2:], r[2:])) for r in ours}
    assert by_row[("ADC", "vgg16")]["vgg16"] == fmt(rows[("adc", "aod", 16)])
    assert by_row[("SDC", "clean")]["vgg16"] == fmt(rows[("sdc", "clean", 16)])
    assert by_row[("SDC", "resnet18")]["vgg16"] == MISSING
    assert "**Table 2, ours: not run**" in index  # the PQN target

    # artifacts gone: the three artifact figures are skipped, saying why; the row charts are drawn
    assert index.count("not drawn") >= 3 and "deleted-cache" in index
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"map_vs_bits_cifar_10_jpeg_copy.png",
                                                                 "map_vs_attack_cifar_10_jpeg_copy.png"}


def test_a_build_without_the_artifacts_draws_the_figure_data_its_records_still_hold(sweep: Path,
                                                                                      tmp_path: Path) -> None:
    """A fresh clone: the sweep collected into one records file whose job folders and cache are gone. The build
    draws Figs. 5, 4 and 3 from the figure data an earlier build with the artifacts saved beside them, the same
    images; once a row they were computed for changes, they are not drawn, and the earlier PNGs are removed."""
    from pqattack.report.build import build_report
    from pqattack.report.collect import write_table
    from pqattack.report.figure_data import FIGURE_DATA

    out = tmp_path / "report"
    build_report([sweep], out)
    artifact_figures = ["centroid_distributions.png", "pr_curves.png", "retrieval_examples_adc.png",
                        "retrieval_examples_sdc.png"]
    first = {name: (out / name).read_bytes() for name in artifact_figures}
    data = json.loads((out / FIGURE_DATA).read_text())
    assert data["setting"] and len(data["cells"]) == 3 * 2 * 2  # clean and attack rows of three jobs, two systems
    table = write_table([sweep], tmp_path / "collected" / "table", "the sweep", "pytest")
    clone = json.loads(table.with_suffix(".json").read_text())
    for job in clone["meta"]["jobs"]:
        job["job_dir"] = str(tmp_path / "gone" / Path(job["job_dir"]).name)
    (tmp_path / "clone").mkdir()
    (tmp_path / "clone" / "table.json").write_text(json.dumps(clone))
    index = build_report([tmp_path / "clone"], out).read_text()
    assert "not drawn" not in index and f"drawn from `{FIGURE_DATA}`" in index
    assert "6 jobs (6 of them known from the records files only, their own folders absent)" in index
    _, jobs = table_starting(markdown_tables(index), "**Jobs**")
    assert len(jobs) == 6 and {(j[3], j[4]) for j in jobs} == {(b, a) for b in ("16", "24") for a in ATTACKS}
    assert {name: (out / name).read_bytes() for name in artifact_figures} == first

    cell = next(r for r in clone["rows"] if r["model"] == data["cells"][0][0][2] and r["bits"] == data["bits"]
                and r["attack"] == "apd" and r["system"] == "sdc")
    cell["map"] += 0.5
    (tmp_path / "clone" / "table.json").write_text(json.dumps(clone))
    index = build_report([tmp_path / "clone"], out).read_text()
    assert index.count("not drawn") >= 3 and "no longer hold unchanged" in index and "apd sdc" in index
    assert not any((out / name).exists() for name in artifact_figures)


def test_a_suite_job_is_not_taken_for_the_figures_white_box_attack_job() -> None:
    """A robust-evaluation job's rows name attacks, but it has no adversarial query set of its own to reload."""
    from pqattack.report.figure_data import pick_setting
    from pqattack.report.records import JobRecord, Records

    def job(name: str, attack: str, suite: list[str] | None) -> JobRecord:
        rows = [{"dataset": "synthetic", "model": "smallcnn", "bits": 16, "system": "sdc", "attack": a, "map": 50.0}
                for a in ("clean", attack)]
        meta = {"config": {"eval": {"suite": suite}}, "cache_keys": {"checkpoint": "c", "codebooks": "k"}}
        return JobRecord(Path(name) / "results.json", meta, rows)

    suite = job("suite", "basic", ["basic", "apd"])
    assert pick_setting(Records([], [suite], [])) is None
    plain = job("plain", "apd", None)
    assert list(pick_setting(Records([], [suite, plain], [])).jobs.values()) == [plain]


# --------------------------------------------------------------------------------------------- artifacts
def test_reloaded_artifacts_reproduce_the_recorded_map(sweep: Path) -> None:
    records = gather_records([sweep])
    assert len(records.jobs) == 6 and len(records.rows) == 2 * 2 + 2 * 2 * 3  # clean rows once per code length
    job = next(j for j in records.jobs if j.attack == "apd" and j.target.bits == 24)
    arts = ArtifactStore().load(job)
    labels = (arts.data.query.labels, arts.data.database.labels)
    for system in ("sdc", "adc"):
        for attack, z in (("clean", arts.clean_query), ("apd", arts.adversarial_query)):
            recorded = next(r["map"] for r in job.rows if (r["system"], r["attack"]) == (system, attack))
            assert mean_average_precision(*arts.index.search(z, system), *labels) == pytest.approx(recorded, abs=1e-3)


# --------------------------------------------------------------------------------------------- metric
@pytest.mark.parametrize("levels", [4, 10**6])
def test_precision_recall_matches_sklearn_at_every_threshold(levels: int) -> None:
    rng = np.random.default_rng(levels)
    n = 200
    dist = np.sort(rng.integers(0, levels, n)).astype(np.float32)  # few levels: many ties
    rel = rng.random(n) < 0.3
    rel[-1] = True
    precision, recall = precision_recall_at_ranks(torch.from_numpy(dist)[None], torch.from_numpy(rel)[None])
    sk_precision, sk_recall, thresholds = precision_recall_curve(rel, -dist)
    group_end = {float(-d): i for i, d in enumerate(dist)}  # last rank of each distance
    for p, r, t in zip(sk_precision[:-1], sk_recall[:-1], thresholds):
        i = group_end[float(t)]
        assert precision[i].item() == pytest.approx(p, abs=1e-12) and recall[i].item() == pytest.approx(r, abs=1e-12)


def test_precision_recall_averages_queries_and_ignores_order_inside_ties() -> None:
    dist = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    rel = torch.tensor([[True, False, True, False], [False, True, False, True]])
    precision, recall = precision_recall_at_ranks(dist, rel)
    swapped, _ = precision_recall_at_ranks(dist, torch.tensor([[False, True, False, True], rel[1].tolist()]))
    assert torch.allclose(precision, swapped)
    # query 0: ties spread 1 relevant over 2 ranks -> 0.5/1, 1/2, 1.5/3, 2/4; query 1: 0, 1/2, 1/3, 2/4
    assert torch.allclose(precision, torch.tensor([0.25, 0.5, (0.5 + 1 / 3) / 2, 0.5], dtype=torch.float64))
    assert torch.allclose(recall, torch.tensor([0.125, 0.5, 0.625, 1.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------- paper data
def test_paper_tables_have_every_printed_cell() -> None:
    counts = {t: len(paper_cells(t)) for t in (1, 2, 3, 4)}
    assert counts == {1: 2 * 2 * 3 * 2 * 4, 2: 3 * 4 * 2, 3: 2 * 3 * 4 * 2, 4: 2 * 7 * 6}
    keys = [tuple(sorted((k, v) for k, v in c.items() if k != "map")) for c in load_paper()["cells"]]
    assert len(set(keys)) == len(keys)


def test_paper_table_spot_values() -> None:
    def value(table: int, **kw: object) -> float:
        found = [c["map"] for c in paper_cells(table) if all(c.get(k) == v for k, v in kw.items())]
        assert len(found) == 1, kw
        return found[0]

    assert value(1, dataset="cifar10", model="vgg16", bits=16, attack="clean", system="sdc") == 83.6
    assert value(1, dataset="nuswide", model="alexnet", bits=36, attack="apd", system="adc") == 28.3
    assert value(2, bits=36, attack="aod", system="adc") == 5.8
    assert value(3, model="vgg16", source_bits=24, bits=36, system="adc") == 7.7
    assert value(4, system="sdc", source_model="resnet18", model="resnet34") == 36.8
    assert value(4, system="adc", source_model="vgg16", model="vgg13") == 51.6


def test_paper_tables_agree_with_each_other() -> None:
    """Tables 3 and 4 repeat Table 1's clean and white-box AOD cells: a check on the transcription."""
    t1 = {(c["model"], c["bits"], c["attack"], c["system"]): c["map"] for c in paper_cells(1)
          if c["dataset"] == "cifar10"}
    repeated = [c for c in paper_cells(3) + paper_cells(4) if c["attack"] == "clean" or (
        c["source_model"] == c["model"] and c["source_bits"] == c["bits"])]
    in_t1 = [c for c in repeated if (c["model"], c["bits"], c["attack"], c["system"]) in t1]
    assert len(in_t1) == 2 * 3 * 2 * 2 + 2 * 2  # Table 3: clean + diagonal; Table 4: vgg16 clean + diagonal
    for c in in_t1:
        assert c["map"] == t1[(c["model"], c["bits"], c["attack"], c["system"])], c


def test_a_stand_in_fills_the_paper_models_cells_in_a_comparison_of_its_own() -> None:
    """``--stand-in fastnet=vgg16``: fastnet's rows fill VGG16's Table 1 cells, in a comparison whose heading names
    the stand-in; without it, fastnet fills no paper cell; a malformed option is one clear error."""
    from pqattack.report.paper import comparisons

    base = {"dataset": "cifar10", "dataset_label": "CIFAR-10 (JPEG copy)", "model": "fastnet", "quantizer": "kmeans",
            "bits": 16, "M": 4, "K": 16, "epochs": 10, "device": "cpu", "precision": "bf16", "topk": None}
    rows = [{**base, "attack": "clean", "system": "sdc", "map": 81.7},
            {**base, "attack": "apd", "system": "sdc", "map": 7.8, "similarity": "dot", "temperature": 1.0,
             "eps": 8 / 255, "step": 0.01, "iters": 5}]
    assert not any(c.filled for c in comparisons(rows) if c.table == 1)
    [comp] = [c for c in comparisons(rows, {"fastnet": "vgg16"}) if c.table == 1]
    assert comp.recipe == "fastnet standing in for vgg16, 10 epochs, cpu, bf16" and comp.filled == 2
    assert "**Table 1, ours, fastnet standing in for vgg16, 10 epochs, cpu, bf16**" in comp.ours.markdown()
    assert sorted(r["map"] for r in comp.matched.values()) == [7.8, 81.7]
    with pytest.raises(SystemExit) as err:
        report_main(["x", "--out", "y", "--stand-in", "fastnet"])
    assert err.value.code == 2


def test_a_comparison_takes_white_box_cells_from_white_box_rows_only() -> None:
    """A stand-in's white-box rows (source_model = itself) fill the paper model's cells; a row whose queries were
    transferred from the real paper model, from another instance of the target (a seed, a saved set), or from a
    source of another recipe fills none (one such row once stood in Table 1 as fastnet-for-VGG16's AOD)."""
    from pqattack.report.paper import comparisons

    base = {"dataset": "cifar10", "dataset_label": "CIFAR-10 (JPEG copy)", "model": "fastnet", "quantizer": "kmeans",
            "bits": 16, "M": 4, "K": 16, "epochs": 10, "device": "cpu", "precision": "bf16", "topk": None,
            "similarity": "dot", "temperature": 1.0, "eps": 8 / 255, "step": 0.01, "iters": 5}
    rows = [{**base, "attack": "clean", "system": "sdc", "map": 81.7},
            {**base, "attack": "apd", "system": "sdc", "map": 7.8, "source_model": "fastnet", "source_bits": 16,
             "transfer": False},
            {**base, "attack": "aod", "system": "sdc", "map": 49.5, "source_model": "vgg16", "source_bits": 16,
             "transfer": True, "source_epochs": 2},
            {**base, "attack": "basic", "system": "sdc", "map": 30.0, "source_model": "fastnet", "source_bits": 16,
             "transfer": True}]
    [comp] = [c for c in comparisons(rows, {"fastnet": "vgg16"}) if c.table == 1]
    assert sorted((k[4], r["map"]) for k, r in comp.matched.items()) == [("apd", 7.8), ("clean", 81.7)]

    vgg = {**base, "model": "vgg16", "epochs": 2}
    rows = [{**vgg, "attack": "aod", "system": "sdc", "map": 40.0, "source_model": "vgg16", "source_bits": 16,
             "transfer": True},
            {**vgg, "attack": "aod", "system": "sdc", "map": 20.0, "source_model": "resnet18", "source_bits": 16,
             "transfer": True, "source_epochs": 10},
            {**vgg, "attack": "aod", "system": "sdc", "map": 25.0, "source_model": "resnet18", "source_bits": 16,
             "transfer": True, "source_epochs": 2}]
    filled = {c.table: sorted(r["map"] for r in c.matched.values()) for c in comparisons(rows) if c.filled}
    assert filled == {4: [25.0]}


def test_a_missing_source_is_named_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A records path that does not exist: one line that names it (not "no records in" it), exit 2, no report
    folder."""
    with pytest.raises(SystemExit) as err:
        report_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "report")])
    assert err.value.code == 2
    assert capsys.readouterr().err.strip() == f"report error: no such file or folder: {tmp_path / 'nothing'} (give " \
        f"results folders or results.json files)"
    assert not (tmp_path / "report").exists()
