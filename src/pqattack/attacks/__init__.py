"""Stage 4, attacks: one L-inf PGD loop; basic (eq. 3), APD (eq. 8) and AOD (eq. 9) differ by their loss."""

from .config import AttackConfig
from .losses import (LOSS_IGNORES, LOSSES, PEAK_LOSSES, PEAKS, Reference, feature_distance_loss,
                     overall_distribution_loss, peak_distribution_loss)
from .pgd import pgd, reference

__all__ = ["LOSSES", "LOSS_IGNORES", "PEAKS", "PEAK_LOSSES", "AttackConfig", "Reference", "feature_distance_loss",
           "overall_distribution_loss", "peak_distribution_loss", "pgd", "reference"]
