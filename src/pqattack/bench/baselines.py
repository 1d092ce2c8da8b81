"""The plain reference implementations the fast paths are measured against: the code a researcher writes first
(float32, eager, per-item DataLoader; brute-force torch distances, ``argsort``, a float64 mAP position by position)."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from .measure import batch_seconds, step_seconds, sync, waits_after


class _DecodedImages(torch.utils.data.Dataset):
    """A torchvision-style dataset of decoded images (uint8 HWC), transformed per item on the CPU."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from torchvision import transforms

        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                             transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def baseline_train_throughput(arch: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                              batch: int, warmup: int, steps: int, workers: int) -> float:
    """Images/s of the plain loop: DataLoader (per-item crop + flip + ToTensor), float32, eager, SGD."""
    from ..models import build_backbone

    loader = torch.utils.data.DataLoader(_DecodedImages(images, labels), batch_size=batch, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda", drop_last=True)
    net = build_backbone(arch, 10).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    ends = []
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if waits_after(i, warmup, steps, device):  # as the framework's side is timed (batch_seconds)
            sync(device)
        ends.append(time.perf_counter())
        if i + 1 == warmup + steps:
            break
    return batch / batch_seconds(ends, warmup, device)



def _plain_tie_groups(sorted_dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last position of each position's group of equal distances, through cummax/cummin."""
    q, n = sorted_dist.shape
    pos = torch.arange(n).expand(q, n)
    new_group = torch.ones(q, n, dtype=torch.bool)
    new_group[:, 1:] = sorted_dist[:, 1:] != sorted_dist[:, :-1]
    group_end = torch.ones(q, n, dtype=torch.bool)
    group_end[:, :-1] = new_group[:, 1:]
    start = torch.where(new_group, pos, 0).cummax(1).values
    end = torch.where(group_end, pos, n - 1).flip(1).cummin(1).values.flip(1)
    return start, end


def plain_grouped_average_precision(sorted_dist: torch.Tensor, sorted_rel: torch.Tensor) -> torch.Tensor:
    """The straightforward grouped AP (sklearn semantics) in float64 torch: precision at each position's tie-group
    end through cummax/cummin."""
    _, end = _plain_tie_groups(sorted_dist)
    rel = sorted_rel.to(torch.float64)
    precision_at_end = (rel.cumsum(1) / torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)).gather(1, end)
    r = rel.sum(1)
    ap = (rel * precision_at_end).sum(1) / r.clamp_min(1)
    return torch.where(r > 0, ap, torch.zeros_like(ap))


def _expected_precision_terms(sorted_dist: torch.Tensor, sorted_rel: torch.Tensor) -> torch.Tensor:
    """Per position, term by term: the expected precision there times the chance that a relevant item sits there,
    under a uniformly random order of each tie group. At position p, j-th of a group of n items (r relevant) that
    starts at s after R relevant items: (r/n) (R + 1 + (j-1)(r-1)/(n-1)) / (s + j)."""
    start, end = _plain_tie_groups(sorted_dist)
    rel = sorted_rel.to(torch.float64)
    cum = torch.cat([torch.zeros(len(rel), 1, dtype=torch.float64), rel.cumsum(1)], 1)
    before, through = cum.gather(1, start), cum.gather(1, end + 1)
    n, r = (end - start + 1).to(torch.float64), through - before
    j = (torch.arange(rel.shape[1]) - start + 1).to(torch.float64)
    others = torch.where(n > 1, (j - 1) * (r - 1) / (n - 1).clamp_min(1), torch.zeros_like(n))
    return r / n * (before + 1 + others) / (start + j)


def plain_expected_average_precision(sorted_dist: torch.Tensor, sorted_rel: torch.Tensor, k: int | None = None,
                                     group_at_k: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The expected AP under a uniformly random order of tied items, summed position by position in float64
    (no closed form). With ``k``: AP@k normalised by the relevant items in the top k; the tie group at position k
    (n items, r relevant: counted in ``sorted_dist``, which then holds it whole, or given per query by
    ``group_at_k``) puts x of its r relevant items in the top k with the hypergeometric probability
    C(r, x) C(n - r, m - x) / C(n, m) (from log-gamma), m its slots in the top k; given x, the terms of its first m
    positions are as above with r -> x, n -> m. A query without a relevant item in its top k gets 0."""
    terms = _expected_precision_terms(sorted_dist, sorted_rel)
    rel = sorted_rel.to(torch.float64)
    if k is None or (k >= rel.shape[1] and group_at_k is None):
        r = rel.sum(1)
        return torch.where(r > 0, terms.sum(1) / r.clamp_min(1), torch.zeros_like(r))
    out = torch.zeros(len(rel), dtype=torch.float64)
    start, end = _plain_tie_groups(sorted_dist)
    for i in range(len(rel)):
        s, e = int(start[i, k - 1]), int(end[i, k - 1])
        n, m, r_before = e - s + 1, k - s, int(rel[i, :s].sum())
        r = int(rel[i, s:e + 1].sum())
        if group_at_k is not None:
            n, r = int(group_at_k[0][i]), int(group_at_k[1][i])
        pre = float(terms[i, :s].sum())
        j = np.arange(1, m + 1, dtype=np.float64)
        first, later = (1 / (s + j)).sum(), ((j - 1) / (s + j)).sum()  # the j-sums of the terms, for any x
        lc = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # noqa: E731  log C(a, b)
        x = np.arange(max(0, m - (n - r)), min(r, m) + 1, dtype=np.float64)
        p = np.exp([lc(r, v) + lc(n - r, m - v) - lc(n, m) for v in x])
        part = x / m * ((r_before + 1) * first + (x - 1) / max(m - 1, 1) * later)
        hits = r_before + x
        out[i] = float((p * (pre + part) / np.maximum(hits, 1))[hits > 0].sum())
    return out


def plain_maps(sorted_dist: torch.Tensor, ids: torch.Tensor, ql: torch.Tensor, dl: torch.Tensor,
               k: int | None = None, group_at_k: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> dict[str, float]:
    """The expected and the grouped mAP (percent) of a ranking, by the plain functions above."""
    rel = dl[ids] == ql[:, None]
    grouped = plain_grouped_average_precision(sorted_dist[:, :k], rel[:, :k])
    return {"map": float(plain_expected_average_precision(sorted_dist, rel, k, group_at_k).mean()) * 100,
            "map_grouped": float(grouped.mean()) * 100}


def reconstruct(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    return codebooks[torch.arange(codebooks.shape[0]), codes].reshape(len(codes), -1)


def brute_distances(y: torch.Tensor, xh: torch.Tensor) -> torch.Tensor:
    """Squared distances ||y||^2 - 2 y.x + ||x||^2 in float32 (one GEMM)."""
    return (y * y).sum(1, keepdim=True) - 2 * y @ xh.T + (xh * xh).sum(1)[None]



def brute_chunks(y: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor, chunk: int = 16384):  # noqa: ANN201
    """``(first id, [Q, chunk] distances)`` per database chunk: reconstruct, ||y||^2 - 2y.x + ||x||^2 (GEMM)."""
    yy = (y * y).sum(1, keepdim=True)
    for lo in range(0, len(codes), chunk):
        xh = reconstruct(codebooks, codes[lo:lo + chunk])
        yield lo, yy - 2 * y @ xh.T + (xh * xh).sum(1)[None] + 0.0


def brute_count_at(y: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor, dist: torch.Tensor,
                   relevant: Callable[[torch.Tensor], torch.Tensor], chunk: int = 16384
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the items at exactly the distance ``dist[q]`` and the relevant ones (``relevant(ids)`` is
    ``[Q, len(ids)]`` bool), over the database in chunks."""
    items = relevant_items = torch.zeros(len(y), dtype=torch.int64)
    for lo, d in brute_chunks(y, codebooks, codes, chunk):
        at = d == dist[:, None]
        items = items + at.sum(1)
        relevant_items = relevant_items + (at & relevant(torch.arange(lo, lo + d.shape[1]))).sum(1)
    return items, relevant_items


def brute_topk(y: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor, k: int, chunk: int = 16384
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top k in database chunks: reconstruct, GEMM distances, ``topk`` per chunk merged with the running top
    k. Ties at the k-th distance go to the lower id (as FAISS's heap does): the top k is taken on int64 keys
    (distance bits, id)."""
    n = len(codes)
    id_bits = max(1, (n - 1).bit_length())
    best = None
    for lo, d in brute_chunks(y, codebooks, codes, chunk):
        bits = d.view(torch.int32).long()
        bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        keys = (bits << id_bits) | torch.arange(lo, lo + d.shape[1])
        if best is not None:
            keys = torch.cat([best, keys], 1)
        best = keys.topk(min(k, keys.shape[1]), dim=1, largest=False, sorted=False).values
    best = best.sort(dim=1).values
    bits = best >> id_bits
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.int().view(torch.float32), best & ((1 << id_bits) - 1)

