"""Stage 5, metrics: mAP over the full ranking or the top k, tie-aware."""

from .retrieval import average_precision, mean_average_precision, relevance

__all__ = ["average_precision", "mean_average_precision", "relevance"]
