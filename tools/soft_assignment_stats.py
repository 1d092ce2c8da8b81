"""How peaked is eq. (7)'s clean soft distribution? Prints statistics for one job's clean queries.

    python tools/soft_assignment_stats.py outputs/table1_cpu/<date>/0_vgg16_4x16_basic [--temperature T] [--cos]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pqattack.cache import ArtifactCache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job_dir", type=Path)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--cos", action="store_true")
    a = p.parse_args()
    meta = json.loads((a.job_dir / "results.json").read_text())["meta"]
    cache = ArtifactCache(meta["config"]["cache"]["dir"])
    feats, _ = cache.load("features", meta["cache_keys"]["features"])
    books, _ = cache.load("codebooks", meta["cache_keys"]["codebooks"])
    c = books["codebooks"]
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
