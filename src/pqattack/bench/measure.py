"""Measuring a figure: wall time, peak memory (host RSS and CUDA), CPU shares, batch intervals."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch


def candidate_precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions a figure's fast path is measured in: fp32, and bf16 autocast where the device computes bf16
    (a GPU that supports it, a CPU with AVX512-BF16 or AMX). Elsewhere bf16 is emulated, slower than fp32 and
    never what ``precision=auto`` picks, so it is not measured (``bf16_note``)."""
    from ..runtime import resolve_precision

    native = resolve_precision("auto", device) == "bf16"
    return ("fp32", "bf16") if native else ("fp32",)


def bf16_note(device: torch.device) -> dict[str, str]:
    """The note of a figure whose bf16 was not measured (``candidate_precisions``)."""
    if "bf16" in candidate_precisions(device):
        return {}
    return {"bf16": f"not measured: this {device.type.upper()} has no native bf16 (autocast would emulate it, "
                    f"slower than fp32), and precision=auto runs fp32 here"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak(device: torch.device) -> None:
    """Start a new peak: host RSS high-water mark (Linux ``clear_refs`` 5) and CUDA's peak allocation."""
    release_memory()
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



def step_seconds(ends: list[float], warmup: int) -> float:
    """Median interval between consecutive batch ends after ``warmup`` batches (loading + step + overhead); the
    median, not the mean, so that a burst of load from other processes on a shared machine does not count."""
    return statistics.median(b - a for a, b in zip(ends[warmup - 1:-1], ends[warmup:]))



def waits_after(batch: int, warmup: int, steps: int, device: torch.device) -> bool:
    """Whether a timed loop waits for the device after ``batch`` (0-based) before reading the clock: after every
    batch on a CPU (``step_seconds``' per-batch median), on a GPU only after the last warm-up batch and the last
    timed one (``batch_seconds``' window mean: a wait after every batch would stop the next batch's kernels from
    being queued, and slow the side that waits)."""
    return device.type != "cuda" or batch + 1 in (warmup, warmup + steps)


def batch_seconds(ends: list[float], warmup: int, device: torch.device) -> float:
    """Seconds per batch after ``warmup``: on a GPU the timed window's mean (its ends waited for the GPU), on a CPU
    the median interval (see ``step_seconds``)."""
    if device.type == "cuda":
        return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup)
    return step_seconds(ends, warmup)



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

