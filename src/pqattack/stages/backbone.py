"""Stage 2: the backbone, trained with cross-entropy (the paper's pre-training), or PQN's jointly trained
backbone and codebooks; each a cached checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate

from ..config import JobConfig
from ..data import RetrievalData
from ..errors import CacheError
from ..models import DEFAULT_BACKBONE_BUILDER, Backbone, ClassifierModule
from ..models.pqn import PQNModule
from ..quant import train_codebooks
from ..runtime import Runtime
from ..training import fit, optimiser_kwargs
from .keys import checkpoint_spec, pqn_spec


def make_backbone(model: dict[str, Any], num_classes: int) -> Backbone:
    """An untrained backbone from the ``model`` settings: ``hydra.utils.instantiate`` of its ``_target_`` (records
    made before the model configs named one: ``models.build_backbone``) with its keys but ``name``, a label."""
    node = {"_target_": DEFAULT_BACKBONE_BUILDER, **{k: v for k, v in model.items() if k != "name"}}
    return instantiate(node, num_classes=num_classes, _convert_="all")


def load_backbone(model: dict[str, Any], state: dict[str, torch.Tensor], key: str, num_classes: int, rt: Runtime
                  ) -> Backbone:
    """The backbone of checkpoint ``key`` on the run's device, channels-last, in eval mode."""
    backbone = make_backbone(model, num_classes)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise CacheError(f"checkpoint {key} does not fit model.arch={model['arch']} with {num_classes} "
                         f"classes: {str(exc).splitlines()[0]}; delete {rt.cache.entry('checkpoint', key)}") from None
    return backbone.to(rt.device).to(memory_format=torch.channels_last).eval()


def train_backbone(job: JobConfig, data: RetrievalData, rt: Runtime, loggers: list) -> tuple[Backbone, str]:
    """Train (or load from the cache) the backbone with cross-entropy through Lightning."""
    import pytorch_lightning as pl

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pl.seed_everything(job.seed, workers=True, verbose=False)
        net = make_backbone(job.model, data.num_classes).to(memory_format=torch.channels_last)
        module = ClassifierModule(net, multilabel=data.multilabel, **optimiser_kwargs(job.trainer))
        stats = fit(module, data, job.trainer["batch_size"], job.trainer["max_epochs"], job.seed, rt, loggers,
                    job.trainer, f"{job.model['name']}, {job.trainer['max_epochs']} epochs")
        return dict(net.state_dict()), {**stats, "arch": job.model["arch"], "num_classes": data.num_classes}

    with rt.timed("train"):
        state, meta, key = rt.cache.get_or_build("checkpoint", checkpoint_spec(job, data, rt.precision, rt.device),
                                                 build)
    rt.keys["checkpoint"] = key
    rt.info["training"] = {k: meta.get(k) for k in ("train_seconds", "train_metrics", "epoch_seconds")}
    return load_backbone(job.model, state, key, data.num_classes, rt), key


def train_pqn(job: JobConfig, data: RetrievalData, base: Backbone, base_key: str, rt: Runtime, loggers: list
              ) -> tuple[Backbone, str, torch.Tensor]:
    """PQN: codebooks initialised by K-means on the pretrained backbone's (sub-normalised) training
    embeddings, then trained jointly with the backbone; returns (backbone, key, unit codebooks)."""
    import pytorch_lightning as pl

    from .features import embed

    q = job.quantizer

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pl.seed_everything(job.seed, workers=True, verbose=False)
        pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(job.seed))[:q.init_samples]
        init_z, _ = embed(base, data.train.images[pick], rt, job.eval_batch_size, "PQN init features", q.M)
        init = torch.nn.functional.normalize(train_codebooks(init_z, q.M, q.K, niter=q.niter, seed=q.seed), dim=-1)
        net = make_backbone(job.model, data.num_classes)
        net.load_state_dict(base.state_dict())
        net = net.to(memory_format=torch.channels_last).train()
        module = PQNModule(net, init, alpha=q.alpha, loss=q.loss, margin=q.margin, multilabel=data.multilabel,
                           **optimiser_kwargs(job.trainer, q.lr))
        stats = fit(module, data, job.trainer["batch_size"], q.epochs, job.seed, rt, loggers, job.trainer,
                    f"PQN on {job.model['name']}, {q.epochs} epochs", "quantizer.epochs")
        codebooks = module.soft_pq.unit_codebooks().detach().float().cpu()
        return {**{f"backbone.{k}": v for k, v in net.state_dict().items()}, "codebooks": codebooks}, stats

    with rt.timed("train_pqn"):
        tensors, meta, key = rt.cache.get_or_build("checkpoint", pqn_spec(job, base_key, rt.precision, rt.device),
                                                   build)
    state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    rt.keys["checkpoint"] = key
    rt.info["pqn_training"] = {k: meta.get(k) for k in ("train_seconds", "train_metrics", "epoch_seconds")}
    return load_backbone(job.model, state, key, data.num_classes, rt), key, tensors["codebooks"]
