"""The benchmark (quick sizes, a real subprocess) and the fast retrieval path against brute force with many ties."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pqattack.bench.baselines import plain_expected_average_precision
from pqattack.metrics import mean_average_precision
from pqattack.quant import PQIndex, search_past_ties

REPO = Path(__file__).resolve().parents[1]
FIGURES = ["retrieval_9k_adc", "retrieval_9k_sdc", "retrieval_1m_adc", "train_resnet18", "train_recipe",
           "attack_resnet18", "table1", "sweep_memory"]
KEYS = {"figure", "fast_value", "baseline_value", "unit", "ratio", "fast_peak_mb", "baseline_peak_mb", "target",
        "meets_target", "command", "device", "versions", "notes"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "x.json"
    proc = subprocess.run([sys.executable, "-m", "pqattack.bench", "--quick", "--figures", ",".join(FIGURES),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow  # its fixture runs `pqattack.bench --quick` (8 figures in child processes): about 35 s
def test_bench_writes_one_record_per_figure(bench_run: tuple[dict, str]) -> None:
    doc, stdout = bench_run
    assert doc["device"] == "cpu" and doc["quick"] is True
    records = {r["figure"]: r for r in doc["records"]}
    assert list(records) == FIGURES
    for name, r in records.items():
        assert KEYS <= set(r), f"{name}: missing {KEYS - set(r)}"
        assert r["command"].startswith("python -m pqattack.bench --device cpu")
        assert {"torch", "faiss", "numpy"} <= set(r["versions"])
        assert any(ln.startswith(f"{name}: fast ") and "| ratio " in ln and "| peak " in ln
                   for ln in stdout.splitlines()), name
        if r["fast_value"] is not None and r["baseline_value"] is not None:
            fast, base = r["fast_value"], r["baseline_value"]
            expected = fast / base if r["unit"] in ("images/s", "queries/s") else base / fast
            assert r["ratio"] == pytest.approx(expected, rel=0.02, abs=0.01)
            assert r["fast_peak_mb"] > 0 and r["baseline_peak_mb"] > 0
    # the figure's targets are judged on their own device only
    assert records["retrieval_9k_adc"]["meets_target"] in (True, False)
    assert records["attack_resnet18"]["meets_target"] is None and "GPU" in records["attack_resnet18"]["target"]
    # table1 is GPU only: recorded, not run, with the reason
    t1 = records["table1"]
    assert t1["fast_value"] is None and "GPU only" in t1["notes"]["reason"]
    # on the CPU the recipe's wall time is projected from the training throughput of this run
    assert records["train_recipe"]["notes"]["fast_projected"] is True
    from pqattack.runtime import resolve_precision  # the note names what precision=auto runs, not always fp32

    auto = resolve_precision("auto", torch.device("cpu"))
    assert f"(precision=auto runs {auto} here)" in records["train_recipe"]["notes"]["fast"]
    assert records["train_recipe"]["fast_value"] == pytest.approx(40 * 50_000 / records["train_resnet18"]["fast_value"],
                                                                  rel=1e-3)
    assert records["sweep_memory"]["notes"]["rss_mb_after_each_job"]


@pytest.mark.slow  # shares the --quick bench run
def test_bench_fast_and_baseline_map_agree(bench_run: tuple[dict, str]) -> None:
    records = {r["figure"]: r for r in bench_run[0]["records"]}
    for name in ("retrieval_9k_adc", "retrieval_9k_sdc"):
        n = records[name]["notes"]
        for key in ("map", "map_grouped"):
            assert n[f"fast_{key}"] == pytest.approx(n[key if key != "map" else "baseline_map"], abs=1e-6)
            assert n[f"previous_{key}"] == pytest.approx(n[f"fast_{key}"], abs=1e-6)
        assert 20 < n["fast_map"] < 100  # the synthetic classes are separable but not trivially
        assert n["fast_map"] != n["fast_map_grouped"]  # 16 bits: ties, and the conventions differ on them
    n = records["retrieval_1m_adc"]["notes"]
    assert n["fast_map_on_baseline_queries"] == pytest.approx(n["baseline_map"], abs=1e-6)
    assert n["fast_map_grouped_on_baseline_queries"] == pytest.approx(n["baseline_map_grouped"], abs=1e-6)


@pytest.mark.slow  # shares the --quick bench run
def test_bench_markdown_renders_every_figure(bench_run: tuple[dict, str], tmp_path: Path) -> None:
    src = tmp_path / "x.json"
    src.write_text(json.dumps(bench_run[0]))
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    for _ in range(2):  # the section is replaced in place, not appended twice
        proc = subprocess.run([sys.executable, "-m", "pqattack.bench", "--markdown", str(src), "--update", str(doc)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    from pqattack.bench.records import section_id

    marker = f"<!-- bench:{section_id(bench_run[0])}:start -->"
    assert text.startswith("# Benchmarks\n\nintro\n") and text.count(marker) == 1 and "bench:cpu:" in marker
    for name in FIGURES:
        assert f"| {name} |" in text


def bench_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``python -m pqattack.bench <args>`` in this process: its exit code and its stderr."""
    from pqattack.bench.cli import main

    code = main(args)
    return code, capsys.readouterr().err


