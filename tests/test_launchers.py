"""Hydra launchers: a sweep's jobs in other processes (submitit_local, joblib) share the artifact cache, train
a backbone once between them, and the sweep's table is still collected; the SLURM launcher config composes.
Real ``python -m pqattack`` subprocesses, no mocks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from .conftest import CONF, TINY, load_results, results_path, run_cli


def check_sweep(proc: subprocess.CompletedProcess, cwd: Path, cache: Path) -> list[dict]:
    """The collected table covers both jobs; exactly one job built the shared backbone, the other loaded it."""
    path = results_path(proc, cwd)
    assert path == cwd / "sweep" / "results.json"
    collected = load_results(path)
    assert {(r["attack"], r["system"]) for r in collected["rows"]} == {
        (a, s) for a in ("clean", "basic", "aod") for s in ("sdc", "adc")}
    assert len(collected["meta"]["jobs"]) == 2
    assert "basic" in (cwd / "sweep" / "results.md").read_text()
    jobs = [load_results(p)["meta"] for p in sorted((cwd / "sweep").glob("*/results.json"))]
    assert len(jobs) == 2
    ckpt = {j["cache_keys"]["checkpoint"] for j in jobs}
    assert len(ckpt) == 1  # both jobs use the same backbone ...
    key = f"checkpoint/{ckpt.pop()}"
    assert sum(key in j["cache_builds"] for j in jobs) == 1  # ... which exactly one of them trained
    assert sum(key in j["cache_hits"] for j in jobs) == 1
    assert len(list((cache / "checkpoint").glob("*/tensors.pt"))) == 1
    return jobs


def test_submitit_local_sweep_trains_once_and_collects_one_table(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = run_cli(["-m", *TINY, "attack=basic,aod", "hydra/launcher=submitit_local", "hydra.sweep.dir=sweep",
                    "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"], tmp_path, cache)
    check_sweep(proc, tmp_path, cache)
    # each job ran in its own submitit process, which kept its logs in the sweep folder
    logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2, logs


def test_joblib_sweep_two_parallel_jobs_build_the_checkpoint_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # a few more epochs than TINY's, so that the second job usually reaches the checkpoint while the first is
    # still training it and waits on the cache's lock (what it waited shows as its "train" time, printed). Whether
    # it waited depends on when each worker starts, so it is not asserted: what is asserted is that the two jobs
    # ran in joblib's workers (each limited to cpu_count // n_jobs threads) and built the checkpoint once
    proc = run_cli(["-m", *TINY, "trainer.max_epochs=8", "attack=basic,aod", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep"], tmp_path, cache)
    jobs = check_sweep(proc, tmp_path, cache)
    waiter = next(j for j in jobs if not any(b.startswith("checkpoint/") for b in j["cache_builds"]))
    builder = next(j for j in jobs if j is not waiter)
    print(f"builder trained {builder['timings_s']['train']} s; the other job's checkpoint step took "
          f"{waiter['timings_s']['train']} s (> 0.1 s: it waited on the lock while the first trained)")
    # joblib runs the jobs in loky worker processes, which limit each to cpu_count // n_jobs threads
    from joblib import cpu_count

    assert all(j["device"].startswith("cpu") and j["device"].endswith(f", {max(1, cpu_count() // 2)} threads")
               for j in jobs), [j["device"] for j in jobs]


def compose_hydra(overrides: list[str]):  # noqa: ANN201
    from hydra import compose, initialize_config_dir

    import pqattack.config  # noqa: F401  (registers the pq_k resolver)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes_to_an_sbatch_script(tmp_path: Path) -> None:
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    cfg = compose_hydra(["hydra/launcher=slurm", "hydra.sweep.dir=/shared/sweeps/s", "hydra.launcher.partition=gpu",
                         'hydra.launcher.setup=["export PQATTACK_CACHE=/shared/cache"]'])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert {k: launcher[k] for k in ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min",
                                     "tasks_per_node", "nodes", "array_parallelism", "setup", "name")} == {
        "partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32, "timeout_min": 240,
        "tasks_per_node": 1, "nodes": 1, "array_parallelism": 16, "setup": ["export PQATTACK_CACHE=/shared/cache"],
        "name": "pqattack"}
    assert launcher["submitit_folder"] == "/shared/sweeps/s/.submitit/%j"
    # every field set in conf/hydra/launcher/slurm.yaml has a comment right above it
    lines = (CONF / "hydra" / "launcher" / "slurm.yaml").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if line and line[0].isalpha() and ":" in line]
    assert len(keys) >= 10
    for i in keys:
        if not lines[i].startswith("defaults"):
            assert lines[i - 1].startswith("#"), f"undocumented: {lines[i]}"

    # the script submitit would hand to sbatch for a two-job sweep (rendered, not submitted: no SLURM here),
    # with submitit's own names for the plugin's fields, as its AutoExecutor maps them
    eq = SlurmExecutor._equivalence_dict()
    params = {eq.get(k, k): v for k, v in launcher.items()
              if k not in ("_target_", "submitit_folder", "max_num_timeout")}
    params["mem"] = _convert_mem(params["mem"])
    script = _make_sbatch_string(command="python -u -m submitit.core._submit <folder>",
                                 folder=launcher["submitit_folder"], map_count=2, **params)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=240", "#SBATCH --array=0-1%2", "#SBATCH --job-name=pqattack",
                 "export PQATTACK_CACHE=/shared/cache"):
        assert line in script.splitlines(), (line, script)


@pytest.mark.parametrize("name,target", [("submitit_slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher"),
                                         ("joblib", "JoblibLauncher")])
def test_plugin_launchers_compose_with_our_conf_tree(name: str, target: str) -> None:
    cfg = compose_hydra([f"hydra/launcher={name}"])
    assert cfg.hydra.launcher._target_.endswith(target)
    assert json.dumps(OmegaConf.to_container(cfg.hydra.launcher, resolve=False))  # plain, serialisable values
