"""``fit``: Lightning's trainer on the in-memory training images, on one device or several spawned ranks."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch

from ..data import RetrievalData
from ..errors import ConfigError
from ..models.recipe import RECIPE_OPTIONS
from ..runtime import Runtime
from .batches import TensorBatches
from .distributed import SPAWN_DDP, BatchCounter, continue_rank_zero_logs, world_size

log = logging.getLogger(__name__)


def fit(module: Any, data: RetrievalData, batch_size: int, epochs: int, seed: int, rt: Runtime,
        loggers: list, tcfg: dict[str, Any] | None = None, what: str = "training",
        epochs_key: str = "trainer.max_epochs") -> dict[str, Any]:
    """Run Lightning's trainer on the in-memory training images; returns seconds, final metrics, the
    world size, each rank's batches per epoch and (in one process) each epoch's seconds. ``tcfg`` (the trainer config) gives strategy, devices
    and num_nodes; without it, or with one process, training runs in this process on ``rt.device``.

    With several processes the strategy must start them itself and run only ``Trainer.fit`` in them
    (``ddp_spawn``, or ``ddp_fork`` on the CPU): rank 0 sends the trained weights back and Lightning loads
    them into ``module`` here, so the caller's ``net.state_dict()`` is the trained one. Lightning's
    ``ddp`` re-runs the command line in each child instead, i.e. the whole job (or sweep), whose cache
    lookup would wait forever on the lock held by this process; it is refused with an explanation.

    Unless ``progress=false`` (``rt.shows_estimate``; also in a log, where ``auto`` draws no bars), a training that
    will take more than ``TimeEstimate.threshold_s`` says so, with the
    way out, after its first batches (``what`` names it: "VGG16, 40 epochs"; ``epochs_key`` is the config key that
    sets ``epochs``)."""
    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    tcfg = tcfg or {}
    world = world_size(tcfg, rt.device)
    accelerator = "gpu" if rt.device.type == "cuda" else "cpu"
    if world == 1:  # this process, on rt.device (cuda:N included); the strategy does not matter here
        place: dict[str, Any] = {"devices": [rt.device.index] if rt.device.index is not None else 1}
        images, labels = data.train.images.to(rt.device), data.train.labels.to(rt.device)
    else:
        strategy = tcfg.get("strategy", "auto")
        # LightningEnvironment: the spawned ranks are this node's processes even inside a SLURM job that has
        # one task (SLURMEnvironment would expect one SLURM task per device, each running the whole job).
        place = {"strategy": SPAWN_DDP if strategy == "auto" else strategy, "devices": tcfg["devices"],
                 "num_nodes": 1, "plugins": [LightningEnvironment()]}
        images, labels = data.train.images.cpu(), data.train.labels.cpu()  # each rank's batches go to its device
    compiled = bool(tcfg.get("compile"))
    if compiled and world > 1:
        raise ConfigError(f"trainer.compile=true with {world} training processes: compilation is supported for "
                          f"training in one process only")
    batches = TensorBatches(images, labels, min(batch_size, len(data.train) // world), seed)
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=accelerator, **place,
        precision="bf16-mixed" if rt.precision == "bf16" else "32-true", logger=loggers or False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=rt.progress,
        num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, len(data.train) // world // batches.batch_size)),
        deterministic=False, benchmark=True if rt.device.type == "cuda" else None,  # cuDNN picks its fastest kernels
        callbacks=[BatchCounter(), timer, *([TimeEstimate(epochs, what, epochs_key)] if rt.shows_estimate else [])])
    if isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher):
        raise ConfigError(f"trainer.strategy={tcfg.get('strategy')!r} with {world} devices: Lightning would start "
                          f"the other ranks by re-running this command line, i.e. the whole job, whose cache lookup "
                          f"waits on the lock this process holds. Use trainer=ddp (strategy {SPAWN_DDP}).")
    backbone = module.backbone
    if compiled:  # the backbone's feature extractor, which classifier and PQN training both call
        backbone.forward_features = torch.compile(backbone.forward_features)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=batches)
    finally:
        if compiled:
            del backbone.forward_features
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    per_rank = [int(metrics.pop(f"batches_per_epoch/rank{r}")) for r in range(world)
                if f"batches_per_epoch/rank{r}" in metrics]
    if world > 1:
        continue_rank_zero_logs(module, loggers)
    return {"train_seconds": round(time.perf_counter() - t0, 2), "train_metrics": metrics,
            "world_size": world, "batches_per_epoch": per_rank, "epoch_seconds": timer.seconds}


class EpochTimer(pl.Callback):
    """Wall seconds of each training epoch, up to the work queued on the GPU (the first epoch includes warm-up:
    cuDNN's algorithm search, compilation)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds.append(round(time.perf_counter() - self.start, 3))


class TimeEstimate(pl.Callback):
    """After a few timed batches, log the training's expected duration when it is long, and how to shorten it."""

    threshold_s = 600.0
    warmup, timed = 2, 5

    def __init__(self, epochs: int, what: str, epochs_key: str = "trainer.max_epochs") -> None:
        self.epochs, self.what, self.epochs_key = epochs, what, epochs_key
        self.t0: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if trainer.current_epoch or step > self.warmup + self.timed:
            return
        if step == self.warmup:
            self.t0 = time.perf_counter()
        elif step == self.warmup + self.timed and self.t0 is not None:
            per_batch = (time.perf_counter() - self.t0) / self.timed
            total = per_batch * trainer.num_training_batches * self.epochs
            if total > self.threshold_s:
                where = "this GPU" if pl_module.device.type == "cuda" else "this CPU"
                log.warning("%s on %s: about %s. %s; progress=false hides this.", self.what, where, _duration(total),
                            self.advice())

    def advice(self) -> str:
        """How to shorten it: a backbone's training also by a CPU preset; a fine-tuning (PQN, adversarial) by its
        own epochs key."""
        if self.epochs_key == "trainer.max_epochs":
            return ("Use a GPU, a CPU preset (experiment=table1_fast_cpu, experiment=table1_cpu) or fewer "
                    "trainer.max_epochs")
        return f"Use a GPU or fewer {self.epochs_key}"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def optimiser_kwargs(tcfg: dict[str, Any], lr: float | None = None) -> dict[str, Any]:
    return {"lr": tcfg["lr"] if lr is None else lr, "momentum": tcfg["momentum"],
            "weight_decay": tcfg["weight_decay"], "nesterov": tcfg["nesterov"],
            "label_smoothing": tcfg["label_smoothing"], "schedule": tcfg["schedule"], "augment": tcfg["augment"],
            **{k: tcfg[k] for k in RECIPE_OPTIONS if k in tcfg}}
