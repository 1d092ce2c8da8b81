"""What the figures run on: sizes per device, the recipe's scale, CIFAR-size training images and class-clustered
retrieval features on an exact float32 grid."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[3]  # the checkout: src/pqattack/bench/workloads.py
CIFAR_TRAIN_IMAGES = 50_000
RECIPE_EPOCHS = 40

# Per-device sizes; ``quick`` is for the test (seconds per figure). The GPU sizes are the paper's recipe.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"train_batch_fast": 32, "train_batch_base": 32, "train_warmup": 2, "train_steps": 4,
            "attack_batch_fast": 16, "attack_batch_base": 16, "attack_batches": 3,
            "q9k": 1000, "n9k": 9000, "q1m": 1000, "n1m": 1_000_000, "k1m": 5000, "q1m_base": 200,
            "bits_extra": [24], "sweep_jobs": 6, "loader_workers": 0, "compile_arch": "resnet18",
            "attack_cost_arch": "fastnet", "attack_cost_batch": 128, "attack_cost_rounds": 7},
    "cuda": {"train_batch_fast": 512, "train_batch_base": 128, "train_warmup": 5, "train_steps": 30,
             "attack_batch_fast": 2000, "attack_batch_base": 100, "attack_batches": 5,
             "q9k": 1000, "n9k": 9000, "q1m": 1000, "n1m": 1_000_000, "k1m": 5000, "q1m_base": 1000,
             "bits_extra": [24, 36], "sweep_jobs": 6, "loader_workers": 4, "compile_arch": "resnet18",
             "attack_cost_arch": "resnet18", "attack_cost_batch": 2000, "attack_cost_rounds": 7},
    "quick": {"train_batch_fast": 4, "train_batch_base": 4, "train_warmup": 1, "train_steps": 1,
              "attack_batch_fast": 4, "attack_batch_base": 4, "attack_batches": 2,
              "q9k": 200, "n9k": 1800, "q1m": 100, "n1m": 20_000, "k1m": 500, "q1m_base": 50,
              "bits_extra": [], "sweep_jobs": 3, "loader_workers": 0, "compile_arch": "smallcnn",
              "attack_cost_arch": "smallcnn", "attack_cost_batch": 4, "attack_cost_rounds": 2},
}



# Exact float32 distances: features and codebooks on a grid of 2^-10 (norms <= 1) make every product a multiple of
# 2^-20 and every partial sum of a squared distance (< 4) representable in float32, in any summation order. So
# FAISS's tables, the gathers and the brute-force GEMM give bit-identical distances, and the fast and baseline mAP
# must agree (up to float64 rounding); with unrounded features, summation order flips near-ties (~1e-5 mAP points).
GRID = 2.0 ** -10
MAP_TOLERANCE = 1e-6  # mAP points (percent)


def cifar_folder() -> Path | None:
    root = Path(os.environ.get("PQATTACK_DATA", REPO / "data"))
    for cand in (root / "cifar10-jpeg", root):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def shown(folder: Path) -> str:
    """A folder as a record names it: relative to the checkout when inside it (a record says nothing of the machine's
    own paths), else as given."""
    try:
        return str(folder.resolve().relative_to(REPO.resolve()))
    except ValueError:
        return str(folder)


def training_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` uint8 CIFAR-size images ``[n, 3, 32, 32]`` with labels: decoded from the CIFAR-10 JPEG copy when there
    (a seeded sample of the training split), else random uint8 (throughput does not depend on the pixels)."""
    folder = cifar_folder()
    if folder is not None:
        from ..data.imagefolder import decode_images, list_image_folder

        _, files, labels = list_image_folder(folder / "train")
        pick = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
        imgs = torch.from_numpy(decode_images([files[i] for i in pick], 32, False, progress=False))
        lab = torch.tensor([labels[i] for i in pick])
        reps = math.ceil(n / len(pick))
        return imgs.repeat(reps, 1, 1, 1)[:n], lab.repeat(reps)[:n], f"CIFAR-10 JPEGs ({shown(folder)}), decoded once"
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



def bench_data(images: torch.Tensor, labels: torch.Tensor) -> Any:
    from ..data import RetrievalData
    from ..data.types import ImageSet

    few = ImageSet(images[:2], labels[:2])
    return RetrievalData("bench", ImageSet(images, labels), few, few, [f"c{i}" for i in range(10)], "bench")



TINY = ["dataset=synthetic", "model=smallcnn", "model.width=8", "dataset.num_train=600", "dataset.num_test=400",
        "dataset.num_queries=60", "dataset.num_database=300", "trainer.max_epochs=2", "trainer.batch_size=64",
        "trainer.lr=0.05", "device=cpu", "progress=false", "attack.batch_size=60"]

