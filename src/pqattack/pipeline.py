"""Orchestration: wires data -> backbone -> features -> codebooks -> index -> attacks -> mAP -> records.

Every stage's output is an artifact in the content-addressed cache, keyed by everything that determines
it, so a sweep over attacks and bits trains each backbone, extracts features and runs K-means once.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from .attacks import PEAK_LOSSES, PGDConfig, pgd
from .cache import ArtifactCache, CacheError, spec_key
from .data import RetrievalData, top1_hit

if TYPE_CHECKING:
    from .transfer import AdversarialSet
from .metrics import mean_average_precision
from .models import Backbone, ClassifierModule, RetrievalModel, build_backbone
from .models.pqn import PQNModule, SoftProductQuantizer, subvector_normalize
from .quant import IVFPQIndex, PQIndex, recall_at_k_with_ties, train_codebooks
from .report import render_tables

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- runtime
@dataclass
class Runtime:
    """Where and how tensors are computed, and the run's bookkeeping."""

    device: torch.device
    precision: str  # fp32 | bf16
    cache: ArtifactCache
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def autocast(self):  # noqa: ANN201
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: CUDA is not available on this machine (use auto or cpu)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    raise ValueError(f"device={name!r}: expected auto, cpu, cuda or cuda:N")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 among ``cpuinfo``'s flags). Without
    them, bf16 autocast is emulated and slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 autocast for the backbone on a GPU with bf16 and on a CPU that computes bf16 natively,
    else fp32. The retrieval head (normalisation, soft assignment) is float32 in every case."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name not in ("fp32", "bf16"):
        raise ValueError(f"precision={name!r}: expected auto, fp32 or bf16")
    return name


def container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- stage 2
def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of training processes (0, 1 outside distributed training)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TensorBatches:
    """Shuffled mini-batches straight from in-memory tensors (already on the training device with one
    process; on the CPU with several, where Lightning moves each batch to its rank's device).

    Not a DataLoader, so Lightning inserts no DistributedSampler: the sharding is done here, at iteration
    time, from ``torch.distributed`` (initialised in each rank by the time Lightning asks for batches).
    Every rank draws the same permutation (same seeded generator, advanced once per epoch everywhere) and
    takes every world-th index from its rank on, cut to ``len // world`` on every rank (DistributedSampler
    with ``drop_last=True``), so all ranks run the same number of steps and no image is seen twice in an
    epoch. With one process the shard is the whole permutation: the batches are exactly the unsharded ones.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        _, world = _rank_and_world()  # drop the last partial batch (BN needs > 1 sample)
        return len(self.images) // world // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, world = _rank_and_world()
        perm = torch.randperm(len(self.images), generator=self.generator)
        perm = perm[rank::world][:len(self.images) // world].to(self.images.device)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]

    def __getstate__(self) -> dict[str, Any]:
        # Spawned ranks receive this object pickled, and a torch.Generator does not survive torch's spawn
        # pickler (pytorch/pytorch#146828: "unable to resize file" in the child); send its state as bytes.
        return {**self.__dict__, "generator": self.generator.get_state().numpy().tobytes()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["generator"]), dtype=torch.uint8))
        self.__dict__.update({**state, "generator": generator})


def make_backbone(cfg: DictConfig, num_classes: int) -> Backbone:
    kw = {k: v for k, v in container(cfg.model).items() if k not in ("_target_", "name")}
    return build_backbone(num_classes=num_classes, **kw)


# How training is spread over processes (conf/trainer: strategy, devices, num_nodes). They are left out of the
# checkpoints' cache keys, which hold the world size instead, and only when it is > 1: one process computes
# the same thing whatever these say (so single-device checkpoints keep their keys), while N processes
# do not (each takes 1/N of an epoch's images; the effective batch is N * trainer.batch_size).
DISTRIBUTED_KEYS = ("strategy", "devices", "num_nodes")
# trainer.strategy=auto with several devices, and conf/trainer/ddp.yaml: DDP whose ranks are started by
# torch.multiprocessing.spawn (see fit); unused parameters allowed, as PQN's triplet loss leaves the head unused.
SPAWN_DDP = "ddp_spawn_find_unused_parameters_true"


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


def continue_rank_zero_logs(module: pl.LightningModule, loggers: list) -> None:
    """After training in spawned ranks: rank 0 wrote the hyperparameters and training metrics through its copy
    of each logger; make this process's loggers carry them on. (A CSVLogger that first logs here would
    delete rank 0's metrics.csv, and save empty hyperparameters over rank 0's hparams.yaml.)"""
    import csv

    from lightning_fabric.loggers.csv_logs import _ExperimentWriter
    from pytorch_lightning.loggers import CSVLogger

    for lg in loggers:
        rows: list[dict[str, str]] = []
        path = Path(lg.log_dir) / _ExperimentWriter.NAME_METRICS_FILE if isinstance(lg, CSVLogger) else None
        if path is not None and path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        lg.log_hyperparams(module.hparams_initial)
        if path is not None:
            writer = lg.experiment
            path.unlink(missing_ok=True)
            writer.metrics[:0], writer.metrics_keys = rows, []
            writer.save()


def fit(module: Any, data: RetrievalData, batch_size: int, epochs: int, seed: int, rt: Runtime,
        loggers: list, tcfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run Lightning's trainer on the in-memory training images; returns seconds, final metrics, the
    world size, each rank's batches per epoch and (in one process) each epoch's seconds. ``tcfg`` (the trainer config) gives strategy, devices
    and num_nodes; without it, or with one process, training runs in this process on ``rt.device``.

    With several processes the strategy must start them itself and run only ``Trainer.fit`` in them
    (``ddp_spawn``, or ``ddp_fork`` on the CPU): rank 0 sends the trained weights back and Lightning loads
    them into ``module`` here, so the caller's ``net.state_dict()`` is the trained one. Lightning's
    ``ddp`` re-runs the command line in each child instead, i.e. the whole job (or sweep), whose cache
    lookup would wait forever on the lock held by this process; it is refused with an explanation."""
    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    from .config import ConfigError

    tcfg = tcfg or {}
    world = world_size(tcfg, rt.device)
    accelerator = "gpu" if rt.device.type == "cuda" else "cpu"
    if world == 1:  # this process, on rt.device (cuda:N included); the strategy does not matter here
        place: dict[str, Any] = {"devices": [rt.device.index] if rt.device.index is not None else 1}
        images, labels = data.train.images.to(rt.device), data.train.labels.to(rt.device)
    else:
        if int(tcfg.get("num_nodes", 1)) != 1:
            raise ConfigError(f"trainer.num_nodes={tcfg['num_nodes']}: a job trains on one node only (its other "
                              f"stages run in one process); use trainer.devices for the GPUs of that node")
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
        deterministic=False, benchmark=True if rt.device.type == "cuda" else None, callbacks=[BatchCounter(), timer])
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


