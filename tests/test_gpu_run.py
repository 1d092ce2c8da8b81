"""tools/gpu-run, the staged GPU run: its --tiny mode end to end on the CPU in real subprocesses (every stage, the
rendering, a second run that skips everything, a short deadline that skips with the reason, --previous), and its
parts: commands stopped at the deadline or failing, the limits of what comes back, the check of .gpu/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from pqattack.cache import read_export
from pqattack.gpu.outbox import OUT_LIMITS, out_fits
from pqattack.gpu.prep import GPU_WHEELS, check_prep
from pqattack.gpu.run import PACK_RESERVE_S, Command, Run, Stage, parse_args

REPO = Path(__file__).resolve().parents[1]
STAGE_NAMES = ("smoke", "table1", "table2", "table3", "bench", "table4", "beyond", "defense", "bench_compile")


def without_wandb(folder: Path) -> Path:
    """A folder whose sitecustomize makes ``import wandb`` fail in every process that has it on PYTHONPATH, as on the
    GPU machine, where wandb is not installed."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    return folder


def gpu_run(args: list[str], data: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    """tools/gpu-run with ``data`` as the data folder (empty: the synthetic set, as in CI without make data), and
    without wandb."""
    blocker = without_wandb(data.parent / "no-wandb")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore", "PQATTACK_DATA": str(data),
           "PYTHONPATH": str(blocker)}
    env.pop("OUT", None)
    return subprocess.run([str(REPO / "tools" / "gpu-run"), *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_within_limits(out: Path) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= OUT_LIMITS["files"]
    assert sum(p.stat().st_size for p in files) <= OUT_LIMITS["total_bytes"]
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) - 1 <= OUT_LIMITS["depth"] and p.stat().st_size <= OUT_LIMITS["file_bytes"], rel
        assert all(c.isalnum() or c in "._-" for part in rel.parts for c in part), rel


def archive_names(out: Path) -> list[str]:
    with tarfile.open(out / "records.tar.gz") as tar:
        return tar.getnames()


@pytest.mark.slow
def test_tiny_run_every_stage_render_resume_deadline(tmp_path: Path) -> None:
    work, out, data = tmp_path / "work", tmp_path / "out", tmp_path / "no-data"
    data.mkdir()
    blocked = subprocess.run([sys.executable, "-c", "import wandb"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(without_wandb(tmp_path / "no-wandb"))})
    assert blocked.returncode != 0 and "wandb" in blocked.stderr  # the run below cannot use wandb
    first = gpu_run(["--tiny", "--work", str(work), "--out", str(out), "--deadline", "1500"], data)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    run = json.loads((work / "run.json").read_text())
    assert {n: s["status"] for n, s in run["stages"].items()} == {n: "ok" for n in STAGE_NAMES}
    assert_within_limits(out)
    names = archive_names(out)
    for stage in STAGE_NAMES:
        assert f"{stage}/status.json" in names
    assert sum(n.startswith("table1/sweep/") and n.endswith("/results.json") and n.count("/") == 3
               for n in names) == 6  # the jobs' own records (and the sweep's collected one)
    assert not any("adversarial_queries" in n or n.endswith(".pt") for n in names)
    # Table 1's backbone came back as an export that imports
    [part] = (out / "checkpoints").iterdir()
    manifest, _ = read_export(part)
    table1 = json.loads(next((work / "stages" / "table1" / "sweep").glob("*/results.json")).read_text())
    assert [e["key"] for e in manifest["entries"]] == [table1["meta"]["cache_keys"]["checkpoint"]]

    # an <out> that has no room for another file keeps its limits: the export is left out, with the reason
    full = tmp_path / "full-out"
    full.mkdir()
    for i in range(7):
        (full / f"f{i}").write_bytes(b"x")
    crowded = Run(parse_args(["--tiny", "--work", str(work), "--out", str(full)]))
    crowded.export_checkpoints()
    assert not (full / "checkpoints").exists()
    assert "do not fit" in (full / "gpu-run.log").read_text()

    # back on the CPU: the tables and the bench section, into folders of the test's own
    bench_doc = tmp_path / "benchmarks.md"
    bench_doc.write_text("# Benchmarks\n")
    proc = subprocess.run([str(REPO / "tools" / "gpu-render"), str(out), "--results", str(tmp_path / "results"),
                           "--benchmarks", str(bench_doc), "--unpack-to", str(tmp_path / "records"), "--allow-tiny"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("table1", "table2", "table3", "table4", "beyond", "defense"):
        rendered = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        assert rendered["rows"] and (tmp_path / "results" / f"{name}.md").is_file()
    assert "backbones trained 1 epoch (the recipe's is 40)" in (tmp_path / "results" / "table4.md").read_text()
    assert "generated on" in (tmp_path / "results" / "table4.md").read_text()  # the transfer matrix
    text = bench_doc.read_text()
    for figure in ("train_resnet18", "attack_resnet18", "table1", "train_compile"):
        assert f"| {figure} |" in text, figure
    assert "| smoke | ok |" in (tmp_path / "results" / "gpu_run.md").read_text()
    refused = subprocess.run([str(REPO / "tools" / "gpu-render"), str(out), "--unpack-to", str(tmp_path / "r2")],
                             cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert refused.returncode == 2 and "--tiny run" in refused.stderr  # never into the repository's results/

    # the same command again: every stage's records are valid, nothing runs
    again = gpu_run(["--tiny", "--work", str(work), "--out", str(out), "--deadline", "1500"], data)
    assert again.returncode == 0, again.stdout[-3000:]
    for stage in STAGE_NAMES:
        assert f"{stage}: skipped: its records are present and valid" in again.stdout
    assert ": start (" not in again.stdout  # no command started
    assert set(names) <= set(archive_names(out))

    # a short deadline: the unfinished stages are skipped with the estimate and the time left. The deadline is the
    # packing reserve itself, so that no command's estimate fits however fast this machine is
    for stage in ("table4", "beyond", "defense", "bench_compile"):
        subprocess.run(["rm", "-rf", str(work / "stages" / stage)], check=True)
    short = gpu_run(["--tiny", "--work", str(work), "--out", str(tmp_path / "out2"), "--deadline",
                     str(PACK_RESERVE_S)], data)
    assert short.returncode == 0, short.stdout[-3000:]
    assert "table4/first: skipped: estimated" in short.stdout and "left before the deadline" in short.stdout
    status = json.loads((work / "stages" / "table4" / "status.json").read_text())
    assert status["status"] == "skipped" and "left before the deadline" in status["reason"]
    assert "table1/status.json" in archive_names(tmp_path / "out2")  # what was done comes back again

    # --previous: a fresh machine given the first run's records skips the stages they hold
    prev = gpu_run(["--tiny", "--work", str(tmp_path / "work3"), "--out", str(tmp_path / "out3"), "--deadline", "60",
                    "--stages", "smoke,table3", "--previous", str(out / "records.tar.gz")], data)
    assert prev.returncode == 0, prev.stdout[-3000:]
    assert "smoke: skipped: its records are present and valid" in prev.stdout
    assert "table3: skipped: its records are present and valid" in prev.stdout


def tiny_run(tmp_path: Path, deadline: float, stages: str = "smoke") -> Run:
    return Run(parse_args(["--tiny", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                           "--deadline", str(deadline), "--stages", stages]))


def test_a_command_past_the_deadline_is_stopped_and_recorded(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, deadline=18)  # 3 s once the packing reserve is kept back
    (run.stages_dir / "smoke").mkdir(parents=True)
    res = run.run_command("smoke", Command("sleeper", ["-c", "import time; time.sleep(60)"]))
    assert res["timed_out"] and not res["ok"] and res["wall_s"] < 8  # stopped at 3 s, not at the 18 s deadline
    assert "sleeper: stopped at the deadline" in (run.work / "gpu-run.log").read_text()


def test_a_failing_smoke_stage_stops_the_run_and_its_log_comes_back(tmp_path: Path) -> None:
    run = tiny_run(tmp_path, deadline=300)
    failing = Command("check", ["-c", "import sys; print('the GPU path is broken'); sys.exit(3)"])
    run.stage = lambda name: Stage(name, [failing])
    assert run.main() == 1
    log = (run.out / "gpu-run.log").read_text()
    assert "smoke/check: failed (3)" in log and "the GPU path is broken" in log and "the run stops here" in log
    assert "table1" not in log.split("the run stops here")[1]
    with tarfile.open(run.out / "records.tar.gz") as tar:
        status = json.loads(tar.extractfile("smoke/status.json").read())
        assert "the GPU path is broken" in tar.extractfile("smoke/check.log").read().decode()
    assert status["status"] == "failed" and status["commands"][0]["returncode"] == 3


def test_gpu_render_writes_into_the_checkout_by_default(capsys: pytest.CaptureFixture) -> None:
    """``tools/gpu-render``'s default targets are the checkout's ``results/`` and ``docs/benchmarks.md`` (they were
    resolved one folder too low, under ``src/``)."""
    from pqattack.gpu.render import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {REPO / 'results'})" in text and f"(default {REPO / 'docs' / 'benchmarks.md'})" in text
    assert (REPO / "docs" / "benchmarks.md").is_file()


def test_out_limits(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    assert out_fits(tmp_path, {"records.tar.gz": 10}) is None
    assert "files" in out_fits(tmp_path, {f"f{i}": 1 for i in range(8)})
    assert "per file" in out_fits(tmp_path, {"big": 16 * 2**20 + 1})
    assert "in all" in out_fits(tmp_path, {f"p{i}": 15 * 2**20 for i in range(5)})
    assert "deep" in out_fits(tmp_path, {"a/b/c/file": 1})
    assert "name" in out_fits(tmp_path, {"bad name": 1})
    assert out_fits(tmp_path, {"a/b/file": 1}) is None
    assert "kept free" in out_fits(tmp_path, {f"f{i}": 1 for i in range(7)}, spare_files=1)


def make_wheel(folder: Path, name: str, version: str, requires: list[str], tag: str = "py3-none-any") -> None:
    dist = name.replace("-", "_")
    with zipfile.ZipFile(folder / f"{dist}-{version}-{tag}.whl", "w") as z:
        z.writestr(f"{dist}-{version}.dist-info/METADATA", "Metadata-Version: 2.1\nName: " + name + "\nVersion: "
                   + version + "\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))


def test_check_prep_finds_what_the_gpu_machine_would_lack(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    deps = {"hydra-core": ["omegaconf<2.4,>=2.2", "antlr4-python3-runtime==4.9.*", "packaging"],
            "omegaconf": ["antlr4-python3-runtime==4.9.*", "PyYAML>=5.1.0"], "faiss-cpu": ["numpy<3.0,>=1.25.0"],
            "submitit": ["cloudpickle>=1.2.1", "typing_extensions>=3.7.4.2", 'pywin32; sys_platform == "win32"']}
    versions = {"antlr4-python3-runtime": "4.9.3", "omegaconf": "2.3.0", "cloudpickle": "3.1.3"}
    for name in GPU_WHEELS:
        tag = "cp310-abi3-manylinux_2_28_x86_64" if name == "faiss-cpu" else "py3-none-any"
        make_wheel(wheels, name, versions.get(name, "1.0"), deps.get(name, []), tag)
    (tmp_path / "cifar10-jpeg.tar.xz").write_bytes(b"archive")
    assert check_prep(tmp_path) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok")
    make_wheel(wheels, "hydra-joblib-launcher", "1.1", ["joblib>=0.14", "rich-click"])  # a second version, a new need
    (wheels / "omegaconf-2.3.0-py3-none-any.whl").unlink()
    make_wheel(wheels, "omegaconf", "2.4.0", [], "cp311-cp311-manylinux_2_28_x86_64")
    assert check_prep(tmp_path) == 2
    report = capsys.readouterr().out
    assert "two versions of hydra-joblib-launcher" in report
    assert "rich-click: neither a wheel here nor on the GPU machine" in report
    assert "does not install on CPython 3.12" in report and "hydra-core needs omegaconf<2.4" in report
    assert "pywin32" not in report  # a requirement for another platform


def test_make_gpu_check_runs_the_check_in_its_own_process(tmp_path: Path) -> None:
    """``python -m pqattack.gpu.prep <folder>`` (make gpu-check): exit 2 naming what an empty folder lacks; a usage
    line without the folder (exit 2), and ``--help``."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "pqattack.gpu.prep", str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2 and f"no wheel of faiss-cpu in {tmp_path / 'wheels'}" in done.stdout
    usage = subprocess.run([sys.executable, "-m", "pqattack.gpu.prep"], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=120)
    assert usage.returncode == 2 and "usage: python -m pqattack.gpu.prep" in usage.stderr
    helped = subprocess.run([sys.executable, "-m", "pqattack.gpu.prep", "--help"], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=120)  # once taken for the folder to check
    assert helped.returncode == 0 and "folder" in helped.stdout and "no wheel" not in helped.stdout


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of a command line: the preset's sweeper params, then the command line's
    overrides (which win), expanded by Hydra's own BasicSweeper."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pqattack.config import CONF_DIR

    plain = [o for o in overrides if "," not in o.split("=", 1)[1]]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        params = compose("config", overrides=plain, return_hydra_config=True).hydra.sweeper.params or {}
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # after Hydra has loaded its plugins

    sweeper = BasicSweeper(max_batch_size=None, params=dict(params))
    parsed = OverridesParser.create().parse_overrides([*sweeper._parse_config(), *overrides])
    return BasicSweeper.split_arguments(parsed, None)[0]


@pytest.mark.slow  # composes and validates every job of the full run: about 15 s
def test_full_mode_commands_make_the_jobs_they_expect_and_every_job_validates(tmp_path: Path) -> None:
    """Every sweep of the GPU run, as built for the GPU (not --tiny): Hydra expands it into the number of jobs the
    stage waits for, and every job's config composes and passes the start-up checks (on the CPU here)."""
    from hydra import compose, initialize_config_dir

    from pqattack.config import CONF_DIR, validate

    run = Run(parse_args(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]))
    total = 0
    for name in ("smoke", "table1", "table2", "table3", "table4"):
        for cmd in run.stage(name).commands:
            if not cmd.jobs:
                continue
            overrides = [o for o in cmd.argv[2:] if not o.startswith("hydra.")]
            jobs = expand_sweep(overrides)
            assert len(jobs) == cmd.jobs, (name, cmd.name, len(jobs))
            for job in jobs:
                with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                    cfg = compose("config", overrides=[o if o != "device=cuda" else "device=cpu" for o in job])
                validate(cfg)
                assert cfg.dataset.name == "cifar10" and cfg.resume and not cfg.progress
            total += len(jobs)
    assert total == 3 + 1 + 27 + 54 + 18 + 25 + 36
    bench = run.stage("bench").commands[0].argv
    assert bench[:2] == ["-m", "pqattack.bench"] and "--quick" not in bench
    assert bench[bench.index("--device") + 1] == "cuda"


def test_an_error_inside_a_stage_is_logged_and_what_was_done_is_packed(tmp_path: Path) -> None:
    """An exception while a stage runs (a bug, a record the estimates cannot read) once ended the script before its
    last pack: the stage now gets an error status, the log says why, and the records archive is written."""
    run = tiny_run(tmp_path, deadline=300)

    def broken(name: str) -> Stage:
        raise TypeError("a record field is None")

    run.stage = broken  # type: ignore[method-assign]
    assert run.main() == 1
    assert "smoke: TypeError: a record field is None: the run stops here" in (run.out / "gpu-run.log").read_text()
    assert json.loads((run.stages_dir / "smoke" / "status.json").read_text())["status"] == "error"
    assert "smoke/status.json" in archive_names(run.out)


SLEEPER = """
import sys
from pqattack.gpu.run import Command, Run, Stage, parse_args
run = Run(parse_args(["--tiny", "--work", sys.argv[1], "--out", sys.argv[2], "--deadline", "300", "--stages", "smoke"]))
run.stage = lambda name: Stage(name, [Command("sleeper", ["-c", "import time; print('up', flush=True); time.sleep(120)"])])
sys.exit(run.main())
"""


def test_a_signal_from_outside_stops_the_command_and_packs_what_there_is(tmp_path: Path) -> None:
    """The machine's own limit (shorter than --deadline) ends the script with SIGTERM: the running command's process
    group is stopped, its stage marked interrupted, the records packed, the exit code 128 + 15."""
    import signal
    import time

    work, out = tmp_path / "work", tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, str(work), str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = work / "stages" / "smoke" / "sleeper.log"
    deadline = time.time() + 60
    while not (log.is_file() and "up" in log.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    assert log.is_file() and "up" in log.read_text(), proc.communicate(timeout=30)[0][-2000:]
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM and time.time() - t0 < 30, output[-2000:]
    assert json.loads((work / "stages" / "smoke" / "status.json").read_text())["status"] == "interrupted"
    assert {"smoke/status.json", "smoke/sleeper.log", "run.json"} <= set(archive_names(out))
    assert "signal 15" in (out / "gpu-run.log").read_text()


@pytest.mark.parametrize("body,expected", [("def test_ok():\n    assert True\n", "ok"),
                                           ("import pytest\n\n@pytest.mark.skip(reason='no GPU')\ndef test_s():\n"
                                            "    pass\n", "failed")])
def test_on_the_gpu_the_gpu_tests_must_run_not_skip(tmp_path: Path, body: str, expected: str) -> None:
    """The smoke stage's check of pytest's report: on the GPU machine, skipped gpu tests mean no usable GPU."""
    run = tiny_run(tmp_path, deadline=300)
    (run.stages_dir / "smoke").mkdir(parents=True)
    (tmp_path / "test_probe.py").write_text(body)
    probe = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(tmp_path / "test_probe.py"), f"--junitxml={run.stages_dir / 'smoke' / 'gpu-tests.xml'}"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert probe.returncode == 0 and (run.stages_dir / "smoke" / "gpu-tests.xml").is_file(), probe.stdout[-2000:]
    assert run.check_gpu_tests() == expected
    if expected == "failed":  # failed for the skip it read, not for a missing or empty report
        assert "(1 collected, 1 skipped)" in (run.work / "gpu-run.log").read_text()


def test_the_bench_stage_reads_table1_records_only_where_that_stage_left_them(tmp_path: Path) -> None:
    """The bench checks --table1-run before any figure runs and refuses a folder without a table1 status, so a run
    whose table1 stage did not run (--stages bench) measures its figures without it."""
    run = Run(parse_args(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--tiny"]))
    assert "--table1-run" not in run.stage("bench").commands[0].argv
    (run.stages_dir / "table1").mkdir(parents=True)
    (run.stages_dir / "table1" / "status.json").write_text(json.dumps({"commands": [{"name": "sweep"}]}))
    argv = run.stage("bench").commands[0].argv
    assert argv[argv.index("--table1-run") + 1] == str(run.stages_dir / "table1")
