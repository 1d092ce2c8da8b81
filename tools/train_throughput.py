"""Training throughput (images/s) of a model and its recipe through the framework's training path (Lightning,
``pipeline.fit``, augmentation and recipe options included), for several precisions side by side in one
process: rounds alternate between the precisions, and each reports the median step after a warm-up.

    python tools/train_throughput.py model=fastnet trainer=fastnet [--precisions fp32 bf16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from pqattack import pipeline
from pqattack.cache import ArtifactCache
from pqattack.config import CONF_DIR
from pqattack.data import RetrievalData
from pqattack.data.types import ImageSet
from pqattack.models import ClassifierModule


class StepTimes(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def images_per_second(cfg, precision: str, warmup: int, steps: int) -> float:  # noqa: ANN001
    tcfg = pipeline.container(cfg.trainer)
    batch = tcfg["batch_size"]
    g = torch.Generator().manual_seed(0)
    n = batch * (warmup + steps)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    few = ImageSet(images[:2], labels[:2])
    data = RetrievalData("throughput", ImageSet(images, labels), few, few, [f"c{i}" for i in range(10)], "x")
    net = pipeline.make_backbone(cfg, 10).to(memory_format=torch.channels_last)
    module = ClassifierModule(net, **pipeline.optimiser_kwargs(tcfg))
    times = StepTimes()
    original = pipeline.BatchCounter
    pipeline.BatchCounter = lambda: times  # the step timer takes the batch counter's place among the callbacks
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rt = pipeline.Runtime(torch.device("cpu"), precision, ArtifactCache(tmp, enabled=False), progress=False)
            pipeline.fit(module, data, batch, 1, 0, rt, [], tcfg)
    finally:
        pipeline.BatchCounter = original
    return batch / statistics.median(times.seconds[warmup:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model=fastnet trainer=fastnet")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=a.overrides)
    rates: dict[str, list[float]] = {prec: [] for prec in a.precisions}
    for r in range(a.rounds):
        for prec in a.precisions:
            rates[prec].append(images_per_second(cfg, prec, a.warmup, a.steps))
            print(f"round {r}: {prec} {rates[prec][-1]:.0f} images/s", flush=True)
    print(f"{cfg.model.name}, batch {cfg.trainer.batch_size}, {torch.get_num_threads()} threads, "
          f"{pipeline.cpu_model()}: " + ", ".join(f"{prec} {statistics.median(v):.0f} images/s (median of "
                                                  f"{len(v)} rounds)" for prec, v in rates.items()))


if __name__ == "__main__":
    main()
