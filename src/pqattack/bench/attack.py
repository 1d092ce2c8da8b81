"""Attack figures: PGD queries per second through ``RetrievalModel``, fast path against plain float32."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..runtime import resolve_precision
from .measure import Measured, bf16_note, candidate_precisions, measure, step_seconds, sync
from .records import record
from .training import add_speed_notes
from .workloads import training_images


def attack_model(arch: str, device: torch.device, channels_last: bool) -> Any:
    from ..models import RetrievalModel, build_backbone

    g = torch.Generator().manual_seed(0)
    backbone = build_backbone(arch, 10).to(device)
    codebooks = torch.nn.functional.normalize(torch.randn(4, 16, backbone.embed_dim // 4, generator=g), dim=-1)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    model = RetrievalModel(backbone, codebooks.to(device), "dot", 1.0).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_attack(model: Any, images: torch.Tensor, batch: int, device: torch.device, precision: str,
               channels_last: bool) -> float:
    """Queries/s of 5-step PGD with the AOD loss over ``images`` in batches (the loop of
    ``stages.attack.attack_queries``), from the median batch."""
    from ..attacks import AttackConfig, pgd

    cfg = AttackConfig(name="aod", loss="aod")
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else _null()
    sync(device)
    ends = [time.perf_counter()]
    for i in range(0, len(images) - batch + 1, batch):
        x = images[i:i + batch].to(device).float() / 255
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            adv = pgd(model, x, "aod", cfg, generator=gen)
        torch.round(adv * 255).to(torch.uint8).cpu()
        sync(device)
        ends.append(time.perf_counter())
    return batch / step_seconds(ends, 1)


def _null() -> Any:
    from contextlib import nullcontext
    return nullcontext()


def figure_attack(arch: str, device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    bf, bb, nb = sz["attack_batch_fast"], sz["attack_batch_base"], sz["attack_batches"]
    images, _, source = training_images(max(bf, bb) * nb)
    rates: dict[str, float] = {}
    peaks: dict[str, Measured] = {}
    for precision in candidate_precisions(device):
        def fast(p: str = precision) -> tuple[float, dict[str, Any]]:
            model = attack_model(arch, device, True)
            run_attack(model, images[:bf], bf, device, p, True)  # warm-up (kernels, allocator)
            return run_attack(model, images[:bf * nb], bf, device, p, True), {}
        m = measure(device, fast)
        rates[precision], peaks[precision] = m.value, m

    def baseline() -> tuple[float, dict[str, Any]]:
        model = attack_model(arch, device, False)
        run_attack(model, images[:bb], bb, device, "fp32", False)
        return run_attack(model, images[:bb * nb], bb, device, "fp32", False), {}

    base = measure(device, baseline)
    best = max(rates, key=rates.get)  # type: ignore[arg-type]
    auto = resolve_precision("auto", device)  # what precision=auto (the default) runs
    notes = {"data": source, "attack": "PGD, AOD loss, eps 8/255, step 0.01, 5 iterations, random start, 8-bit output",
             "fast_batch": bf, "baseline_batch": bb, "timed_batches": nb,
             "fast_queries_per_s_fp32": round(rates["fp32"], 2),
             "fast_queries_per_s_bf16": round(rates["bf16"], 2) if "bf16" in rates else None, **bf16_note(device),
             "fast_precision": best, "framework_precision_auto": auto,
             "fast": "the loop of stages.attack.attack_queries: channels_last, the faster of fp32 and bf16 autocast (bf16 where native)",
             "baseline": "the same PGD, float32 eager NCHW", "torch_compile": "not used"}
    add_speed_notes(notes, rates, best, auto, arch, True, device)
    return [record(f"attack_{arch}", rates[best], base.value, "queries/s", peaks[best], base, notes)]


COST_LOSSES = ("apd", "aod", "basic", "margin", "center", "center_targeted", "far", "contrast")  # apd first


def figure_attack_losses(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """The cost of each loss beyond the paper against APD's: 5-step PGD on the same batches through one model,
    the losses interleaved round by round (so drifts in the machine's speed hit all of them alike), each round
    starting one loss later (over 7 rounds, each loss takes each place once); one record per loss: the median
    over ``attack_cost_rounds`` rounds of its time as a multiple of APD's in the same round (target: at most
    1.10), and in the notes the median seconds per batch and the per-round ratios. The centre-code losses get
    random anchor codes (finding the nearest centre runs once per query set, outside the loop), the contrastive
    loss random class spreads (its reference is computed inside the timed call, as the others' is inside PGD)."""
    from dataclasses import replace

    from ..attacks import AttackConfig, pgd, reference

    arch, batch, rounds = sz["attack_cost_arch"], sz["attack_cost_batch"], sz["attack_cost_rounds"]
    images, _, source = training_images(batch)
    model = attack_model(arch, device, True)
    m, k = model.codebooks.shape[:2]
    g = torch.Generator().manual_seed(0)
    anchors = torch.randint(0, k, (batch, m), generator=g).to(device)
    spreads = (torch.rand(2, batch, m, k, generator=g) + 0.1).to(device)
    x = (images.to(device).float() / 255).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else _null()

    def one(loss: str) -> float:
        cfg = AttackConfig(name=loss, loss=loss)
        gen = torch.Generator(device=device).manual_seed(0)
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            refs = ([replace(reference(model, x, cfg.peak), spread=spreads[0], baseline=spreads[1])]
                    if loss == "contrast" else None)
            pgd(model, x, loss, cfg, generator=gen, anchors=anchors if loss.startswith("center") else None,
                references=refs)
        sync(device)
        return time.perf_counter() - t0

    for loss in COST_LOSSES:  # warm-up: kernels, allocator
        one(loss)
    times: dict[str, list[float]] = {loss: [] for loss in COST_LOSSES}
    for r in range(rounds):  # each round in another order, so that a loss's place in the round favours none
        for loss in COST_LOSSES[r % len(COST_LOSSES):] + COST_LOSSES[:r % len(COST_LOSSES)]:
            times[loss].append(one(loss))
    med = {loss: sorted(t)[len(t) // 2] for loss, t in times.items()}
    # each loss against APD within a round, then the median over the rounds: a slow stretch of the machine
    # touches both sides of a ratio
    ratios = {loss: [a / b for a, b in zip(times[loss], times["apd"])] for loss in COST_LOSSES}
    notes = {"data": source, "model": arch, "batch": batch, "rounds": rounds,
             "attack": "PGD, eps 8/255, step 0.01, 5 iterations, random start, 8-bit output",
             "seconds_per_batch": {loss: round(s, 4) for loss, s in med.items()},
             "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
    return [record(f"attack_cost_{loss}", sorted(ratios[loss])[rounds // 2], None, "x APD", None, None,
                   {**notes, "ratios_per_round": [round(r, 3) for r in ratios[loss]]})
            for loss in COST_LOSSES if loss != "apd"]
