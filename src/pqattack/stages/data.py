"""Stage 1: the dataset, loaded once per process."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig

from ..config import container
from ..data import RetrievalData
from ..runtime import Runtime

_LOADED: dict[str, RetrievalData] = {}  # the last dataset loaded in this process (see load_data)


def load_data(cfg: DictConfig, source: Any, rt: Runtime) -> RetrievalData:
    """``source.load(rt.cache)``, once per process for the same dataset config and cache: the jobs of a sweep,
    which Hydra's basic launcher runs in one process, share the decoded images instead of listing, hashing and
    loading them again in every job."""
    key = json.dumps([container(cfg.dataset), str(rt.cache.root), rt.cache.enabled], sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED.clear()
        source.progress = rt.progress
        _LOADED[key] = source.load(rt.cache)
    return _LOADED[key]
