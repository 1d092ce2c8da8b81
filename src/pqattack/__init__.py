"""pqattack: adversarial attacks on deep product-quantization image retrieval (PQ-AG, AAAI 2020)."""

__version__ = "0.1.0"
