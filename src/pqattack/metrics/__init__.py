"""Stage 5, metrics: mAP over the full ranking or the top k, with tied distances as expected AP under random tie
order (the headline) and as sklearn's grouped AP; precision-recall at every rank."""

from .average_precision import (EMPTY, TIES, PairedDifference, QueryAP, average_precision, average_precision_unranked,
                                mean_average_precision, paired_difference, precision_recall_at_ranks,
                                query_average_precisions, relevance)

__all__ = ["EMPTY", "TIES", "PairedDifference", "QueryAP", "average_precision", "average_precision_unranked",
           "mean_average_precision", "paired_difference", "precision_recall_at_ranks", "query_average_precisions",
           "relevance"]
