"""PQ-AG attack losses. Each returns a per-query loss ``[B]`` that the PGD loop *maximises*
(the paper writes the objectives as minimisation of the negated quantity)."""

from __future__ import annotations

import torch


def feature_distance_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, z_clean: torch.Tensor,
                          logp_clean: torch.Tensor) -> torch.Tensor:
    """Basic attack, eq. (3): ||F(y) - F(y^)||_2^2 on the l2-normalised features."""
    return (z_adv - z_clean).pow(2).sum(1)


def peak_distribution_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, z_clean: torch.Tensor,
                           logp_clean: torch.Tensor) -> torch.Tensor:
    """APD (Type I), eq. (8): sum_m CE(p^_m, onehot(b_m)) = -sum_m log p^_{m, b_m},
    with b_m = argmax_k <z_m, c_mk> of the clean query (eq. 6)."""
    peak = logp_clean.argmax(-1, keepdim=True)  # [B, M, 1]
    return -logp_adv.gather(-1, peak).squeeze(-1).sum(1)


def overall_distribution_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, z_clean: torch.Tensor,
                              logp_clean: torch.Tensor) -> torch.Tensor:
    """AOD (Type II), eq. (9): sum_m CE(p^_m, p_m) = -sum_m sum_k p_mk log p^_mk, with p the clean
    query's soft distribution (eq. 7)."""
    return -(logp_clean.exp() * logp_adv).sum((1, 2))


LOSSES = {
    "basic": feature_distance_loss,
    "apd": peak_distribution_loss,
    "aod": overall_distribution_loss,
}
