"""One L-inf PGD loop for every attack (AdverTorch ``LinfPGDAttack`` semantics); attacks differ only
by their loss (``losses.LOSSES``)."""

from __future__ import annotations

from typing import Callable

import torch

from ..models.retrieval import RetrievalModel
from .config import AttackConfig
from .losses import LOSSES, Reference

Loss = Callable[[torch.Tensor, torch.Tensor, Reference], torch.Tensor]


@torch.no_grad()
def reference(model: RetrievalModel, x: torch.Tensor, peak: str = "index") -> Reference:
    """The clean query's features, log soft assignment and peak codes (float32 whatever the autocast)."""
    z, logp = model(x)
    codes = model.index_codes(z) if peak == "index" else model.argmax_codes(z)
    return Reference(z, logp, codes)


def pgd(model: RetrievalModel, images: torch.Tensor, loss_fn: Loss | str, cfg: AttackConfig,
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