def optimiser_kwargs(tcfg: dict[str, Any], lr: float | None = None) -> dict[str, Any]:
    return {"lr": tcfg["lr"] if lr is None else lr, "momentum": tcfg["momentum"],
            "weight_decay": tcfg["weight_decay"], "nesterov": tcfg["nesterov"],
            "label_smoothing": tcfg["label_smoothing"], "schedule": tcfg["schedule"], "augment": tcfg["augment"]}


def load_backbone(cfg: DictConfig, state: dict[str, torch.Tensor], key: str, num_classes: int, rt: Runtime
                  ) -> Backbone:
    backbone = make_backbone(cfg, num_classes)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise CacheError(f"checkpoint {key} does not fit model.arch={cfg.model.arch} with {num_classes} "
                         f"classes: {str(exc).splitlines()[0]}; delete {rt.cache.entry('checkpoint', key)}") from None
    return backbone.to(rt.device).to(memory_format=torch.channels_last).eval()


# --------------------------------------------------------------------------------------------- artifact keys
# Every cached artifact's key is the hash of its spec: everything that determines its content. The specs are
# built here, from the config and the data's actual items (``RetrievalData.train_key`` etc.), without building
# anything, so ``artifact_keys`` can list a job's keys and tests can check that every config key is in them.
# Config keys that do not change any artifact's content (where and how verbosely a job runs) are listed in
# ``RUN_ONLY_KEYS`` below.

def checkpoint_spec(cfg: DictConfig, data: RetrievalData, precision: str, device: torch.device) -> dict[str, Any]:
    """The cross-entropy backbone: the training items, the model, the recipe, the training precision, the seed
    (and the number of training processes when > 1)."""
    tcfg = container(cfg.trainer)
    return {"data": data.train_key, "model": container(cfg.model),
            "trainer": {k: v for k, v in tcfg.items() if k not in ("progress", *DISTRIBUTED_KEYS)},
            "precision": precision, "seed": cfg.seed, **distributed_spec(tcfg, device)}


