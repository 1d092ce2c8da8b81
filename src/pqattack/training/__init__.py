"""Stage 2, training: Lightning's trainer on in-memory uint8 batches, on one device or spawned DDP ranks."""

from .batches import TensorBatches
from .distributed import DISTRIBUTED_KEYS, SPAWN_DDP, BatchCounter, distributed_spec, rank_and_world, world_size
from .fit import fit, optimiser_kwargs

__all__ = ["DISTRIBUTED_KEYS", "SPAWN_DDP", "BatchCounter", "TensorBatches", "distributed_spec", "fit",
           "optimiser_kwargs", "rank_and_world", "world_size"]
