"""Stage 4, attacks: one L-inf PGD loop; basic (eq. 3), APD (eq. 8) and AOD (eq. 9) differ by their loss."""

from .losses import LOSSES, feature_distance_loss, overall_distribution_loss, peak_distribution_loss
from .pgd import PGDConfig, pgd

__all__ = ["LOSSES", "PGDConfig", "feature_distance_loss", "overall_distribution_loss", "peak_distribution_loss",
           "pgd"]