def pqn_spec(cfg: DictConfig, base_key: str, precision: str, device: torch.device) -> dict[str, Any]:
    """PQN's joint training from the cross-entropy backbone ``base_key`` (which holds the training items)."""
    q, tcfg = cfg.quantizer, container(cfg.trainer)
    return {"base_checkpoint": base_key, "quantizer": container(q), "batch_size": tcfg["batch_size"],
            "trainer": {k: v for k, v in tcfg.items() if k not in ("progress", "max_epochs", "lr", *DISTRIBUTED_KEYS)},
            "precision": precision, "seed": cfg.seed, **distributed_spec(tcfg, device)}


def features_spec(ckpt_key: str, data: RetrievalData, precision: str, subvectors: int | None) -> dict[str, Any]:
    """Clean query and database features of checkpoint ``ckpt_key``."""
    spec: dict[str, Any] = {"checkpoint": ckpt_key, "query": data.query_key, "database": data.database_key,
                            "precision": precision}
    if subvectors:
        spec["norm"] = f"subvector/{subvectors}"
    return spec


def codebooks_spec(cfg: DictConfig, feat_key: str) -> dict[str, Any]:
    """K-means codebooks on the database features ``feat_key``."""
    q = cfg.quantizer
    return {"features": feat_key, "M": q.M, "K": q.K, "niter": q.niter, "seed": q.seed, "kind": q.kind}


def attack_temperature(cfg: DictConfig) -> float:
    """``attack.temperature``, or the target's own when null: 1 for K-means (eq. 7 as printed), 1 / alpha for
    PQN (its soft layer, softmax(alpha <x_m, c_mk>))."""
    t = cfg.attack.get("temperature")
    if t is not None:
        return float(t)
    return 1.0 / float(cfg.quantizer.alpha) if cfg.quantizer.kind == "pqn" else 1.0


def attack_spec(cfg: DictConfig, data: RetrievalData, checkpoint_key: str, codebooks_key: str | None, precision: str
                ) -> dict[str, Any]:
    """An adversarial query set: the target (checkpoint, and codebooks unless the loss ignores them), the actual
    queries, every attack setting (``batch_size`` included: it orders the random-start draws), precision, seed."""
    a = cfg.attack
    return {"checkpoint": checkpoint_key, "codebooks": codebooks_key if a.loss != "basic" else None,
            "queries": data.query_key, "attack": {**container(a), "temperature": attack_temperature(cfg)},
            "precision": precision, "seed": cfg.seed}


def train_backbone(cfg: DictConfig, data: RetrievalData, rt: Runtime, loggers: list) -> tuple[Backbone, str]:
    """Train (or load from the cache) the backbone with cross-entropy through Lightning."""
    import pytorch_lightning as pl

    tcfg = container(cfg.trainer)
    spec = checkpoint_spec(cfg, data, rt.precision, rt.device)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        net = make_backbone(cfg, data.num_classes).to(memory_format=torch.channels_last)
        stats = fit(ClassifierModule(net, multilabel=data.multilabel, **optimiser_kwargs(tcfg)), data,
                    tcfg["batch_size"], tcfg["max_epochs"],
                    cfg.seed, rt, loggers, tcfg)
        return dict(net.state_dict()), {**stats, "arch": cfg.model.arch, "num_classes": data.num_classes}

    with rt.timed("train"):
        state, meta, key = rt.cache.get_or_build("checkpoint", spec, build)
    rt.keys["checkpoint"] = key
    rt.info["training"] = {k: meta.get(k) for k in ("train_seconds", "train_metrics", "epoch_seconds")}
    return load_backbone(cfg, state, key, data.num_classes, rt), key


def train_pqn(cfg: DictConfig, data: RetrievalData, base: Backbone, base_key: str, rt: Runtime, loggers: list
              ) -> tuple[Backbone, str, torch.Tensor]:
    """PQN: codebooks initialised by K-means on the pretrained backbone's (sub-normalised) training
    embeddings, then trained jointly with the backbone; returns (backbone, key, unit codebooks)."""
    import pytorch_lightning as pl

    q, tcfg = cfg.quantizer, container(cfg.trainer)
    spec = pqn_spec(cfg, base_key, rt.precision, rt.device)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))[:q.init_samples]
        init_z, _ = embed(base, data.train.images[pick], rt, cfg.eval.batch_size, "PQN init features", q.M)
        init = torch.nn.functional.normalize(train_codebooks(init_z, q.M, q.K, niter=q.niter, seed=q.seed), dim=-1)
        net = make_backbone(cfg, data.num_classes)
        net.load_state_dict(base.state_dict())
        net = net.to(memory_format=torch.channels_last).train()
        module = PQNModule(net, init, alpha=q.alpha, loss=q.loss, margin=q.margin, multilabel=data.multilabel,
                           **optimiser_kwargs(tcfg, q.lr))
        stats = fit(module, data, tcfg["batch_size"], q.epochs, cfg.seed, rt, loggers, tcfg)
        codebooks = module.soft_pq.unit_codebooks().detach().float().cpu()
        return {**{f"backbone.{k}": v for k, v in net.state_dict().items()}, "codebooks": codebooks}, stats

    with rt.timed("train_pqn"):
        tensors, meta, key = rt.cache.get_or_build("checkpoint", spec, build)
    state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    rt.keys["checkpoint"] = key
    rt.info["pqn_training"] = {k: meta.get(k) for k in ("train_seconds", "train_metrics", "epoch_seconds")}
    return load_backbone(cfg, state, key, data.num_classes, rt), key, tensors["codebooks"]


