"""What comes back from the GPU machine: ``<out>``'s limits, checked before anything is written there, and which
files of a stage folder are records."""

from __future__ import annotations

import re
from pathlib import Path

# What one device call brings back from <out>: files, bytes per file, bytes in all, folder depth, names.
OUT_LIMITS = {"files": 8, "file_bytes": 16 * 2**20, "total_bytes": 64 * 2**20, "depth": 2}
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Files of a stage folder that go into records.tar.gz (everything the tables, the bench section and a reader need).
RECORD_SUFFIXES = (".json", ".md", ".yaml", ".log", ".csv", ".xml", ".txt")
NOT_RECORDS = ("adversarial_queries", "wandb", ".cache", "cache")


def out_fits(out: Path, new: dict[str, int], spare_files: int = 0, reserve_bytes: int = 0) -> str | None:
    """Why writing ``new`` ({relative name: bytes}, replacing files of those names) into ``out`` would exceed
    ``OUT_LIMITS`` (keeping ``spare_files`` files and ``reserve_bytes`` free), or None when it fits."""
    have = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    after = {**have, **new}
    for name, size in new.items():
        parts = Path(name).parts
        if len(parts) - 1 > OUT_LIMITS["depth"] or not all(OUT_NAME.match(p) for p in parts):
            return f"{name}: more than {OUT_LIMITS['depth']} folders deep, or a name outside [A-Za-z0-9._-]"
        if size > OUT_LIMITS["file_bytes"]:
            return f"{name} is {size / 2**20:.1f} MiB, over {OUT_LIMITS['file_bytes'] / 2**20:.0f} MiB per file"
    if len(after) + spare_files > OUT_LIMITS["files"]:
        return f"{len(after)} files (+{spare_files} kept free) over the {OUT_LIMITS['files']} that come back"
    total = sum(after.values()) + reserve_bytes
    if total > OUT_LIMITS["total_bytes"]:
        return f"{total / 2**20:.1f} MiB in all over {OUT_LIMITS['total_bytes'] / 2**20:.0f} MiB"
    return None
