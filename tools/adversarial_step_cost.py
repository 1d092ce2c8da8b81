"""What sharing the clean reference saves in adversarial training: one training step (the k-step attack on the
batch, then the training forward and backward) with the attack computing its own reference, as it did, against
the step as it is (``AdversarialBatches.adversarial_batch``: the reference computed once, for the consistency term,
and the attack starting from it). Alternating runs in one process; prints the medians and their ratio.

    python tools/adversarial_step_cost.py                     # fastnet, batch 128, k = 2, 6 runs each
    python tools/adversarial_step_cost.py --model smallcnn --batch 64 --iters 5 --runs 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pqattack.attacks import pgd, reference
from pqattack.defense.config import AdversarialTrainingConfig
from pqattack.defense.training import AdversarialClassifierModule
from pqattack.models import build_backbone
from pqattack.runtime import device_name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args(argv)
    if min(args.batch, args.iters, args.runs) < 1:
        parser.error("--batch, --iters and --runs must be at least 1")
    torch.manual_seed(0)
    net = build_backbone(args.model, 10)
    module = AdversarialClassifierModule(net, AdversarialTrainingConfig(eps=2 / 255, iters=args.iters),
                                         schedule="constant")
    x = torch.rand(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.arange(args.batch) % 10

    def two_references() -> torch.Tensor:  # the step before the reference was shared
        model = module.attacked_model()
        net.eval()
        with torch.no_grad():
            reference(model, x)  # the consistency term's reference ...
            with torch.enable_grad():  # ... and the attack's own
                adv = pgd(model, x, module.attack.loss, module.attack)
        net.train()
        return adv

    def one_reference() -> torch.Tensor:
        with torch.no_grad():
            return module.adversarial_batch(x, y)[0]

    def step(make) -> float:  # noqa: ANN001
        start = time.perf_counter()
        loss = module.loss(net(make()), y)
        loss.backward()
        net.zero_grad()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"two": [], "one": []}
    step(two_references), step(one_reference)  # warm-up
    for _ in range(args.runs):
        times["two"].append(step(two_references))
        times["one"].append(step(one_reference))
    two, one = statistics.median(times["two"]), statistics.median(times["one"])
    print(f"{args.model}, batch {args.batch}, k = {args.iters}, {device_name(torch.device('cpu'))}, fp32: "
          f"median step {two:.3f} s with two reference passes, {one:.3f} s with one; {two / one:.2f}x")


if __name__ == "__main__":
    main()
