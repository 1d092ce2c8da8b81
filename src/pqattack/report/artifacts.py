"""Reload what a job computed, from the content-addressed cache, by the keys its ``results.json`` records
(``meta.cache_keys``) and its resolved config (``meta.config``): the dataset split, the backbone, the PQ
codebooks and index, the clean features and the adversarial queries. The figures that need more than the
rows (Figs. 3-5 of the paper) start here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..cache import ArtifactCache
from ..config import JobConfig, load_job
from ..data import RetrievalData
from ..errors import CacheError, DatasetError
from ..models import Backbone, RetrievalModel
from ..quant import PQIndex
from ..runtime import Runtime, resolve_device
from ..stages.backbone import load_backbone
from ..stages.features import embed
from ..stages.keys import attack_temperature
from .records import JobRecord


class ArtifactMissing(RuntimeError):
    """An artifact a figure needs is not there (cache deleted, dataset moved); the message says which."""


@dataclass
class JobArtifacts:
    """A job's retrieval system and queries, rebuilt as the pipeline built them."""

    job: JobRecord
    data: RetrievalData
    backbone: Backbone
    codebooks: torch.Tensor       # [M, K, D/M]
    clean_query: torch.Tensor     # [Q, D] l2-normalised features of the clean queries (as cached)
    database: torch.Tensor        # [N, D]
    adversarial: torch.Tensor | None  # uint8 [Q, 3, H, W] (float in [0, 1] without 8-bit rounding)
    runtime: Runtime              # device and precision of the job

    @cached_property
    def index(self) -> PQIndex:
        return PQIndex(self.codebooks, self.database)

    @cached_property
    def settings(self) -> JobConfig:
        """The job's typed config."""
        from omegaconf import OmegaConf

        return load_job(OmegaConf.create(self.job.config))

    @cached_property
    def adversarial_query(self) -> torch.Tensor | None:
        """Features of the adversarial queries, embedded with the job's backbone and precision."""
        if self.adversarial is None:
            return None
        return embed(self.backbone, self.adversarial, self.runtime, self.settings.eval_batch_size,
                     subvectors=self.subvectors)[0]

    @property
    def subvectors(self) -> int | None:
        """M when the job's retrieval feature is normalised per sub-vector (a PQN target), else None."""
        return self.settings.subvectors

    def retrieval_model(self) -> RetrievalModel:
        """The differentiable model the attack saw, with its eq. (7) similarity and temperature."""
        return RetrievalModel(self.backbone, self.codebooks.to(self.runtime.device), self.settings.attack.similarity,
                              attack_temperature(self.settings), subvector_norm=self.subvectors is not None).eval()


class ArtifactStore:
    """Loads ``JobArtifacts``; datasets and checkpoints shared by jobs are loaded once.

    ``cache_dir`` overrides the cache folder the jobs recorded (``config.cache.dir``, which may be relative to
    the folder the job ran in).
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._memo: dict[tuple, Any] = {}

    def _memoised(self, key: tuple, build: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def cache_for(self, job: JobRecord) -> ArtifactCache:
        return ArtifactCache(self.cache_dir or job.config["cache"]["dir"])

    def _key(self, job: JobRecord, kind: str) -> str:
        key = job.meta.get("cache_keys", {}).get(kind)
        if key is None:
            raise ArtifactMissing(f"{job.path}: meta.cache_keys has no {kind!r}")
        return key

    def _entry(self, cache: ArtifactCache, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        try:
            found = self._memoised((cache.root, kind, key), lambda: cache.load(kind, key))
        except CacheError as exc:
            raise ArtifactMissing(str(exc)) from exc
        if found is None:
            raise ArtifactMissing(f"{kind} {key} is not in the cache {cache.root} (deleted?)")
        return found

    def _adversarial_images(self, cache: ArtifactCache, job: JobRecord) -> torch.Tensor | None:
        """The job's adversarial queries: the copy in its run folder, else the cache entry."""
        from ..transfer import KIND, AdversarialSet

        keys = job.meta.get("cache_keys", {})
        key = keys.get(KIND) or keys.get(f"{KIND}_{job.attack}")  # the second: records made before transfer
        if key is None:
            if job.attack is not None:
                raise ArtifactMissing(f"{job.path}: meta.cache_keys names no adversarial query set")
            return None
        saved = job.folder / KIND / key
        if (saved / "meta.json").is_file():
            return AdversarialSet.load_entry(saved).images
        return self._entry(cache, KIND, key)[0]["images"]

    def load(self, job: JobRecord) -> JobArtifacts:
        """Rebuild ``job``'s system; raises ``ArtifactMissing`` when something is not there."""
        from hydra.utils import instantiate

        if "config" not in job.meta:
            raise ArtifactMissing(f"{job.path}: no meta.config (not a job's results.json)")
        cfg, cache = job.config, self.cache_for(job)
        device = resolve_device("auto")
        runtime = Runtime(device, job.meta.get("precision", "fp32"), cache, progress=False)

        def load_data() -> RetrievalData:
            try:
                source = instantiate(cfg["dataset"])
                source.progress = runtime.progress
                return source.load(cache)
            except (DatasetError, OSError) as exc:
                raise ArtifactMissing(f"dataset {cfg['dataset'].get('name')}: {exc}") from exc

        data = self._memoised((cache.root, "data", json.dumps(cfg["dataset"], sort_keys=True)), load_data)
        ckpt_key = self._key(job, "checkpoint")
        tensors, ckpt_meta = self._entry(cache, "checkpoint", ckpt_key)
        pqn = cfg["quantizer"].get("kind") == "pqn"  # a PQN checkpoint holds the backbone and its codebooks
        state = {k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")} if pqn \
            else tensors

        def rebuild_backbone() -> Backbone:
            try:
                return load_backbone(cfg["model"], state, ckpt_key,
                                     int(ckpt_meta.get("num_classes", data.num_classes)), runtime)
            except CacheError as exc:
                raise ArtifactMissing(str(exc)) from exc

        backbone = self._memoised((cache.root, "backbone", ckpt_key), rebuild_backbone)
        features = self._entry(cache, "features", self._key(job, "features"))[0]
        codebooks = tensors["codebooks"] if pqn else \
            self._entry(cache, "codebooks", self._key(job, "codebooks"))[0]["codebooks"]
        return JobArtifacts(job, data, backbone, codebooks, features["query"], features["database"],
                            self._adversarial_images(cache, job), runtime)
