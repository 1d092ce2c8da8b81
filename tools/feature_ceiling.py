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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn.functional import normalize

from pqattack.cache import ArtifactCache
from pqattack.config import load_job
from pqattack.data import RetrievalData
from pqattack.metrics.average_precision import average_precision_unranked
from pqattack.runtime import Runtime, resolve_device, resolve_precision
from pqattack.stages.features import embed
from pqattack.stages.target import Target, build_target


def _map(dist: torch.Tensor, data: RetrievalData) -> float:
    rel = data.query.labels[:, None] == data.database.labels[None, :]
    return round(average_precision_unranked(dist, rel).mean("expected", "zero"), 2)


def ceilings(target: Target, data: RetrievalData, rt: Runtime, batch_size: int = 500) -> dict[str, Any]:
    """The four rankings' clean mAP (%, expected over tie orders) and the classifier's test accuracy."""
    if target.classify is None:
        raise ValueError("this target has no classifier (a triplet-only PQN): nothing to compare the feature with")
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job_dir", type=Path, help="a job's output folder (its results.json names config and cache)")
    a = p.parse_args()
    meta = json.loads((a.job_dir / "results.json").read_text())["meta"]
    cfg = OmegaConf.create(meta["config"])
    job = load_job(cfg)
    device = resolve_device(cfg.device)
    rt = Runtime(device, resolve_precision(cfg.precision, device), ArtifactCache(cfg.cache.dir), progress=False)
    data = instantiate(cfg.dataset).load(rt.cache)
    target = build_target(job, data, rt, [])
    if rt.cache.builds:
        print(f"note: built {', '.join(rt.cache.builds)} (not in the cache)")
    print(json.dumps({"model": job.model["name"], "bits": cfg.bits, **ceilings(target, data, rt)}))


if __name__ == "__main__":
    main()
