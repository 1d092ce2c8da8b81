from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "pqattack" / "conf"

# A tiny but real job: synthetic images, a narrow CNN, one epoch, few queries.
TINY = ["dataset=synthetic", "model=smallcnn", "model.width=8", "dataset.num_train=600", "dataset.num_test=400",
        "dataset.num_queries=60", "dataset.num_database=300", "trainer.max_epochs=2", "trainer.batch_size=64",
        "trainer.lr=0.05", "bits=16", "device=cpu", "progress=false", "attack.batch_size=60"]


def run_cli(args: list[str], cwd: Path, cache: Path, env: dict[str, str] | None = None, check: bool = True,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m pqattack`` in a real subprocess, with its own cache and output folders."""
    full_env = {**os.environ, "PQATTACK_CACHE": str(cache), "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pqattack", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pqattack {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def results_path(proc: subprocess.CompletedProcess, cwd: Path) -> Path:
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), f"last line is not 'results: <path>': {last!r}"
    p = Path(last.removeprefix("results: "))
    return p if p.is_absolute() else cwd / p


def load_results(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache for the session: tests that use the same tiny backbone train it once."""
    return tmp_path_factory.mktemp("cache")


def compose_config(overrides: list[str]):  # noqa: ANN201
    """The job config ``python -m pqattack <overrides>`` would run, composed in-process and validated."""
    from hydra import compose, initialize_config_dir

    from pqattack.config import CONF_DIR, load_job

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    load_job(cfg)
    return cfg


def write_records(folder: Path, jobs: dict[str, list[str]]) -> list[Path]:
    """A sweep folder written by hand: per job, ``<folder>/<name>/results.json`` with the config ``python -m pqattack
    <overrides>`` composes and no rows, and the sweep's collected ``results.json`` naming them; the job folders.
    Nothing is trained or loaded (for what tools do with a folder before they read a job's artifacts)."""
    from omegaconf import OmegaConf

    folders = []
    for name, overrides in jobs.items():
        (folder / name).mkdir(parents=True)
        config = OmegaConf.to_container(compose_config(overrides), resolve=True)
        (folder / name / "results.json").write_text(json.dumps({"meta": {"config": config}, "rows": []}))
        folders.append(folder / name)
    (folder / "results.json").write_text(json.dumps(
        {"meta": {"sweep_dir": str(folder), "jobs": [{"job_dir": str(f)} for f in folders]}, "rows": []}))
    return folders


def refused(main, args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:  # noqa: ANN001
    """A tool's ``main(args)`` that stops: its exit code and its one line on stderr (checked: no traceback)."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return stop.value.code, err


def run_job(overrides: list[str], out: Path, cache: Path) -> dict:
    """The job ``python -m pqattack <overrides>`` runs, in this process: composed with ``hydra.compose``, validated,
    run by ``pipeline.run`` into ``out`` with the artifact cache ``cache`` and the config's loggers (finished
    whatever happens, as the command does); its ``results.json``. Errors propagate as the ``PQAttackError`` the
    command would print (its ``kind`` and ``exit_code``)."""
    from pqattack.loggers import finish_loggers, make_loggers
    from pqattack.pipeline import run

    cfg = compose_config([*overrides, f"cache.dir={cache}"])
    loggers, status = [], "failed"
    try:
        loggers = make_loggers(cfg, out)
        path = run(cfg, out, loggers)
        status = "success"
    finally:
        finish_loggers(loggers, status)
    return load_results(path)


def run_sweep(jobs: list[list[str]], sweep_dir: Path, cache: Path) -> dict:
    """A sweep's jobs run in this process (``run_job``), each into ``sweep_dir/<i>``, then collected as the sweep's
    Hydra callback collects them (``report.callbacks.CollectResults``); the collected ``results.json``."""
    from omegaconf import OmegaConf

    from pqattack.report.callbacks import CollectResults

    for i, overrides in enumerate(jobs):
        run_job(overrides, sweep_dir / str(i), cache)
    CollectResults().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    return load_results(sweep_dir / "results.json")


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A small CNN trained in-process on the synthetic set (fp32), with its data and 16-bit K-means target:
    ``(job, data, target)``."""
    import torch
    from hydra.utils import instantiate

    from pqattack.cache import ArtifactCache
    from pqattack.config import load_job
    from pqattack.runtime import Runtime
    from pqattack.stages.target import build_target

    cache = tmp_path_factory.mktemp("trained_demo_cache")
    cfg = compose_config(["dataset=synthetic", "model=smallcnn", "model.width=16", "dataset.num_train=1500",
                          "dataset.num_test=600", "dataset.num_queries=100", "dataset.num_database=500",
                          "trainer.max_epochs=3", "trainer.batch_size=64", "trainer.lr=0.05", "bits=16",
                          "device=cpu", "precision=fp32", "progress=false", f"cache.dir={cache}"])
    rt = Runtime(torch.device("cpu"), "fp32", ArtifactCache(cache), progress=False)
    data = instantiate(cfg.dataset).load(rt.cache)
    job = load_job(cfg)
    return job, data, build_target(job, data, rt, [])
