"""Benchmark: the framework's fast path against the plain PyTorch baseline, side by side, one figure per process.

    make bench                                          # the CPU figures (a few minutes on 2 cores)
    python -m pqattack.bench --device cuda              # the GPU figures (same code, on CUDA)
    python -m pqattack.bench --figures retrieval_9k_adc,demo --out outputs/bench/x.json
    python -m pqattack.bench --markdown outputs/bench/cpu.json [--update docs/benchmarks.md]

Each figure runs in its own child process (``--figure NAME``), so its peak memory is its own: the peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs`` between the fast path and the baseline) and, on CUDA,
``torch.cuda.max_memory_allocated``. The parent prints one line per figure and writes one JSON record per
figure to ``--out`` (default ``outputs/bench/<device>.json``):
``{figure, fast_value, baseline_value, unit, ratio, fast_peak_mb, baseline_peak_mb, target, meets_target, command,
device, versions, notes}``. ``ratio`` is always the speed-up: fast over baseline for a rate, baseline over fast
for a time. ``--markdown`` renders a file's records as a markdown section (``--update`` writes it into a document
between ``<!-- bench:<device>:start -->`` and ``<!-- bench:<device>:end -->``).

The baselines are the straightforward code a researcher writes first: float32, eager, per-batch loops, a
torchvision-style DataLoader of decoded images; brute-force distances in torch, ``argsort``, a float64 mAP.
Sizes are smaller on the CPU (``SIZES``); every record says what it measured and what is projected.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
RESULT_MARK = "BENCH-RECORDS "
CIFAR_TRAIN_IMAGES = 50_000
RECIPE_EPOCHS = 40

# Per-device sizes; ``quick`` is for the test (seconds per figure). The GPU sizes are the paper's recipe.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"train_batch_fast": 32, "train_batch_base": 32, "train_warmup": 2, "train_steps": 4,
            "attack_batch_fast": 16, "attack_batch_base": 16, "attack_batches": 3,
            "q9k": 1000, "n9k": 9000, "q1m": 1000, "n1m": 1_000_000, "k1m": 5000, "q1m_base": 200,
            "bits_extra": [24], "sweep_jobs": 6, "loader_workers": 0, "compile_arch": "resnet18"},
    "cuda": {"train_batch_fast": 512, "train_batch_base": 128, "train_warmup": 5, "train_steps": 30,
             "attack_batch_fast": 2000, "attack_batch_base": 100, "attack_batches": 5,
             "q9k": 1000, "n9k": 9000, "q1m": 1000, "n1m": 1_000_000, "k1m": 5000, "q1m_base": 1000,
             "bits_extra": [24, 36], "sweep_jobs": 6, "loader_workers": 4, "compile_arch": "resnet18"},
    "quick": {"train_batch_fast": 4, "train_batch_base": 4, "train_warmup": 1, "train_steps": 1,
              "attack_batch_fast": 4, "attack_batch_base": 4, "attack_batches": 2,
              "q9k": 200, "n9k": 1800, "q1m": 100, "n1m": 20_000, "k1m": 500, "q1m_base": 50,
              "bits_extra": [], "sweep_jobs": 3, "loader_workers": 0, "compile_arch": "smallcnn"},
}

# The targets: (device, comparison, value); a figure without one on this device reports meets_target null.
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "train_recipe": ("cuda", "<=", 30.0, "s"),        # ResNet18, 40 epochs
    "train_recipe_vgg16": ("cuda", "<=", 20.0, "s"),  # VGG16, 40 epochs
    "attack_resnet18": ("cuda", ">=", 30_000.0, "queries/s"),
    "table1": ("cuda", "<=", 90.0, "s"),
    "demo": ("cpu", "<=", 60.0, "s"),
    "retrieval_9k_sdc": ("cpu", "<=", 0.5, "s"),
    "retrieval_9k_adc": ("cpu", "<=", 0.5, "s"),
    "retrieval_1m_adc": ("cpu", "<=", 30.0, "s"),
    "sweep_memory": ("any", "<=", 32.0, "MB"),  # RSS growth from job 2 to the last: allocator noise only
}

# Exact float32 distances: features and codebooks on a grid of 2^-10 (norms <= 1) make every product a multiple of
# 2^-20 and every partial sum of a squared distance (< 4) representable in float32, in any summation order. So
# FAISS's tables, the gathers and the brute-force GEMM give bit-identical distances, and the fast and baseline mAP
# must agree (up to float64 rounding); with unrounded features, summation order flips near-ties (~1e-5 mAP points).
GRID = 2.0 ** -10
MAP_TOLERANCE = 1e-6  # mAP points (percent)


# --------------------------------------------------------------------------------------------- measurement
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak(device: torch.device) -> None:
    """Start a new peak: host RSS high-water mark (Linux ``clear_refs`` 5) and CUDA's peak allocation."""
    _release()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> tuple[float, float | None]:
    """(host peak RSS, CUDA peak allocated) in MB since the last :func:`reset_peak`."""
    kb = None
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return round(kb / 1024, 1), None if gpu is None else round(gpu, 1)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


