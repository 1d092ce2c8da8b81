"""PQ-AG attack losses. Each returns a per-query loss ``[B]`` that the PGD loop *maximises*
(the paper writes the objectives as minimisation of the negated quantity).

A loss sees the adversarial query's features and log soft assignment, and the clean query's
:class:`Reference`: its features, its log soft assignment and its peak codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PEAKS = ("index", "argmax")
PEAK_LOSSES = ("apd",)  # the losses that use the clean query's peak codes (``attack.peak``)
#: attack settings a loss does not read: they are left out of its query set's key and its rows
LOSS_IGNORES = {"basic": ("similarity", "temperature", "peak"), "aod": ("peak",)}


@dataclass
class Reference:
    """What an attack compares the adversarial query with: the clean query's ``z [B, D]``, its log soft
    assignment ``logp [B, M, K]`` (eq. 7) and its peak codes ``codes [B, M]`` (``attack.peak``: ``index``, the
    code the index assigns, eq. 1; ``argmax``, eq. 6 as printed)."""

    z: torch.Tensor
    logp: torch.Tensor
    codes: torch.Tensor


def feature_distance_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Basic attack, eq. (3): ||F(y) - F(y^)||_2^2 on the l2-normalised features."""
    return (z_adv - ref.z).pow(2).sum(1)


def peak_distribution_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """APD (Type I), eq. (8): sum_m CE(p^_m, onehot(b_m)) = -sum_m log p^_{m, b_m}, with b_m the clean query's
    peak code (``ref.codes``: eq. 1's or eq. 6's)."""
    return -logp_adv.gather(-1, ref.codes.unsqueeze(-1)).squeeze(-1).sum(1)


def overall_distribution_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """AOD (Type II), eq. (9): sum_m CE(p^_m, p_m) = -sum_m sum_k p_mk log p^_mk, with p the clean
    query's soft distribution (eq. 7)."""
    return -(ref.logp.exp() * logp_adv).sum((1, 2))


LOSSES = {
    "basic": feature_distance_loss,
    "apd": peak_distribution_loss,
    "aod": overall_distribution_loss,
}
