"""Stage 4, attacks: one L-inf PGD loop; basic (eq. 3), APD (eq. 8) and AOD (eq. 9) differ by their loss."""

from .losses import (LOSSES, PEAK_LOSSES, PEAKS, Reference, feature_distance_loss, overall_distribution_loss,
                     peak_distribution_loss)
from .pgd import PGDConfig, pgd, reference

__all__ = ["LOSSES", "PEAK_LOSSES", "PEAKS", "PGDConfig", "Reference", "feature_distance_loss", "overall_distribution_loss",
           "peak_distribution_loss", "pgd", "reference"]
