"""Paired comparison of two attacks on the same queries: ``metrics.paired_difference`` and
tools/compare_attacks.py on a real suite job."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pqattack.labels import WORST, attack_label
from pqattack.metrics import QueryAP, paired_difference

from .conftest import REPO, TINY, refused, run_job, write_records

spec = importlib.util.spec_from_file_location("compare_attacks", REPO / "tools" / "compare_attacks.py")
compare_attacks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_attacks)


def aps(values: np.ndarray, found: np.ndarray | None = None) -> QueryAP:
    found = np.ones_like(values) if found is None else found
    return QueryAP(values, values.copy(), found, found.copy())


def test_a_constant_shift_is_known_exactly_and_equal_sets_differ_by_nothing() -> None:
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 1, 300)
    d = paired_difference(aps(np.clip(b - 0.02, 0, None)), aps(b))
    shifted = paired_difference(aps(b + 0.03), aps(b), draws=200)
    assert shifted.difference == pytest.approx(3.0) and shifted.low == pytest.approx(3.0)
    assert shifted.high == pytest.approx(3.0) and (shifted.lower, shifted.higher) == (0.0, 1.0)
    same = paired_difference(aps(b), aps(b), draws=50)
    assert (same.difference, same.low, same.high, same.lower, same.higher) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert d.low <= d.difference <= d.high < 0


def test_the_interval_is_the_paired_one_and_covers_the_true_difference() -> None:
    """Per-query APs that vary a lot between queries but move together under the two attacks: the interval's width
    is the paired difference's (an unpaired one would be about ten times wider), and over repeated samples it holds
    the true difference about 95 % of the time."""
    rng = np.random.default_rng(0)
    n, true, covered, widths = 400, -0.5, 0, []
    for trial in range(200):
        base = rng.uniform(0.05, 0.9, n)
        noise = rng.normal(true / 100, 0.02, n)
        a, b = aps(base + noise), aps(base)
        d = paired_difference(a, b, draws=400, seed=trial)
        covered += d.low <= true <= d.high
        widths.append(d.high - d.low)
    paired_width = 2 * 1.96 * 2.0 / np.sqrt(n)  # points: sd of the per-query difference 0.02 (2 points)
    assert 0.9 <= covered / 200 <= 0.99
    assert abs(np.mean(widths) / paired_width - 1) < 0.1


def test_the_drop_convention_resamples_its_weights() -> None:
    """empty="drop": each draw's mAP divides by the draw's own found-weights (a bootstrap written out here, with
    the same draws); the two conventions give different differences on these queries."""
    a = aps(np.array([0.5, 0.0, 0.2, 0.4]), np.array([1.0, 0.0, 1.0, 1.0]))
    b = aps(np.array([0.6, 0.3, 0.1, 0.2]), np.array([1.0, 1.0, 1.0, 1.0]))
    d = paired_difference(a, b, empty="drop", draws=300, seed=3)
    assert d.difference == pytest.approx(a.mean("expected", "drop") - b.mean("expected", "drop"))
    assert d.difference != pytest.approx(paired_difference(a, b, draws=10).difference)  # zero: another number
    rng, diffs = np.random.default_rng(3), []
    for _ in range(300):
        pick = rng.integers(0, 4, 4)
        drop = [100 * x.expected[pick].sum() / w if (w := x.expected_found[pick].sum()) > 0 else 0.0 for x in (a, b)]
        diffs.append(drop[0] - drop[1])
    low, high = np.quantile(diffs, [0.025, 0.975])
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert (d.lower, d.higher) == (0.5, 0.5)


@pytest.mark.parametrize("kw, message", [(dict(draws=0), "draws=0"), (dict(level=1.0), "level=1.0")])
def test_bad_settings(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_difference(aps(np.ones(3)), aps(np.ones(3)), **kw)
    with pytest.raises(ValueError, match="3 and 4 queries"):
        paired_difference(aps(np.ones(3)), aps(np.ones(4)))


def test_the_tool_on_a_suite_job_and_on_two_jobs_of_one_target(tmp_path: Path, shared_cache: Path,
                                                                capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The mAPs the tool scores from the cache are the job's own rows; each difference is the rows' difference;
    the reference can be named by its label or by its suite member; a job on another target is refused."""
    base = [o for o in TINY if not o.startswith("attack.")]
    suite = run_job([*base, "attack=none", 'eval.suite=[basic,apd,"apd iters=2"]'], tmp_path / "suite",
                    shared_cache)
    rows = {(r["system"], attack_label(r)): r["map"] for r in suite["rows"] if r["attack"] not in ("clean", WORST)}
    assert {a for _, a in rows} == {"basic", "apd", "apd (iters=2)"}
    for reference in ("apd (iters=2)", "apd iters=2"):
        compare_attacks.main([str(tmp_path / "suite"), "--reference", reference, "--json", "--draws", "100"])
        records = json.loads(capsys.readouterr().out)
        assert {(r["system"], r["attack"]) for r in records} == set(rows)
        for r in records:
            assert r["map"] == pytest.approx(rows[(r["system"], r["attack"])], abs=1e-3)
            assert r["reference"] == "apd (iters=2)" and ("difference" in r) == (r["attack"] != "apd (iters=2)")
            if "difference" in r:
                ref = rows[(r["system"], "apd (iters=2)")]
                assert r["difference"] == pytest.approx(rows[(r["system"], r["attack"])] - ref, abs=2e-3)
                assert r["low"] <= r["difference"] <= r["high"] and r["lower"] + r["higher"] <= 1
    # two references: every attack against each, in one pass
    compare_attacks.main([str(tmp_path / "suite"), "--reference", "basic", "--reference", "apd", "--draws", "100"])
    text = capsys.readouterr().out
    assert "paired difference from basic" in text and "paired difference from apd over" in text
    assert text.count("| SDC | apd (iters=2) |") == 2 and "| ADC | basic (reference) |" in text
    with monkeypatch.context() as m:  # a reference that is no attack of the jobs stops before any set is scored
        m.setattr(compare_attacks, "score_set", lambda *a, **k: pytest.fail("scored before checking --reference"))
        code, err = refused(compare_attacks.main, [str(tmp_path / "suite"), "--reference", "aod"], capsys)
        assert code == 2 and "usage error: --reference 'aod' is none of these jobs' attacks" in err, err
    # two single-attack jobs on the suite's target: each job's own numbers
    single = {}
    for attack in ("basic", "apd"):
        res = run_job([*TINY, f"attack={attack}"], tmp_path / attack, shared_cache)
        single.update({(r["system"], r["attack"]): r["map"] for r in res["rows"] if r["attack"] == attack})
    compare_attacks.main([str(tmp_path / "basic"), str(tmp_path / "apd"), "--json", "--draws", "100"])
    records = json.loads(capsys.readouterr().out)
    assert {(r["system"], r["attack"]) for r in records} == set(single)
    assert all(r["map"] == pytest.approx(single[(r["system"], r["attack"])], abs=1e-3) for r in records)
    assert all(r.get("reference", "basic") == "basic" for r in records)
    run_job([*TINY, "attack=apd", "bits=24"], tmp_path / "other", shared_cache)
    code, err = refused(compare_attacks.main, [str(tmp_path / "apd"), str(tmp_path / "other")], capsys)
    assert code == 2 and "another target" in err, err
    code, err = refused(compare_attacks.main, [str(tmp_path)], capsys)
    assert code == 2 and "results.json: no such file" in err, err


