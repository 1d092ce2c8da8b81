"""The attack's settings (``conf/attack``), typed and checked in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from ..models.retrieval import SIMILARITIES
from .losses import LOSSES, PEAKS


@dataclass
class AttackConfig:
    """L-inf PGD with AdverTorch ``LinfPGDAttack`` semantics and the paper's budget; attacks differ by ``loss``.

    ``temperature`` None is the target's own (1 for K-means, eq. 7 as printed; 1/alpha for PQN). ``name``
    ``none`` (``attack=none``) makes no adversarial queries and is not checked.
    """

    name: str = "pgd"
    loss: str = "apd"
    eps: float = 8 / 255
    step: float = 0.01
    iters: int = 5
    random_start: bool = True
    quantize_8bit: bool = True
    similarity: str = "dot"
    temperature: Optional[float] = None  # noqa: UP007 (OmegaConf reads the annotation)
    peak: str = "index"
    batch_size: int = 500

    def __post_init__(self) -> None:
        if self.name == "none":
            return
        if self.loss not in LOSSES:
            raise ConfigError(f"attack.loss={self.loss!r}: expected one of {', '.join(LOSSES)}")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"attack.eps={self.eps}: must be in (0, 1] (pixel scale; the paper's is 8/255)")
        if self.step <= 0:
            raise ConfigError(f"attack.step={self.step}: must be > 0")
        if self.iters < 1:
            raise ConfigError(f"attack.iters={self.iters}: must be >= 1")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"attack.similarity={self.similarity!r}: expected one of {', '.join(SIMILARITIES)}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"attack.temperature={self.temperature}: must be > 0, or null (the target's own)")
        if self.peak not in PEAKS:
            raise ConfigError(f"attack.peak={self.peak!r}: expected one of {', '.join(PEAKS)}")
        if self.batch_size < 1:
            raise ConfigError(f"attack.batch_size={self.batch_size}: must be >= 1")
