"""One L-inf PGD loop for every attack (AdverTorch ``LinfPGDAttack`` semantics); attacks differ only
by their loss (``losses.LOSSES``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..models.retrieval import RetrievalModel
from .losses import LOSSES, PEAKS, Reference

Loss = Callable[[torch.Tensor, torch.Tensor, Reference], torch.Tensor]


@dataclass
class PGDConfig:
    eps: float = 8 / 255
    step: float = 0.01
    iters: int = 5
    random_start: bool = True
    quantize_8bit: bool = True
    peak: str = "index"  # the clean query's peak codes: index (eq. 1) | argmax (eq. 6)

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(f"attack.eps={self.eps}: must be in (0, 1] (pixel scale [0, 1]; 8/255 is the paper's)")
        if self.step <= 0:
            raise ValueError(f"attack.step={self.step}: must be > 0")
        if self.iters < 1:
            raise ValueError(f"attack.iters={self.iters}: must be >= 1")
        if self.peak not in PEAKS:
            raise ValueError(f"attack.peak={self.peak!r}: expected one of {', '.join(PEAKS)}")


@torch.no_grad()
def reference(model: RetrievalModel, x: torch.Tensor, peak: str = "index") -> Reference:
    """The clean query's features, log soft assignment and peak codes (float32 whatever the autocast)."""
    z, logp = model(x)
    codes = model.index_codes(z) if peak == "index" else model.argmax_codes(z)
    return Reference(z, logp, codes)


def pgd(model: RetrievalModel, images: torch.Tensor, loss_fn: Loss | str, cfg: PGDConfig,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximise ``loss_fn`` over ``||delta||_inf <= eps`` for images in [0, 1].

    ``model(x)`` returns ``(z, log p^)`` (``RetrievalModel``). Uniform random start in [-eps, eps], then
    ``iters`` steps of ``delta += step * sign(grad)``, each projected to the eps-ball and to [0, 1].
    With ``quantize_8bit`` the result is rounded to the 8-bit grid (stays in the ball for 8-bit inputs).
    """
    loss_fn = LOSSES[loss_fn] if isinstance(loss_fn, str) else loss_fn
    x = images.detach()
    ref = reference(model, x, cfg.peak)
    if cfg.random_start:
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * cfg.eps
        delta = (x + delta).clamp(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    for _ in range(cfg.iters):
        delta.requires_grad_(True)
        z_adv, logp_adv = model(x + delta)
        loss = loss_fn(z_adv, logp_adv, ref).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + cfg.step * grad.sign()
            delta = delta.clamp(-cfg.eps, cfg.eps)
            delta = (x + delta).clamp(0, 1) - x
    x_adv = (x + delta).detach()
    if cfg.quantize_8bit:
        x_adv = torch.round(x_adv * 255) / 255
    return x_adv
