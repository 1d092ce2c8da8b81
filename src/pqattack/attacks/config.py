"""The attack's settings (``conf/attack``), typed and checked in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..errors import ConfigError
from ..models.retrieval import SIMILARITIES
from .losses import LOSSES, PEAKS

STEP_SCHEDULES = ("constant", "cosine")
RESTART_PICKS = ("loss", "oracle")
#: the clean query's reference (features, soft assignment, codes) that the losses push away from: through what the
#: attack differentiates (a defended target: behind its query transform), or through the bare backbone (the features
#: the database was encoded with)
REFERENCES = ("attacked", "bare")
#: loop options whose default is a word rather than null / false / 0: at that value they are off, and are left out of
#: a query set's key like any option that is off
OFF_VALUES = {"step_schedule": "constant", "restart_pick": "loss", "reference": "attacked"}


@dataclass
class AttackConfig:
    """L-inf PGD with AdverTorch ``LinfPGDAttack`` semantics and the paper's budget; attacks differ by ``loss``.

    ``temperature`` None is the target's own (1 for K-means, eq. 7 as printed; 1/alpha for PQN). ``name``
    ``none`` (``attack=none``) makes no adversarial queries and is not checked. The loop options after
    ``batch_size`` are off by default, and the loop is then PQ-AG's exactly.
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
    kappa: float = 0.0
    margin_focus: bool = False
    target_class: Optional[int] = None  # noqa: UP007
    temperature_final: Optional[float] = None  # noqa: UP007
    logit_norm: bool = False
    restarts: Optional[int] = None  # noqa: UP007
    restart_pick: str = "loss"
    momentum: float = 0.0
    diversity: float = 0.0
    step_schedule: str = "constant"
    oblivious: bool = False
    eot: int = 0
    dither: float = 0.0
    reference: str = "attacked"
    save_prefixes: Optional[List[int]] = None  # noqa: UP006, UP007

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
        self.check_options()

    def check_options(self) -> None:
        """The losses' settings and the loop options beyond the paper."""
        if self.kappa < 0:
            raise ConfigError(f"attack.kappa={self.kappa}: must be >= 0 (the margin, in logit units)")
        if self.target_class is not None and self.target_class < 0:
            raise ConfigError(f"attack.target_class={self.target_class}: must be a class index >= 0, or null (a "
                              f"seeded random other class per query)")
        if self.temperature_final is not None and self.temperature_final <= 0:
            raise ConfigError(f"attack.temperature_final={self.temperature_final}: must be > 0, or null (no "
                              f"annealing)")
        if self.restarts is not None and self.restarts < 2:
            raise ConfigError(f"attack.restarts={self.restarts}: must be >= 2, or null (one run)")
        if self.restart_pick not in RESTART_PICKS:
            raise ConfigError(f"attack.restart_pick={self.restart_pick!r}: expected one of {', '.join(RESTART_PICKS)}")
        if self.restart_pick == "oracle" and self.restarts is None:
            raise ConfigError("attack.restart_pick=oracle picks among restarts: set attack.restarts >= 2")
        if self.momentum < 0:
            raise ConfigError(f"attack.momentum={self.momentum}: must be >= 0 (MI-FGSM's decay; 0: off)")
        if not 0 <= self.diversity <= 1:
            raise ConfigError(f"attack.diversity={self.diversity}: must be in [0, 1] (DI's probability; 0: off)")
        if self.step_schedule not in STEP_SCHEDULES:
            raise ConfigError(f"attack.step_schedule={self.step_schedule!r}: expected one of "
                              f"{', '.join(STEP_SCHEDULES)}")
        if self.eot < 0 or self.eot == 1:
            raise ConfigError(f"attack.eot={self.eot}: must be >= 2 (draws of the random transform or of the dither "
                              f"per step), or 0 (off)")
        if not 0 <= self.dither <= 1:
            raise ConfigError(f"attack.dither={self.dither}: must be in [0, 1] (the width of the uniform noise added to "
                              f"each gradient evaluation's input, pixel scale; 1/(2^d - 1) is one level of a d-bit "
                              f"query transform; 0: off)")
        if self.reference not in REFERENCES:
            raise ConfigError(f"attack.reference={self.reference!r}: expected one of {', '.join(REFERENCES)} (the clean "
                              f"query through what the attack differentiates, or through the bare backbone)")
        if self.save_prefixes:
            bad = [k for k in self.save_prefixes if int(k) < 1]
            if bad:
                raise ConfigError(f"attack.save_prefixes={list(self.save_prefixes)}: {bad} < 1 (step counts; those "
                                  f">= attack.iters are skipped, so that one list serves a sweep over attack.iters)")
            varying = [k for k, on in (("restarts", self.restarts is not None),
                                       ("step_schedule=cosine", self.step_schedule != "constant"),
                                       ("temperature_final", self.temperature_final is not None),
                                       ("diversity", bool(self.diversity)), ("eot", bool(self.eot)),
                                       ("dither", bool(self.dither))) if on]
            if varying:
                raise ConfigError(f"attack.save_prefixes: the shorter runs are prefixes of this one only with a "
                                  f"constant step, temperature and no per-step randomness; {', '.join(varying)} "
                                  f"is set")

