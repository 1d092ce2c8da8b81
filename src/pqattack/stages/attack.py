"""Stage 4: adversarial queries, made with one PGD loop against a target (white-box) or a transfer source, or
loaded from a saved set; cached as 8-bit images."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..attacks import pgd
from ..config import JobConfig
from ..data import RetrievalData
from ..models import RetrievalModel
from ..runtime import Runtime
from ..transfer import AdversarialSet, load_adversarial_set, source_job
from .keys import attack_spec, attack_temperature
from .target import Target, build_target


def retrieval_model(job: JobConfig, target: Target, device: torch.device) -> RetrievalModel:
    """What the attack sees of ``target``: backbone, normalisation and the soft assignment of ``job.attack``."""
    model = RetrievalModel(target.backbone, target.codebooks.to(device), job.attack.similarity,
                           attack_temperature(job), subvector_norm=job.pqn).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def attack_queries(job: JobConfig, data: RetrievalData, target: Target, description: dict[str, Any], rt: Runtime
                   ) -> AdversarialSet:
    """Adversarial queries made against ``target`` with ``job.attack`` (cached as 8-bit images when quantised)."""
    a = job.attack
    spec = attack_spec(job, data, target.checkpoint_key, target.codebooks_key, rt.precision)
    model = retrieval_model(job, target, rt.device)

    def make(images: torch.Tensor, key: str) -> AdversarialSet:
        return AdversarialSet.make(images, data, key, target.checkpoint_key, description, spec["attack"], job.seed)

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        gen = torch.Generator(device=rt.device).manual_seed(job.seed)
        out = []
        images = data.query.images
        for i in tqdm(range(0, len(images), a.batch_size), desc=f"attack {a.name}", disable=not rt.progress,
                      leave=False):
            x = (images[i:i + a.batch_size].to(rt.device).float() / 255).contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                adv = pgd(model, x, a.loss, a, generator=gen)
            out.append(torch.round(adv * 255).to(torch.uint8).cpu() if a.quantize_8bit else adv.float().cpu())
        made = make(torch.cat(out), "")
        return made.tensors(), {k: v for k, v in made.meta.items() if k != "key"}

    with rt.timed(f"attack_{a.name}"):
        tensors, _, key = rt.cache.get_or_build("adversarial_queries", spec, build)
    return make(tensors["images"], key)


def adversarial_set(job: JobConfig, data: RetrievalData, target: Target, describe: Any, rt: Runtime
                    ) -> AdversarialSet | None:
    """The adversarial queries this job evaluates: white-box (made against ``target``), or a transfer source (a
    saved set, or one made against another model / code length, ``transfer.*``). ``describe(job)`` gives the
    rows' description of a job's target, which the set records as its source."""
    if job.transfer.get("source"):
        return load_adversarial_set(job.transfer["source"], data, rt.cache)
    if job.attack.name == "none":
        return None
    src = source_job(job)
    if src is None:
        return attack_queries(job, data, target, describe(job), rt)
    src_rt = Runtime(rt.device, rt.precision, rt.cache, rt.progress)  # the source's keys stay out of this run's
    return attack_queries(src, data, build_target(src, data, src_rt, []), describe(src), rt)
