"""Stage 5, metrics: mAP over the full ranking or the top k, tie-aware; precision-recall at every rank."""

from .retrieval import average_precision, mean_average_precision, precision_recall_at_ranks, relevance

__all__ = ["average_precision", "mean_average_precision", "precision_recall_at_ranks", "relevance"]
