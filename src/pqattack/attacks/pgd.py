"""One L-inf PGD loop for every attack (AdverTorch ``LinfPGDAttack`` semantics); attacks differ only by their loss
(``losses.LOSSES``). The loop's options, each off by default (the loop is then exactly PQ-AG's): restarts,
momentum (MI-FGSM), input diversity (DI), a cosine step schedule, expectation over a random query transform (EOT),
a uniform dither of each gradient evaluation's input, an annealed soft-assignment temperature with per-sub-space
logit normalisation, and several source models at once (an ensemble, for transfer)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..models.retrieval import RetrievalModel
from .config import AttackConfig
from .losses import CENTER_LOSSES, Loss, Reference, codeword_spread, loss_for

#: picks, per query, one of several restarts: ``(candidates [R] of [B, ...] images) -> [B]`` int64 indices
Pick = Callable[[list[torch.Tensor]], torch.Tensor]
#: called after each step with ``(step, x + delta)``, step counted from 1
StepHook = Callable[[int, torch.Tensor], None]


@torch.no_grad()
def reference(model: RetrievalModel, x: torch.Tensor, peak: str = "index", anchor: torch.Tensor | None = None
              ) -> Reference:
    """The clean query's features, log soft assignment and peak codes (float32 whatever the autocast), the
    codewords' distances to the peak codes (``far``'s weights), and the anchor codes of the centre-code losses when
    given."""
    z, logp = model(x)
    codes = model.index_codes(z) if peak == "index" else model.argmax_codes(z)
    return Reference(z, logp, codes, anchor, codeword_spread(model.codebooks, codes))


def step_sizes(cfg: AttackConfig) -> list[float]:
    """The step of each iteration: ``attack.step`` throughout, or with ``step_schedule=cosine`` the cosine decay
    step * (1 + cos(pi t / iters)) / 2, t = 0..iters-1 (the first step full, none zero)."""
    if cfg.step_schedule == "cosine":
        return [cfg.step * (1 + math.cos(math.pi * t / cfg.iters)) / 2 for t in range(cfg.iters)]
    return [cfg.step] * cfg.iters


def temperatures(base: float, cfg: AttackConfig) -> list[float]:
    """The soft assignment's temperature at each iteration: ``base`` throughout, or with ``temperature_final``
    the geometric schedule from ``base`` (soft) to ``temperature_final`` (hard) over the iterations."""
    if cfg.temperature_final is None:
        return [base] * cfg.iters
    span = max(cfg.iters - 1, 1)
    return [base * (cfg.temperature_final / base) ** (t / span) for t in range(cfg.iters)]


def dithered(x: torch.Tensor, width: float, generator: torch.Generator | None) -> torch.Tensor:
    """``x`` plus uniform noise in [-width / 2, width / 2) per pixel, clipped to [0, 1]. Before a uniform quantiser
    of step ``width`` (a bit-depth query transform), the expected quantised image is ``x`` itself (away from the
    clipping), so BPDA's identity backward is the exact gradient of E[T(x + r)]."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5
    return (x + noise * width).clamp(0, 1)


def diverse_input(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Input diversity (DI, Xie et al. 2019): with probability ``p``, resize the batch to a random r x r with
    r in [0.875 s, s) (nearest) and zero-pad it at a random offset back to s x s, the size the backbones expect;
    one draw per batch and step."""
    dev = x.device
    if float(torch.rand((), generator=generator, device=dev)) >= p:
        return x
    size = x.shape[-1]
    r = int(torch.randint(size - max(1, size // 8), size, (), generator=generator, device=dev))
    left, top = (int(v) for v in torch.randint(0, size - r + 1, (2,), generator=generator, device=dev))
    small = nn.functional.interpolate(x, size=(r, r), mode="nearest")
    return nn.functional.pad(small, (left, size - r - left, top, size - r - top))


class Objective:
    """The attacker's loss of images ``x``: ``loss_fn`` per query, averaged over the source models, each against its
    own reference. Off the plain path (an annealed temperature, or ``logit_norm``) the soft assignment is computed
    here at the step's temperature, for the adversarial and the clean query alike (AOD's target moves with it);
    with ``logit_norm`` each sub-space's similarities are standardised first (mean 0, std 1 over the K codes, the
    std detached), so that the temperature is in units of their spread."""

    def __init__(self, models: list[RetrievalModel], refs: list[Reference], loss_fn: Loss, cfg: AttackConfig) -> None:
        self.models, self.refs, self.loss_fn = models, refs, loss_fn
        self.plain = cfg.temperature_final is None and not cfg.logit_norm
        self.logit_norm = cfg.logit_norm

    def log_assignment(self, model: RetrievalModel, z: torch.Tensor, temperature: float) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            sim = model.assignment_logits(z, temperature=1.0)
            if self.logit_norm:
                sim = (sim - sim.mean(-1, keepdim=True)) / sim.std(-1, keepdim=True).detach().clamp_min(1e-12)
            return torch.log_softmax(sim / temperature, dim=-1)

    def __call__(self, x: torch.Tensor, temperatures: list[float]) -> torch.Tensor:
        """``[B]`` loss; ``temperatures`` holds each model's temperature at this step."""
        losses = []
        for model, ref, t in zip(self.models, self.refs, temperatures):
            if self.plain:
                z, logp = model(x)
            else:
                z = model.features(x)
                logp = self.log_assignment(model, z, t)
                ref = replace(ref, logp=self.log_assignment(model, ref.z, t))
            losses.append(self.loss_fn(z, logp, ref))
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean(0)


