"""Input-transformation defenses: JPEG compression and bit-depth reduction of the queries before the backbone, and
their BPDA form for adaptive attacks (Athalye et al. 2018): the transform forward, the identity backward."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..models.backbones import Backbone
from .config import BitDepthConfig, DefenseConfig, JpegConfig


def jpeg(x: torch.Tensor, quality: list[int]) -> torch.Tensor:
    """Images in [0, 1] ``[B, 3, H, W]`` rounded to 8 bits, JPEG-encoded at ``quality[i]`` and decoded (libjpeg
    through torchvision, on the CPU); float32 in [0, 1] on ``x``'s device."""
    from torchvision.io import decode_jpeg, encode_jpeg

    pixels = torch.round(x.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()
    decoded = [decode_jpeg(encode_jpeg(image.contiguous(), quality=q)) for image, q in zip(pixels, quality)]
    return (torch.stack(decoded).float() / 255).to(x.device)


def bit_depth(x: torch.Tensor, depth: int) -> torch.Tensor:
    """Images in [0, 1] reduced to ``depth`` bits per channel: round(x (2^d - 1)) / (2^d - 1)."""
    levels = 2 ** depth - 1
    return torch.round(x.detach().float().clamp(0, 1) * levels) / levels


class StraightThrough(torch.autograd.Function):
    """``forward(x, y) = y``; the gradient goes to ``x`` unchanged (BPDA with the identity)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return y

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


class QueryTransform:
    """A defense's query transform. ``transform(x)`` applies it; ``bpda(x)`` is T(x) forward and the identity
    backward, through which an adaptive attack differentiates. A random transform (JPEG with ``quality_min``) draws
    from its own seeded generator, per image and call, so each call (each EOT sample) is a new draw; ``reseed(tag)``
    restarts the draws from a seed fixed by the job's seed and ``tag``, so that what one pass (an attack, an
    evaluation) draws does not depend on the passes before it."""

    def __init__(self, cfg: DefenseConfig, seed: int) -> None:
        if not cfg.transform:
            raise ValueError(f"defense={cfg.kind} transforms no query")
        self.cfg, self.seed = cfg, seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, tag: str) -> None:
        digest = hashlib.sha256(f"{self.seed}:{tag}".encode()).digest()
        self.generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.cfg, BitDepthConfig):
            return bit_depth(x, self.cfg.depth)
        assert isinstance(self.cfg, JpegConfig)
        hi, lo = self.cfg.quality, self.cfg.quality_min
        quality = [hi] * len(x) if lo is None else torch.randint(lo, hi + 1, (len(x),),
                                                                 generator=self.generator).tolist()
        return jpeg(x, quality)

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        y = self.transform(x).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return StraightThrough.apply(x, y)


class DefendedBackbone(Backbone):
    """A backbone behind a query transform: ``forward_features(x) = backbone.forward_features(T(x))`` with T in its
    BPDA form, so that attacks through it are adaptive; ``inner`` is the bare backbone."""

    def __init__(self, inner: Backbone, transform: QueryTransform) -> None:
        nn.Module.__init__(self)
        self.inner = inner
        self.query_transform = transform
        self.embed_dim = inner.embed_dim
        self.head = inner.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(self.query_transform.bpda(x))
