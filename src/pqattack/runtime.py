"""Where and how a job computes: device, precision, versions and a description of the hardware."""

from __future__ import annotations

import platform
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .cache import ArtifactCache
from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_progress(progress: str | bool) -> bool:
    """``progress=auto``: progress bars when stderr is a terminal (a log file or a pipe gets none: their redraws
    would mix with the tables); ``true``/``false`` as given."""
    if progress == "auto":
        return sys.stderr.isatty()
    return bool(progress)


@dataclass
class Runtime:
    """Where and how tensors are computed, and the run's bookkeeping (timings, cache keys used, extra meta)."""

    device: torch.device
    precision: str  # fp32 | bf16
    cache: ArtifactCache
    progress: bool = True
    estimate: bool | None = None  # the estimate before a long training; None: with the progress bars
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shows_estimate(self) -> bool:
        return self.progress if self.estimate is None else self.estimate

    def autocast(self):  # noqa: ANN201
        """bf16 autocast for the backbone when the precision is bf16 (the retrieval head opts out of it)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)


def resolve_device(name: str) -> torch.device:
    """``device``: auto (a GPU when there is one), cpu, cuda or cuda:N (which must exist here)."""
    dev = str(name)
    if dev == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cpu":
        return torch.device("cpu")
    if dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(dev[5:]) if dev.startswith("cuda:") else 0
        if index >= count:
            raise ConfigError(f"device={dev!r}: this machine has {count} CUDA device(s); use auto or cpu"
                              + (f" or cuda:0..cuda:{count - 1}" if count else ""))
        return torch.device(dev)
    raise ConfigError(f"device={dev!r}: expected auto, cpu, cuda or cuda:N")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 among ``cpuinfo``'s flags). Without
    them, bf16 autocast is emulated and slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 autocast for the backbone on a GPU with bf16 and on a CPU that computes bf16 natively,
    else fp32. The retrieval head (normalisation, soft assignment) is float32 in every case."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if name not in PRECISIONS:
        raise ConfigError(f"precision={name!r}: expected one of {', '.join(PRECISIONS)}")
    return name


def versions() -> dict[str, str]:
    """The versions of pqattack and of what computes its numbers."""
    import faiss
    import hydra
    import numpy
    import pytorch_lightning

    from . import __version__
    return {"pqattack": __version__, "torch": torch.__version__, "faiss": faiss.__version__,
            "hydra": hydra.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return model


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the number of threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"
