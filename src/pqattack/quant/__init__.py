"""Stage 3, quantization: PQ codebooks (K-means, FAISS), encoding, SDC/ADC search."""

from .codebooks import nbits_of, train_codebooks
from .index import SYSTEMS, PQIndex, unpack_codes

__all__ = ["PQIndex", "SYSTEMS", "nbits_of", "train_codebooks", "unpack_codes"]
