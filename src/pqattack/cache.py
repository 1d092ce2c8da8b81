"""Content-addressed artifact cache: checkpoints, decoded images, features, codebooks, adversarial queries; and the
export / import of trained checkpoints between machines (``python -m pqattack.cache export|import``).

An artifact's key is the hash of everything that determines it (its kind, its config and the keys of
the artifacts it was built from), so a sweep over attacks and bits trains each backbone once. A key names a
configuration, not a content: a checkpoint trained again under the same key need not hold the same weights (training
is not bit-reproducible on every machine), so each entry also records the sha256 of the entries it was built from
(``inputs``), and one whose inputs have changed since is built again instead of served.
Writes are atomic (temporary folder, fsync, rename) and carry a sha256 that is checked on load; a
file lock makes concurrent jobs that need the same artifact build it once. Tensors are loaded with
``torch.load(weights_only=True)``: nothing in the cache is unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import CacheError, CacheMiss, ConfigError, UsageError

log = logging.getLogger(__name__)

JOB_ARTIFACTS = ("checkpoint", "codebooks", "adversarial_queries")  # what a job makes; tools that read a job's
# artifacts open the cache with load_only=JOB_ARTIFACTS, so a job of another machine is refused, not made again
CACHE_FORMAT = 2  # part of every key: bump it when a code change alters what an artifact contains
KEY_PATTERN = re.compile(r"[0-9a-f]{24}")  # what spec_key returns
INPUT_KINDS = ("checkpoint", "features", "codebooks", "adversarial_queries")  # entries others are made from
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
    """``root/<kind>/<key>/{tensors.pt, meta.json}``; ``enabled=False`` builds everything afresh in memory.
    ``load_only`` names kinds this cache loads but never builds: a miss of one raises ``CacheMiss`` (a tool that
    reads what jobs made, e.g. a trained checkpoint, stops instead of training it again)."""

    def __init__(self, root: str | os.PathLike, enabled: bool = True, load_only: tuple[str, ...] = ()) -> None:
        self.root = Path(root).expanduser().resolve()
        self.enabled = enabled
        self.load_only = frozenset(load_only)
        self.hits: list[str] = []
        self.builds: list[str] = []

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def digest(self, kind: str, key: str) -> str | None:
        """The sha256 of entry ``kind/key``'s tensors as its metadata records it; None when absent or unreadable."""
        try:
            return json.loads((self.entry(kind, key) / META_FILE).read_text()).get("sha256")
        except (OSError, json.JSONDecodeError):
            return None

    def inputs_of(self, spec: Any) -> dict[str, str]:
        """``{"<kind>/<key>": sha256}`` of every entry of this cache whose key appears in ``spec`` (at any depth):
        the artifacts an entry built from ``spec`` was made from, as they are now."""
        keys: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, str) and KEY_PATTERN.fullmatch(node):
                keys.add(node)
            elif isinstance(node, dict):
                for v in node.values():
                    walk(v)
            elif isinstance(node, (list, tuple)):
                for v in node:
                    walk(v)

        walk(spec)
        out = {}
        for key in sorted(keys):
            for kind in INPUT_KINDS:
                if (digest := self.digest(kind, key)) is not None:
                    out[f"{kind}/{key}"] = digest
        return out

    def changed_inputs(self, meta: dict[str, Any]) -> list[str]:
        """The inputs an entry recorded (``inputs``) that the cache now holds with another content: each was built
        again (a checkpoint trained again to other weights), so the entry no longer follows from them. Entries
        made before inputs were recorded have none to check."""
        recorded = meta.get("inputs") or {}
        return sorted(name for name, digest in recorded.items()
                      if (now := self.digest(*name.split("/", 1))) is not None and now != digest)

    def load(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The entry's tensors and metadata, or None when absent or made from inputs that have changed since
        (``changed_inputs``; the stale entry is removed, so the caller builds it again); a corrupt entry raises
        CacheError."""
        path = self.entry(kind, key)
        meta_path, tensors_path = path / META_FILE, path / TENSORS_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"cache entry {path}: unreadable {META_FILE} ({exc}); delete the folder") from exc
        if changed := self.changed_inputs(meta):
            log.warning("cache entry %s/%s was made from %s, which the cache now holds with another content (built "
                        "again); discarding it to build it from them", kind, key, ", ".join(changed))
            self._discard(path)
            return None
        if not tensors_path.is_file() or _sha256(tensors_path) != meta.get("sha256"):
            raise CacheError(f"cache entry {path}: {TENSORS_FILE} does not match its checksum; delete the folder")
        tensors = torch.load(tensors_path, map_location="cpu", weights_only=True)
        return tensors, meta

    def _discard(self, path: Path) -> None:
        """Remove an entry: renamed out of place first, so no reader sees half of it."""
        gone = path.parent / f".stale-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, gone)
        except OSError:  # removed meanwhile by another process
            return
        shutil.rmtree(gone, ignore_errors=True)

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
             inputs: dict[str, str] | None = None) -> Path:
        """Write atomically: a temporary folder, fsync'd, renamed into place. The metadata records ``inputs``
        (default: ``inputs_of`` the ``spec`` in ``meta``), the content of the entries this one was made from."""
        inputs = self.inputs_of(meta.get("spec")) if inputs is None else inputs
        if inputs:
            meta = {**meta, "inputs": inputs}
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
        if kind in self.load_only and (not self.enabled or not (self.entry(kind, key) / META_FILE).is_file()):
            raise CacheMiss(f"{kind} {key} is not in the cache {self.root}")
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


# --------------------------------------------------------------------------------------------- export / import
# A trained backbone (or PQN) travels between machines as one file, or as parts of at most ``part_mb`` each:
#   python -m pqattack.cache export <checkpoint key | run folder | sweep folder>... <file> [--dtype fp16] [--part-mb N]
#   python -m pqattack.cache import <file> [override ...]
# Each part is a weights-only torch file: {"format", "part", "parts", "manifest" (JSON text), "tensors"}. The manifest
# holds every entry's cache key, its metadata (with the spec its key is the hash of), the job config it came from
# where known, and for each tensor its original dtype, shape, part and the sha256 of its stored bytes.
EXPORT_FORMAT = "pqattack-checkpoints/1"
EXPORT_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
CONFIG_PARTS = ("dataset", "model", "trainer", "quantizer", "precision", "seed")


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _entries_of(source: str, cache: ArtifactCache) -> list[tuple[str, dict[str, Any] | None]]:
    """``(checkpoint key, job config or None)`` for a key, a run folder or a sweep folder (every job's checkpoint;
    a PQN job's base checkpoint before its own)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        if not (cache.entry("checkpoint", source) / META_FILE).is_file():
            raise CacheError(f"export: {source} is neither a folder nor a checkpoint key in {cache.root / 'checkpoint'}")
        return [(source, None)]
    found: list[tuple[str, dict[str, Any] | None]] = []
    for path in sorted(folder.rglob("results.json")):
        meta = json.loads(path.read_text()).get("meta", {})
        keys, config = meta.get("cache_keys") or {}, meta.get("config")
        for name in ("base_checkpoint", "checkpoint"):
            if keys.get(name) and keys[name] not in [k for k, _ in found]:
                found.append((keys[name], config))
    if not found:
        raise CacheError(f"export: {folder} holds no job records (results.json with cache_keys)")
    return found


def check_export_arguments(path: str | Path, dtype: str = "fp16", part_mb: float | None = None) -> None:
    """``UsageError`` for a FILE to write that is an existing folder or a name of 24 hex digits (a checkpoint key or
    a run folder given where FILE belongs: the FILE left out), an unknown ``dtype``, or a ``part_mb`` that is not a
    positive number."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"export: FILE {path} is a folder; the last argument is the file to write (e.g. "
                         f"{path / 'checkpoints.pqc'}), after every SOURCE")
    if KEY_PATTERN.fullmatch(path.name):
        raise UsageError(f"export: FILE {path} is named like a checkpoint key (24 hex digits): the file to write "
                         f"goes last, after every SOURCE (e.g. checkpoints.pqc)")
    if dtype not in EXPORT_DTYPES:
        raise UsageError(f"export: --dtype {dtype}: expected one of {', '.join(EXPORT_DTYPES)}")
    if part_mb is not None and not (math.isfinite(part_mb) and part_mb > 0):
        raise UsageError(f"export: --part-mb {part_mb}: must be a number of MiB > 0 (or left out: one file)")


def export_checkpoints(sources: list[str], path: str | Path, cache: ArtifactCache, dtype: str = "fp16",
                       part_mb: float | None = None) -> list[Path]:
    """Write the checkpoints of ``sources`` to ``path`` (or ``<stem>.part<i>-of-<n><suffix>`` when they exceed
    ``part_mb``), float tensors stored as ``dtype``; returns the files written. The arguments are checked first
    (``check_export_arguments``)."""
    check_export_arguments(path, dtype, part_mb)
    store = EXPORT_DTYPES[dtype]
    entries, stored = [], []
    for key, config in [e for s in sources for e in _entries_of(s, cache)]:
        if key in [e["key"] for e in entries]:
            continue
        found = cache.load("checkpoint", key)
        if found is None:
            raise CacheError(f"export: checkpoint {key} is not in the cache {cache.root}")
        tensors, meta = found
        described = []
        for name, t in tensors.items():
            s = t.to(store) if t.is_floating_point() else t
            if t.is_floating_point() and torch.isfinite(t).all() and not torch.isfinite(s).all():
                raise CacheError(f"export: checkpoint {key} tensor {name} overflows {dtype}; use --dtype fp32")
            described.append({"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                              "sha256": _tensor_sha256(s)})
            stored.append((len(entries), name, s))
        meta = {k: v for k, v in meta.items() if k not in ("kind", "key", "sha256", "format")}
        job = {k: config[k] for k in CONFIG_PARTS if k in config} if config else None
        entries.append({"kind": "checkpoint", "key": key, "meta": meta, "config": job, "tensors": described})
    limit = None if part_mb is None else int(part_mb * 2**20)
    # every part holds the manifest (each tensor's entry gains its part number) and a zip record per tensor
    fixed = len(json.dumps(entries, default=str)) + 16 * len(stored) + 8192
    parts: list[list[tuple[int, str, torch.Tensor]]] = [[]]
    size = fixed
    for item in stored:
        nbytes = item[2].numel() * item[2].element_size() + 4096
        if limit is not None and fixed + nbytes > limit:
            raise CacheError(f"export: tensor {item[1]} ({nbytes / 2**20:.3f} MiB with the manifest's "
                             f"{fixed / 2**20:.3f} MiB) does not fit in --part-mb {part_mb}")
        if limit is not None and parts[-1] and size + nbytes > limit:
            parts.append([])
            size = fixed
        parts[-1].append(item)
        size += nbytes
    for i, part in enumerate(parts, 1):
        for e, name, _ in part:
            next(d for d in entries[e]["tensors"] if d["name"] == name)["part"] = i
    manifest = {"format": EXPORT_FORMAT, "dtype": dtype, "entries": entries,
                "sha256": hashlib.sha256("".join(d["sha256"] for e in entries for d in e["tensors"]).encode()).hexdigest()}
    text = json.dumps(manifest, sort_keys=True, default=str)
    path = Path(path)
    names = [path] if len(parts) == 1 else [path.with_name(f"{path.stem}.part{i}-of-{len(parts)}{path.suffix}")
                                           for i in range(1, len(parts) + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in [path, *path.parent.glob(f"{path.stem}.part*-of-*{path.suffix}")]:  # an earlier export's parts
        stale.unlink(missing_ok=True)
    for i, (name, part) in enumerate(zip(names, parts), 1):
        tmp = name.with_name(f".{name.name}.tmp")
        torch.save({"format": EXPORT_FORMAT, "part": i, "parts": len(parts), "manifest": text,
                    "tensors": {f"{e}/{n}": t.contiguous() for e, n, t in part}}, tmp)
        written = tmp.stat().st_size
        if limit is not None and written > limit:
            tmp.unlink()
            raise CacheError(f"export: part {name} would be {written / 2**20:.3f} MiB, over --part-mb {part_mb}")
        tmp.replace(name)
    return names


def _part_files(path: Path) -> list[Path]:
    """The file, or every part of the export ``path`` names (a part's own name or the name given to export)."""
    import re

    m = re.fullmatch(r"(.*)\.part\d+-of-(\d+)(\.[^.]*)?", path.name)
    stem, suffix = (m.group(1), m.group(3) or "") if m else (path.stem, path.suffix)
    if m is None and path.is_file():
        return [path]
    if path.is_dir():
        raise UsageError(f"import: {path} is a folder; give the file `export` wrote (or one of its parts)")
    parts = sorted(path.parent.glob(f"{stem}.part*-of-*{suffix}"))
    if not parts:
        raise UsageError(f"import: {path}: no such file, nor parts {stem}.part<i>-of-<n>{suffix} beside it")
    return parts


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """The manifest and each entry's tensors (cast back to their original dtypes), every part and checksum checked."""
    path = Path(path)
    files = _part_files(path)
    manifest_text, tensors, seen = None, {}, set()
    for f in files:
        try:
            doc = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: torch raises many types
            raise CacheError(f"import: {f} is not a readable export ({type(exc).__name__}: {exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
            raise CacheError(f"import: {f} is not a pqattack checkpoint export ({EXPORT_FORMAT})")
        if manifest_text is not None and doc["manifest"] != manifest_text:
            raise CacheError(f"import: {f} belongs to another export than {files[0]}")
        manifest_text = doc["manifest"]
        seen.add((doc["part"], doc["parts"]))
        tensors.update(doc["tensors"])
    manifest = json.loads(manifest_text)
    n = next(iter(seen))[1]
    missing = sorted(set(range(1, n + 1)) - {p for p, _ in seen})
    if missing or len({c for _, c in seen}) != 1:
        raise CacheError(f"import: {path}: part(s) {missing} of {n} missing beside it")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for e, entry in enumerate(manifest["entries"]):
        out[entry["key"]] = {}
        for d in entry["tensors"]:
            t = tensors.get(f"{e}/{d['name']}")
            if t is None or _tensor_sha256(t) != d["sha256"]:
                raise CacheError(f"import: {path}: checkpoint {entry['key']} tensor {d['name']} is missing or does "
                                 f"not match its sha256 (part {d['part']} damaged); export it again")
            out[entry["key"]][d["name"]] = t.to(getattr(torch, d["dtype"]))
    return manifest, out


def _override(key: str, value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(_override("", v)[1:] for v in value) + "]"
    else:
        text = str(value)
    return f"{key}={text}"


def _setting(node: Any, prefix: str, key: str, value: Any) -> str:
    """``prefix.key=value``, or ``+prefix.key=value`` where the config ``node`` lacks the key (Hydra adds it)."""
    return _override(f"{'' if key in node else '+'}{prefix}.{key}", value)


def check_overrides(overrides: list[str]) -> None:
    """``ConfigError`` for an override that is not ``key=value`` (Hydra's grammar), before anything is read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from .config import compose_config
    from .overrides import explain

    for o in overrides:
        try:
            OverridesParser.create().parse_overrides([o])
        except OverrideParseException as exc:
            raise ConfigError(f"import: {explain(exc, [o], compose_config)}") from None


def _compose(overrides: list[str], given: list[str] | None = None) -> Any:
    """The job config ``python -m pqattack <overrides>`` composes; a ``ConfigError`` with Hydra's reason on one line
    when it does not compose (an unknown key or option, a value of the wrong type), naming the overrides ``given``
    on the command line, else those derived from the export."""
    from .config import compose_config
    from .overrides import compose_errors, explain

    try:
        return compose_config(overrides)
    except compose_errors() as exc:
        where = (f"the overrides given: {' '.join(given)}" if given else
                 f"the overrides of a checkpoint in the file: {' '.join(overrides)}")
        raise ConfigError(f"import: {explain(exc, overrides, compose_config)} ({where})") from None


def _trainer_overrides(recipe: dict[str, Any], groups: list[str]) -> list[str]:
    """The trainer option and settings under which a job's recipe is ``recipe`` (a checkpoint spec's ``trainer``):
    the default option when it has every setting of the recipe (e.g. ``trainer.max_epochs=2``), else the option of
    ``conf/trainer`` that has them all (e.g. ``trainer=fastnet``: the default lacks its ``crop_pad_mode``) with the
    fewest settings changed, and that turns on nothing the recipe has off. A setting that no option has is added
    to the default (``+trainer.<key>=``)."""
    from .config import CONF_DIR, container
    from .stages.keys import recipe_spec

    options = ["default", *sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml") if p.stem != "default")]
    best: tuple[tuple[int, int, int], list[str]] | None = None
    for i, name in enumerate(options):
        trainer = container(_compose([*groups, f"trainer={name}"]).trainer)
        if i and any(k not in recipe for k in recipe_spec(trainer)):
            continue
        out = ([f"trainer={name}"] if i else []) + [
            _setting(trainer, "trainer", k, v) for k, v in recipe.items() if trainer.get(k, object()) != v]
        cost = (sum(o.startswith("+") for o in out), min(i, 1), len(out))  # additions, then the default, then size
        if best is None or cost < best[0]:
            best = (cost, out)
    assert best is not None  # the default is always a candidate
    return best[1]


def job_overrides(entry: dict[str, Any], base: dict[str, Any] | None, extra: list[str] | None = None) -> list[str]:
    """The overrides under which ``python -m pqattack`` finds this checkpoint: the config groups it was made with
    (the trainer option whose recipe is nearest its own), every setting of theirs that differs from the defaults,
    the training precision (part of the key), the number of training processes (``trainer.devices``, for a DDP
    checkpoint) and the seed. ``base`` is a PQN's cross-entropy checkpoint entry (its
    recipe comes first). The dataset comes from the job config exported with the checkpoint, else from
    ``dataset=<name>`` among ``extra``."""
    spec = entry["meta"]["spec"]
    if "base_checkpoint" in spec:
        if base is None:
            raise CacheError(f"import: PQN checkpoint {entry['key']} without its base checkpoint in the file")
        q = spec["quantizer"]
        own = [f"quantizer={q['kind']}", f"bits={q['M'] * (q['K'].bit_length() - 1)}"]
        default = _compose(own)
        return job_overrides(base, None, extra) + own + [
            _setting(default.quantizer, "quantizer", k, v) for k, v in q.items()
            if k != "kind" and default.quantizer.get(k) != v]
    config = entry.get("config") or {}
    given = next((o.split("=", 1)[1] for o in extra or [] if o.startswith("dataset=")), None)
    dataset = config.get("dataset") or {"name": given}
    if not dataset.get("name"):
        raise CacheError(f"import: checkpoint {entry['key']} was exported without its job's config (by key): give "
                         f"dataset=<name> and the dataset settings it was trained with")
    groups = [f"dataset={dataset['name']}", f"model={spec['model']['name']}"]
    default = _compose(groups)
    out = list(groups)
    for k, v in dataset.items():
        if k not in ("name", "root", "download", "_target_") and default.dataset.get(k) != v:
            out.append(_setting(default.dataset, "dataset", k, v))
    model = {("_target_" if k == "builder" else k): v for k, v in spec["model"].items()}  # stages.keys.model_spec
    out += [_setting(default.model, "model", k, v) for k, v in model.items() if default.model.get(k) != v]
    out += _trainer_overrides(spec["trainer"], groups)
    if spec.get("world_size", 1) > 1:  # trained with DDP on one node: its key holds the number of processes
        out.append(f"trainer.devices={spec['world_size']}")
    out.append(f"precision={spec['precision']}")
    if spec["seed"] != default.seed:
        out.append(f"seed={spec['seed']}")
    return out


def import_checkpoints(path: str | Path, cache_dir: str | None = None, extra: list[str] | None = None
                       ) -> list[tuple[str, list[str], bool]]:
    """Check ``path`` (every part and sha256), check that this machine's data is the data each checkpoint was
    trained on (by recomputing its cache key from the overrides and the local data), then store the checkpoints in
    the cache under their keys (none when one of them does not fit). Returns ``(key, overrides, newly stored)`` per
    checkpoint."""
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    from .config import compose_config, load_job
    from .errors import DatasetError
    from .overrides import explain
    from .runtime import Runtime, resolve_progress
    from .stages.data import load_data
    from .stages.keys import checkpoint_spec, pqn_spec

    check_overrides(extra or [])
    manifest, tensors = read_export(path)
    entries = {e["key"]: e for e in manifest["entries"]}
    checked = []
    for entry in manifest["entries"]:
        spec = entry["meta"]["spec"]
        base = entries.get(spec.get("base_checkpoint")) if "base_checkpoint" in spec else None
        overrides = job_overrides(entry, base, extra)
        cfg = _compose([*overrides, *(extra or []), "device=cpu"], extra)
        try:
            job = load_job(cfg)
            source = instantiate(cfg.dataset)
        except HydraException as exc:  # a dataset setting its loader does not take
            raise ConfigError(f"import: dataset: {explain(exc, extra or [], compose_config)} (the overrides given: "
                              f"{' '.join(extra or [])})") from None
        cache = ArtifactCache(cache_dir or cfg.cache.dir)
        cpu = torch.device("cpu")
        data = load_data(cfg, source, Runtime(cpu, "fp32", cache, progress=resolve_progress(cfg.progress)))
        base_spec = checkpoint_spec(job, data, spec["precision"], cpu)
        local = base_spec if base is None else pqn_spec(job, spec_key("checkpoint", base_spec), spec["precision"], cpu)
        if spec_key("checkpoint", local) != entry["key"]:
            theirs = spec if base is None else base["meta"]["spec"]
            ours = base_spec
            differ = [f"{k}: trained with {theirs.get(k)!r}, here {ours.get(k)!r}" for k in sorted(set(theirs) | set(ours))
                      if theirs.get(k) != ours.get(k)]
            if theirs.get("data") != ours.get("data"):
                differ.append("the training data differ (other image files or decoding, or another training subset)")
            raise DatasetError(f"import: {path}: checkpoint {entry['key']} ({spec.get('model', {}).get('name', 'pqn')}) "
                             f"does not fit this machine's data and config under {' '.join(overrides)}: "
                             + "; ".join(differ or ["the PQN settings differ"])
                             + f" (dataset.root={cfg.dataset.get('root')}); point dataset.root at the same copy of the "
                             f"data")
        checked.append((entry, overrides, cache))
    done = []
    for entry, overrides, cache in checked:
        meta = {**entry["meta"], "imported": {"file": str(path), "stored_dtype": manifest["dtype"]}}
        fresh = not (cache.entry("checkpoint", entry["key"]) / META_FILE).is_file()
        if fresh:
            cache.save("checkpoint", entry["key"], tensors[entry["key"]], meta)
        done.append((entry["key"], overrides, fresh))
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m pqattack.cache export|import``: move trained checkpoints between machines' caches."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m pqattack.cache", description=main.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write checkpoints (keys, run or sweep folders) to a file",
                        description="Write the checkpoints of each SOURCE (a checkpoint key, a run folder or a sweep "
                        "folder) to FILE, the last argument. FILE may not be an existing folder, nor named like a "
                        "checkpoint key (24 hex digits): either means the FILE was left out.")
    ex.add_argument("paths", nargs="+", metavar="SOURCE... FILE")
    ex.add_argument("--dtype", default="fp16", choices=sorted(EXPORT_DTYPES), help="storage of float tensors")
    ex.add_argument("--part-mb", type=float, default=None, help="split into parts of at most this many MiB (> 0)")
    ex.add_argument("--cache", default=None, help="cache folder (default $PQATTACK_CACHE or .cache/pqattack)")
    im = sub.add_parser("import", help="check a file and put its checkpoints into this machine's cache")
    im.add_argument("file")
    im.add_argument("overrides", nargs="*", help="config overrides (key=value) for this machine, e.g. "
                    "dataset.root=/data")
    im.add_argument("--cache", default=None, help="cache folder (default: cache.dir of the config)")
    a = p.parse_args(argv)
    from .errors import PQAttackError

    try:
        if a.command == "export":
            if len(a.paths) < 2:
                p.error("export needs at least one SOURCE and the FILE to write")
            cache = ArtifactCache(a.cache or os.environ.get("PQATTACK_CACHE", ".cache/pqattack"))
            for f in export_checkpoints(a.paths[:-1], a.paths[-1], cache, a.dtype, a.part_mb):
                print(f"wrote {f} ({f.stat().st_size / 2**20:.1f} MiB)")
            return 0
        for key, overrides, fresh in import_checkpoints(a.file, a.cache, a.overrides):
            state = "imported" if fresh else "already in the cache:"
            print(f"{state} checkpoint {key}; a job finds it with: python -m pqattack {' '.join(overrides)}")
        return 0
    except PQAttackError as exc:  # exit 2: bad input (an argument, the data, a config); 3: a damaged or missing file
        print(f"{exc.kind} error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    import sys

    from pqattack.cache import main as _main  # the package's module, not this __main__ copy of it

    sys.exit(_main())
