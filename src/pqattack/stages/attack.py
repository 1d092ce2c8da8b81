"""Stage 4: adversarial queries, made with one PGD loop against a target (white-box) or transfer sources (one model,
or an ensemble), or loaded from a saved set; cached as 8-bit images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..attacks import (CLASS_LOSSES, Reference, center_codes, class_spreads, nearest_centers, pgd,
                       random_other_classes, reference)
from ..cache import spec_key
from ..config import JobConfig
from ..data import RetrievalData
from ..defense import DefendedBackbone
from ..errors import ConfigError, DatasetError
from ..labels import joined_epochs
from ..models import RetrievalModel
from ..runtime import Runtime
from ..transfer import AdversarialSet, load_adversarial_set, source_jobs
from .defense import fresh_draws
from .keys import attack_spec, attack_temperature, ensemble_keys
from .target import Target, build_target


def retrieval_model(job: JobConfig, target: Target, device: torch.device, bare: bool = False) -> RetrievalModel:
    """What the attack sees of ``target``: backbone (behind the defense's query transform, which it differentiates
    through by BPDA; the bare backbone with ``attack.oblivious``, or with ``bare``), normalisation and the soft
    assignment of ``job.attack``."""
    backbone = target.backbone
    if (job.attack.oblivious or bare) and isinstance(backbone, DefendedBackbone):
        backbone = backbone.inner
    model = RetrievalModel(backbone, target.codebooks.to(device), job.attack.similarity,
                           attack_temperature(job), subvector_norm=job.pqn).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def num_classes(data: RetrievalData) -> int:
    """The classes (concepts) of the data: its class names, else what its labels show."""
    labels = data.database.labels
    return data.num_classes or (labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1)


def check_attack_data(job: JobConfig, data: RetrievalData) -> None:
    """The attack settings that depend on the data (checked before anything is trained): ``attack.target_class``."""
    a = job.attack
    if a.name != "none" and a.loss == "center_targeted" and a.target_class is not None and \
            a.target_class >= num_classes(data):
        raise ConfigError(f"attack.target_class={a.target_class}: the dataset has {num_classes(data)} classes "
                          f"(0..{num_classes(data) - 1})")


def query_targets(job: JobConfig, data: RetrievalData) -> torch.Tensor | None:
    """``[Q]`` int64 target class of each query for a targeted attack (``attack.target_class``, or a class drawn
    with ``seed`` from those the query does not belong to); None for an untargeted attack."""
    a = job.attack
    if a.loss != "center_targeted":
        return None
    if a.target_class is not None:
        return torch.full((len(data.query),), int(a.target_class), dtype=torch.int64)
    return random_other_classes(data.query.labels, num_classes(data), torch.Generator().manual_seed(job.seed))


@dataclass
class Source:
    """A model the queries are made against: its job, its retrieval system, the model that gives the clean queries'
    reference (``attack.reference``: the same one, or the bare backbone behind a query transform) and, for the
    losses that read the database's classes, its centre codes ``[C, M]`` and (``contrast``) the classes' codeword
    spreads ``[C + 1, M, K]``."""

    job: JobConfig
    target: Target
    model: RetrievalModel
    centers: torch.Tensor | None
    reference_model: RetrievalModel
    spreads: torch.Tensor | None = None

    @classmethod
    def of(cls, job: JobConfig, target: Target, data: RetrievalData, device: torch.device) -> "Source":
        centers = spreads = None
        if job.attack.loss in CLASS_LOSSES:
            assert target.index.db_codes is not None
            centers = center_codes(target.index.db_codes, data.database.labels, num_classes(data), target.index.K)
        if job.attack.loss == "contrast":
            assert target.index.db_codes is not None
            spreads = class_spreads(target.index.db_codes, data.database.labels, num_classes(data),
                                    target.index.sdc_table)
        model = retrieval_model(job, target, device)
        bare = job.attack.reference == "bare"
        return cls(job, target, model, centers, retrieval_model(job, target, device, bare=True) if bare else model,
                   spreads)

    @torch.no_grad()
    def classes(self, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """``[B]`` the class each query ``x`` is attacked as: its target class, or the class the reference model
        predicts (its classifier; without one, the class whose centre code is nearest to the query's code in SDC
        distance). Not the label: the attacker does not know it."""
        assert self.centers is not None
        model = self.reference_model
        if targets is not None:
            return targets
        if self.target.classify is not None:
            return self.target.classify(model.backbone.forward_features(x)).float().argmax(1).cpu()
        codes = model.index_codes(model.features(x)).cpu()
        return nearest_centers(codes, self.centers, self.target.index.sdc_table)

    def _no_items(self, classes: torch.Tensor, missing: torch.Tensor, what: str) -> DatasetError:
        return DatasetError(f"attack.loss={self.job.attack.loss}: class(es) {sorted(set(classes[missing].tolist()))} "
                            f"have no database items, so no {what}")

    @torch.no_grad()
    def anchors(self, x: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
        """``[B, M]`` anchor codes of the queries ``x`` (on the device) for the centre-code losses: the centre code
        of :meth:`classes`."""
        if self.centers is None or self.spreads is not None:
            return None
        classes = self.classes(x, targets)
        anchors = self.centers[classes]
        if (anchors < 0).any():
            raise self._no_items(classes, (anchors < 0).any(1), "centre code")
        return anchors.to(x.device)

    @torch.no_grad()
    def contrast_reference(self, x: torch.Tensor) -> Reference:
        """The clean queries' reference with the class spreads of ``contrast``: each codeword's mean SDC distance to
        the database items of the query's class (:meth:`classes`) and to all items."""
        assert self.spreads is not None
        classes = self.classes(x, None)
        own = self.spreads[classes]
        if own.isnan().any():
            raise self._no_items(classes, own.isnan().flatten(1).any(1), "class spread")
        ref = reference(self.reference_model, x, self.job.attack.peak)
        return Reference(ref.z, ref.logp, ref.codes, spread=own.to(x.device),
                         baseline=self.spreads[-1].expand_as(own).to(x.device))


