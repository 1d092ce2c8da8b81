"""The tables the README and docs/attacks.md show as excerpts of the records (rearranged for reading: models side by
side, a budget curve on one line) are rebuilt here from ``results/*.json`` and the paper's transcribed cells, and
must equal the text: a re-run that changes a record fails this until the excerpt is replaced."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ("restarts", "momentum", "diversity", "target_class", "temperature_final", "step_schedule", "eot")


def records(name: str) -> list[dict]:
    return json.loads((REPO / "results" / f"{name}.json").read_text())["rows"]


def the_cell(rows: list[dict], **where: object) -> float:
    """mAP of the one white-box row with these settings and no loop option beyond them (the paper's budget unless
    given)."""
    where = {"iters": None, "eps": None, **where}
    found = [r for r in rows if all(_same(r.get(k), v) for k, v in where.items()) and not r.get("transfer")
             and all(r.get(o) is None for o in OPTIONS if o not in where)]
    assert len(found) == 1, f"{len(found)} rows match {where}"
    return found[0]["map"]


def _same(a: object, b: object) -> bool:
    if b is None:
        return a is None or a == 5 or a == pytest.approx(8 / 255)  # the paper's budget, as the rows record it
    return a == pytest.approx(b) if isinstance(b, float) else a == b


def doc_table(path: str, after: str) -> list[list[str]]:
    """The cells of the first markdown table after the line starting with ``after`` (header and rule left out),
    bold marks removed."""
    lines = (REPO / path).read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(after))
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    table = []
    for ln in lines[first + 2:]:
        if not ln.startswith("|"):
            break
        table.append([c.strip().replace("**", "") for c in ln.strip("|").split("|")])
    return table


def f1(x: float) -> str:
    return f"{x:.1f}"


def test_readme_table1_fast_cpu_is_the_records() -> None:
    rows = records("table1_fast_cpu")
    paper = [c for c in json.loads((REPO / "src/pqattack/report/paper_tables.json").read_text())["cells"]
             if c["table"] == 1 and c["dataset"] == "cifar10" and c["model"] == "vgg16"]
    expected = []
    for system in ("sdc", "adc"):
        for attack in ("clean", "basic", "apd", "aod"):
            ours = [f1(the_cell(rows, model="fastnet", system=system, attack=attack, bits=b)) for b in (16, 24, 36)]
            theirs = [f1(next(c["map"] for c in paper if (c["system"], c["attack"], c["bits"]) == (system, attack, b)))
                      for b in (16, 24, 36)]
            expected.append([system.upper(), attack, *ours, *theirs])
    assert doc_table("README.md", "### Table 1 in the paper's accuracy regime") == expected


def test_attacks_doc_beyond_table_is_the_records() -> None:
    rows = [r for r in records("beyond_cpu") if r["system"] == "sdc"]
    labels = {"clean": ("clean", {}), "basic": ("basic", {}), "APD": ("apd", {}), "AOD": ("aod", {}),
              "margin": ("margin", {}), "margin, 4 restarts": ("margin", {"restarts": 4}),
              "margin, MI": ("margin", {"momentum": 1.0}), "center": ("center", {}),
              "center_targeted": ("center_targeted", {}), "far": ("far", {}), "contrast": ("contrast", {})}
    table = doc_table("docs/attacks.md", "`python -m pqattack experiment=beyond_cpu` on")
    assert [r[0] for r in table] == list(labels)
    for label, cells in ((r[0], r[1:]) for r in table):
        attack, options = labels[label]
        expected = [" / ".join(f1(the_cell(rows, model=m, attack=attack, bits=b, **options)) for b in (16, 24, 36))
                    if any(r["model"] == m and r["attack"] == attack for r in rows) else "-"  # a model not run
                    for m in ("fastnet", "vgg16", "resnet18")]
        assert cells == expected, label


def test_attacks_doc_budget_table_is_the_records() -> None:
    rows = [r for r in records("budget_cpu") if r["model"] == "fastnet" and r["bits"] == 16]
    table = doc_table("docs/attacks.md", "`python -m pqattack experiment=budget_cpu`")
    assert len(table) == 6
    for label, by_iters, by_eps in table:
        attack, system = (s.strip().lower() for s in label.split(","))
        iters = [f1(the_cell(rows, attack=attack, system=system, iters=n, eps=8 / 255)) for n in (1, 2, 5, 10, 20, 50, 100)]
        eps = [f1(the_cell(rows, attack=attack, system=system, iters=100, eps=e / 255)) for e in (1, 2, 4, 8, 16)]
        assert (by_iters, by_eps) == (", ".join(iters), ", ".join(eps)), label


def test_the_checks_find_a_changed_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuild is not vacuous: one record changed by 0.1 fails it."""
    rows = json.loads((REPO / "results" / "table1_fast_cpu.json").read_text())
    for r in rows["rows"]:
        if (r["model"], r["system"], r["attack"], r["bits"]) == ("fastnet", "sdc", "apd", 24):
            r["map"] += 0.1
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table1_fast_cpu.json").write_text(json.dumps(rows))
    for name in ("README.md", "src"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    with pytest.raises(AssertionError):
        test_readme_table1_fast_cpu_is_the_records()


def test_each_committed_benchmark_record_is_its_section_of_docs_benchmarks() -> None:
    """docs/benchmarks.md's machine sections are rendered from the JSON records in results/bench/ (``python -m
    pqattack.bench --markdown results/bench/<machine>.json --update docs/benchmarks.md``): each record's section
    must be the text between its markers."""
    from pqattack.bench.records import markdown, section_id

    found = sorted((REPO / "results" / "bench").glob("*.json"))
    assert found, "no benchmark record in results/bench/"
    text = (REPO / "docs" / "benchmarks.md").read_text()
    for path in found:
        doc = json.loads(path.read_text())
        start, end = f"<!-- bench:{section_id(doc)}:start -->\n", f"<!-- bench:{section_id(doc)}:end -->"
        assert start in text and end in text, f"{path.name}: no section {section_id(doc)} in docs/benchmarks.md"
        assert text[text.index(start) + len(start):text.index(end)] == markdown(doc), path.name