# --------------------------------------------------------------------------------------------- features
Classifier = Callable[[torch.Tensor], torch.Tensor]


def classifier_of(cfg: DictConfig, backbone: Backbone, codebooks: torch.Tensor | None) -> Classifier | None:
    """The classification head applied to the features it was trained on: the raw embedding for a cross-entropy
    backbone; PQN's soft-quantised embedding when its loss has a cross-entropy term; None for a triplet-only PQN,
    whose head was trained on the embedding of the backbone before joint training (it is stale)."""
    q = cfg.quantizer
    if q.kind != "pqn":
        return backbone.head
    if "ce" not in q.loss or codebooks is None:
        return None
    soft_pq = SoftProductQuantizer(codebooks, q.alpha).to(next(backbone.parameters()).device)
    return lambda f: backbone.head(soft_pq(f)[1].flatten(1))


@torch.no_grad()
def embed(backbone: Backbone, images: torch.Tensor, rt: Runtime, batch_size: int, desc: str = "features",
          subvectors: int | None = None, classify: Classifier | None = None
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z, logits)`` for uint8 or float images, float32 on the CPU. The backbone runs under the run's autocast;
    z is l2-normalised in float32 outside it, as a whole, or per sub-vector when ``subvectors`` (M) is given
    (PQN). ``logits`` are ``classify`` of the embedding (float32), or None without a classifier."""
    zs, logits = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not rt.progress, leave=False):
        x = images[i:i + batch_size].to(rt.device, non_blocking=True)
        x = (x.float() / 255.0 if x.dtype == torch.uint8 else x).contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            f = backbone.forward_features(x)
        f = f.float()
        z = subvector_normalize(f, subvectors) if subvectors else torch.nn.functional.normalize(f, dim=1)
        zs.append(z.cpu())
        if classify is not None:
            logits.append(classify(f).float().cpu())
    return torch.cat(zs), (torch.cat(logits) if classify is not None else None)


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise FloatingPointError(f"{name}: {bad} non-finite values (NaN/Inf); the model or its training diverged")


def subvectors_of(cfg: DictConfig) -> int | None:
    """M when the retrieval feature is normalised per sub-vector (PQN), else None (whole-vector l2)."""
    return int(cfg.quantizer.M) if cfg.quantizer.kind == "pqn" else None


def clean_features(cfg: DictConfig, data: RetrievalData, backbone: Backbone, ckpt_key: str, rt: Runtime,
                   classify: Classifier | None) -> tuple[dict[str, torch.Tensor], float | None]:
    """Database and clean-query features (cached), and the classifier's test accuracy on those images (None
    without a classifier)."""
    sub = subvectors_of(cfg)
    spec = features_spec(ckpt_key, data, rt.precision, sub)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        bs = cfg.eval.batch_size
        zq, lq = embed(backbone, data.query.images, rt, bs, "query features", sub, classify)
        zd, ld = embed(backbone, data.database.images, rt, bs, "database features", sub, classify)
        acc = None
        if lq is not None and ld is not None:
            correct = top1_hit(lq, data.query.labels).sum() + top1_hit(ld, data.database.labels).sum()
            acc = round(float(correct) / (len(lq) + len(ld)) * 100, 3)
        return {"query": zq, "database": zd}, {"test_accuracy": acc}

    with rt.timed("features"):
        tensors, meta, key = rt.cache.get_or_build("features", spec, build)
    check_finite("database features", tensors["database"])
    rt.keys["features"] = key
    return tensors, meta["test_accuracy"]


# --------------------------------------------------------------------------------------------- stage 3
def check_codebooks(codebooks: torch.Tensor, M: int, K: int, dim: int, name: str) -> None:  # noqa: N803
    """Codebooks must be ``[M, K, dim / M]`` and finite."""
    expected = (M, K, dim // M)
    if tuple(codebooks.shape) != expected:
        raise CacheError(f"{name}: shape {tuple(codebooks.shape)}, expected (M, K, D/M) = {expected}; delete it")
    check_finite(name, codebooks)


def pq_codebooks(cfg: DictConfig, database: torch.Tensor, feat_key: str, rt: Runtime) -> tuple[torch.Tensor, str]:
    q = cfg.quantizer

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"codebooks": train_codebooks(database, q.M, q.K, niter=q.niter, seed=q.seed)}, {}

    with rt.timed("codebooks"):
        tensors, _, key = rt.cache.get_or_build("codebooks", codebooks_spec(cfg, feat_key), build)
    check_codebooks(tensors["codebooks"], q.M, q.K, database.shape[1], f"codebooks {key}")
    rt.keys["codebooks"] = key
    return tensors["codebooks"], key


# --------------------------------------------------------------------------------------------- stage 4
def retrieval_model(cfg: DictConfig, target: "Target", device: torch.device) -> RetrievalModel:
    """What the attack sees of ``target``: backbone, normalisation and the soft assignment of ``cfg.attack``."""
    model = RetrievalModel(target.backbone, target.codebooks.to(device), cfg.attack.similarity,
                           attack_temperature(cfg), subvector_norm=cfg.quantizer.kind == "pqn").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def attack_queries(cfg: DictConfig, data: RetrievalData, target: "Target", description: dict[str, Any],
                   rt: Runtime) -> "AdversarialSet":
    """Adversarial queries made against ``target`` with ``cfg.attack`` (cached as 8-bit images when quantised)."""
    from .transfer import AdversarialSet

    a = cfg.attack
    pgd_cfg = PGDConfig(eps=a.eps, step=a.step, iters=a.iters, random_start=a.random_start,
                        quantize_8bit=a.quantize_8bit, peak=a.peak)
    spec = attack_spec(cfg, data, target.checkpoint_key, target.codebooks_key, rt.precision)
    model = retrieval_model(cfg, target, rt.device)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        gen = torch.Generator(device=rt.device).manual_seed(cfg.seed)
        out = []
        images = data.query.images
        for i in tqdm(range(0, len(images), a.batch_size), desc=f"attack {a.name}", disable=not rt.progress,
                      leave=False):
            x = (images[i:i + a.batch_size].to(rt.device).float() / 255).contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                adv = pgd(model, x, a.loss, pgd_cfg, generator=gen)
            out.append(torch.round(adv * 255).to(torch.uint8).cpu() if a.quantize_8bit else adv.float().cpu())
        made = AdversarialSet.make(torch.cat(out), data, "", target.checkpoint_key, cfg, description, spec["attack"])
        return made.tensors(), {k: v for k, v in made.meta.items() if k != "key"}

    with rt.timed(f"attack_{a.name}"):
        tensors, _, key = rt.cache.get_or_build("adversarial_queries", spec, build)
    return AdversarialSet.make(tensors["images"], data, key, target.checkpoint_key, cfg, description, spec["attack"])


# --------------------------------------------------------------------------------------------- stage 5
def evaluate(index: PQIndex, query_z: torch.Tensor, data: RetrievalData, systems: list[str], topk: int | None
             ) -> dict[str, float]:
    """mAP (percent) per system over the full ranking or at ``topk``: the same number as ranking with
    ``index.search`` and scoring with ``mean_average_precision``, computed in blocks of queries without
    building the ``[Q, N]`` ranking."""
    return {s: index.mean_average_precision(query_z, s, data.query.labels, data.database.labels, topk=topk)
            for s in systems}


# --------------------------------------------------------------------------------------------- run
def versions() -> dict[str, str]:
    import faiss
    import hydra
    import pytorch_lightning

    from . import __version__
    return {"pqattack": __version__, "torch": torch.__version__, "faiss": faiss.__version__,
            "hydra": hydra.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "python": platform.python_version()}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return model


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


@dataclass
class Target:
    """A retrieval system under evaluation: backbone, clean features, codebooks and the PQ index."""

    backbone: Backbone
    checkpoint_key: str
    features: dict[str, torch.Tensor]
    codebooks: torch.Tensor
    codebooks_key: str
    index: PQIndex
    ivf: IVFPQIndex | None = None  # index=ivfpq: searched instead of ``index`` (ADC @k); ``index`` gives the exact top k
    classify: Classifier | None = None  # the head on the features it was trained on (None: no valid head)
    test_accuracy: float | None = None  # classify's top-1 accuracy on the query + database images


def build_target(cfg: DictConfig, data: RetrievalData, rt: Runtime, loggers: list) -> Target:
    """Train or load the backbone, its features, codebooks and index (each from the cache when there)."""
    backbone, ckpt_key = train_backbone(cfg, data, rt, loggers)
    if cfg.quantizer.kind == "pqn":
        rt.keys["base_checkpoint"] = ckpt_key
        backbone, ckpt_key, codebooks = train_pqn(cfg, data, backbone, ckpt_key, rt, loggers)
        classify = classifier_of(cfg, backbone, codebooks)
        feats, acc = clean_features(cfg, data, backbone, ckpt_key, rt, classify)
        cb_key = rt.keys["codebooks"] = ckpt_key  # the learned codebooks live in the PQN checkpoint
    else:
        classify = classifier_of(cfg, backbone, None)
        feats, acc = clean_features(cfg, data, backbone, ckpt_key, rt, classify)
        codebooks, cb_key = pq_codebooks(cfg, feats["database"], rt.keys["features"], rt)
    with rt.timed("index"):
        index = PQIndex(codebooks, feats["database"])
        ivf = None
        ix = cfg.get("index") or {"kind": "flat"}
        if ix["kind"] == "ivfpq":
            from .config import ConfigError

            try:
                ivf = IVFPQIndex(codebooks, feats["database"], nlist=ix.nlist, nprobe=ix.nprobe,
                                 train_size=ix.train_size, seed=ix.seed)
            except ValueError as exc:
                raise ConfigError(f"{exc} (the database has {len(feats['database'])} items)") from None
    return Target(backbone, ckpt_key, feats, codebooks, cb_key, index, ivf, classify, acc)


def peak_agreement(target: Target, query_z: torch.Tensor) -> float:
    """The share of (query, sub-space) pairs where eq. (6)'s peak, argmax_k <z_m, c_mk>, is the code the index
    assigns (eq. 1, argmin_k ||z_m - c_mk||^2), on the clean queries."""
    m, k, dsub = target.codebooks.shape
    dots = torch.einsum("bmd,mkd->bmk", query_z.float().view(-1, m, dsub), target.codebooks.float())
    return float((dots.argmax(-1) == target.index.encode(query_z)).float().mean())


def score(target: Target, query_z: torch.Tensor, data: RetrievalData, systems: list[str], topk: int | None
          ) -> dict[str, dict[str, float]]:
    """mAP (percent) per system; with index=ivfpq, mAP@k from the IVF search and its recall@k of the exact PQ
    (flat ADC) top k."""
    if target.ivf is None:
        return {s: {"map": v} for s, v in evaluate(target.index, query_z, data, systems, topk).items()}
    assert topk is not None and systems == ["adc"]
    approx, ids = target.ivf.search(query_z, "adc", k=topk)
    exact, _ = target.index.search(query_z, "adc", k=topk)
    return {"adc": {"map": mean_average_precision(approx, ids, data.query.labels, data.database.labels, topk=topk),
                    "recall": recall_at_k_with_ties(approx, exact)}}


def score_fields(scored: dict[str, float], cfg: DictConfig) -> dict[str, Any]:
    """Row fields of one system's score: ``map``, and for index=ivfpq the index and its recall@k."""
    out: dict[str, Any] = {"map": round(scored["map"], 4)}
    if "recall" in scored:
        out.update(index="ivfpq", nlist=int(cfg.index.nlist), nprobe=int(cfg.index.nprobe),
                   recall=round(scored["recall"], 4))
    return out


