"""Multi-process training (trainer=ddp): two CPU ranks over gloo, inside a real ``python -m pqattack`` sweep."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pqattack.training import distributed_spec, world_size

from .conftest import TINY, load_results, results_path, run_cli

NUM_TRAIN, BATCH, EPOCHS = 600, 64, 2  # TINY's
assert {f"dataset.num_train={NUM_TRAIN}", f"trainer.batch_size={BATCH}", f"trainer.max_epochs={EPOCHS}"} <= set(TINY)


def test_ddp_on_two_cpu_ranks_shards_each_epoch_and_caches_the_checkpoint_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = run_cli(["-m", *TINY, "attack=basic,aod", "trainer=ddp", "trainer.devices=2", "hydra.sweep.dir=sweep"],
                   tmp_path, cache)
    assert "Starting with 2 processes" in proc.stderr + proc.stdout  # Lightning's DDP banner
    collected = load_results(results_path(proc, tmp_path))
    assert {r["attack"] for r in collected["rows"]} == {"clean", "basic", "aod"}
    jobs = [load_results(p)["meta"] for p in sorted((tmp_path / "sweep").glob("*/results.json"))]
    key = jobs[0]["cache_keys"]["checkpoint"]
    assert f"checkpoint/{key}" in jobs[0]["cache_builds"] and f"checkpoint/{key}" in jobs[1]["cache_hits"]
    assert not any(b.startswith("checkpoint/") for b in jobs[1]["cache_builds"])  # trained once, by job 0

    entry = cache / "checkpoint" / key
    meta = json.loads((entry / "meta.json").read_text())
    per_rank = NUM_TRAIN // 2 // BATCH  # each rank: its half of the epoch's permutation, in full batches
    assert meta["world_size"] == 2 and meta["spec"]["world_size"] == 2
    assert meta["batches_per_epoch"] == [per_rank, per_rank]  # counted in each rank, gathered at the end
    assert "strategy" not in meta["spec"]["trainer"] and "devices" not in meta["spec"]["trainer"]

    # the weights trained in the ranks are those the main process cached: rank 0's batch-norm layers counted
    # its steps (epochs x its batches), not 0 (untrained) nor the single-process 18
    state = torch.load(entry / "tensors.pt", weights_only=True)
    tracked = {int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert tracked == {EPOCHS * per_rank}

    # rank 0's training log survives in the job's metrics.csv, followed by the main process's mAP row
    with open(tmp_path / "sweep" / "0_smallcnn_4x16_basic" / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epoch_steps = [int(r["step"]) for r in rows if r.get("train/loss_epoch")]
    assert epoch_steps == [per_rank - 1, EPOCHS * per_rank - 1]
    assert rows[-1]["map/clean/sdc"]

    # exported and imported into another cache, the DDP checkpoint keeps its key (which holds the world size), and
    # the printed overrides name the number of processes, with which a job finds it instead of training again
    export = subprocess.run([sys.executable, "-m", "pqattack.cache", "export", "sweep/0_smallcnn_4x16_basic", "ddp.pqc",
                             "--dtype", "fp32"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PQATTACK_CACHE": str(cache)})
    assert export.returncode == 0, export.stderr
    imported = subprocess.run([sys.executable, "-m", "pqattack.cache", "import", "ddp.pqc"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PQATTACK_CACHE": str(tmp_path / "cache-b")})
    assert imported.returncode == 0, imported.stderr
    assert f"imported checkpoint {key}" in imported.stdout and "trainer.devices=2" in imported.stdout
    assert (tmp_path / "cache-b" / "checkpoint" / key / "tensors.pt").is_file()


def test_plain_ddp_strategy_is_refused_before_training(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = run_cli([*TINY, "attack=basic", "trainer.strategy=ddp", "trainer.devices=2", "hydra.run.dir=run"],
                   tmp_path, cache, check=False, timeout=120)
    assert proc.returncode == 2  # refused at start-up, before the data is loaded
    assert "re-running this command line" in proc.stderr and "trainer=ddp" in proc.stderr
    assert not list((cache / "checkpoint").glob("*/tensors.pt"))


def test_one_process_leaves_the_checkpoint_key_as_it_was() -> None:
    cpu = torch.device("cpu")
    assert world_size(None, cpu) == 1 and distributed_spec(None, cpu) == {}
    assert distributed_spec({"strategy": "auto", "devices": 1, "num_nodes": 1}, cpu) == {}
    assert distributed_spec({"strategy": "ddp_spawn", "devices": "auto", "num_nodes": 1}, cpu) == {}  # 1 on a CPU
    assert distributed_spec({"devices": 2, "num_nodes": 1}, cpu) == {"world_size": 2}
    assert world_size({"devices": "3"}, cpu) == 3
