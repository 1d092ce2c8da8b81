"""Training figures: the framework's ``training.fit`` against the plain loop, and the recipe's wall time."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from ..runtime import resolve_precision
from .baselines import baseline_train_throughput
from .measure import Measured, batch_seconds, bf16_note, candidate_precisions, measure, sync, waits_after
from .records import record
from .workloads import CIFAR_TRAIN_IMAGES, RECIPE_EPOCHS, bench_data, training_images


def _timed_module(base: type, warmup: int, steps: int, device: torch.device) -> type:
    """``base`` recording the end of each of the first ``warmup + steps`` batches. On a GPU only the timed window's
    first and last ends wait for the GPU: a wait after every step would stop the queueing of the next one."""
    class Timed(base):  # type: ignore[misc, valid-type]
        ends: list[float] = []

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.current_epoch == 0 and batch_idx < warmup + steps:
                if waits_after(batch_idx, warmup, steps, device):
                    sync(device)
                self.ends = [*self.ends, time.perf_counter()]

    return Timed



def framework_fit(arch: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device, precision: str,
                  batch: int, epochs: int, warmup: int, steps: int, compile: bool = False) -> tuple[float, float]:
    """The framework's training path (``training.fit``: Lightning, in-memory uint8 batches on the device, crop +
    flip on the device, channels_last, the recipe's optimiser and schedule, bf16 autocast when asked, torch.compile
    with ``compile``): (images/s over ``steps`` batches after ``warmup`` in the first epoch, wall seconds of the
    fit)."""
    from ..cache import ArtifactCache
    from ..models import ClassifierModule, build_backbone
    from ..runtime import Runtime
    from ..training import fit, optimiser_kwargs

    tcfg = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "label_smoothing": 0.0,
            "schedule": "onecycle", "augment": True}
    net = build_backbone(arch, 10).to(memory_format=torch.channels_last)
    module = _timed_module(ClassifierModule, warmup, steps, device)(net, **optimiser_kwargs(tcfg))
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(device, precision, ArtifactCache(tmp, enabled=False), progress=False)
        stats = fit(module, bench_data(images, labels), batch, epochs, 0, rt, [], {"compile": compile})
    return batch / batch_seconds(module.ends, warmup, device), float(stats["train_seconds"])


def add_speed_notes(notes: dict[str, Any], rates: dict[str, float], best: str, auto: str, arch: str, attack: bool,
                    device: torch.device) -> None:
    """The precision recommendation (when the faster precision is not the framework's default), the FLOPs per
    item and what limits the fast path's rate."""
    if best != auto:
        notes["recommendation"] = (f"precision={best} is {rates[best] / rates[auto]:.2f}x faster than the framework's "
                                   f"default ({auto}) for this backbone on this device")
    flops = flops_per_item(arch, attack=attack)
    notes["flops_per_item"] = round(flops)
    notes["effective_tflops_fast"], notes["limit"] = compute_limit(rates[best], flops,
                                                                   "queries" if attack else "images", device)


def flops_per_item(arch: str, attack: bool) -> float:
    """Convolution + matmul FLOPs per image (torch's FlopCounterMode): a training step (forward + backward), or a
    5-step PGD query (one clean forward, then 5 x (forward + backward to the input, weights frozen))."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import build_backbone

    net = build_backbone(arch, 10).train(not attack)
    x = torch.rand(2, 3, 32, 32, requires_grad=attack)
    if attack:
        for p in net.parameters():
            p.requires_grad_(False)
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            net(x)
    with FlopCounterMode(display=False) as both:
        net(x).sum().backward()
    f, fb = fwd.get_total_flops() / 2, both.get_total_flops() / 2
    return f + 5 * fb if attack else fb


PEAK_TFLOPS = {"cuda": ("H100 SXM dense bf16", 989.0)}


def compute_limit(rate: float, flops: float, what: str, device: torch.device) -> tuple[float, str]:
    tflops = rate * flops / 1e12
    text = (f"{rate:,.1f} {what}/s x {flops / 1e9:.2f} GFLOP per {what[:-1] if what.endswith('s') else what} = "
            f"{tflops:.3f} TFLOP/s of convolutions and matmuls")
    if device.type in PEAK_TFLOPS:
        name, peak = PEAK_TFLOPS[device.type]
        text += f", {100 * tflops / peak:.0f} % of the {name} peak ({peak:g} TFLOP/s)"
    else:
        text += f" on {torch.get_num_threads()} CPU threads"
    return round(tflops, 4), text


def figure_train(arch: str, device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    bf, bb, w, s = sz["train_batch_fast"], sz["train_batch_base"], sz["train_warmup"], sz["train_steps"]
    images, labels, source = training_images(max(bf, bb) * (w + s))
    rates: dict[str, float] = {}
    peaks: dict[str, Measured] = {}
    for precision in candidate_precisions(device):
        m = measure(device, lambda p=precision: (framework_fit(arch, images[:bf * (w + s)], labels[:bf * (w + s)],
                                                               device, p, bf, 1, w, s)[0], {}))
        rates[precision], peaks[precision] = m.value, m
    best = max(rates, key=rates.get)  # type: ignore[arg-type]
    base = measure(device, lambda: (baseline_train_throughput(arch, images[:bb * (w + s)], labels[:bb * (w + s)],
                                                              device, bb, w, s, sz["loader_workers"]), {}))
    auto = resolve_precision("auto", device)  # what precision=auto (the default) runs
    notes = {"data": source, "fast_batch": bf, "baseline_batch": bb, "warmup_batches": w, "timed_batches": s,
             "fast_images_per_s_fp32": round(rates["fp32"], 2),
             "fast_images_per_s_bf16": round(rates["bf16"], 2) if "bf16" in rates else None, **bf16_note(device),
             "fast_precision": best, "framework_precision_auto": auto,
             "fast": "training.fit: Lightning, uint8 batches in memory, crop+flip on the device, channels_last, "
                     "the recipe's SGD + one-cycle; the faster of fp32 and bf16 autocast (bf16 where native)",
             "baseline": f"DataLoader(num_workers={sz['loader_workers']}) of decoded images, per-item RandomCrop + "
                         f"flip + ToTensor, float32 eager NCHW, SGD"}
    add_speed_notes(notes, rates, best, auto, arch, False, device)
    rec = record(f"train_{arch}", rates[best], base.value, "images/s", peaks[best], base, notes)
    return [rec]


def figure_train_recipe(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """The default recipe (ResNet18, 40 epochs x 50,000 images, batch 512): on CUDA run in full through the
    framework's path; the baseline (and the CPU figure) projected from measured throughput."""
    arch = "resnet18"
    bb, w, s = sz["train_batch_base"], sz["train_warmup"], sz["train_steps"]
    auto = resolve_precision("auto", device)  # what precision=auto (the default) runs
    n = CIFAR_TRAIN_IMAGES if device.type == "cuda" else sz["train_batch_fast"] * (w + s)
    images, labels, source = training_images(max(n, bb * (w + s)))
    if device.type == "cuda":
        batch = 512
        steps_per_epoch = n // batch
        fast = measure(device, lambda: (framework_fit(arch, images[:n], labels[:n], device, auto, batch,
                                                      RECIPE_EPOCHS, w, min(s, steps_per_epoch - w))[1], {}))
        fast_value, projected = fast.value, False
    else:
        bf = sz["train_batch_fast"]
        fast = measure(device, lambda: (framework_fit(arch, images[:n], labels[:n], device, auto, bf, 1, w, s)[0], {}))
        fast_value, projected = RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES / fast.value, True
        fast.extra["images_per_s"] = round(fast.value, 2)
    base = measure(device, lambda: (baseline_train_throughput(arch, images[:bb * (w + s)], labels[:bb * (w + s)],
                                                              device, bb, w, s, sz["loader_workers"]), {}))
    notes = {"data": source, "precision": auto, "fast_projected": projected, "baseline_projected": True,
             "baseline_images_per_s": round(base.value, 2),
             "what": f"{RECIPE_EPOCHS} epochs x {CIFAR_TRAIN_IMAGES} images, ResNet18 (conf/trainer/default.yaml)",
             **fast.extra}
    if projected:
        notes["fast"] = (f"projected: {RECIPE_EPOCHS} x {CIFAR_TRAIN_IMAGES} / {fast.value:.1f} images/s measured "
                         f"over {s} batches of {sz['train_batch_fast']} ({auto}: what precision=auto runs here)")
    base_time = RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES / base.value
    flops = flops_per_item(arch, attack=False)
    rate = RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES / fast_value
    notes["effective_tflops_fast"], notes["limit"] = compute_limit(rate, flops, "images", device)
    if not projected:
        notes["limit"] = f"the whole fit (Lightning, {RECIPE_EPOCHS} epochs, one-cycle) ran at " + notes["limit"]
    fast.value = fast_value
    return [record("train_recipe", fast_value, base_time, "s", fast, base, notes)]


