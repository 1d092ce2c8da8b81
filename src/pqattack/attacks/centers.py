"""Centre codes: for each class, the per-sub-space majority codeword over the database items of that class (the PQ
analogue of the anchor, centre and mainstay codes of the hashing attacks DHTA, CgAT and SAAT); with multi-label
data, over the items that carry each concept. And the classes the centre-code attacks aim at."""

from __future__ import annotations

import torch
from torch.nn.functional import one_hot

from .losses import sdc_table


def code_counts(db_codes: torch.Tensor, db_labels: torch.Tensor, num_classes: int, K: int) -> torch.Tensor:  # noqa: N803
    """``[C, M, K]`` float64: per class c, sub-space m and code k, how many database items of class c (``db_labels``
    int ``[N]``, or multi-hot ``[N, C]``: the items carrying concept c) have code k in sub-space m."""
    members = (db_labels.bool() if db_labels.ndim == 2 else
               one_hot(db_labels.long(), num_classes)).to(torch.float64)  # [N, C]
    return torch.stack([members.T @ one_hot(db_codes[:, m].long(), K).to(torch.float64)
                        for m in range(db_codes.shape[1])], 1)


def center_codes(db_codes: torch.Tensor, db_labels: torch.Tensor, num_classes: int, K: int) -> torch.Tensor:  # noqa: N803
    """``[C, M]`` int64: per class c and sub-space m, the code most frequent among the database items of class c
    (``db_labels`` int ``[N]``, or multi-hot ``[N, C]``: the items carrying concept c); ties go to the smaller code.
    A class without database items gets -1."""
    votes = code_counts(db_codes, db_labels, num_classes, K)
    out = votes.argmax(2)  # the first maximum: the smaller code
    out[votes[:, 0].sum(1) == 0] = -1
    return out


def class_spreads(db_codes: torch.Tensor, db_labels: torch.Tensor, num_classes: int, table: torch.Tensor
                  ) -> torch.Tensor:
    """``[C + 1, M, K]`` float32: per class c (labels as :func:`code_counts`) and sub-space m, each codeword's mean
    SDC distance sum_j h_cm(j) T_m[k, j] to the class's database items, h_cm the histogram of their codes
    ``db_codes [N, M]``; the last row over all items. ``table [M, K, K]`` is SDC's. A class without database items
    gets NaN."""
    every_item = one_hot(db_codes.long(), table.shape[1]).to(torch.float64).sum(0, keepdim=True)  # [1, M, K]
    counts = torch.cat([code_counts(db_codes, db_labels, num_classes, table.shape[1]), every_item])
    hist = counts / counts.sum(2, keepdim=True)
    return torch.einsum("cmj,mkj->cmk", hist, table.double()).float()


def nearest_centers(query_codes: torch.Tensor, centers: torch.Tensor, sdc_table: torch.Tensor) -> torch.Tensor:
    """``[B]``: for each query code ``[B, M]``, the class whose centre code is nearest in SDC distance
    (sum_m T[m, b_m, c_m], ``sdc_table`` ``[M, K, K]``); classes without a centre are skipped, ties go to the
    smaller class."""
    valid = (centers >= 0).all(1)
    m = torch.arange(centers.shape[1])
    dist = sdc_table[m[None, None, :], query_codes[:, None, :], centers.clamp_min(0)[None, :, :]].sum(-1)  # [B, C]
    return dist.masked_fill(~valid[None], float("inf")).argmin(1)


def random_other_classes(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``[B]``: per query a class drawn uniformly from those it does not belong to (int ``[B]`` labels: the other
    classes; multi-hot ``[B, C]``: the concepts it lacks, or any concept when it carries all)."""
    if labels.ndim == 1:
        shift = torch.randint(1, num_classes, (len(labels),), generator=generator)
        return (labels.long() + shift) % num_classes
    lacks = ~labels.bool()
    lacks[~lacks.any(1)] = True
    weights = lacks.to(torch.float64)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def batch_anchors(codes: torch.Tensor, labels: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``[B, M]`` anchors of the untargeted centre-code attack for a training batch (``defense.attack=center``):
    centre codes taken from the batch itself (per class, the majority of the ``codes [B, M]`` of its images; int
    ``[B]`` or multi-hot ``[B, C]`` ``labels``), and for each image the centre nearest to its code in SDC distance
    under ``codebooks [M, K, d]``, the class the attack picks against a model without a classifier."""
    num_classes = labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1
    cpu_codes = codes.cpu()
    centers = center_codes(cpu_codes, labels.cpu(), num_classes, codebooks.shape[1])
    return centers[nearest_centers(cpu_codes, centers, sdc_table(codebooks).cpu())].to(codes.device)
