"""Training batches straight from in-memory uint8 tensors, sharded across distributed ranks."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .distributed import rank_and_world


class TensorBatches:
    """Shuffled mini-batches straight from in-memory tensors (already on the training device with one
    process; on the CPU with several, where Lightning moves each batch to its rank's device).

    Not a DataLoader, so Lightning inserts no DistributedSampler: the sharding is done here, at iteration
    time, from ``torch.distributed`` (initialised in each rank by the time Lightning asks for batches).
    Every rank draws the same permutation (same seeded generator, advanced once per epoch everywhere) and
    takes every world-th index from its rank on, cut to ``len // world`` on every rank (DistributedSampler
    with ``drop_last=True``), so all ranks run the same number of steps and no image is seen twice in an
    epoch. With one process the shard is the whole permutation: the batches are exactly the unsharded ones.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        _, world = rank_and_world()  # drop the last partial batch (BN needs > 1 sample)
        return len(self.images) // world // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, world = rank_and_world()
        perm = torch.randperm(len(self.images), generator=self.generator)
        perm = perm[rank::world][:len(self.images) // world].to(self.images.device)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]

    def __getstate__(self) -> dict[str, Any]:
        # Spawned ranks receive this object pickled, and a torch.Generator does not survive torch's spawn
        # pickler (pytorch/pytorch#146828: "unable to resize file" in the child); send its state as bytes.
        return {**self.__dict__, "generator": self.generator.get_state().numpy().tobytes()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["generator"]), dtype=torch.uint8))
        self.__dict__.update({**state, "generator": generator})
