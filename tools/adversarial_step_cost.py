"""The cost of an adversarial-training step, measured side by side in one process (alternating runs, medians).

``--compare clean`` (the default): a whole training step (``training_step``, backward, optimiser step) of the
adversarially trained module against the clean module's on the same batch, for a PQN target (``--target pqn``:
``AdversarialPQNModule`` against ``PQNModule``) or a K-means target's backbone (``--target kmeans``:
``AdversarialClassifierModule`` against ``ClassifierModule``). An adversarial epoch has as many steps as a clean
one, so the ratio is what an epoch costs; the goal is at most k + 1.3 for k-step PGD.

``--compare reference``: what sharing the clean reference saves, the k-step attack on the batch and the training
forward and backward with the attack computing its own reference, as it did, against the step as it is
(``AdversarialBatches.adversarial_batch``: the reference computed once, for the consistency term, and the attack
starting from it).

    python tools/adversarial_step_cost.py                             # PQN, fastnet, batch 128, k = 2, 6 runs
    python tools/adversarial_step_cost.py --target kmeans --iters 5
    python tools/adversarial_step_cost.py --compare reference        # K-means target's backbone, as before
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from pqattack.attacks import pgd, reference
from pqattack.defense.config import AdversarialTrainingConfig
from pqattack.defense.training import AdversarialClassifierModule, AdversarialPQNModule
from pqattack.models import ClassifierModule, build_backbone
from pqattack.models.pqn import PQNModule
from pqattack.runtime import device_name


def medians(runs: int, **steps: Callable[[], object]) -> dict[str, float]:
    """The median wall time of each step over ``runs`` alternating runs, after one warm-up run of each."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(runs):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare_clean(args: argparse.Namespace) -> str:
    """Adversarial against clean training step; the line to print."""
    torch.manual_seed(0)
    net = build_backbone(args.model, 10)
    defense = AdversarialTrainingConfig(eps=2 / 255, iters=args.iters)
    if args.target == "pqn":
        codebooks = torch.randn(4, 64, net.embed_dim // 4)
        clean: ClassifierModule = PQNModule(net, codebooks, schedule="constant")
        adversarial: ClassifierModule = AdversarialPQNModule(net, codebooks, defense, schedule="constant")
    else:
        clean = ClassifierModule(net, schedule="constant")
        adversarial = AdversarialClassifierModule(net, defense, schedule="constant")
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(args.batch) % 10
    net.train()

    def step(module: ClassifierModule) -> Callable[[], None]:
        optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9, nesterov=True)

        def run() -> None:
            module.training_step((images, labels), 1).backward()
            optimizer.step()
            optimizer.zero_grad()
        return run

    with warnings.catch_warnings():  # self.log without a Trainer: a warning per call, nothing logged
        warnings.simplefilter("ignore")
        t = medians(args.runs, clean=step(clean), adversarial=step(adversarial))
    ratio = t["adversarial"] / t["clean"]
    return (f"{args.target} target, {args.model}, batch {args.batch}, k = {args.iters}, "
            f"{device_name(torch.device('cpu'))}, fp32: median training step {t['clean']:.3f} s clean, "
            f"{t['adversarial']:.3f} s adversarial; {ratio:.2f}x (goal: at most k + 1.3 = {args.iters + 1.3:g}x)")


def compare_reference(args: argparse.Namespace) -> str:
    """The step with two reference passes against one; the line to print."""
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

    def step(make: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            module.loss(net(make()), y).backward()
            net.zero_grad()
        return run

    t = medians(args.runs, two=step(two_references), one=step(one_reference))
    return (f"{args.model}, batch {args.batch}, k = {args.iters}, {device_name(torch.device('cpu'))}, fp32: "
            f"median step {t['two']:.3f} s with two reference passes, {t['one']:.3f} s with one; "
            f"{t['two'] / t['one']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=["clean", "reference"], default="clean")
    parser.add_argument("--target", choices=["pqn", "kmeans"], default=None,
                        help="the adversarially trained module (default: pqn; --compare reference: kmeans only)")
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args(argv)
    if min(args.batch, args.iters, args.runs) < 1:
        parser.error("--batch, --iters and --runs must be at least 1")
    if args.compare == "reference" and args.target == "pqn":
        parser.error("--compare reference measures the K-means target's backbone only (--target kmeans)")
    args.target = args.target or ("pqn" if args.compare == "clean" else "kmeans")
    print(compare_clean(args) if args.compare == "clean" else compare_reference(args))


if __name__ == "__main__":
    main()
