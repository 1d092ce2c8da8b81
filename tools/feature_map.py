"""What limits a job's clean mAP: the classifier or how its retrieval feature clusters? Prints, for one job's
backbone, the test accuracy and the mAP (full ranking, Euclidean) of several unquantised features of the
queries against the database, next to the job's PQ rows:

- ``embedding``: the retrieval feature, the l2-normalised penultimate embedding (what PQ quantises);
- ``layer <i>``: the output of ``backbone.body[:i]``, average-pooled over space and l2-normalised (an earlier
  layer; only for backbones whose body is a flat ``nn.Sequential``, such as fastnet);
- ``softmax``: the classifier's probabilities. Ranked by these, the database falls into groups by predicted
  class; its mAP is what a feature that clusters as well as the classifier separates would reach.

    python tools/feature_map.py outputs/runs/<run> [--layers 4 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pqattack.cache import ArtifactCache
from pqattack.data import top1_hit
from pqattack.metrics import mean_average_precision
from pqattack.pipeline import make_backbone


@torch.no_grad()
def features(fn, images: torch.Tensor, batch: int = 500) -> torch.Tensor:  # noqa: ANN001
    return torch.cat([fn(images[i:i + batch].float() / 255).float() for i in range(0, len(images), batch)])


def euclidean_map(q: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor) -> float:
    dist = torch.cdist(q.double(), db.double()) ** 2
    sorted_dist, ids = dist.sort(dim=1, stable=True)
    return mean_average_precision(sorted_dist, ids, q_labels, db_labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job_dir", type=Path)
    p.add_argument("--layers", type=int, nargs="*", default=[], help="earlier layers: prefixes of backbone.body")
    a = p.parse_args()
    results = json.loads((a.job_dir / "results.json").read_text())
    meta = results["meta"]
    cfg = OmegaConf.create(meta["config"])
    cache = ArtifactCache(cfg.cache.dir)
    data = instantiate(cfg.dataset).load(cache)
    state, _ = cache.load("checkpoint", meta["cache_keys"]["checkpoint"])
    net = make_backbone(cfg, data.num_classes)
    net.load_state_dict(state)
    net.eval()
    q, db = data.query, data.database
    logits = features(net, torch.cat([q.images, db.images]))
    acc = top1_hit(logits, torch.cat([q.labels, db.labels])).float().mean().item() * 100
    print(f"{cfg.model.name}: test accuracy {acc:.2f} % (queries + database, fp32)")
    for row in results["rows"]:
        if row["attack"] == "clean":
            print(f"  PQ {row['system'].upper()} {row['bits']} bits: mAP {row['map']:.2f}")

    def report(name: str, fn) -> None:  # noqa: ANN001
        zq, zd = features(fn, q.images), features(fn, db.images)
        print(f"  {name} ({zq.shape[1]}-d, unquantised): mAP {euclidean_map(zq, zd, q.labels, db.labels):.2f}")

    normalize = torch.nn.functional.normalize
    report("embedding", lambda x: normalize(net.forward_features(x).float(), dim=1))
    for i in a.layers:
        report(f"layer {i} ({type(net.body[i - 1]).__name__})",
               lambda x, i=i: normalize(net.body[:i](net.normalize(x)).float().mean((2, 3)), dim=1))
    report("softmax", lambda x: net(x).float().softmax(1))


if __name__ == "__main__":
    main()
