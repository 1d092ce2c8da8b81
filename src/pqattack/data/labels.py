"""Labels are single-label (int64 ``[N]``, e.g. CIFAR-10) or multi-label (multi-hot bool ``[N, C]``, e.g.
NUS-WIDE). Two images are relevant to each other when they share a label (at least one concept)."""

from __future__ import annotations

import torch


def is_multilabel(labels: torch.Tensor) -> bool:
    return labels.ndim == 2


def shares_label(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[A, B]`` bool: do item i of ``a`` and item j of ``b`` share a label (a concept, when multi-label)."""
    if is_multilabel(a):
        return (a.float() @ b.float().T) > 0
    return a[:, None] == b[None, :]


def top1_hit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: is the highest-scoring class one of the image's labels (top-1 accuracy; for multi-label
    data the usual precision@1)."""
    pred = logits.argmax(1)
    if is_multilabel(labels):
        return labels.bool().gather(1, pred[:, None].to(labels.device)).squeeze(1)
    return pred == labels.to(pred.device)
