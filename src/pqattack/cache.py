"""Content-addressed artifact cache: checkpoints, decoded images, features, codebooks, adversarial queries.

An artifact's key is the hash of everything that determines it (its kind, its config and the keys of
the artifacts it was built from), so a sweep over attacks and bits trains each backbone once.
Writes are atomic (temporary folder, fsync, rename) and carry a sha256 that is checked on load; a
file lock makes concurrent jobs that need the same artifact build it once. Tensors are loaded with
``torch.load(weights_only=True)``: nothing in the cache is unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import CacheError

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # part of every key: bump it when a code change alters what an artifact contains
TENSORS_FILE = "tensors.pt"
META_FILE = "meta.json"


def spec_key(kind: str, spec: dict[str, Any]) -> str:
    """Hash of ``kind`` and ``spec`` (canonical JSON); 24 hex digits."""
    payload = json.dumps({"kind": kind, "format": CACHE_FORMAT, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactCache:
    """``root/<kind>/<key>/{tensors.pt, meta.json}``; ``enabled=False`` builds everything afresh in memory."""

    def __init__(self, root: str | os.PathLike, enabled: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.enabled = enabled
        self.hits: list[str] = []
        self.builds: list[str] = []

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def load(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The entry's tensors and metadata, or None when absent; a corrupt entry raises CacheError."""
        path = self.entry(kind, key)
        meta_path, tensors_path = path / META_FILE, path / TENSORS_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"cache entry {path}: unreadable {META_FILE} ({exc}); delete the folder") from exc
        if not tensors_path.is_file() or _sha256(tensors_path) != meta.get("sha256"):
            raise CacheError(f"cache entry {path}: {TENSORS_FILE} does not match its checksum; delete the folder")
        tensors = torch.load(tensors_path, map_location="cpu", weights_only=True)
        return tensors, meta

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        """Write atomically: a temporary folder, fsync'd, renamed into place."""
        final = self.entry(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            tensors_path = tmp / TENSORS_FILE
            with open(tensors_path, "wb") as f:
                torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, f)
                f.flush()
                os.fsync(f.fileno())
            meta = {**meta, "kind": kind, "key": key, "sha256": _sha256(tensors_path), "format": CACHE_FORMAT}
            with open(tmp / META_FILE, "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True, default=str)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            if final.exists():  # built meanwhile by another process: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.rename(tmp, final)
                _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    @contextmanager
    def _lock(self, kind: str, key: str) -> Iterator[None]:
        lock_path = self.root / kind / f".{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get_or_build(self, kind: str, spec: dict[str, Any],
                     build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
        """Load the artifact for ``spec`` or build, save and return it; ``(tensors, meta, key)``."""
        key = spec_key(kind, spec)
        if not self.enabled:
            tensors, meta = build()
            self.builds.append(f"{kind}/{key}")
            return tensors, meta, key
        with self._lock(kind, key):
            found = self.load(kind, key)
            if found is not None:
                log.info("cache hit  %s/%s", kind, key)
                self.hits.append(f"{kind}/{key}")
                return found[0], found[1], key
            log.info("cache miss %s/%s: building", kind, key)
            tensors, meta = build()
            self.save(kind, key, tensors, {**meta, "spec": spec})
            self.builds.append(f"{kind}/{key}")
            return tensors, meta, key
