"""Stage 2b: retrieval features (the l2-normalised embedding) of the clean queries and the database, cached,
and the classifier's accuracy on them."""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..config import JobConfig
from ..data import RetrievalData, top1_hit
from ..errors import NumericsError
from ..models import Backbone
from ..models.pqn import SoftProductQuantizer, subvector_normalize
from ..runtime import Runtime
from .keys import features_spec

Classifier = Callable[[torch.Tensor], torch.Tensor]


def classifier_of(job: JobConfig, backbone: Backbone, codebooks: torch.Tensor | None) -> Classifier | None:
    """The classification head applied to the features it was trained on: the raw embedding for a cross-entropy
    backbone; PQN's soft-quantised embedding when its loss has a cross-entropy term; None for a triplet-only PQN,
    whose head was trained on the embedding of the backbone before joint training (it is stale)."""
    q = job.quantizer
    if not job.pqn:
        return backbone.head
    if "ce" not in q.loss or codebooks is None:  # type: ignore[attr-defined]
        return None
    soft_pq = SoftProductQuantizer(codebooks, q.alpha).to(next(backbone.parameters()).device)  # type: ignore[attr-defined]
    return lambda f: backbone.head(soft_pq(f)[1].flatten(1))


@torch.no_grad()
def embed(backbone: Backbone, images: torch.Tensor, rt: Runtime, batch_size: int, desc: str = "features",
          subvectors: int | None = None, classify: Classifier | None = None
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z, logits)`` for uint8 or float images, float32 on the CPU. The backbone runs under the run's autocast;
    z is l2-normalised in float32 outside it, as a whole, or per sub-vector when ``subvectors`` (M) is given
    (PQN). ``logits`` are ``classify`` of the embedding (float32), or None without a classifier."""
    zs, logits = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not rt.progress, leave=False):
        x = images[i:i + batch_size].to(rt.device, non_blocking=True)
        x = (x.float() / 255.0 if x.dtype == torch.uint8 else x).contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            f = backbone.forward_features(x)
        f = f.float()
        z = subvector_normalize(f, subvectors) if subvectors else torch.nn.functional.normalize(f, dim=1)
        zs.append(z.cpu())
        if classify is not None:
            logits.append(classify(f).float().cpu())
    return torch.cat(zs), (torch.cat(logits) if classify is not None else None)


def check_finite(name: str, t: torch.Tensor) -> None:
    """NaN or Inf in ``t`` stops the run (``NumericsError``)."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise NumericsError(f"{name}: {bad} non-finite values (NaN/Inf); the model or its training diverged")


def clean_features(job: JobConfig, data: RetrievalData, backbone: Backbone, ckpt_key: str, rt: Runtime,
                   classify: Classifier | None) -> tuple[dict[str, torch.Tensor], float | None]:
    """Database and clean-query features (cached), and the classifier's test accuracy on those images (None
    without a classifier)."""
    sub = job.subvectors

    def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        bs = job.eval_batch_size
        zq, lq = embed(backbone, data.query.images, rt, bs, "query features", sub, classify)
        zd, ld = embed(backbone, data.database.images, rt, bs, "database features", sub, classify)
        acc = None
        if lq is not None and ld is not None:
            correct = top1_hit(lq, data.query.labels).sum() + top1_hit(ld, data.database.labels).sum()
            acc = round(float(correct) / (len(lq) + len(ld)) * 100, 3)
        return {"query": zq, "database": zd}, {"test_accuracy": acc}

    with rt.timed("features"):
        tensors, meta, key = rt.cache.get_or_build("features", features_spec(ckpt_key, data, rt.precision, sub), build)
    check_finite("database features", tensors["database"])
    rt.keys["features"] = key
    return tensors, meta["test_accuracy"]