def pgd(model: RetrievalModel | Sequence[RetrievalModel], images: torch.Tensor, loss_fn: Loss | str,
        cfg: AttackConfig, generator: torch.Generator | None = None,
        anchors: torch.Tensor | Sequence[torch.Tensor | None] | None = None, pick: Pick | None = None,
        on_step: StepHook | None = None, reference_models: Sequence[RetrievalModel] | None = None,
        references: Sequence[Reference] | None = None) -> torch.Tensor:
    """Maximise ``loss_fn`` over ``||delta||_inf <= eps`` for images in [0, 1].

    ``model(x)`` returns ``(z, log p^)`` (``RetrievalModel``); a sequence of models is an ensemble whose losses are
    averaged (``anchors`` then one per model). Uniform random start in [-eps, eps], then ``iters`` steps of
    ``delta += step_t * sign(g)``, each projected to the eps-ball and to [0, 1]; g is the gradient, or with
    ``momentum`` mu the MI-FGSM accumulator g <- mu g + grad / mean|grad|. With ``dither`` w, each evaluation of the
    loss sees x + delta + U[-w/2, w/2) (``eot`` n: the mean over n such draws). With ``quantize_8bit`` the result is
    rounded to the 8-bit grid (stays in the ball for 8-bit inputs). With ``restarts`` R, R runs from independent
    starts; per query the one with the largest final loss is kept, or the one ``pick`` chooses.
    ``reference_models``, one per model, give the clean queries' reference instead of the models themselves
    (``attack.reference=bare``: the bare backbone of a target behind a query transform). ``references``, one per
    model, are those references when the caller has them already (:func:`reference` of the same models, images,
    ``attack.peak`` and anchors: adversarial training computes them for its consistency term).
    """
    models = [model] if isinstance(model, RetrievalModel) else list(model)
    anchor_list = list(anchors) if isinstance(anchors, (list, tuple)) else [anchors] * len(models)
    if isinstance(loss_fn, str):
        if loss_fn in CENTER_LOSSES and any(a is None for a in anchor_list):
            raise ValueError(f"pgd: the {loss_fn} loss needs the anchor codes of its queries (anchors=)")
        if loss_fn == "contrast" and references is None:
            raise ValueError("pgd: the contrast loss needs references with the class spreads of its queries "
                             "(references=; stages.attack.Source.contrast_reference)")
        loss_fn = loss_for(loss_fn, cfg)
    x = images.detach()
    ref_models = models if reference_models is None else list(reference_models)
    if len(ref_models) != len(models):
        raise ValueError(f"pgd: {len(ref_models)} reference models for {len(models)} models")
    refs = (list(references) if references is not None else
            [reference(m, x, cfg.peak, a) for m, a in zip(ref_models, anchor_list)])
    if len(refs) != len(models):
        raise ValueError(f"pgd: {len(refs)} references for {len(models)} models")
    objective = Objective(models, refs, loss_fn, cfg)
    if on_step is not None and cfg.restarts:
        raise ValueError("pgd: on_step follows one run; it cannot be combined with restarts")
    runs = [_run(objective, x, cfg, generator, on_step) for _ in range(cfg.restarts or 1)]
    if len(runs) == 1:
        return runs[0]
    if pick is not None:
        chosen = pick(runs)
    else:
        finals = [temperatures(m.temperature, cfg)[-1] for m in models]
        with torch.no_grad():
            chosen = torch.stack([objective(adv, finals) for adv in runs]).argmax(0)
    return torch.stack(runs)[chosen, torch.arange(len(x), device=x.device)]


def _run(objective: Objective, x: torch.Tensor, cfg: AttackConfig, generator: torch.Generator | None,
         on_step: StepHook | None) -> torch.Tensor:
    """One PGD run from its own random start."""
    if cfg.random_start:
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * cfg.eps
        delta = (x + delta).clamp(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    schedules = [temperatures(m.temperature, cfg) for m in objective.models]
    momentum = torch.zeros_like(x) if cfg.momentum else None
    for t, step in enumerate(step_sizes(cfg)):
        delta.requires_grad_(True)
        x_in = x + delta
        if cfg.diversity:
            x_in = diverse_input(x_in, cfg.diversity, generator)
        temps = [s[t] for s in schedules]

        def draw(x_in: torch.Tensor = x_in, temps: list[float] = temps) -> torch.Tensor:  # a random transform draws anew
            return objective(dithered(x_in, cfg.dither, generator) if cfg.dither else x_in, temps).sum()

        # expectation over transformation: the mean over eot draws of the transform and/or the dither
        loss = sum(draw() for _ in range(cfg.eot)) / cfg.eot if cfg.eot else draw()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if momentum is not None:
                momentum = cfg.momentum * momentum + grad / grad.abs().mean((1, 2, 3), keepdim=True).clamp_min(1e-12)
                grad = momentum
            delta = delta + step * grad.sign()
            delta = delta.clamp(-cfg.eps, cfg.eps)
            delta = (x + delta).clamp(0, 1) - x
            if on_step is not None:
                on_step(t + 1, x + delta)
    x_adv = (x + delta).detach()
    if cfg.quantize_8bit:
        x_adv = torch.round(x_adv * 255) / 255
    return x_adv
