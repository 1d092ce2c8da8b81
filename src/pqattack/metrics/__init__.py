"""Stage 5, metrics: mAP over the full ranking or the top k, with tied distances as expected AP under random tie
order (the headline) and as sklearn's grouped AP; precision-recall at every rank."""

from .average_precision import (EMPTY, TIES, QueryAP, average_precision, average_precision_unranked, mean_average_precision,
                        precision_recall_at_ranks, query_average_precisions, relevance)

__all__ = ["EMPTY", "TIES", "QueryAP", "average_precision", "average_precision_unranked", "mean_average_precision",
           "precision_recall_at_ranks", "query_average_precisions", "relevance"]
