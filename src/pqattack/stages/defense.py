"""Stage 2c: the defense. ``defense=adv``: the undefended checkpoint fine-tuned adversarially (a cached checkpoint,
keyed by the whole defense config); ``defense=jpeg|bitdepth``: the query transform in front of the backbone."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..config import JobConfig
from ..data import RetrievalData
from ..defense import AdversarialTrainingConfig, DefendedBackbone, QueryTransform
from ..defense.training import AdversarialClassifierModule, AdversarialPQNModule
from ..models import Backbone
from ..runtime import Runtime
from ..training import fit, optimiser_kwargs
from .backbone import load_backbone, make_backbone
from .keys import defense_spec


def training_subset(data: RetrievalData, num_train: int | None, seed: int) -> RetrievalData:
    """``data`` with a seeded subset of ``num_train`` training images (all when None)."""
    if num_train is None or num_train >= len(data.train):
        return data
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:num_train]
    return replace(data, train=data.train.subset(pick))


def adversarial_training(job: JobConfig, data: RetrievalData, undefended: Backbone, undefended_key: str,
                         codebooks: torch.Tensor | None, rt: Runtime, loggers: list
                         ) -> tuple[Backbone, str, torch.Tensor | None]:
    """``defense=adv``: fine-tune the undefended backbone (with PQN's unit ``codebooks``, when given) on adversarial
    batches (``defense.training``); returns (backbone, key, unit codebooks, or None for a K-means target)."""
    import pytorch_lightning as pl

    d = job.defense
    assert isinstance(d, AdversarialTrainingConfig)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pl.seed_everything(job.seed, workers=True, verbose=False)
        net = make_backbone(job.model, data.num_classes)
        net.load_state_dict(undefended.state_dict())
        net = net.to(memory_format=torch.channels_last).train()
        kw: dict[str, Any] = {"multilabel": data.multilabel, **optimiser_kwargs(job.trainer, d.lr)}
        if codebooks is not None:
            q = job.quantizer
            module: Any = AdversarialPQNModule(net, codebooks, d, alpha=q.alpha, loss=q.loss,  # type: ignore[attr-defined]
                                               margin=q.margin, **kw)  # type: ignore[attr-defined]
        else:
            module = AdversarialClassifierModule(net, d, **kw)
        what = f"adversarial training of {job.model['name']}, {d.epochs} epoch{'s' if d.epochs != 1 else ''}"
        stats = fit(module, training_subset(data, d.num_train, job.seed), job.trainer["batch_size"], d.epochs,
                    job.seed, rt, loggers, job.trainer, what, "defense.epochs")
        tensors = {f"backbone.{k}": v for k, v in net.state_dict().items()}
        if codebooks is not None:
            tensors["codebooks"] = module.soft_pq.unit_codebooks().detach().float().cpu()
        return tensors, stats

    with rt.timed("train_defense"):
        tensors, meta, key = rt.cache.get_or_build("checkpoint", defense_spec(job, undefended_key, rt.precision,
                                                                             rt.device), build)
    state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")}
    rt.keys["undefended_checkpoint"], rt.keys["checkpoint"] = undefended_key, key
    rt.info["defense_training"] = {k: meta.get(k) for k in ("train_seconds", "train_metrics", "epoch_seconds")}
    return load_backbone(job.model, state, key, data.num_classes, rt), key, tensors.get("codebooks")


def fresh_draws(backbone: Backbone, tag: str) -> None:
    """Restart a random query transform's draws from a seed fixed by the job's seed and ``tag`` (a no-op for any
    other backbone): an attack or an evaluation then draws the same qualities whatever ran before it in the
    process (which query sets came from the cache, the order of a suite's members)."""
    if isinstance(backbone, DefendedBackbone):
        backbone.query_transform.reseed(tag)


def defended_backbone(job: JobConfig, backbone: Backbone) -> Backbone:
    """The backbone behind the defense's query transform (seeded with the job's seed); as it is without one."""
    if not job.defense.transform:
        return backbone
    return DefendedBackbone(backbone, QueryTransform(job.defense, job.seed)).eval()
