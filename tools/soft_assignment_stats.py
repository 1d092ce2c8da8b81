"""How peaked is eq. (7)'s clean soft distribution? Prints statistics for one job's clean queries.

    python tools/soft_assignment_stats.py outputs/table1_cpu/<date>/0_vgg16_4x16_basic [--temperature T] [--cos]

The job's clean features and codebooks (a PQN job's: its checkpoint) are read from its cache; the tool stops, naming
the entry, when the cache lacks one (exit code 3: the job ran on another machine or cache). Bad input (a folder
that is no job's, e.g. a sweep's folder, or a temperature <= 0) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pqattack.cache import ArtifactCache
from pqattack.errors import CacheMiss, UsageError, run_command
from pqattack.records import job_meta


def main(argv: list[str] | None = None) -> None:
    """The command: a ``PQAttackError`` (bad input: exit code 2; a missing cache entry: 3) is one line on stderr."""
    run_command(run, argv)


def run(argv: list[str] | None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job_dir", type=Path)
    p.add_argument("--temperature", type=float, default=1.0, help="the softmax temperature T (> 0; default 1)")
    p.add_argument("--cos", action="store_true")
    a = p.parse_args(argv)
    if not (math.isfinite(a.temperature) and a.temperature > 0):
        raise UsageError(f"--temperature {a.temperature}: must be > 0")
    meta = job_meta(a.job_dir)
    cache = ArtifactCache(meta["config"]["cache"]["dir"])
    pqn = meta["config"].get("quantizer", {}).get("kind") == "pqn"  # its codebooks live in its checkpoint
    loaded = {}
    for name, kind in (("features", "features"), ("codebooks", "checkpoint" if pqn else "codebooks")):
        key = (meta.get("cache_keys") or {}).get(name)
        if key is None:
            raise UsageError(f"{a.job_dir}: its results.json records no {name} key (the job did not get that far)")
        found = cache.load(kind, key)
        if found is None:
            raise CacheMiss(f"{a.job_dir}: {kind} {key} is not in the cache {cache.root} (the job ran on another "
                            f"machine or cache)")
        loaded[name] = found[0]
    feats, c = loaded["features"], loaded["codebooks"]["codebooks"]
    sub = feats["query"].view(len(feats["query"]), c.shape[0], -1)
    if a.cos:
        sub, c = torch.nn.functional.normalize(sub, dim=-1), torch.nn.functional.normalize(c, dim=-1)
    logits = torch.einsum("bmd,mkd->bmk", sub, c) / a.temperature
    p_soft = logits.softmax(-1)
    print(f"queries {len(sub)}, M {c.shape[0]}, K {c.shape[1]}")
    print(f"sub-vector norm: mean {sub.norm(dim=-1).mean():.3f}")
    print(f"logits <z_m, c_mk> / T: min {logits.min():.3f}, max {logits.max():.3f}")
    print(f"p_mk: 1/K = {1 / c.shape[1]:.4f}, std over k (mean over queries, subspaces) {p_soft.std(-1).mean():.4f}, "
          f"largest p_mk (mean) {p_soft.max(-1).values.mean():.4f}")


if __name__ == "__main__":
    main()