def describe_rows(cfg: DictConfig, data: RetrievalData, dataset_label: str) -> dict[str, Any]:
    q = cfg.quantizer
    return {"dataset": data.name, "dataset_label": dataset_label, "model": cfg.model.name,
            "quantizer": q.kind, "bits": int(q.M * math.log2(q.K)), "M": q.M, "K": q.K}


def recipe_fields(cfg: DictConfig, target: Target, rt: Runtime) -> dict[str, Any]:
    """Row fields that say how the numbers were made: the backbone's epochs (and PQN's, with its alpha), the device
    type, the precision, the seed, and the checkpoint and codebooks keys (which hold every recipe and data
    setting)."""
    q = cfg.quantizer
    pqn = {"pqn_epochs": int(q.epochs), "alpha": float(q.alpha)} if q.kind == "pqn" else {}
    return {"epochs": int(cfg.trainer.max_epochs), **pqn, "device": rt.device.type, "precision": rt.precision,
            "seed": int(cfg.seed), "checkpoint": target.checkpoint_key, "codebooks": target.codebooks_key}


def adversarial_set(cfg: DictConfig, data: RetrievalData, target: Target, dataset_label: str, rt: Runtime
                    ) -> "AdversarialSet | None":
    """The adversarial queries this job evaluates: white-box (made against ``target``), or a transfer
    source (a saved set, or one made against another model / code length, see ``conf/transfer``)."""
    from .transfer import load_adversarial_set, source_config

    t = cfg.get("transfer") or {}
    if t.get("source"):
        return load_adversarial_set(t.source, data, rt.cache)
    if cfg.attack.name == "none":
        return None
    src_cfg = source_config(cfg)
    if src_cfg is None:
        return attack_queries(cfg, data, target, describe_rows(cfg, data, dataset_label), rt)
    src_rt = Runtime(rt.device, rt.precision, rt.cache, rt.progress)  # the source's keys stay out of this run's
    src = build_target(src_cfg, data, src_rt, [])
    return attack_queries(src_cfg, data, src, describe_rows(src_cfg, data, dataset_label), rt)


