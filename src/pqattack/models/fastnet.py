"""fastnet: a small CIFAR backbone co-designed with a fast training recipe, after the published ideas of
airbench (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024).

Shape, for 32x32 inputs:
- stem: a 2x2 convolution without padding (3 -> 24 channels, 32 -> 31 pixels) and GELU. Its weights are set
  from the training images (``init_from_images``): the eigenvectors of the covariance of 2x2 patches, each
  scaled by 1 / sqrt(eigenvalue + eps), and their negatives, so the stem whitens patches. They are not
  trained; the stem's bias is.
- three blocks of widths ``widths`` (64/256/256): conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN ->
  GELU (31 -> 15 -> 7 -> 3 pixels); a 3x3 max-pool to 1x1.
- BatchNorm without a trained scale (fixed at 1; only the shift trains); every 3x3 conv starts as a
  partial identity (Dirac on its first ``in_channels`` filters).
- embedding: the ``widths[-1]``-d pooled output (``neck``: then a batch norm without affine, ``bn``, or its
  centring alone, ``centre``); head: a bias-free linear layer whose logits are scaled by
  ``logit_scale`` (1/9).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone, Normalize

STEM_KERNEL = 2
STEM_WIDTH = 2 * 3 * STEM_KERNEL ** 2  # every whitened direction and its negative


class ScaledLinear(nn.Linear):
    """``scale * (x W^T)``: a bias-free linear head with a fixed output scale."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class Centre(nn.Module):
    """``x - mean``: the batch's mean in training (which also updates a running mean), the running mean in eval;
    batch norm's centring without its scaling."""

    def __init__(self, features: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x - self.running_mean.to(x.dtype)
        mean = x.mean(0)
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().float(), self.momentum)
        return x - mean


NECKS = ("bn", "centre")


def _neck(kind: str | None, features: int) -> list[nn.Module]:
    """The modules between the pooled output and the head (their output is the embedding)."""
    if kind is None:
        return []
    if kind not in NECKS:
        raise ValueError(f"model.neck={kind!r}: expected one of {', '.join(NECKS)}, or null")
    return [nn.BatchNorm1d(features, affine=False) if kind == "bn" else Centre(features)]


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(cin, cout)])
    return conv


def _norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, bn_momentum: float) -> None:
        super().__init__(_conv3x3(cin, cout), nn.MaxPool2d(2), _norm(cout, bn_momentum), nn.GELU(),
                         _conv3x3(cout, cout), _norm(cout, bn_momentum), nn.GELU())


class FastNet(Backbone):
    """See the module docstring. ``init_from_images`` must run once before training from scratch."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (64, 256, 256), bn_momentum: float = 0.4,
                 logit_scale: float = 1 / 9, whiten_eps: float = 5e-4, whiten_images: int = 5000,
                 neck: str | None = None) -> None:
        stem = nn.Conv2d(3, STEM_WIDTH, STEM_KERNEL, bias=True)
        stem.weight.requires_grad_(False)
        nn.init.zeros_(stem.bias)
        blocks, cin = [], STEM_WIDTH
        for w in widths:
            blocks.append(ConvBlock(cin, w, bn_momentum))
            cin = w
        body = nn.Sequential(stem, nn.GELU(), *blocks, nn.MaxPool2d(3), nn.Flatten(), *_neck(neck, widths[-1]))
        super().__init__(body, widths[-1], num_classes)
        self.head = ScaledLinear(widths[-1], num_classes, logit_scale)
        self.whiten_eps, self.whiten_images = whiten_eps, whiten_images

    @property
    def stem(self) -> nn.Conv2d:
        return self.body[0]

    @torch.no_grad()
    def init_from_images(self, images: torch.Tensor) -> None:
        """Set the stem to whiten 2x2 patches of (normalised) ``images`` (uint8 ``[N, 3, H, W]``).

        Uses at most ``whiten_images`` images, evenly spaced through the set, so the result depends only on
        the images (no random draw); the covariance is accumulated in float64 on the CPU."""
        step = max(1, len(images) // self.whiten_images)
        chosen = images[::step][:self.whiten_images]
        k = STEM_KERNEL
        cov = torch.zeros(3 * k * k, 3 * k * k, dtype=torch.float64)
        count = 0
        normalize = Normalize(*self.normalize.values)  # on the CPU: the module may already be on the GPU
        for i in range(0, len(chosen), 500):
            x = normalize(chosen[i:i + 500].cpu().float().div(255))
            patches = x.unfold(2, k, 1).unfold(3, k, 1)                     # [B, C, H', W', k, k]
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k).double()
            cov += patches.T @ patches
            count += len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov / count)        # ascending
        scaled = (eigenvectors / (eigenvalues + self.whiten_eps).sqrt()).T.flip(0)  # rows: largest first
        weight = torch.cat([scaled, -scaled]).view(STEM_WIDTH, 3, k, k)
        self.stem.weight.copy_(weight.to(self.stem.weight))