@dataclass
class Measured:
    value: float
    peak: float
    gpu_peak: float | None
    extra: dict[str, Any]
    rss_start: float | None = None
    cpu_share: float | None = None
    others_share: float | None = None


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (``/proc/stat``), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def measure(device: torch.device, fn: Callable[[], tuple[float, dict[str, Any]]]) -> Measured:
    """Run ``fn`` (-> value, extra) and take the peak memory over it alone; ``rss_start`` is the resident memory
    already there (the interpreter, torch, the figure's data), part of the peak. ``cpu_share`` is this process's CPU
    time over wall time x torch threads (1: every thread busy all the time); ``others_share`` the share of all cores
    that other processes used meanwhile (``/proc/stat``): well above 0 means the figure competed for the machine."""
    reset_peak(device)
    start = rss_mb()
    w0, c0, b0 = time.perf_counter(), time.process_time(), _busy_seconds()
    value, extra = fn()
    wall, cpu, b1 = time.perf_counter() - w0, time.process_time() - c0, _busy_seconds()
    share = cpu / max(1e-9, wall * torch.get_num_threads())
    others = None if b0 is None or b1 is None else max(0.0, (b1 - b0 - cpu) / max(1e-9, wall * (os.cpu_count() or 1)))
    host, gpu = peak_mb(device)
    return Measured(value, host, gpu, extra, start, round(share, 2), None if others is None else round(others, 2))


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 1) -> tuple[float, Any]:
    """Median wall seconds of ``repeat`` calls, and the last call's result."""
    times, out = [], None
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# --------------------------------------------------------------------------------------------- data
def cifar_folder() -> Path | None:
    root = Path(os.environ.get("PQATTACK_DATA", REPO / "data"))
    for cand in (root / "cifar10-jpeg", root):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def training_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` uint8 CIFAR-size images ``[n, 3, 32, 32]`` with labels: decoded from the CIFAR-10 JPEG copy when there
    (a seeded sample of the training split), else random uint8 (throughput does not depend on the pixels)."""
    folder = cifar_folder()
    if folder is not None:
        from .data.imagefolder import decode_images, list_image_folder

        _, files, labels = list_image_folder(folder / "train")
        pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
        imgs = torch.from_numpy(decode_images([files[i] for i in pick], 32, False, progress=False))
        lab = torch.tensor([labels[i] for i in pick])
        reps = math.ceil(n / len(pick))
        return imgs.repeat(reps, 1, 1, 1)[:n], lab.repeat(reps)[:n], f"CIFAR-10 JPEGs ({folder}), decoded once"
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g), "synthetic uint8 (data/cifar10-jpeg not found)")


class FeatureSource:
    """Class-clustered retrieval features, like a CNN's: class means in a 32-d latent space, a random projection to
    D, ReLU, l2 normalisation; rounded to ``GRID`` (see there). With 10 classes, PQ 4x16 mAP is about 75 %."""

    def __init__(self, dim: int = 512, classes: int = 10, latent: int = 32, spread: float = 1.6, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.means = torch.randn(classes, latent, generator=g)
        self.proj = torch.randn(latent, dim, generator=g) / latent ** 0.5
        self.spread, self.classes = spread, classes

    def __call__(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, self.classes, (n,), generator=g)
        lat = self.means[y] + self.spread * torch.randn(n, self.means.shape[1], generator=g)
        z = torch.nn.functional.normalize(torch.relu(lat @ self.proj), dim=1)
        return on_grid(z), y


def on_grid(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x / GRID) * GRID


# --------------------------------------------------------------------------------------------- figure 1: training
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
    from .models import build_backbone

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
        sync(device)
        ends.append(time.perf_counter())
        if i + 1 == warmup + steps:
            break
    return batch / step_seconds(ends, warmup)


def step_seconds(ends: list[float], warmup: int) -> float:
    """Median interval between consecutive batch ends after ``warmup`` batches (loading + step + overhead); the
    median, not the mean, so that a burst of load from other processes on a shared machine does not count."""
    return statistics.median(b - a for a, b in zip(ends[warmup - 1:-1], ends[warmup:]))


def _timed_module(base: type, warmup: int, steps: int, device: torch.device) -> type:
    """``base`` recording the end of each of the first ``warmup + steps`` batches. On a GPU only the timed window's
    first and last ends wait for the GPU: a wait after every step would stop the queueing of the next one."""
    class Timed(base):  # type: ignore[misc, valid-type]
        ends: list[float] = []

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.current_epoch == 0 and batch_idx < warmup + steps:
                if device.type != "cuda" or batch_idx in (warmup - 1, warmup + steps - 1):
                    sync(device)
                self.ends = [*self.ends, time.perf_counter()]

    return Timed


def batch_seconds(ends: list[float], warmup: int, device: torch.device) -> float:
    """Seconds per batch after ``warmup``: on a GPU the timed window's mean (its ends waited for the GPU), on a CPU
    the median interval (see ``step_seconds``)."""
    if device.type == "cuda":
        return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup)
    return step_seconds(ends, warmup)


def _bench_data(images: torch.Tensor, labels: torch.Tensor) -> Any:
    from .data import RetrievalData
    from .data.types import ImageSet

    few = ImageSet(images[:2], labels[:2])
    return RetrievalData("bench", ImageSet(images, labels), few, few, [f"c{i}" for i in range(10)], "bench")


def framework_fit(arch: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device, precision: str,
                  batch: int, epochs: int, warmup: int, steps: int, compile: bool = False) -> tuple[float, float]:
    """The framework's training path (``training.fit``: Lightning, in-memory uint8 batches on the device, crop +
    flip on the device, channels_last, the recipe's optimiser and schedule, bf16 autocast when asked, torch.compile
    with ``compile``): (images/s over ``steps`` batches after ``warmup`` in the first epoch, wall seconds of the
    fit)."""
    from .cache import ArtifactCache
    from .models import ClassifierModule, build_backbone
    from .runtime import Runtime
    from .training import fit, optimiser_kwargs

    tcfg = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "label_smoothing": 0.0,
            "schedule": "onecycle", "augment": True}
    net = build_backbone(arch, 10).to(memory_format=torch.channels_last)
    module = _timed_module(ClassifierModule, warmup, steps, device)(net, **optimiser_kwargs(tcfg))
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(device, precision, ArtifactCache(tmp, enabled=False), progress=False)
        stats = fit(module, _bench_data(images, labels), batch, epochs, 0, rt, [], {"compile": compile})
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

    from .models import build_backbone

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
    for precision in ("fp32", "bf16"):
        m = measure(device, lambda p=precision: (framework_fit(arch, images[:bf * (w + s)], labels[:bf * (w + s)],
                                                               device, p, bf, 1, w, s)[0], {}))
        rates[precision], peaks[precision] = m.value, m
    best = max(rates, key=rates.get)  # type: ignore[arg-type]
    base = measure(device, lambda: (baseline_train_throughput(arch, images[:bb * (w + s)], labels[:bb * (w + s)],
                                                              device, bb, w, s, sz["loader_workers"]), {}))
    auto = "bf16" if device.type == "cuda" else "fp32"
    notes = {"data": source, "fast_batch": bf, "baseline_batch": bb, "warmup_batches": w, "timed_batches": s,
             "fast_images_per_s_fp32": round(rates["fp32"], 2), "fast_images_per_s_bf16": round(rates["bf16"], 2),
             "fast_precision": best, "framework_precision_auto": auto,
             "fast": "pipeline.fit: Lightning, uint8 batches in memory, crop+flip on the device, channels_last, "
                     "the recipe's SGD + one-cycle; the faster of fp32 and bf16 autocast",
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
    auto = "bf16" if device.type == "cuda" else "fp32"
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
                         f"over {s} batches of {sz['train_batch_fast']} (fp32, the framework's CPU default)")
    base_time = RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES / base.value
    flops = flops_per_item(arch, attack=False)
    rate = RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES / fast_value
    notes["effective_tflops_fast"], notes["limit"] = compute_limit(rate, flops, "images", device)
    if not projected:
        notes["limit"] = f"the whole fit (Lightning, {RECIPE_EPOCHS} epochs, one-cycle) ran at " + notes["limit"]
    fast.value = fast_value
    return [record("train_recipe", fast_value, base_time, "s", fast, base, notes)]


def figure_train_compile(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """Training with ``trainer.compile=true`` against without (the framework's precision on the device): steady
    images/s of each, and whether the compile time pays off within the recipe's 40 epochs."""
    arch = sz["compile_arch"]
    batch, w, s = sz["train_batch_fast"], sz["train_warmup"], sz["train_steps"]
    images, labels, source = training_images(batch * (w + s))
    precision = "bf16" if device.type == "cuda" else "fp32"
    fits: dict[bool, tuple[float, float]] = {}
    peaks: dict[bool, Measured] = {}
    for compiled in (False, True):
        def run(c: bool = compiled) -> tuple[float, dict[str, Any]]:
            rate, fit_s = framework_fit(arch, images, labels, device, precision, batch, 1, w, s, compile=c)
            return rate, {"fit_s": fit_s}
        m = measure(device, run)
        fits[compiled], peaks[compiled] = (m.value, m.extra["fit_s"]), m
    (eager, eager_fit), (fast, fast_fit) = fits[False], fits[True]
    compile_s = max(0.0, fast_fit - eager_fit)  # the same batches: the difference is compilation (and its warm-up)
    saved_per_epoch = CIFAR_TRAIN_IMAGES / eager - CIFAR_TRAIN_IMAGES / fast
    break_even = compile_s / saved_per_epoch if saved_per_epoch > 0 else None
    notes = {"data": source, "arch": arch, "precision": precision, "batch": batch, "warmup_batches": w,
             "timed_batches": s, "compile_s": round(compile_s, 1), "eager_fit_s": round(eager_fit, 1),
             "compiled_fit_s": round(fast_fit, 1),
             "break_even_epochs": None if break_even is None else round(break_even, 1),
             "pays_within_recipe": break_even is not None and break_even < RECIPE_EPOCHS,
             "fast": "training.fit with trainer.compile=true (torch.compile of the backbone's feature extractor)",
             "baseline": "training.fit, eager (trainer.compile=false, the default)"}
    return [record("train_compile", fast, eager, "images/s", peaks[True], peaks[False], notes)]


def figures_from_table1(run: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recipe's training times and Table 1's end-to-end time, read from a run of ``experiment=table1``
    (tools/gpu-run's table1 stage folder: ``status.json`` with the command's wall time and whether the cache was
    fresh, and the sweep's job records) instead of training the same backbones again. The baselines are projected
    from this run's ``train_<arch>`` baseline throughput."""
    status = json.loads((run / "status.json").read_text())
    sweep = next(c for c in status["commands"] if c["name"] == "sweep")
    jobs = [json.loads(p.read_text()) for p in sorted((run / "sweep").glob("*/results.json"))]
    out = []
    for arch, figure in (("resnet18", "train_recipe"), ("vgg16", "train_recipe_vgg16")):
        built = next((j for j in jobs if j["meta"]["config"]["model"]["arch"] == arch
                      and any(b.startswith("checkpoint/") for b in j["meta"]["cache_builds"])), None)
        if built is None:
            continue
        cfg, train = built["meta"]["config"], built["meta"]["training"]
        images = cfg["dataset"].get("num_train") or CIFAR_TRAIN_IMAGES
        work = cfg["trainer"]["max_epochs"] * images
        base = next((r for r in records if r["figure"] == f"train_{arch}"), None)
        base_s = work / base["baseline_value"] if base and base["baseline_value"] else None
        notes = {"what": f"{cfg['trainer']['max_epochs']} epochs x {images} images, {arch}, batch "
                         f"{cfg['trainer']['batch_size']}, {built['meta']['precision']} (experiment=table1's own "
                         f"training)", "from": str(run / "sweep"), "epoch_seconds": train.get("epoch_seconds"),
                 "baseline_projected": True, "baseline": f"{work} images / the baseline's images/s in train_{arch}"}
        out.append(record(figure, train["train_seconds"], base_s, "s", Measured(train["train_seconds"], None, None, {}),
                          None, notes))
    fresh = bool(status.get("fresh_cache")) and status.get("status") == "ok"
    notes = {"what": "python -m pqattack experiment=table1, from the JPEG files, as run by tools/gpu-run's table1 stage",
             "command": "python " + " ".join(sweep["argv"]), "stage_seconds": _stage_seconds(run / "sweep"),
             "baseline": "not applicable (no plain end-to-end variant)"}
    if not fresh:
        notes["reason"] = "the table1 run did not start from an empty cache, or did not finish"
    wall = sweep["wall_s"] if fresh else None
    out.append(record("table1", wall, None, "s", Measured(wall or 0.0, None, None, {}), None, notes))
    return out


# --------------------------------------------------------------------------------------------- figure 2: attacks
def attack_model(arch: str, device: torch.device, channels_last: bool) -> Any:
    from .models import RetrievalModel, build_backbone

    g = torch.Generator().manual_seed(0)
    codebooks = torch.nn.functional.normalize(torch.randn(4, 16, 128, generator=g), dim=-1)
    backbone = build_backbone(arch, 10).to(device)
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    model = RetrievalModel(backbone, codebooks.to(device), "dot", 1.0).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_attack(model: Any, images: torch.Tensor, batch: int, device: torch.device, precision: str,
               channels_last: bool) -> float:
    """Queries/s of 5-step PGD with the AOD loss over ``images`` in batches (the loop of
    ``pipeline.attack_queries``), from the median batch."""
    from .attacks import AttackConfig, pgd

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
    for precision in ("fp32", "bf16"):
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
    auto = "bf16" if device.type == "cuda" else "fp32"
    notes = {"data": source, "attack": "PGD, AOD loss, eps 8/255, step 0.01, 5 iterations, random start, 8-bit output",
             "fast_batch": bf, "baseline_batch": bb, "timed_batches": nb,
             "fast_queries_per_s_fp32": round(rates["fp32"], 2), "fast_queries_per_s_bf16": round(rates["bf16"], 2),
             "fast_precision": best, "framework_precision_auto": auto,
             "fast": "the loop of pipeline.attack_queries: channels_last, the faster of fp32 and bf16 autocast",
             "baseline": "the same PGD, float32 eager NCHW", "torch_compile": "not used"}
    add_speed_notes(notes, rates, best, auto, arch, True, device)
    return [record(f"attack_{arch}", rates[best], base.value, "queries/s", peaks[best], base, notes)]


# --------------------------------------------------------------------------------------------- figure 3: retrieval
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


def _retrieval_setup(n_query: int, n_db: int, K: int, train_n: int = 20_000  # noqa: N803
                     ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, FeatureSource]:
    from .quant import PQIndex, train_codebooks

    src = FeatureSource()
    zq, lq = src(n_query, 1)
    zt, _ = src(min(train_n, n_db), 2)
    codebooks = on_grid(train_codebooks(zt, 4, K, niter=10, seed=0))
    return PQIndex(codebooks), zq, lq, codebooks, src


def figure_retrieval_9k(system: str, device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """1,000 queries x 9,000 items, mAP over the full ranking. Fast: ``PQIndex.average_precisions`` (what
    ``pipeline.evaluate`` calls; both tie conventions); baseline: brute-force torch distances from the
    reconstructed database, a stable ``argsort``, the plain float64 expected and grouped mAP position by
    position."""
    import faiss

    nq, nd = sz["q9k"], sz["n9k"]
    notes: dict[str, Any] = {"queries": nq, "database": nd, "dim": 512, "M": 4, "data": "class-clustered synthetic "
                             "features on a 2^-10 grid (exact float32 distances), 10 classes",
                             "threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads()}
    main_rec = None
    for K in [16] + [2 ** (b // 4) for b in sz["bits_extra"]]:
        index, zq, lq, codebooks, src = _retrieval_setup(nq, nd, K)
        zd, ld = src(nd, 2)  # the codebooks' training vectors are the database, as in the pipeline
        index.add(zd)
        tag = f"{int(4 * math.log2(K))}bit"

        def fast() -> tuple[float, dict[str, Any]]:
            index.average_precisions(zq[:8], system, lq[:8], ld)  # warm-up
            t, aps = timed(lambda: index.average_precisions(zq, system, lq, ld), device, repeat=3)
            t_search, _ = timed(lambda: index.search(zq, system), device, repeat=3)
            t_dist, _ = timed(lambda: index.distances(zq, system), device, repeat=3)
            return t, {"map": aps.mean("expected"), "map_grouped": aps.mean("grouped"),
                       "search_full_ranking_s": round(t_search, 4), "distances_s": round(t_dist, 4)}

        def baseline() -> tuple[float, dict[str, Any]]:
            cpu = torch.device("cpu")
            xh = reconstruct(codebooks, index.db_codes)
            ybase = zq if system == "adc" else reconstruct(codebooks, index.encode(zq))

            def run() -> dict[str, float]:
                dist = brute_distances(ybase, xh)
                ids = torch.argsort(dist, dim=1, stable=True)
                return plain_maps(dist.gather(1, ids), ids, lq, ld)

            t, m = timed(run, cpu)
            # the previous PQIndex path: FAISS's heap search for k = N (ADC), or the torch table + stable sort
            # (SDC, sub-codes under 8 bits), then the plain mAP
            if system == "adc" or index.nbits == 8:
                index.index.search_type = faiss.IndexPQ.ST_PQ if system == "adc" else faiss.IndexPQ.ST_SDC
                t_prev, (d, i) = timed(lambda: index.index.search(zq.numpy(), nd), cpu)
                d, i = torch.from_numpy(d), torch.from_numpy(i)
            else:
                def prev_sdc() -> tuple[torch.Tensor, torch.Tensor]:
                    qc, dc = index.encode(zq), index.db_codes
                    dist = torch.zeros(len(qc), nd)
                    for m_ in range(index.M):
                        dist += index.sdc_table[m_][qc[:, m_]][:, dc[:, m_]]
                    return torch.sort(dist, dim=1, stable=True)
                t_prev, (d, i) = timed(prev_sdc, cpu)
            t_prev_map, m_prev = timed(lambda: plain_maps(d, i, lq, ld), cpu)
            return t, {**m, "previous_path_s": round(t_prev + t_prev_map, 4), "previous_search_s": round(t_prev, 4),
                       "previous_map": m_prev["map"], "previous_map_grouped": m_prev["map_grouped"]}

        f, b = measure(device, fast), measure(device, baseline)
        diff = abs(f.extra["map"] - b.extra["map"])
        for key in ("map", "map_grouped"):
            if max(abs(f.extra[key] - b.extra[key]), abs(f.extra[key] - b.extra[f"previous_{key}"])) > MAP_TOLERANCE:
                raise AssertionError(f"retrieval {system} {tag}: fast {key} {f.extra[key]!r} != baseline "
                                     f"{b.extra[key]!r} (previous path {b.extra[f'previous_{key}']!r}); tolerance "
                                     f"{MAP_TOLERANCE} points")
        row = {"fast_s": round(f.value, 4), "baseline_s": round(b.value, 4), "fast_map": f.extra["map"],
               "baseline_map": b.extra["map"], "map_abs_diff": diff, "fast_map_grouped": f.extra["map_grouped"],
               **{k: v for k, v in b.extra.items() if k != "map"},
               "search_full_ranking_s": f.extra["search_full_ranking_s"], "distances_s": f.extra["distances_s"],
               "speedup_vs_previous_path": round(b.extra["previous_path_s"] / f.value, 2)}
        if main_rec is None:
            notes.update({"bits": 16, "K": 16, **row})
            notes["fast"] = ("PQIndex.average_precisions: FAISS lookup tables, numpy gathers by code (pairs of "
                             "sub-spaces), one numpy sort of (distance, relevance) keys per query, expected (closed "
                             "form) and grouped AP by position (no argsort)")
            notes["baseline"] = ("reconstruct the database from its codes, ||y||^2 - 2y.x + ||x||^2 in float32, "
                                 "stable torch.argsort, float64 expected AP term by term and grouped AP (cummax/cummin)")
            notes["previous_path"] = ("PQIndex.search + float64 torch mAP: FAISS heap search for k = N (ADC) / "
                                      "torch table + stable sort (SDC), the baseline's plain expected and grouped mAP")
            notes["limit"] = (f"{f.extra['distances_s']:.3f} s of the {f.value:.3f} s compute the [Q, N] distances "
                              f"(table gathers, memory-bound); the rest sorts each query's {nd} distances and counts "
                              f"(numpy, {torch.get_num_threads()} threads)")
            main_rec = record(f"retrieval_9k_{system}", f.value, b.value, "s", f, b, notes)
        else:
            main_rec["notes"][f"at_{tag}"] = row
    return [main_rec]


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


def figure_retrieval_1m(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """1,000 queries x 1,000,000 synthetic features (16 bits), ADC top 5,000 + mAP@5000. Fast: the pipeline's path
    (``PQIndex.average_precisions`` with topk: FAISS's heap search continued past the tie group at k, then the
    expected and grouped mAP@k); baseline: brute force in torch over database chunks, the plain float64 mAP@k."""
    import faiss

    nq, nd, k, nb = sz["q1m"], sz["n1m"], sz["k1m"], min(sz["q1m_base"], sz["q1m"])
    index, zq, lq, codebooks, src = _retrieval_setup(nq, nd, 16)
    labels = []
    t0 = time.perf_counter()
    for lo in range(0, nd, 100_000):
        z, y = src(min(100_000, nd - lo), 1000 + lo)
        index.add(z)
        labels.append(y)
    ld = torch.cat(labels)
    setup_s = time.perf_counter() - t0

    def fast() -> tuple[float, dict[str, Any]]:
        index.average_precisions(zq[:4], "adc", lq[:4], ld, topk=k)  # warm-up
        t, aps = timed(lambda: index.average_precisions(zq, "adc", lq, ld, topk=k), device)
        t_search, _ = timed(lambda: index.search(zq, "adc", k=k), device)  # its FAISS top k alone, for the notes
        # the same queries as the baseline (untimed), for the agreement check
        subset = index.average_precisions(zq[:nb], "adc", lq[:nb], ld, topk=k)
        return t, {"map": aps.mean(), "search_s": round(t_search, 3), "map_s": round(t - t_search, 3),
                   "map_subset": subset.mean(), "map_grouped_subset": subset.mean("grouped")}

    def baseline() -> tuple[float, dict[str, Any]]:
        def run() -> dict[str, float]:
            d, i = brute_topk(zq[:nb], codebooks, index.db_codes, k)
            group = brute_count_at(zq[:nb], codebooks, index.db_codes, d[:, k - 1],
                                   lambda ids: ld[ids][None] == lq[:nb, None])
            return plain_maps(d, i, lq[:nb], ld, k, group)
        t, m = timed(run, torch.device("cpu"))
        return t * nq / nb, {**m, "measured_s": round(t, 3)}

    f, b = measure(device, fast), measure(device, baseline)
    diff = abs(f.extra["map_subset"] - b.extra["map"])
    if diff > MAP_TOLERANCE or abs(f.extra["map_grouped_subset"] - b.extra["map_grouped"]) > MAP_TOLERANCE:
        raise AssertionError(f"retrieval 1M: fast mAP@{k} {f.extra['map_subset']!r} (grouped "
                             f"{f.extra['map_grouped_subset']!r}) != baseline {b.extra['map']!r} (grouped "
                             f"{b.extra['map_grouped']!r}) on the first {nb} queries")
    notes = {"queries": nq, "database": nd, "topk": k, "dim": 512, "M": 4, "K": 16, "bits": 16,
             "fast_map": f.extra["map"], "fast_map_on_baseline_queries": f.extra["map_subset"],
             "baseline_map": b.extra["map"], "map_abs_diff": diff, "baseline_queries": nb,
             "fast_map_grouped_on_baseline_queries": f.extra["map_grouped_subset"],
             "baseline_map_grouped": b.extra["map_grouped"],
             "baseline_projected": nb < nq, "baseline_measured_s": b.extra["measured_s"],
             "data": "class-clustered synthetic features on a 2^-10 grid, generated and encoded in blocks of 100,000",
             "setup_generate_and_encode_s": round(setup_s, 2), "faiss_threads": faiss.omp_get_max_threads(),
             "search_s": f.extra["search_s"], "map_s": f.extra["map_s"],
             "limit": f"FAISS's heap search is {f.extra['search_s']:.1f} s of {f.value:.1f} s: 4 table lookups per "
                      f"item and query ({nq} x {nd}), {faiss.omp_get_max_threads()} OpenMP threads",
             "fast": "FAISS IndexPQ heap search (k = 5000 and a few more), relevance, the tie group at k counted "
                     "over the distinct codes (FAISS's search of an index of them), expected and grouped mAP@5000",
             "baseline": "reconstruct 16,384 items at a time, GEMM distances, torch.topk on (distance, id) keys "
                         "merged across chunks, a second pass counting the items (and relevant ones) at the k-th "
                         "distance, float64 expected mAP@k term by term (hypergeometric at the group that straddles "
                         "k) and grouped mAP@k",
             "memory": "no [Q, N] matrix: FAISS keeps a heap per query; the baseline holds [Q, 16384 + k]"}
    return [record("retrieval_1m_adc", f.value, b.value, "s", f, b, notes)]


# --------------------------------------------------------------------------------------------- figures 4, 5
def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds and peak RSS (MB) of ``cmd``, run through a fresh wrapper process so the peak is its own."""
    wrapper = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:]); w = time.perf_counter() - t; "
               "print('BENCH-CHILD ' + json.dumps([p.returncode, w, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]), flush=True); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH-CHILD ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    _, wall, peak = json.loads(line.removeprefix("BENCH-CHILD "))
    return wall, round(peak, 1), proc


def _stage_seconds(sweep_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in sorted(sweep_dir.glob("*/results.json")):
        for k, v in json.loads(p.read_text())["meta"].get("timings_s", {}).items():
            if k != "total":
                key = "attack" if k.startswith("attack_") else k
                out[key] = round(out.get(key, 0.0) + v, 2)
    return out


def figure_demo(device: torch.device, sz: dict[str, Any], extra: list[str] | None = None,
                name: str = "demo") -> list[dict[str, Any]]:
    """``make demo`` (``python -m pqattack experiment=demo``) with a fresh cache, then again on the same cache."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PQATTACK_CACHE": str(Path(tmp) / "cache"), "PYTHONWARNINGS": "ignore"}
        cmd = [sys.executable, "-m", "pqattack", "experiment=demo", *(extra or [])]
        wall, peak, _ = run_measured([*cmd, f"hydra.sweep.dir={tmp}/sweep1"], env, REPO)
        stages = _stage_seconds(Path(tmp) / "sweep1")
        wall2, peak2, _ = run_measured([*cmd, f"hydra.sweep.dir={tmp}/sweep2"], env, REPO)
    notes = {"command": "python -m pqattack experiment=demo " + " ".join(extra or []),
             "fresh_cache_s": round(wall, 2), "cached_rerun_s": round(wall2, 2), "cached_rerun_peak_mb": peak2,
             "stage_seconds_fresh": stages,
             "baseline": "none: no plain switch exists; the second run (same cache) is reported as cached_rerun_s"}
    train = stages.get("train", 0.0)
    if train:
        notes["limit"] = (f"backbone training is {train:.1f} s of the {wall:.1f} s ({100 * train / wall:.0f} %): "
                          f"smallcnn, 8 epochs x 4,000 images, fp32 on {torch.get_num_threads()} CPU threads")
    fast = Measured(wall, peak, None, {})
    return [record(name, wall, None, "s", fast, None, notes)]


def figure_table1(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """``experiment=table1`` end to end from the JPEG files (fresh cache: decoding, 2 x 40 epochs, features,
    K-means, 18 attacks). GPU only."""
    if device.type != "cuda":
        notes = {"status": "not run on this device",
                 "reason": "GPU only: two 40-epoch trainings on 50,000 images take hours on CPU cores "
                           "(see train_recipe); run `python -m pqattack.bench --device cuda --figures table1`"}
        return [record("table1", None, None, "s", None, None, notes)]
    if cifar_folder() is None:
        raise RuntimeError("table1 needs data/cifar10-jpeg (make data)")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PQATTACK_CACHE": str(Path(tmp) / "cache"), "PYTHONWARNINGS": "ignore"}
        wall, peak, _ = run_measured([sys.executable, "-m", "pqattack", "experiment=table1", "progress=false",
                                      f"hydra.sweep.dir={tmp}/sweep"], env, REPO)
        stages = _stage_seconds(Path(tmp) / "sweep")
    notes = {"stage_seconds": stages, "baseline": "not applicable (no plain end-to-end variant)",
             "what": "python -m pqattack experiment=table1, fresh cache, from data/cifar10-jpeg"}
    return [record("table1", wall, None, "s", Measured(wall, peak, None, {}), None, notes)]


# --------------------------------------------------------------------------------------------- sweep memory
TINY = ["dataset=synthetic", "model=smallcnn", "model.width=8", "dataset.num_train=600", "dataset.num_test=400",
        "dataset.num_queries=60", "dataset.num_database=300", "trainer.max_epochs=2", "trainer.batch_size=64",
        "trainer.lr=0.05", "device=cpu", "progress=false", "attack.batch_size=60"]


def figure_sweep_memory(device: torch.device, sz: dict[str, Any]) -> list[dict[str, Any]]:
    """RSS after each job of a sweep run in one process (as Hydra's basic launcher does): tiny synthetic jobs over
    attacks x bits sharing one cache; the growth from job 2 (everything warm) to the last job."""
    from hydra import compose, initialize_config_dir

    from . import pipeline  # the figure measures whole jobs, as the orchestrator runs them
    from .config import CONF_DIR
    jobs = [(a, b) for b in (16, 24) for a in ("basic", "apd", "aod")][: sz["sweep_jobs"]]
    rss, seconds = [], []
    reset_peak(device)
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for j, (attack, bits) in enumerate(jobs):
            cfg = compose(config_name="config", overrides=[*TINY, f"attack={attack}", f"bits={bits}",
                                                           f"cache.dir={tmp}/cache"])
            t0 = time.perf_counter()
            pipeline.run(cfg, Path(tmp) / f"job{j}")
            seconds.append(round(time.perf_counter() - t0, 2))
            _release()
            rss.append(rss_mb())
    peak, gpu = peak_mb(device)
    growth = round(rss[-1] - rss[1], 1) if len(rss) > 1 else 0.0
    notes = {"jobs": [f"attack={a} bits={b}" for a, b in jobs], "rss_mb_after_each_job": rss,
             "job_seconds": seconds, "growth_from_job_2_mb": growth,
             "config": "tests' TINY job (synthetic, smallcnn width 8), one process, one cache",
             "what": "value = RSS after the last job minus RSS after job 2 (gc + malloc_trim before each reading)"}
    return [record("sweep_memory", growth, None, "MB", Measured(growth, peak, gpu, {}), None, notes)]


# --------------------------------------------------------------------------------------------- records
HIGHER_IS_BETTER = {"images/s", "queries/s"}


def record(figure: str, fast: float | None, baseline: float | None, unit: str, f: Measured | None,
           b: Measured | None, notes: dict[str, Any]) -> dict[str, Any]:
    ratio = None
    if fast and baseline:
        ratio = fast / baseline if unit in HIGHER_IS_BETTER else baseline / fast
    return {"figure": figure, "fast_value": None if fast is None else round(fast, 4),
            "baseline_value": None if baseline is None else round(baseline, 4), "unit": unit,
            "ratio": None if ratio is None else round(ratio, 2),
            "fast_peak_mb": f.peak if f else None, "baseline_peak_mb": b.peak if b else None,
            "fast_gpu_peak_mb": f.gpu_peak if f else None, "baseline_gpu_peak_mb": b.gpu_peak if b else None,
            "notes": {**notes, "fast_rss_start_mb": f.rss_start if f else None,
                      "baseline_rss_start_mb": b.rss_start if b else None,
                      "fast_cpu_share": f.cpu_share if f else None, "baseline_cpu_share": b.cpu_share if b else None,
                      "fast_others_cpu_share": f.others_share if f else None,
                      "baseline_others_cpu_share": b.others_share if b else None}}


def target_of(figure: str, device: str) -> tuple[str | None, Callable[[float], bool] | None]:
    t = TARGETS.get(figure)
    if t is None:
        return None, None
    dev, op, value, unit = t
    where = {"cuda": "GPU (one H100)", "cpu": "CPU (2 cores)", "any": "any device"}[dev]
    text = f"{op} {value:g} {unit} on {where}"
    if dev not in (device, "any"):
        return text, None
    return text, (lambda v: v <= value) if op == "<=" else (lambda v: v >= value)


FIGURES: dict[str, Callable[[torch.device, dict[str, Any]], list[dict[str, Any]]]] = {
    "train_resnet18": lambda d, s: figure_train("resnet18", d, s),
    "train_vgg16": lambda d, s: figure_train("vgg16", d, s),
    "train_recipe": figure_train_recipe,
    "train_compile": figure_train_compile,
    "attack_resnet18": lambda d, s: figure_attack("resnet18", d, s),
    "attack_vgg16": lambda d, s: figure_attack("vgg16", d, s),
    "retrieval_9k_sdc": lambda d, s: figure_retrieval_9k("sdc", d, s),
    "retrieval_9k_adc": lambda d, s: figure_retrieval_9k("adc", d, s),
    "retrieval_1m_adc": figure_retrieval_1m,
    "table1": figure_table1,
    "demo": figure_demo,
    "demo_bf16": lambda d, s: figure_demo(d, s, ["precision=bf16"], "demo_bf16"),
    "sweep_memory": figure_sweep_memory,
}
DEFAULT_FIGURES = [f for f in FIGURES if f not in ("demo_bf16", "train_compile")]


def versions() -> dict[str, str]:
    from .runtime import versions as framework_versions

    return {**framework_versions(), "numpy": np.__version__}


def device_label(device: torch.device) -> str:
    from .runtime import cpu_model

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# --------------------------------------------------------------------------------------------- child / parent
def child(name: str, device: torch.device, quick: bool, result_file: Path) -> None:
    sz = SIZES["quick" if quick else device.type]
    records = FIGURES[name](device, sz)
    result_file.write_text(json.dumps(records))


def bench_command(device: str, figures: list[str], quick: bool) -> str:
    return f"python -m pqattack.bench --device {device} --figures {','.join(figures)}" + (" --quick" if quick else "")


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "n/a"
    s = f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{s} {unit}".strip()


def line(rec: dict[str, Any]) -> str:
    u = rec["unit"]
    base = fmt(rec["baseline_value"], u)
    if rec["figure"].startswith("demo") and "cached_rerun_s" in rec["notes"]:
        base = f"n/a (cached re-run {fmt(rec['notes']['cached_rerun_s'], 's')})"
    ratio = "n/a" if rec["ratio"] is None else f"{rec['ratio']:.2f}x"
    peak = fmt(rec["fast_peak_mb"], "MB")
    if rec.get("fast_gpu_peak_mb") is not None:
        peak += f" (GPU {fmt(rec['fast_gpu_peak_mb'], 'MB')})"
    extra = f" | {rec['notes'].get('reason')}" if rec["fast_value"] is None and rec["notes"].get("reason") else ""
    return f"{rec['figure']}: fast {fmt(rec['fast_value'], u)} | baseline {base} | ratio {ratio} | peak {peak}{extra}"


def derive_recipe(records: list[dict[str, Any]], device: str) -> dict[str, Any] | None:
    """On the CPU the recipe's wall time is projected, so it is derived from the ``train_resnet18`` record of this run
    (same throughputs) instead of measuring them again."""
    src = next((r for r in records if r["figure"] == "train_resnet18"), None)
    if src is None:
        return None
    n = src["notes"]
    work = RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES
    rec = {**src, "figure": "train_recipe", "unit": "s", "fast_value": round(work / src["fast_value"], 1),
           "baseline_value": round(work / src["baseline_value"], 1), "ratio": src["ratio"]}
    rec["notes"] = {"fast_projected": True, "baseline_projected": True, "derived_from": "train_resnet18",
                    "from_command": src["command"],
                    "what": f"{RECIPE_EPOCHS} epochs x {CIFAR_TRAIN_IMAGES} images, ResNet18 "
                            f"(conf/trainer/default.yaml)",
                    "fast": f"{work} images / {src['fast_value']:.1f} images/s ({n['fast_precision']}, batch "
                            f"{n['fast_batch']}); at the framework's CPU default fp32: "
                            f"{work / n['fast_images_per_s_fp32']:.0f} s",
                    "baseline": f"{work} images / {src['baseline_value']:.1f} images/s",
                    "data": n.get("data"), "limit": n.get("limit"), "flops_per_item": n.get("flops_per_item")}
    return rec


def parent(args: argparse.Namespace) -> int:
    device = args.device
    figures = args.figures.split(",") if args.figures else DEFAULT_FIGURES
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        print(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here", file=sys.stderr)
        return 2
    out = Path(args.out or REPO / "outputs" / "bench" / f"{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    doc = {"device": device, "machine": device_label(dev), "date": _dt.datetime.now().astimezone().isoformat(
        timespec="seconds"), "command": "make bench" if device == "cpu" and not args.figures and not args.quick
        else bench_command(device, figures, args.quick), "quick": args.quick, "versions": versions(), "records": []}
    failed = []
    t_all = time.perf_counter()
    for name in figures:
        derived = derive_recipe(doc["records"], device) if name == "train_recipe" and device == "cpu" else None
        if derived is not None:
            derived.update(target=target_of("train_recipe", device)[0], meets_target=None,
                           target_spec=dict(zip(("device", "op", "value", "unit"), TARGETS["train_recipe"])),
                           command=derived["notes"]["from_command"], device=doc["machine"], versions=doc["versions"])
            doc["records"].append(derived)
            print(line(derived), flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "records.json"
            cmd = [sys.executable, "-m", "pqattack.bench", "--figure", name, "--device", device,
                   "--result-file", str(result), *(["--quick"] if args.quick else [])]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or not result.is_file():
                failed.append(name)
                print(f"{name}: FAILED ({proc.returncode})\n{proc.stdout[-1500:]}\n{proc.stderr[-4000:]}",
                      file=sys.stderr)
                continue
            records = json.loads(result.read_text())
        for rec in records:
            text, check = target_of(rec["figure"], device)
            rec["target"] = text
            if rec["figure"] in TARGETS:
                rec["target_spec"] = dict(zip(("device", "op", "value", "unit"), TARGETS[rec["figure"]]))
            rec["meets_target"] = None if check is None or rec["fast_value"] is None else bool(check(rec["fast_value"]))
            rec["command"] = bench_command(device, [name], args.quick)
            rec["device"] = doc["machine"]
            rec["versions"] = doc["versions"]
            rec["notes"]["figure_process_wall_s"] = round(wall, 1)
            doc["records"].append(rec)
            print(line(rec), flush=True)
        out.write_text(json.dumps(doc, indent=1))
    if args.table1_run:
        for rec in figures_from_table1(Path(args.table1_run), doc["records"]):
            text, check = target_of(rec["figure"], device)
            rec.update(target=text, meets_target=None if check is None or rec["fast_value"] is None
                       else bool(check(rec["fast_value"])), device=doc["machine"], versions=doc["versions"],
                       command=rec["notes"].get("command") or f"python -m pqattack experiment=table1 "
                       f"(training in the records of {args.table1_run})")
            if rec["figure"] in TARGETS:
                rec["target_spec"] = dict(zip(("device", "op", "value", "unit"), TARGETS[rec["figure"]]))
            doc["records"].append(rec)
            print(line(rec), flush=True)
    doc["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out} ({doc['total_wall_s']} s)")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------- markdown
def markdown(doc: dict[str, Any]) -> str:
    """A machine's section of docs/benchmarks.md from its JSON file."""
    v = doc["versions"]
    title = "GPU" if doc["device"] == "cuda" else "CPU"
    lines = [f"### {title}: {doc['machine']}", "",
             f"Measured {doc['date']} with `{doc['command']}`" + (" (quick sizes)" if doc.get("quick") else "") +
             f"; torch {v['torch']}, numpy {v['numpy']}, faiss {v['faiss']}, Python {v['python']}" +
             (f"; {doc['total_wall_s']} s in all." if "total_wall_s" in doc else "."), "",
             "| Figure | Fast | Baseline | Speed-up | Peak RSS fast / baseline (MB) | Target | Met | Command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["records"]:
        n = r["notes"]
        base = fmt(r["baseline_value"], r["unit"])
        if "cached_rerun_s" in n:
            base = f"n/a; cached re-run {fmt(n['cached_rerun_s'], 's')}"
        fast = fmt(r["fast_value"], r["unit"]) if r["fast_value"] is not None else "not run (see below)"
        if n.get("fast_projected"):
            fast += " (projected)"
        if n.get("baseline_projected") and r["baseline_value"] is not None:
            base += " (projected)"
        peaks = " / ".join(fmt(x) for x in (r["fast_peak_mb"], r["baseline_peak_mb"]))
        if r.get("fast_gpu_peak_mb") is not None:
            peaks += f" (GPU {fmt(r['fast_gpu_peak_mb'])} / {fmt(r.get('baseline_gpu_peak_mb'))})"
        met = {True: "yes", False: "**no**", None: "-"}[r["meets_target"]]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['figure']} | {fast} | {base} | {ratio} | {peaks} | {r['target'] or '-'} | {met} | "
                     f"`{r['command']}` |")
    details = []
    for r in doc["records"]:
        n = r["notes"]
        keep = {k: n[k] for k in ("fast_precision", "fast_images_per_s_fp32", "fast_images_per_s_bf16",
                                  "fast_queries_per_s_fp32", "fast_queries_per_s_bf16", "fast_map", "baseline_map",
                                  "fast_map_on_baseline_queries", "baseline_queries", "search_s", "map_s",
                                  "previous_path_s", "speedup_vs_previous_path", "search_full_ranking_s", "distances_s",
                                  "effective_tflops_fast", "flops_per_item",
                                  "rss_mb_after_each_job", "stage_seconds_fresh", "stage_seconds", "data",
                                  "recommendation", "reason", "fast_others_cpu_share", "baseline_others_cpu_share")
                if n.get(k) is not None}
        for k, val in n.items():
            if k.startswith("at_") and isinstance(val, dict):
                keep[k] = {x: val[x] for x in ("fast_s", "baseline_s", "previous_path_s", "fast_map") if x in val}
        if keep:
            details.append(f"- `{r['figure']}`: " + "; ".join(f"{k} {json.dumps(val)}" for k, val in keep.items()))
    unmet = [r for r in doc["records"] if r["meets_target"] is False]
    if unmet:
        lines += ["", "Targets not met on this machine:"]
        lines += [f"- `{r['figure']}`: {fmt(r['fast_value'], r['unit'])}, target {r['target']}. Limit: "
                  f"{r['notes'].get('limit', 'not measured')}" for r in unmet]
    other = []
    for r in doc["records"]:
        spec, flops = r.get("target_spec"), r["notes"].get("flops_per_item")
        if r["meets_target"] is None and spec and spec["device"] not in (doc["device"], "any") and flops:
            rate = spec["value"] if spec["unit"] != "s" else RECIPE_EPOCHS * CIFAR_TRAIN_IMAGES / spec["value"]
            unit = "queries" if spec["unit"] == "queries/s" else "images"
            other.append(f"- `{r['figure']}` {r['target']}: {rate:,.0f} {unit}/s x {flops / 1e9:.2f} GFLOP (counted "
                         f"here) = {rate * flops / 1e12:.0f} TFLOP/s sustained")
    if other:
        lines += ["", "Targets of another device, not measured here; what they ask of the hardware:", "", *other]
    if details:
        lines += ["", "Details (from the JSON records):", "", *details]
    return "\n".join(lines) + "\n"


def update_document(path: Path, doc: dict[str, Any]) -> None:
    start, end = f"<!-- bench:{doc['device']}:start -->", f"<!-- bench:{doc['device']}:end -->"
    text = path.read_text() if path.is_file() else ""
    section = f"{start}\n{markdown(doc)}{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pqattack.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--figures", help=f"comma-separated subset of: {', '.join(FIGURES)} (default: all but demo_bf16)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (for the test)")
    p.add_argument("--out", help="JSON output (default outputs/bench/<device>.json)")
    p.add_argument("--table1-run", metavar="DIR", help="also record the recipe's training times and Table 1's wall "
                   "time from a table1 run's records (tools/gpu-run's stage folder) instead of running them again")
    p.add_argument("--markdown", metavar="JSON", help="render a JSON file's records as markdown and exit")
    p.add_argument("--update", metavar="DOC", help="with --markdown: write the section into DOC between its markers")
    p.add_argument("--figure", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.markdown:
        doc = json.loads(Path(args.markdown).read_text())
        if args.update:
            update_document(Path(args.update), doc)
        else:
            sys.stdout.write(markdown(doc))
        return 0
    if args.figure:
        child(args.figure, torch.device(args.device), args.quick, Path(args.result_file))
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
