"""Does a backbone's classifier or its retrieval feature limit its clean PQ mAP? Prints, for one job's target
(everything from the cache), the clean mAP of four rankings of the database for the clean queries:

- ``pq_sdc`` / ``pq_adc``: the index's (the job's own rows);
- ``float``: the unquantised l2-normalised embedding (Euclidean), the ceiling of any PQ of it;
- ``float_centred``: the same after subtracting the database's mean embedding and normalising again: what the
  embedding's common component (the direction all its items share) costs the ranking;
- ``posterior``: the Euclidean distance between the classifier's softmax outputs;
- ``predicted_class``: one tie group per predicted class (the items the classifier puts in the query's predicted
  class first, in random order): what a feature that collapses each class to a point would reach with the
  classifier's decisions.

When ``float`` sits well below ``predicted_class``, the embedding clusters worse than the classifier separates:
the feature limits the mAP, not the accuracy.

    python tools/feature_ceiling.py outputs/table1_fast_cpu/<date>/0_fastnet_4x16_basic

The job's checkpoint and codebooks must be in its cache (the tool stops, naming the job, when one is not: the job
ran on another machine or cache; exit code 3); ``--build`` makes them instead, which trains as the job did. Bad
input (a folder that is no job's, e.g. a sweep's folder) is one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch.nn.functional import normalize

from pqattack.cache import JOB_ARTIFACTS, ArtifactCache
from pqattack.data import RetrievalData
from pqattack.errors import CacheMiss, UsageError, run_command
from pqattack.metrics.average_precision import average_precision_unranked
from pqattack.records import job_of
from pqattack.runtime import Runtime, resolve_device, resolve_precision
from pqattack.stages.features import embed
from pqattack.stages.target import Target, build_target


def _map(dist: torch.Tensor, data: RetrievalData) -> float:
    rel = data.query.labels[:, None] == data.database.labels[None, :]
    return round(average_precision_unranked(dist, rel).mean("expected", "zero"), 2)


def ceilings(target: Target, data: RetrievalData, rt: Runtime, batch_size: int = 500) -> dict[str, Any]:
    """The four rankings' clean mAP (%, expected over tie orders) and the classifier's test accuracy."""
    if target.classify is None:
        raise UsageError("this target has no classifier (a triplet-only PQN): nothing to compare the feature with")
    zq, zd = target.features["query"], target.features["database"]
    out: dict[str, Any] = {"test_accuracy": target.test_accuracy}
    for system in ("sdc", "adc"):
        out[f"pq_{system}"] = round(target.index.average_precisions(zq, system, data.query.labels,
                                                                    data.database.labels).mean("expected", "zero"), 2)
    out["float"] = _map(torch.cdist(zq, zd), data)
    mean = zd.mean(0)
    out["float_centred"] = _map(torch.cdist(normalize(zq - mean, dim=1), normalize(zd - mean, dim=1)), data)
    _, lq = embed(target.backbone, data.query.images, rt, batch_size, "query logits", None, target.classify)
    _, ld = embed(target.backbone, data.database.images, rt, batch_size, "database logits", None, target.classify)
    assert lq is not None and ld is not None
    out["posterior"] = _map(torch.cdist(lq.softmax(-1), ld.softmax(-1)), data)
    out["predicted_class"] = _map((lq.argmax(-1)[:, None] != ld.argmax(-1)[None, :]).float(), data)
    return out


def main(argv: list[str] | None = None) -> None:
    """The command: a ``PQAttackError`` (bad input: exit code 2; a missing cache entry: 3) is one line on stderr."""
    run_command(run, argv)


def run(argv: list[str] | None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job_dir", type=Path, help="a job's output folder (its results.json names config and cache)")
    p.add_argument("--build", action="store_true", help="make what the cache lacks (the checkpoint, the codebooks) "
                                                        "instead of stopping: trains as the job did")
    a = p.parse_args(argv)
    job, cfg = job_of(a.job_dir)
    device = resolve_device(cfg.device)
    cache = ArtifactCache(cfg.cache.dir, load_only=() if a.build else JOB_ARTIFACTS)
    rt = Runtime(device, resolve_precision(cfg.precision, device), cache, progress=False)
    data = instantiate(cfg.dataset).load(rt.cache)
    try:
        target = build_target(job, data, rt, [])
    except CacheMiss as exc:
        raise CacheMiss(f"{a.job_dir}: {exc} (the job ran on another machine or cache; --build makes it again, "
                        f"training as the job did)") from None
    if rt.cache.builds:
        print(f"note: built {', '.join(rt.cache.builds)} (not in the cache)", file=sys.stderr)
    print(json.dumps({"model": job.model["name"], "bits": cfg.bits, **ceilings(target, data, rt)}))


if __name__ == "__main__":
    main()
