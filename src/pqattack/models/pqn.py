"""Product Quantization Network (PQN; Yu et al., ECCV 2018): a soft PQ layer trained jointly with the backbone.

Soft layer: split the embedding into M sub-vectors, l2-normalise each sub-vector x_m and each codeword c_mk,
    w_mk = softmax_k(alpha * <x_m, c_mk>),   s_m = sum_k w_mk c_mk.
Large alpha gives the hard assignment. Inference uses the hard code b_m = argmax_k <x_m, c_mk>; with unit
codewords and unit sub-vectors this equals FAISS's L2 encoding, so the learned codebooks load into the
same ``PQIndex`` as K-means codebooks (ADC: sum_m <q_m, c_{m,b_m}> ranks as the L2 ADC distance).

Losses (``quantizer.loss``):
- ``triplet`` (PQN's asymmetric triplet loss, the form chosen here): for an anchor a with a random positive
  p (same label) and negative n (other label) from the batch,
      L = max(0, margin + <x_a, s_n> / M - <x_a, s_p> / M),
  the anchor's raw (sub-normalised) feature against the soft-quantised features of the others;
- ``ce``: cross-entropy of the backbone's head on the soft-quantised feature s;
- ``triplet+ce``: their sum.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.labels import shares_label, top1_hit
from ..errors import NumericsError
from .backbones import Backbone
from .classifier import ClassifierModule


def subvector_normalize(x: torch.Tensor, M: int) -> torch.Tensor:  # noqa: N803
    """``[B, D]`` -> ``[B, D]`` with each of the M sub-vectors of unit length."""
    return nn.functional.normalize(x.float().view(x.shape[0], M, -1), dim=-1).view(x.shape[0], -1)


class SoftProductQuantizer(nn.Module):
    """The soft PQ layer; ``codebooks [M, K, D/M]`` are parameters (normalised when used)."""

    def __init__(self, codebooks: torch.Tensor, alpha: float = 10.0) -> None:
        super().__init__()
        self.codebooks = nn.Parameter(codebooks.detach().float().clone())
        self.alpha = alpha

    @property
    def M(self) -> int:  # noqa: N802
        return self.codebooks.shape[0]

    def unit_codebooks(self) -> torch.Tensor:
        return nn.functional.normalize(self.codebooks, dim=-1)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x [B, M, d] unit sub-vectors, s [B, M, d] soft-quantised, w [B, M, K] soft assignment)``."""
        x = nn.functional.normalize(embedding.float().view(embedding.shape[0], self.M, -1), dim=-1)
        c = self.unit_codebooks()
        w = torch.softmax(self.alpha * torch.einsum("bmd,mkd->bmk", x, c), dim=-1)
        return x, torch.einsum("bmk,mkd->bmd", w, c), w

    def hard_codes(self, embedding: torch.Tensor) -> torch.Tensor:
        """b_m = argmax_k <x_m, c_mk>, int64 ``[B, M]``."""
        x = nn.functional.normalize(embedding.float().view(embedding.shape[0], self.M, -1), dim=-1)
        return torch.einsum("bmd,mkd->bmk", x, self.unit_codebooks()).argmax(-1)


def asymmetric_triplet_loss(x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor, margin: float,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """max(0, margin + <x_a, s_n>/M - <x_a, s_p>/M) for one random positive and negative per anchor;
    anchors without a positive or a negative in the batch are skipped."""
    b, m = x.shape[:2]
    sims = torch.einsum("amd,bmd->ab", x, s) / m
    same = shares_label(labels, labels)  # multi-label: sharing at least one concept makes a positive
    eye = torch.eye(b, dtype=torch.bool, device=x.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return sims.sum() * 0.0
    noise = torch.rand(b, b, device=x.device, generator=generator)
    p = torch.where(pos, noise, -1.0).argmax(1)  # a random positive per anchor
    n = torch.where(neg, noise, -1.0).argmax(1)
    rows = torch.arange(b, device=x.device)
    loss = torch.relu(margin + sims[rows, n] - sims[rows, p])
    return loss[valid].mean()


class PQNModule(ClassifierModule):
    """Joint training of backbone and soft PQ codebooks (same optimiser, schedule and augmentation as the
    backbone's cross-entropy training)."""

    def __init__(self, backbone: Backbone, codebooks: torch.Tensor, alpha: float = 10.0, loss: str = "triplet",
                 margin: float = 0.1, **kw: object) -> None:
        super().__init__(backbone, **kw)
        self.soft_pq = SoftProductQuantizer(codebooks, alpha)
        self.pqn_loss, self.margin = loss, margin

    def on_train_start(self) -> None:
        """Nothing to initialise from the data: the backbone is already trained."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        sub, soft, _ = self.soft_pq(self.backbone.forward_features(self.augmented(images)))
        loss = torch.zeros((), device=images.device)
        if "triplet" in self.pqn_loss:
            loss = loss + asymmetric_triplet_loss(sub, soft, labels, self.margin)
        if "ce" in self.pqn_loss:
            logits = self.backbone.head(soft.flatten(1))
            loss = loss + self.loss(logits, labels)
            self.log("train/acc", top1_hit(logits, labels).float().mean(), on_epoch=True, on_step=False)
        if batch_idx % 50 == 0 and not torch.isfinite(loss):
            raise NumericsError(f"PQN training loss is {loss.item()} at step {self.global_step}: lower "
                                     f"quantizer.lr or alpha")
        self.log("train/pqn_loss", loss, prog_bar=self.step_value_on_progress_bar, on_step=True, on_epoch=True)
        return loss
