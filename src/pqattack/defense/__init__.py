"""Defenses of PQ retrieval: adversarial training of the retrieval model (``defense=adv``) and query transforms
(``defense=jpeg``, ``defense=bitdepth``), evaluated against plain and adaptive (BPDA, EOT) attacks."""

from .config import (KINDS, SCHEMAS, AdversarialTrainingConfig, BitDepthConfig, DefenseConfig, JpegConfig,
                     defense_config)
from .transforms import DefendedBackbone, QueryTransform, StraightThrough, bit_depth, jpeg

__all__ = ["KINDS", "SCHEMAS", "AdversarialTrainingConfig", "BitDepthConfig", "DefendedBackbone", "DefenseConfig",
           "JpegConfig", "QueryTransform", "StraightThrough", "bit_depth", "defense_config", "jpeg"]