def test_bad_arguments_stop_the_bench_before_any_figure_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One line, exit 2, and no records written: a --table1-run folder without a table1 run's status (read only after
    every figure before), --update without --markdown (it started the whole benchmark), an --out folder. Each would
    run a cheap figure if it got that far."""
    out = tmp_path / "x.json"
    quick = ["--quick", "--figures", "retrieval_9k_adc", "--out", str(out)]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_text(json.dumps({"commands": [{"name": "other"}]}))
    for args, message in [(["--table1-run", str(tmp_path / "missing")], "--table1-run"),
                          (["--table1-run", str(tmp_path / "run")], "records no sweep command"),
                          (["--update", str(tmp_path / "doc.md")], "only with --markdown"),
                          (["--figures", "nope"], "unknown figure(s) nope")]:
        code, err = bench_main([*quick, *args], capsys)
        assert code == 2 and err.startswith("usage error: ") and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    code, err = bench_main(["--quick", "--figures", "retrieval_9k_adc", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--out" in err and "a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_markdown_of_a_file_that_is_no_benchmark_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "broken.json").write_text('{"device": ')
    (tmp_path / "other.json").write_text('{"device": "cpu", "records": [{"figure": "demo"}]}')
    doc = tmp_path / "doc.md"
    for name, message in [("missing.json", "cannot read it"), ("broken.json", "not JSON"),
                          ("other.json", "not a benchmark's records (no machine, date, command)")]:
        code, err = bench_main(["--markdown", str(tmp_path / name), "--update", str(doc)], capsys)
        assert code == 2 and err.startswith(f"usage error: --markdown {tmp_path / name}: {message}"), err
        assert len(err.strip().splitlines()) == 1, err
    assert not doc.exists()


# --------------------------------------------------------------------------------------------- fast path, ties
def _tied_index(M: int, K: int, seed: int) -> tuple[PQIndex, torch.Tensor, torch.Tensor]:  # noqa: N803
    """Small integer codebooks and features: every float32 distance is exact and many are equal."""
    rng = np.random.default_rng(seed)
    dsub = 2
    codebooks = torch.from_numpy(rng.integers(-2, 3, (M, K, dsub)).astype(np.float32))
    db = torch.from_numpy(rng.integers(-2, 3, (700, M * dsub)).astype(np.float32))
    q = torch.from_numpy(rng.integers(-2, 3, (25, M * dsub)).astype(np.float32))
    return PQIndex(codebooks, db), q, codebooks


def _brute(index: PQIndex, codebooks: torch.Tensor, q: torch.Tensor, system: str) -> np.ndarray:
    cb = codebooks.double().numpy()
    m = np.arange(index.M)
    recon = lambda c: cb[m[None], c.numpy()].reshape(len(c), -1)  # noqa: E731
    y = q.double().numpy() if system == "adc" else recon(index.encode(q))
    return ((y[:, None, :] - recon(index.db_codes)[None]) ** 2).sum(-1)


@pytest.mark.parametrize("M,K", [(4, 16), (4, 64), (4, 512), (3, 16)])  # pairs of sub-spaces, single, odd M
@pytest.mark.parametrize("system", ["adc", "sdc"])
def test_fast_map_equals_brute_force_with_ties(M: int, K: int, system: str) -> None:  # noqa: N803
    index, q, codebooks = _tied_index(M, K, seed=M * K)
    ref = _brute(index, codebooks, q, system)
    assert len(np.unique(ref[0])) < ref.shape[1] / 4  # many ties
    np.testing.assert_array_equal(index.distances(q, system).numpy(), ref.astype(np.float32))
    rng = np.random.default_rng(0)
    ql, dl = torch.from_numpy(rng.integers(0, 4, 25)), torch.from_numpy(rng.integers(0, 4, 700))
    rel = dl.numpy()[None, :] == ql.numpy()[:, None]
    sk = np.mean([average_precision_score(rel[i], -ref[i]) if rel[i].any() else 0.0 for i in range(25)]) * 100
    order = np.argsort(ref, 1, kind="stable")
    plain = plain_expected_average_precision(torch.from_numpy(np.take_along_axis(ref, order, 1)),
                                             torch.from_numpy(np.take_along_axis(rel, order, 1)))
    # mAP over the full ranking without a ranking (pipeline.evaluate) and through the full ranking (search)
    assert index.mean_average_precision(q, system, ql, dl, ties="grouped") == pytest.approx(sk, abs=1e-9)
    assert index.mean_average_precision(q, system, ql, dl) == pytest.approx(float(plain.mean()) * 100, abs=1e-9)
    dist, ids = index.search(q, system)
    for ties in ("expected", "grouped"):
        assert mean_average_precision(dist, ids, ql, dl, ties=ties) == pytest.approx(
            index.mean_average_precision(q, system, ql, dl, ties=ties), abs=1e-9)
    # the ranking: distances ascending, ties in database order, every item once
    order = np.lexsort((np.arange(700)[None].repeat(25, 0), ref), axis=1)
    np.testing.assert_array_equal(ids.numpy(), order)
    # top k, short (FAISS's heap search for ADC) and long (gather + partition): a prefix of the full ranking
    for k in (40, 500):
        dk, ik = index.search(q, system, k=k)
        np.testing.assert_array_equal(dk.numpy(), dist[:, :k].numpy())
        np.testing.assert_array_equal(ik.numpy(), ids[:, :k].numpy())
        assert (dk[:, -1] == dist[:, k]).any()  # some tie group straddles k
        for ties, empty in itertools.product(("expected", "grouped"), ("zero", "drop")):
            assert index.mean_average_precision(q, system, ql, dl, topk=k, ties=ties, empty=empty) == pytest.approx(
                mean_average_precision(dist, ids, ql, dl, topk=k, ties=ties, empty=empty), abs=1e-9)
            if ties == "grouped":  # the top k of search(k) as ranked, bit for bit
                assert index.mean_average_precision(q, system, ql, dl, topk=k, ties=ties, empty=empty) == \
                    mean_average_precision(dk, ik, ql, dl, topk=k, ties=ties, empty=empty)
        at_k = plain_expected_average_precision(dist, torch.from_numpy(rel).gather(1, ids), k)
        assert index.mean_average_precision(q, system, ql, dl, topk=k) == pytest.approx(float(at_k.mean()) * 100,
                                                                                        abs=1e-9)


@pytest.mark.parametrize("system,K", [("adc", 16), ("sdc", 16), ("sdc", 256)])  # FAISS heap: adc, 8-bit sdc
def test_map_at_k_counts_a_large_tie_group_over_the_database(system: str, K: int) -> None:  # noqa: N803
    """Real-valued features, 3,000 items on 12 distinct vectors: the tie group at k runs far past the items ranked
    after k, and is counted over the distinct codes in the ranking's own arithmetic (FAISS's or the gathers')."""
    g = torch.Generator().manual_seed(K)
    codebooks = torch.randn(4, K, 8, generator=g)
    index = PQIndex(codebooks, torch.randn(12, 32, generator=g)[torch.randint(0, 12, (3000,), generator=g)])
    q = torch.randn(30, 32, generator=g)
    ql = torch.randint(0, 3, (30,), generator=g)
    dl = torch.randint(0, 3, (3000,), generator=g)
    dist, ids = index.search(q, system)
    for k in (40, 700):
        assert ((dist == dist[:, k - 1:k]).sum(1) > k // 8 + 16 + 100).all()
        dk, ik = index.search(q, system, k=k)
        for ties, empty in itertools.product(("expected", "grouped"), ("zero", "drop")):
            got = index.mean_average_precision(q, system, ql, dl, topk=k, ties=ties, empty=empty)
            assert got == pytest.approx(mean_average_precision(dist, ids, ql, dl, topk=k, ties=ties, empty=empty),
                                        abs=1e-9)
            if ties == "grouped":
                assert got == mean_average_precision(dk, ik, ql, dl, topk=k, ties=ties, empty=empty)


def test_fast_map_multilabel_matches_ranking() -> None:
    index, q, codebooks = _tied_index(4, 16, seed=3)
    rng = np.random.default_rng(1)
    ql = torch.from_numpy(rng.random((25, 5)) < 0.3)
    dl = torch.from_numpy(rng.random((700, 5)) < 0.3)
    dist, ids = index.search(q, "adc")
    for ties in ("expected", "grouped"):
        assert index.mean_average_precision(q, "adc", ql, dl, ties=ties) == pytest.approx(
            mean_average_precision(dist, ids, ql, dl, ties=ties), abs=1e-9)
        assert index.mean_average_precision(q, "adc", ql, dl, topk=60, ties=ties, empty="drop") == pytest.approx(
            mean_average_precision(dist, ids, ql, dl, topk=60, ties=ties, empty="drop"), abs=1e-9)


def test_ranking_past_ties_grows_until_the_group_at_k_ends() -> None:
    """``search_past_ties`` over a search that returns a top n: doubled until every row passes its tie group at
    position k, or the ranking holds every item, or the search runs out of items (id -1)."""
    rows = torch.tensor([[0.0] * 3 + [1.0] * 40 + [2.0] * 57, [0.0] * 100])
    calls = []

    def top(dist: torch.Tensor):  # noqa: ANN202
        def search(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(n)
            return dist[:, :n], torch.arange(n).expand(len(dist), n)
        return search

    d, _ = search_past_ties(top(rows[:1]), 5, 100)  # k = 5 is in the group at positions 4..43
    assert calls == [21, 42, 84] and d.shape[1] == 84
    calls.clear()
    search_past_ties(top(rows[1:]), 5, 100)  # one group: only the whole ranking passes it
    assert calls == [21, 42, 84, 100]
    ran_out = (torch.tensor([[0.0, 1.0, 1.0, float("inf")]]), torch.tensor([[0, 1, 2, -1]]))
    assert search_past_ties(lambda n: ran_out, 2, 100)[1].shape[1] == 4
    # k larger than the database: the whole database, in one search (was an IndexError at column k - 1)
    d, i = search_past_ties(top(rows[:1, :3]), 5, 3)
    assert d.shape[1] == 3 and i.shape[1] == 3


def test_attack_loss_cost_figure_times_every_loss_against_apd() -> None:
    """attack_losses (in-process, quick sizes): one record per loss, its value the median over the rounds of its
    time over APD's in the same round, with the target of at most 1.10x judged on any device."""
    from pqattack.bench.attack import COST_LOSSES, figure_attack_losses
    from pqattack.bench.records import target_of
    from pqattack.bench.workloads import SIZES

    records = figure_attack_losses(torch.device("cpu"), SIZES["quick"])
    assert [r["figure"] for r in records] == [f"attack_cost_{loss}" for loss in COST_LOSSES if loss != "apd"]
    for r in records:
        seconds = r["notes"]["seconds_per_batch"]
        assert set(seconds) == set(COST_LOSSES) and all(s > 0 for s in seconds.values())
        loss = r["figure"].removeprefix("attack_cost_")
        ratios = r["notes"]["ratios_per_round"]
        assert len(ratios) == SIZES["quick"]["attack_cost_rounds"] and all(x > 0 for x in ratios)
        assert r["fast_value"] == pytest.approx(sorted(ratios)[len(ratios) // 2], rel=1e-2)
        assert r["unit"] == "x APD" and r["notes"]["rounds"] == SIZES["quick"]["attack_cost_rounds"]
        text, check = target_of(r["figure"], "cpu")
        assert text == "<= 1.1 x APD on any device" and check(1.05) and not check(1.2)


def test_attack_figure_names_the_precision_the_framework_runs_by_default() -> None:
    """The figures compare their fastest precision with the one ``precision=auto`` resolves to on this device (bf16
    on a CPU with native bf16); they once assumed fp32 on every CPU and recommended bf16 where it is the default."""
    from pqattack.bench.attack import figure_attack
    from pqattack.bench.workloads import SIZES
    from pqattack.runtime import resolve_precision

    cpu = torch.device("cpu")
    [rec] = figure_attack("smallcnn", cpu, SIZES["quick"])
    auto = resolve_precision("auto", cpu)
    assert rec["notes"]["framework_precision_auto"] == auto
    if "recommendation" in rec["notes"]:
        assert rec["notes"]["fast_precision"] != auto and f"default ({auto})" in rec["notes"]["recommendation"]
    if auto == "fp32":  # no native bf16: the emulated one is not measured, and the record says so
        assert rec["notes"]["fast_queries_per_s_bf16"] is None and "not measured" in rec["notes"]["bf16"]
    else:
        assert rec["notes"]["fast_queries_per_s_bf16"] > 0 and "bf16" not in rec["notes"]


def test_bf16_is_measured_only_where_the_device_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without AVX512-BF16 or AMX, bf16 autocast is emulated, slower than fp32 and never the framework's
    default: the figures measured it anyway."""
    from pqattack import runtime
    from pqattack.bench.measure import bf16_note, candidate_precisions

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert candidate_precisions(cpu) == ("fp32", "bf16") and bf16_note(cpu) == {}
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert candidate_precisions(cpu) == ("fp32",) and "no native bf16" in bf16_note(cpu)["bf16"]


def test_bench_finds_the_checkout_and_its_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The figures read CIFAR-10 from ``<checkout>/data`` (or ``$PQATTACK_DATA``) and write to ``<checkout>/outputs``:
    the package's move to ``bench/`` once pointed both at ``src/``, and every image figure silently fell back to
    random images. Checked on folders made here, with or without the real copy."""
    from pqattack.bench import workloads

    assert (workloads.REPO / "pyproject.toml").is_file() and (workloads.REPO / "src" / "pqattack").is_dir()
    for part in ("train", "test"):
        (tmp_path / "checkout" / "data" / "cifar10-jpeg" / part).mkdir(parents=True)
        (tmp_path / "elsewhere" / part).mkdir(parents=True)
    monkeypatch.delenv("PQATTACK_DATA", raising=False)
    monkeypatch.setattr(workloads, "REPO", tmp_path / "checkout")
    assert workloads.cifar_folder() == tmp_path / "checkout" / "data" / "cifar10-jpeg"
    monkeypatch.setenv("PQATTACK_DATA", str(tmp_path / "elsewhere"))
    assert workloads.cifar_folder() == tmp_path / "elsewhere"
    monkeypatch.setenv("PQATTACK_DATA", str(tmp_path / "nothing"))
    assert workloads.cifar_folder() is None
    # a record names the checkout's data folder relative to it, not by this machine's absolute path
    assert workloads.shown(tmp_path / "checkout" / "data" / "cifar10-jpeg") == "data/cifar10-jpeg"
    assert workloads.shown(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")


def test_the_training_baseline_is_timed_as_the_framework_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU a timed loop waits for the device only at the ends of its window (a wait after every batch stops
    the queueing of the next batch's kernels): the plain training baseline, which waited after every batch, now
    follows the same rule as the framework's side. Run on the CPU with the rule asked as on a GPU: two waits."""
    from pqattack.bench import baselines, measure

    cuda = torch.device("cuda")
    assert [b for b in range(6) if measure.waits_after(b, 2, 3, cuda)] == [1, 4]
    assert all(measure.waits_after(b, 2, 3, torch.device("cpu")) for b in range(6))
    waits: list[int] = []
    monkeypatch.setattr(baselines, "sync", lambda device: waits.append(1))
    monkeypatch.setattr(baselines, "waits_after", lambda b, w, s, device: measure.waits_after(b, w, s, cuda))
    images, labels = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.arange(40) % 10
    rate = baselines.baseline_train_throughput("smallcnn", images, labels, torch.device("cpu"), 8, 2, 3, 0)
    assert rate > 0 and len(waits) == 2


def test_sweep_memory_needs_a_reading_after_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra only warns when a callback fails: a sweep whose RSS callback ran after one job of six gave a growth of
    0.0 MB ("met"). Now the figure fails, naming the count. (The sweep is stood in for by a run that leaves one
    reading, the failure the real sweep hides.)"""
    from pqattack.bench import jobs

    def one_reading(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, None]:
        out = Path(next(c for c in cmd if c.startswith("+hydra.callbacks.rss_after_job.out=")).split("=", 1)[1])
        out.write_text(json.dumps({"rss_mb": 500.0, "seconds": 1.0, "overrides": ["attack=basic", "bits=16"]}) + "\n")
        return 1.0, 600.0, None

    monkeypatch.setattr(jobs, "run_measured", one_reading)
    with pytest.raises(RuntimeError, match="1 RSS readings for the sweep's 6 jobs"):
        jobs.figure_sweep_memory(torch.device("cpu"), {"sweep_jobs": 6})


def test_each_cpu_model_and_the_gpu_keep_a_section_of_their_own(tmp_path: Path) -> None:
    """A record's section is named after its processor: a second CPU's record adds its section beside the first
    one's (it replaced it), a re-run replaces its own, and the GPU's is ``cuda``."""
    from pqattack.bench.records import markdown, section_id, update_document

    def doc(device: str, machine: str, date: str) -> dict:
        return {"device": device, "machine": machine, "date": date, "command": "make bench", "records": [],
                "versions": {"torch": "t", "numpy": "n", "faiss": "f", "python": "p"}}

    xeon = doc("cpu", "Intel(R) Xeon(R) Processor, 2 cores, 2 torch threads", "1")
    epyc = doc("cpu", "AMD EPYC, 2 cores, 2 torch threads", "2")
    gpu = doc("cuda", "NVIDIA H200", "3")
    assert [section_id(d) for d in (xeon, epyc, gpu)] == ["cpu:intel-xeon-processor", "cpu:amd-epyc", "cuda"]
    path = tmp_path / "benchmarks.md"
    quoted = "Sections sit between markers such as `<!-- bench:cpu:amd-epyc:start -->`.\n"  # not a marker
    path.write_text("# Benchmarks\n\n" + quoted)
    for d in (xeon, epyc, gpu, {**epyc, "date": "4"}):
        update_document(path, d)
    text = path.read_text()
    for d in (xeon, {**epyc, "date": "4"}, gpu):
        start, end = f"<!-- bench:{section_id(d)}:start -->\n", f"<!-- bench:{section_id(d)}:end -->"
        assert text.count(start) == 1 and text[text.index(start) + len(start):text.index(end)] == markdown(d)
    assert "Measured 2 " not in text  # the AMD EPYC's first record was replaced by its re-run
    assert text.startswith("# Benchmarks\n\n" + quoted)  # a marker quoted in the prose is left alone
    # a marker line with trailing blanks is still the marker; a lone marker (or two) is refused, nothing written
    path.write_text(text.replace("<!-- bench:cuda:end -->", "<!-- bench:cuda:end -->  "))
    update_document(path, gpu)
    assert path.read_text().count("<!-- bench:cuda:start -->") == 1
    from pqattack.errors import UsageError

    for broken in (text.replace("<!-- bench:cuda:end -->", ""), text + "\n<!-- bench:cuda:start -->\n"):
        path.write_text(broken)
        with pytest.raises(UsageError, match="section cuda has"):
            update_document(path, gpu)
        assert path.read_text() == broken