def test_the_tool_stops_on_what_the_cache_lacks_and_builds_it_only_when_told(
        tmp_path: Path, shared_cache: Path, capsys: pytest.CaptureFixture) -> None:
    """A job whose query sets or checkpoint are not in its cache (it ran on another machine) stops the tool with one
    line naming the job and the missing entry, and nothing is added to the cache; ``--build`` makes them again."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(shared_cache, cache)
    for attack in ("basic", "apd"):
        run_job([*TINY, f"attack={attack}"], tmp_path / attack, cache)
    jobs = [str(tmp_path / "basic"), str(tmp_path / "apd")]

    def entries() -> set[Path]:
        return {p for p in cache.glob("*/*") if p.is_dir()}

    shutil.rmtree(cache / "adversarial_queries")
    before = entries()
    code, err = refused(compare_attacks.main, [*jobs, "--draws", "10"], capsys)
    assert code == 3 and re.search(r"basic: adversarial_queries \w+ is not in the cache .*--build", err), err
    assert entries() == before
    compare_attacks.main([*jobs, "--draws", "10", "--build", "--json"])
    assert {r["attack"] for r in json.loads(capsys.readouterr().out)} == {"basic", "apd"}
    assert len([p for p in (cache / "adversarial_queries").iterdir() if p.is_dir()]) == 2
    shutil.rmtree(cache / "checkpoint")
    before = entries()
    code, err = refused(compare_attacks.main, [*jobs, "--draws", "10"], capsys)
    assert code == 3 and re.search(r"basic: checkpoint \w+ is not in the cache", err), err
    assert entries() == before


def test_bad_input_is_one_line_and_exit_code_2_before_anything_is_loaded(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """A missing folder, a sweep's folder (its jobs named), a folder without records, --draws 0, jobs of two datasets:
    records written by hand, so nothing is trained or loaded (each refusal comes before the cache is opened)."""
    base = [*TINY, f"cache.dir={tmp_path / 'no-cache'}"]
    a, b = write_records(tmp_path / "sweep", {"0_basic": [*base, "attack=basic"],
                                              "1_apd": [*base, "attack=apd", "dataset.num_queries=50"]})
    (tmp_path / "empty").mkdir()
    for args, message in [([str(tmp_path / "missing")], "missing: no such folder"),
                          ([str(tmp_path / "sweep")], "a sweep's folder; give one of its jobs' folders: 0_basic, 1_apd"),
                          ([str(tmp_path / "empty")], "results.json: no such file"),
                          ([str(a), str(b), "--draws", "0"], "--draws 0: at least 1"),
                          ([str(a), str(b)], "another dataset config")]:
        code, err = refused(compare_attacks.main, args, capsys)
        assert code == 2 and err.startswith("usage error: ") and message in err, err
    assert not (tmp_path / "no-cache").exists()
