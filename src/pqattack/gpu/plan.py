"""The GPU run's sizes and cost model: full scale on a GPU or toy size on a CPU (``Mode``), what a command will
compute (``Plan``) and the seconds it will take (``Costs``), from the throughputs the smoke stage measures."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .outbox import NOT_RECORDS

CIFAR_TRAIN = 50_000  # CIFAR-10's training images (the full recipe trains on all of them)
RESUMED_JOB_S = 0.5  # not measured (no smoke job is resumed): a resumed job reads one small record from the cache


# --------------------------------------------------------------------------------------------- the run's modes
@dataclass
class Mode:
    """Full scale on a GPU, or the same stages at toy size on a CPU (``--tiny``)."""

    tiny: bool
    device: str
    data: list[str]          # dataset overrides
    train_images: int        # training images of the tables' backbones
    queries: int
    bits: str                # the tables' code lengths
    base_models: str         # Tables 1 and 2
    transfer_models: str     # Table 3
    table4_first: str        # Table 4, first the matrix without its most expensive backbone ...
    table4_all: str          # ... then all of them
    extra: list[str] = field(default_factory=list)  # overrides for every job

    @classmethod
    def make(cls, tiny: bool) -> "Mode":
        if not tiny:
            return cls(False, "cuda", ["dataset=cifar10"], CIFAR_TRAIN, 1000, "16,24,36",
                       "alexnet,vgg16,resnet18", "alexnet,vgg16", "vgg11,vgg13,vgg16,resnet18,resnet34",
                       "vgg11,vgg13,vgg16,resnet18,resnet34,resnet50")
        root = Path(os.environ.get("PQATTACK_DATA", "data"))
        if any((c / "train").is_dir() and (c / "test").is_dir() for c in (root / "cifar10-jpeg", root)):
            data = ["dataset=cifar10", "dataset.num_train=256", "dataset.num_queries=50", "dataset.num_database=300"]
        else:
            data = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_test=400", "dataset.num_queries=50",
                    "dataset.num_database=300"]
        return cls(True, "cpu", data, 256, 50, "16,24", "smallcnn", "smallcnn", "smallcnn", "smallcnn,alexnet",
                   ["trainer.max_epochs=1", "trainer.batch_size=64", "attack.batch_size=50"])


# --------------------------------------------------------------------------------------------- cost estimates
def training_flops(arch: str) -> float:
    """Work of one training step per image (forward + backward; FLOPs / 2, as ``bench.training.flops_per_item``
    counts), counted on the meta device, without computing anything. The estimates use its ratios between backbones."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..models import build_backbone

    with torch.device("meta"):
        net = build_backbone(arch, 10).train()
        x = torch.empty(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops() / 2


@dataclass
class Plan:
    """What a command will compute, for its cost estimate."""

    train: list[tuple[str, int, int]] = field(default_factory=list)  # (arch, epochs, images), unless cached
    pqn: list[tuple[str, int, int]] = field(default_factory=list)    # PQN joint trainings (arch, epochs, images)
    jobs: int = 0            # jobs that compute (not resumed from the cache)
    resumed: int = 0         # jobs whose results are in the cache already
    attacks: list[tuple[str, int]] = field(default_factory=list)     # (arch, queries) adversarial sets to make
    codebooks: list[int] = field(default_factory=list)               # K of each K-means to run
    decode: bool = False     # the images are decoded from the JPEG files (a fresh cache)
    fixed_s: float = 0.0     # anything else, in seconds (the bench's figures)


@dataclass
class Costs:
    """Throughputs measured by the smoke stage (and refined by Table 1's trainings), and what they predict."""

    train_s_per_image: dict[str, float]   # one epoch's seconds per training image, by arch (measured ones)
    reference: str                        # the arch the smoke stage measured
    pqn_factor: float                     # PQN epoch time over the cross-entropy epoch's, same arch
    fit_s: float                          # a training's fixed cost (trainer set-up, first-epoch warm-up)
    job_s: float                          # a job's work besides training and attacks (data, features, mAP)
    resumed_s: float                      # a job resumed from the cache
    process_s: float                      # starting a process (interpreter, torch, CUDA, Hydra)
    attack_s_per_query: float             # the reference arch's three attacks, per query and attack
    kmeans_s_per_k: float                 # K-means seconds per centroid
    decode_s: float                       # decoding the image files once
    flops: dict[str, float] = field(default_factory=dict)

    def per_image(self, arch: str) -> float:
        """Seconds per training image and epoch: measured, else scaled by FLOPs from the closest measured arch of
        the same family (or the reference)."""
        if arch in self.train_s_per_image:
            return self.train_s_per_image[arch]
        family = [a for a in self.train_s_per_image if a.rstrip("0123456789") == arch.rstrip("0123456789")]
        base = max(family, key=lambda a: self.flop(a)) if family else self.reference
        return self.train_s_per_image[base] * self.flop(arch) / self.flop(base)

    def flop(self, arch: str) -> float:
        if arch not in self.flops:
            self.flops[arch] = training_flops(arch)
        return self.flops[arch]

    def estimate(self, plan: Plan) -> float:
        s = plan.fixed_s + self.process_s + plan.jobs * self.job_s + plan.resumed * self.resumed_s
        s += sum(self.fit_s + e * n * self.per_image(a) for a, e, n in plan.train)
        s += sum(self.fit_s + e * n * self.per_image(a) * self.pqn_factor for a, e, n in plan.pqn)
        s += sum(q * self.attack_s_per_query * self.flop(a) / self.flop(self.reference) for a, q in plan.attacks)
        s += sum(k * self.kmeans_s_per_k for k in plan.codebooks)
        return s + (self.decode_s if plan.decode else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def job_records(folder: Path) -> list[dict[str, Any]]:
    """Each job's results.json under ``folder`` (a sweep's own collected file left out)."""
    out = []
    for path in sorted(folder.rglob("results.json")):
        if any(part in NOT_RECORDS for part in path.relative_to(folder).parts):
            continue
        doc = json.loads(path.read_text())
        if "config" in doc.get("meta", {}):
            out.append(doc)
    return out


def measure_costs(smoke: Path) -> Costs:
    """Costs from the smoke stage's records: its reference training (2 epochs; the second is the steady rate), its
    PQN training, its jobs' stage timings and its commands' wall times. KeyError or StopIteration where they lack
    any of these."""
    status = json.loads((smoke / "status.json").read_text())
    attacks = job_records(smoke / "attacks")
    pqn = job_records(smoke / "pqn-transfer")
    built = next(j for j in attacks if (j["meta"].get("training") or {}).get("epoch_seconds"))
    train = built["meta"]["training"]
    images = int(built["meta"]["config"]["dataset"]["num_train"])
    epochs = train["epoch_seconds"]
    steady = epochs[-1] / images
    fit_s = max(0.0, train["train_seconds"] - steady * images * len(epochs))
    pqn_train = pqn[0]["meta"]["pqn_training"]
    pqn_factor = max(1.0, pqn_train["epoch_seconds"][-1] / epochs[-1])
    timings = [j["meta"]["timings_s"] for j in attacks]

    def besides(t: dict[str, float]) -> float:
        return t["total"] - sum(v for k, v in t.items() if k in ("train", "train_pqn", "codebooks", "data")
                                or k.startswith("attack_"))

    queries = int(built["meta"]["config"]["dataset"]["num_queries"])
    attack_s = [v / queries for t in timings for k, v in t.items() if k.startswith("attack_") and v > 0]
    kmeans = [t.get("codebooks", 0.0) / int(j["meta"]["config"]["quantizer"]["K"]) for t, j in zip(timings, attacks)]
    walls = {c["name"]: c for c in status["commands"]}
    process_s = max(1.0, walls["attacks"]["wall_s"] - sum(t["total"] for t in timings))
    return Costs(train_s_per_image={built["meta"]["config"]["model"]["arch"]: steady},
                 reference=built["meta"]["config"]["model"]["arch"], pqn_factor=pqn_factor, fit_s=fit_s,
                 job_s=statistics.median(besides(t) for t in timings), resumed_s=RESUMED_JOB_S, process_s=process_s,
                 attack_s_per_query=max(attack_s) if attack_s else 0.0, kmeans_s_per_k=max(kmeans),
                 decode_s=max(t.get("data", 0.0) for t in timings))


def refine_costs(costs: Costs, stage: Path) -> None:
    """Per-arch training rates from a stage's records (the whole fit over its epochs: warm-up included)."""
    for job in job_records(stage):
        m = job["meta"]
        t = m.get("training") or {}  # the cross-entropy backbone's, whether this job built it or found it cached
        if t.get("train_seconds"):
            images = m["config"]["dataset"].get("num_train") or CIFAR_TRAIN
            costs.train_s_per_image[m["config"]["model"]["arch"]] = t["train_seconds"] / (
                m["config"]["trainer"]["max_epochs"] * images)
