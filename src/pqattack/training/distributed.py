"""Distributed (DDP) training helpers: how many processes train, what of that enters a checkpoint's key, and
carrying the ranks' logs and batch counts back to the main process."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of training processes (0, 1 outside distributed training)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# How training is spread over processes (conf/trainer: strategy, devices, num_nodes). They are left out of the
# checkpoints' cache keys, which hold the world size instead, and only when it is > 1: one process computes
# the same thing whatever these say (so single-device checkpoints keep their keys), while N processes
# do not (each takes 1/N of an epoch's images; the effective batch is N * trainer.batch_size).
DISTRIBUTED_KEYS = ("strategy", "devices", "num_nodes")
# trainer.strategy=auto with several devices, and conf/trainer/ddp.yaml: DDP whose ranks are started by
# torch.multiprocessing.spawn (see fit); unused parameters allowed, as PQN's triplet loss leaves the head unused.
SPAWN_DDP = "ddp_spawn_find_unused_parameters_true"
CSV_METRICS = "metrics.csv"  # the file Lightning's CSVLogger writes its metrics to, in its log_dir


def world_size(tcfg: dict[str, Any] | None, device: torch.device) -> int:
    """The number of training processes that ``trainer.devices`` and ``trainer.num_nodes`` ask for, parsed
    the way Lightning parses them (``auto``: every visible GPU, or one process on the CPU)."""
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    tcfg = tcfg or {}
    accelerator = CUDAAccelerator if device.type == "cuda" else CPUAccelerator
    devices = tcfg.get("devices", 1)
    devices = accelerator.auto_device_count() if devices == "auto" else devices
    parsed = accelerator.parse_devices(list(devices) if isinstance(devices, (list, tuple)) else devices)
    return max(1, len(parsed) if isinstance(parsed, list) else int(parsed or 0)) * int(tcfg.get("num_nodes", 1))


def distributed_spec(tcfg: dict[str, Any] | None, device: torch.device) -> dict[str, int]:
    """What a checkpoint's spec holds about distributed training: nothing for one process (see above)."""
    n = world_size(tcfg, device)
    return {"world_size": n} if n > 1 else {}


class BatchCounter(pl.Callback):
    """Counts each rank's training batches in the last epoch; at the end of training the counts of all
    ranks are gathered into ``callback_metrics``, which spawn-based strategies send back to the main process."""

    count = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.count = 0

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.count += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = trainer.strategy.all_gather(torch.tensor(self.count, device=pl_module.device)).reshape(-1)
        for rank, n in enumerate(counts.tolist()):
            trainer.callback_metrics[f"batches_per_epoch/rank{rank}"] = torch.tensor(float(n))


def continue_rank_zero_logs(module: pl.LightningModule, loggers: list) -> None:
    """After training in spawned ranks: rank 0 wrote the hyperparameters and training metrics through its copy
    of each logger; make this process's loggers carry them on. (A CSVLogger that first logs here would
    delete rank 0's metrics.csv, and save empty hyperparameters over rank 0's hparams.yaml.)"""
    from pytorch_lightning.loggers import CSVLogger

    for lg in loggers:
        rows: list[dict[str, str]] = []
        path = Path(lg.log_dir) / CSV_METRICS if isinstance(lg, CSVLogger) else None
        if path is not None and path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        lg.log_hyperparams(module.hparams_initial)
        if path is not None:
            writer = lg.experiment
            path.unlink(missing_ok=True)
            writer.metrics[:0], writer.metrics_keys = rows, []
            writer.save()
