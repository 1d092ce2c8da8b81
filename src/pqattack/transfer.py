"""Black-box transfer: adversarial query sets as artifacts, and the source of a transfer job.

A set holds the 8-bit adversarial images (lossless), the query indices into the test split, their labels,
and what made them (dataset and split, model, quantizer, bits, attack and its budget, seed, checkpoint key).
Every attack run writes its set to the cache and a copy to ``<run dir>/adversarial_queries/<key>/``; either
loads by key or by path with ``transfer.source=...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from .cache import ArtifactCache
from .data import RetrievalData
from .errors import QuerySetError
from .labels import LOOP_OPTIONS

if TYPE_CHECKING:
    from .config import JobConfig

KIND = "adversarial_queries"
ATTACK_FIELDS = ("name", "loss", "eps", "step", "iters", "random_start", "similarity", "temperature", "peak",
                 "quantize_8bit", "batch_size", "kappa", "margin_focus", "target_class", *LOOP_OPTIONS)


@dataclass
class AdversarialSet:
    images: torch.Tensor       # uint8 [Q, 3, H, W] (float32 in [0, 1] when attack.quantize_8bit=false)
    query_index: torch.Tensor  # int64 [Q]: positions in the test split
    labels: torch.Tensor
    meta: dict[str, Any]
    targets: torch.Tensor | None = None  # int64 [Q]: each query's target class (concept), for targeted attacks

    @property
    def key(self) -> str:
        return self.meta["key"]

    @classmethod
    def make(cls, images: torch.Tensor, data: RetrievalData, key: str, checkpoint_key: str | list[str],
             description: dict[str, Any], attack: dict[str, Any], seed: int, targets: torch.Tensor | None = None
             ) -> "AdversarialSet":
        """A set made against ``checkpoint_key`` (a list for an ensemble of sources) with the resolved ``attack``
        settings (temperature included), and the queries' ``targets`` for a targeted attack."""
        meta = {"key": key, "source": {**description, "checkpoint": checkpoint_key, "fingerprint": data.fingerprint,
                                       "queries": data.query_key, "num_queries": len(data.query),
                                       "num_database": len(data.database)},
                "attack": {k: attack.get(k) for k in ATTACK_FIELDS}, "seed": int(seed)}
        return cls(images, data.query.index, data.query.labels, meta, targets)

    def tensors(self) -> dict[str, torch.Tensor]:
        extra = {} if self.targets is None else {"targets": self.targets}
        return {"images": self.images, "query_index": self.query_index, "labels": self.labels, **extra}

    def save(self, folder: Path) -> Path:
        """Write to ``folder/<key>/`` (atomic, checksummed, like the cache)."""
        return ArtifactCache(folder.parent).save(folder.name, self.key, self.tensors(), self.meta)

    @classmethod
    def load_entry(cls, entry: Path) -> "AdversarialSet":
        found = ArtifactCache(entry.parent.parent).load(entry.parent.name, entry.name)
        if found is None:
            raise QuerySetError(f"transfer.source={entry}: no adversarial query set there (no meta.json)")
        tensors, meta = found
        if "source" not in meta or "query_index" not in tensors:
            raise QuerySetError(f"transfer.source={entry}: not an adversarial query set (or an old format)")
        return cls(tensors["images"], tensors["query_index"], tensors["labels"], meta, tensors.get("targets"))


def find_entry(source: str, cache: ArtifactCache) -> Path:
    p = Path(source).expanduser()
    if p.is_dir():
        if (p / "meta.json").is_file():
            return p
        sets = sorted((p / KIND).glob("*/meta.json")) if (p / KIND).is_dir() else []
        if len(sets) == 1:
            return sets[0].parent
        raise QuerySetError(f"transfer.source={source}: a folder, but it holds {len(sets)} adversarial query sets "
                            f"under {KIND}/ (expected one; give the set's own folder)")
    if p.exists():
        raise QuerySetError(f"transfer.source={source}: give a folder (a set's, or a run's), not a file")
    entry = cache.entry(KIND, source)
    if (entry / "meta.json").is_file():
        return entry
    raise QuerySetError(f"transfer.source={source}: neither a folder nor a key in the cache {cache.root / KIND}")


def load_adversarial_set(source: str, data: RetrievalData, cache: ArtifactCache) -> AdversarialSet:
    """Load a saved set by path or key and check that it belongs to this dataset and query split."""
    adv = AdversarialSet.load_entry(find_entry(str(source), cache))
    src = adv.meta["source"]
    if src["dataset"] != data.name or src["fingerprint"] != data.fingerprint:
        raise QuerySetError(f"transfer.source={source}: made on dataset {src['dataset']!r} (images "
                            f"{src['fingerprint'][:12]}), but this run's dataset is {data.name!r} (images "
                            f"{data.fingerprint[:12]})")
    same = src.get("queries") == data.query_key if "queries" in src else (
        torch.equal(adv.query_index, data.query.index) and torch.equal(adv.labels, data.query.labels))
    if not same:
        raise QuerySetError(f"transfer.source={source}: its {len(adv.query_index)} queries are not this run's "
                            f"query split (dataset.num_queries={len(data.query)}, dataset.split_seed); use the "
                            f"split it was made with ({src['num_queries']} queries, {src['num_database']} database "
                            f"images)")
    return adv


def source_models(transfer: dict[str, Any]) -> list[str] | None:
    """``transfer.source_model`` as a list of model names (several: an ensemble), or None when not set."""
    model = transfer.get("source_model")
    if model is None:
        return None
    return [str(m) for m in model] if isinstance(model, (list, tuple)) else [str(model)]


def source_jobs(job: "JobConfig") -> "list[JobConfig] | None":
    """The jobs of the models that make the queries in a transfer job (``transfer.source_model``, one model or a
    list whose losses are averaged, and/or ``transfer.source_bits``), or None for white-box. Each source's model
    node is composed by Hydra from ``conf/model/<name>``; everything else is the target job's. A source is always
    undefended (the attacker's surrogate): the target's own model and code length named as the source of a defended
    target is its undefended model, not the defended target (white-box)."""
    from .config import compose_config, load_job

    t = job.transfer
    names, bits = source_models(t) or [job.model["name"]], t.get("source_bits")
    own = names == [job.model["name"]] and (bits is None or int(bits) == job.quantizer.bits)
    if own and (job.defense.kind == "none" or (not source_models(t) and bits is None)):
        return None
    jobs = []
    for name in names:
        # Unresolved, so that what follows the model (a preset's ``trainer: ${recipes.${model.name}}``) follows the
        # source's model.
        src = OmegaConf.create(OmegaConf.to_container(job.config, resolve=False))
        if name != job.model["name"]:
            src.model = compose_config([f"model={name}"]).model
        if bits is not None:
            src.bits = int(bits)
            src.quantizer.K = 2 ** (int(bits) // job.quantizer.M)
        src.transfer = {"source": None, "source_model": None, "source_bits": None}
        src.defense = {"kind": "none"}  # the attacker's surrogate is undefended; the defense is the target's
        src.attack.oblivious = False
        src.attack.reference = "attacked"  # without a transform the bare reference is the attacked model's own
        if not src.attack.dither:  # EOT over the draws of a transform the surrogate does not have
            src.attack.eot = 0
        jobs.append(load_job(src))
    return jobs