# Config keys that change no artifact's content, so no cache key holds them (tests/test_cache_keys.py walks every
# config key and fails on one that is neither here nor in an artifact's key):
RUN_ONLY_KEYS = (
    "progress", "logger", "resume", "cache",  # what is shown and logged, resuming, where the cache is
    "device",              # where it runs: a checkpoint is the same recipe on any device (and travels between them)
    "eval.batch_size",     # memory only: images are embedded one by one, whatever the batch
    "dataset.download",    # whether a missing dataset may be downloaded; the data keys hold what was loaded
    "dataset.skip_missing",  # whether missing files stop the run; the data keys hold the items that were loaded
    "dataset.resize",      # whether an image of another size is resized or refused; the data keys hold the size
    "dataset.name",        # the option's label; the loader (`_target_`) names the data in its keys
    "trainer.strategy",    # how training processes start; their number (world size) is in the checkpoint key
)


def _drop(tree: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        if isinstance(tree.get(head), dict):
            _drop(tree[head], rest)
    else:
        tree.pop(head, None)


def results_spec(cfg: DictConfig, precision: str) -> dict[str, Any]:
    """A job's results: its whole config except ``RUN_ONLY_KEYS``, with the precision it resolved to."""
    spec = container(cfg)
    for key in RUN_ONLY_KEYS:
        _drop(spec, key)
    return {**spec, "precision": precision}


def artifact_keys(cfg: DictConfig, data: RetrievalData, precision: str, device: torch.device) -> dict[str, str]:
    """The cache key of every artifact a job uses, from its config and data alone: nothing is built or loaded.
    (A saved adversarial set given by ``transfer.source`` has its own key, read when it is loaded.)"""
    def target_keys(c: DictConfig) -> dict[str, str]:
        out = {"checkpoint": spec_key("checkpoint", checkpoint_spec(c, data, precision, device))}
        if c.quantizer.kind == "pqn":
            out["base_checkpoint"] = out["checkpoint"]
            out["checkpoint"] = spec_key("checkpoint", pqn_spec(c, out["base_checkpoint"], precision, device))
        out["features"] = spec_key("features", features_spec(out["checkpoint"], data, precision, subvectors_of(c)))
        out["codebooks"] = (out["checkpoint"] if c.quantizer.kind == "pqn"
                            else spec_key("codebooks", codebooks_spec(c, out["features"])))
        return out

    from .transfer import source_config

    keys = target_keys(cfg)
    if cfg.attack.name != "none" and not (cfg.get("transfer") or {}).get("source"):
        src = source_config(cfg) or cfg
        made = target_keys(src) if src is not cfg else keys
        keys["adversarial_queries"] = spec_key("adversarial_queries", attack_spec(
            src, data, made["checkpoint"], made["codebooks"], precision))
    keys["results"] = spec_key("results", results_spec(cfg, precision))
    return keys


_LOADED: dict[str, RetrievalData] = {}  # the last dataset loaded in this process (see load_data)


def load_data(cfg: DictConfig, source: Any, rt: Runtime) -> RetrievalData:
    """``source.load(rt.cache)``, once per process for the same dataset config and cache: the jobs of a sweep,
    which Hydra's basic launcher runs in one process, share the decoded images instead of listing, hashing and
    loading them again in every job."""
    key = json.dumps([container(cfg.dataset), str(rt.cache.root), rt.cache.enabled], sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = source.load(rt.cache)
    return _LOADED[key]


def write_results(output_dir: Path, results: dict[str, Any]) -> Path:
    """``results.json`` (atomically) and ``results.md`` in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
    (output_dir / "results.md").write_text(render_tables(results["rows"]))
    return path


def run(cfg: DictConfig, output_dir: Path, loggers: list | None = None) -> Path:
    """Run one job: the clean rows and the rows of one adversarial query set (white-box or transferred);
    write ``results.json``, ``results.md`` and the adversarial set in ``output_dir``."""
    from hydra.utils import instantiate

    from .config import validate

    t_start = time.perf_counter()
    validate(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick the fastest algorithms (eval and attacks too)
        torch.backends.cudnn.benchmark = True
    rt = Runtime(device, precision, ArtifactCache(cfg.cache.dir, cfg.cache.enabled), progress=cfg.progress)
    results_key = spec_key("results", results_spec(cfg, precision))
    if cfg.get("resume") and rt.cache.enabled:
        found = rt.cache.load("results", results_key)
        if found is not None:
            log.info("resume: this job's results are complete in the cache; not recomputed")
            return write_results(output_dir, {**found[1]["results"], "resumed": True})
    systems = ["sdc", "adc"] if cfg.system == "both" else [cfg.system]
    topk = cfg.eval.topk

    with rt.timed("data"):
        source = instantiate(cfg.dataset)
        data = load_data(cfg, source, rt)
    dataset_label = getattr(source, "describe", lambda: data.name)()
    target = build_target(cfg, data, rt, loggers or [])
    base = describe_rows(cfg, data, dataset_label)

    base = {**base, **recipe_fields(cfg, target, rt),
            "peak_agreement": round(peak_agreement(target, target.features["query"]), 4)}
    rows = []
    with rt.timed("eval_clean"):
        clean = score(target, target.features["query"], data, systems, topk)
    for s, v in clean.items():
        rows.append({**base, "attack": "clean", "system": s, **score_fields(v, cfg), "topk": topk})

    adv = adversarial_set(cfg, data, target, dataset_label, rt)
    if adv is not None:
        rt.keys["adversarial_queries"] = adv.key
        with rt.timed("eval_adversarial"):
            z_adv, logits_adv = embed(target.backbone, adv.images, rt, cfg.eval.batch_size, "adversarial features",
                                      subvectors_of(cfg), target.classify)
            check_finite("adversarial features", z_adv)
            attacked = score(target, z_adv, data, systems, topk)
        changed = (target.index.encode(z_adv) != target.index.encode(target.features["query"])).float().mean()
        linf = (adv.images.float() / (255 if adv.images.dtype == torch.uint8 else 1)
                - data.query.images.float() / 255).abs().max().item()
        src, made = adv.meta["source"], adv.meta["attack"]
        setting = {k: made.get(k) for k in ("similarity", "temperature", "eps", "step", "iters")}
        setting["peak"] = made.get("peak") if made.get("loss") in PEAK_LOSSES else None
        extra = {} if logits_adv is None else {
            "query_accuracy": round(float(top1_hit(logits_adv, data.query.labels).float().mean()) * 100, 2)}
        for s, v in attacked.items():
            rows.append({**base, "attack": made["name"], "system": s, **score_fields(v, cfg), "topk": topk,
                         "source_model": src["model"], "source_bits": src["bits"],
                         "transfer": (src["model"], src["bits"], src["quantizer"]) != (base["model"], base["bits"],
                                                                                       base["quantizer"]),
                         **setting, "codes_changed": round(float(changed), 4), "linf": round(linf, 5), **extra})
        adv.save(output_dir / "adversarial_queries")

    rt.timings["total"] = round(time.perf_counter() - t_start, 3)
    meta = {"config": container(cfg), "versions": versions(), "device": device_name(device),
            "precision": precision, "seed": cfg.seed, "cache_keys": rt.keys, "cache_hits": rt.cache.hits,
            "cache_builds": rt.cache.builds, "timings_s": rt.timings,
            "test_accuracy": target.test_accuracy, "dataset_label": dataset_label, **rt.info,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = write_results(output_dir, {"meta": meta, "rows": rows})
    if rt.cache.enabled:
        rt.cache.save("results", results_key, {}, {"results": {"meta": meta, "rows": rows}})
    for lg in loggers or []:
        lg.log_metrics({f"map/{r['attack']}/{r['system']}": r["map"] for r in rows})
        if hasattr(lg, "log_table"):
            cols = sorted({k for r in rows for k in r})
            lg.log_table("results", columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        lg.finalize("success")
        if hasattr(lg, "log_table"):  # wandb: flush the run's files (summary, history) now
            lg.experiment.finish()
    return path