def oracle_pick(source: Source, data: RetrievalData, labels: torch.Tensor, rt: Runtime):  # noqa: ANN201
    """``attack.restart_pick=oracle``: per query, the restart with the lowest AP on the source's own index (mean
    over the job's systems), which needs the database labels: an upper bound for the restarts, not an attack."""

    def pick(candidates: list[torch.Tensor]) -> torch.Tensor:
        aps = []
        for adv in candidates:
            with torch.no_grad(), rt.autocast():
                z = source.model.features(adv).cpu()
            per_system = [source.target.index.average_precisions(z, s, labels, data.database.labels).expected
                          for s in source.job.systems]
            aps.append(torch.as_tensor(sum(per_system) / len(per_system)))
        return torch.stack(aps).argmin(0).to(candidates[0].device)

    return pick


def attack_queries(job: JobConfig, data: RetrievalData, sources: list[Source], description: dict[str, Any],
                   rt: Runtime) -> AdversarialSet:
    """Adversarial queries made against ``sources`` (one: a target; several: an ensemble) with ``job.attack``
    (cached as 8-bit images when quantised). With ``attack.save_prefixes``, the sets of the shorter runs (the
    first k steps of this one) are cached too, each under the key the k-step job has."""
    a = job.attack
    spec = attack_spec(job, data, *ensemble_keys([s.target.checkpoint_key for s in sources],
                                                 [s.target.codebooks_key for s in sources]), rt.precision)
    checkpoints = spec["checkpoint"]
    targets = query_targets(job, data)
    description = {**description, "epochs": joined_epochs([s.job.trainer["max_epochs"] for s in sources])}

    def make(images: torch.Tensor, key: str, attack: dict[str, Any]) -> AdversarialSet:
        return AdversarialSet.make(images, data, key, checkpoints, description, attack, job.seed, targets)

    def to_stored(x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 255).to(torch.uint8).cpu() if a.quantize_8bit else x.float().cpu()

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        gen = torch.Generator(device=rt.device).manual_seed(job.seed)
        for source in sources:  # a random query transform draws from a seed of this set's own
            fresh_draws(source.model.backbone, f"attack {spec_key('adversarial_queries', spec)}")
        out: list[torch.Tensor] = []
        prefixes: dict[int, list[torch.Tensor]] = {int(k): [] for k in a.save_prefixes or [] if int(k) < a.iters}
        images = data.query.images

        def keep_prefix(step: int, x: torch.Tensor) -> None:
            if step in prefixes:
                prefixes[step].append(to_stored(x))

        for i in tqdm(range(0, len(images), a.batch_size), desc=f"attack {a.name}", disable=not rt.progress,
                      leave=False):
            x = (images[i:i + a.batch_size].to(rt.device).float() / 255).contiguous(memory_format=torch.channels_last)
            batch_targets = None if targets is None else targets[i:i + a.batch_size]
            pick = (oracle_pick(sources[0], data, data.query.labels[i:i + a.batch_size], rt)
                    if a.restart_pick == "oracle" else None)
            with rt.autocast():
                anchors = [s.anchors(x, batch_targets) for s in sources]
                references = [s.contrast_reference(x) for s in sources] if a.loss == "contrast" else None
                adv = pgd([s.model for s in sources], x, a.loss, a, generator=gen, anchors=anchors, pick=pick,
                          on_step=keep_prefix if prefixes else None,
                          reference_models=[s.reference_model for s in sources], references=references)
            out.append(to_stored(adv))
        for k, parts in prefixes.items():
            save_prefix(k, torch.cat(parts))
        made = make(torch.cat(out), "", spec["attack"])
        return made.tensors(), {k: v for k, v in made.meta.items() if k != "key"}

    def save_prefix(k: int, images: torch.Tensor) -> None:
        prefix_spec = {**spec, "attack": {**spec["attack"], "iters": k}}
        key = spec_key("adversarial_queries", prefix_spec)
        if rt.cache.enabled and rt.cache.load("adversarial_queries", key) is None:
            made = make(images, key, prefix_spec["attack"])
            rt.cache.save("adversarial_queries", key, made.tensors(),
                          {**{m: v for m, v in made.meta.items() if m != "key"}, "spec": prefix_spec})

    with rt.timed(f"attack_{a.name}"):
        tensors, meta, key = rt.cache.get_or_build("adversarial_queries", spec, build)
    return make(tensors["images"], key, meta["attack"])


def adversarial_set(job: JobConfig, data: RetrievalData, target: Target, describe: Any, rt: Runtime
                    ) -> AdversarialSet | None:
    """The adversarial queries this job evaluates: white-box (made against ``target``), or a transfer source (a
    saved set, or one made against other models / another code length, ``transfer.*``). ``describe(job)`` gives
    the rows' description of a job's target, which the set records as its source (for an ensemble, the models
    joined by '+')."""
    if job.transfer.get("source"):
        return load_adversarial_set(job.transfer["source"], data, rt.cache)
    if job.attack.name == "none":
        return None
    srcs = source_jobs(job)
    if srcs is None:
        return attack_queries(job, data, [Source.of(job, target, data, rt.device)], describe(job), rt)
    src_rt = Runtime(rt.device, rt.precision, rt.cache, rt.progress)  # the sources' keys stay out of this run's
    sources = [Source.of(s, build_target(s, data, src_rt, []), data, rt.device) for s in srcs]
    description = {**describe(srcs[0]), "model": "+".join(s.model["name"] for s in srcs)}
    return attack_queries(srcs[0], data, sources, description, rt)
