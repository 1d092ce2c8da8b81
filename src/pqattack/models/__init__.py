"""Stage 2, models: CIFAR-size backbones, their Lightning training module, the differentiable retrieval model."""

from .backbones import ARCHITECTURES, DEFAULT_BACKBONE_BUILDER, Backbone, build_backbone
from .classifier import ClassifierModule
from .retrieval import RetrievalModel

__all__ = ["ARCHITECTURES", "DEFAULT_BACKBONE_BUILDER", "Backbone", "ClassifierModule", "RetrievalModel", "build_backbone"]
