"""Stage 4, attacks: one L-inf PGD loop; basic (eq. 3), APD (eq. 8), AOD (eq. 9) and the attacks beyond the paper
(margin, centre codes, targeted centre codes, far codes, class-contrastive far codes) differ by their loss."""

from .centers import batch_anchors, center_codes, class_spreads, nearest_centers, random_other_classes
from .config import OFF_VALUES, AttackConfig
from .losses import (CENTER_LOSSES, CLASS_LOSSES, LOSS_IGNORES, LOSS_READS, LOSSES, PEAK_LOSSES, PEAKS, Reference,
                     center_loss, class_contrast_loss, codeword_spread, far_code_loss,
                     feature_distance_loss, loss_for, margin_loss, overall_distribution_loss, peak_distribution_loss,
                     sdc_table, targeted_center_loss)
from .pgd import pgd, reference

__all__ = ["CENTER_LOSSES", "CLASS_LOSSES", "LOSSES", "LOSS_IGNORES", "LOSS_READS", "OFF_VALUES", "PEAKS",
           "PEAK_LOSSES", "AttackConfig", "Reference", "batch_anchors", "center_codes", "center_loss",
           "class_contrast_loss", "class_spreads", "codeword_spread", "far_code_loss", "feature_distance_loss",
           "loss_for", "margin_loss", "nearest_centers", "overall_distribution_loss", "peak_distribution_loss", "pgd",
           "random_other_classes", "reference", "sdc_table", "targeted_center_loss"]
