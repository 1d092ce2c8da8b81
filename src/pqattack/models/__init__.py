"""Stage 2, models: CIFAR-size backbones, their Lightning training module, the differentiable retrieval model."""

from typing import Any

from .backbones import ARCHITECTURES, DEFAULT_BACKBONE_BUILDER, Backbone, build_backbone
from .retrieval import RetrievalModel

__all__ = ["ARCHITECTURES", "DEFAULT_BACKBONE_BUILDER", "Backbone", "ClassifierModule", "RetrievalModel", "build_backbone"]


def __getattr__(name: str) -> Any:
    """``ClassifierModule`` on first use: it brings in Lightning, which checking a config does not need."""
    if name == "ClassifierModule":
        from .classifier import ClassifierModule

        return ClassifierModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
