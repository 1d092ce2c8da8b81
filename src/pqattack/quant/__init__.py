"""Stage 3, quantization: PQ codebooks (K-means, FAISS), encoding, SDC/ADC search; IVF-PQ (ADC)
for large databases."""

from .codebooks import nbits_of, train_codebooks
from .index import SYSTEMS, PQIndex, search_past_ties, unpack_codes
from .ivf import IVFPQIndex, recall_at_k_with_ties

__all__ = ["IVFPQIndex", "PQIndex", "SYSTEMS", "nbits_of", "recall_at_k_with_ties", "search_past_ties",
           "train_codebooks", "unpack_codes"]
