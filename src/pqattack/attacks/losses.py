"""Attack losses. Each returns a per-query loss ``[B]`` that the PGD loop *maximises* (the paper writes its
objectives as minimisation of the negated quantity).

A loss sees the adversarial query's features and log soft assignment, and the clean query's
:class:`Reference`: its features, its log soft assignment, its peak codes and, for the centre-code losses, its
anchor codes. PQ-AG's three (basic, APD, AOD) and three beyond the paper: a margin on the index's assignment
(CW-style), and the untargeted and targeted centre-code losses (the PQ analogue of the anchor / centre /
mainstay codes of the hashing attacks), and a distance-weighted APD that pushes the soft assignment toward the
codewords far from the clean code (the PQ analogue of the hashing attacks' push toward the code's complement), and
its class-contrastive form, which pushes the query away from its class's database items relative to all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

PEAKS = ("index", "argmax")
PEAK_LOSSES = ("apd", "margin", "far")  # the losses that use the clean query's peak codes (``attack.peak``)
CENTER_LOSSES = ("center", "center_targeted")  # the losses that use centre codes (``Reference.anchor``)
#: the losses that read the database's labels and codes (its classes' centre codes, or their code histograms)
CLASS_LOSSES = (*CENTER_LOSSES, "contrast")
#: the attack settings that only some losses read
LOSS_SETTINGS = ("similarity", "temperature", "peak", "kappa", "margin_focus", "target_class", "temperature_final",
                 "logit_norm")
_SOFT = ("similarity", "temperature", "temperature_final", "logit_norm")
LOSS_READS = {
    "basic": (),
    "apd": (*_SOFT, "peak"),
    "aod": _SOFT,
    "margin": (*_SOFT, "peak", "kappa", "margin_focus"),
    "center": _SOFT,
    "center_targeted": (*_SOFT, "target_class"),
    "far": (*_SOFT, "peak"),
    "contrast": _SOFT,
}
#: attack settings a loss does not read: they are left out of its query set's key and its rows
LOSS_IGNORES = {loss: tuple(s for s in LOSS_SETTINGS if s not in reads) for loss, reads in LOSS_READS.items()}

Loss = Callable[[torch.Tensor, torch.Tensor, "Reference"], torch.Tensor]


@dataclass
class Reference:
    """What an attack compares the adversarial query with: the clean query's ``z [B, D]``, its log soft
    assignment ``logp [B, M, K]`` (eq. 7), its peak codes ``codes [B, M]`` (``attack.peak``: ``index``, the code
    the index assigns, eq. 1; ``argmax``, eq. 6 as printed) and, for the centre-code losses, ``anchor [B, M]``:
    the centre code of the query's class (``center``) or of its target class (``center_targeted``); for ``far``,
    ``spread [B, M, K]``: the squared distance of each codeword to the peak code's (the SDC table's row of b_m);
    for ``contrast``, ``spread`` is each codeword's mean SDC distance to the database items of the query's class
    and ``baseline [B, M, K]`` the same over all database items (``attacks.centers.class_spreads``)."""

    z: torch.Tensor
    logp: torch.Tensor
    codes: torch.Tensor
    anchor: torch.Tensor | None = None
    spread: torch.Tensor | None = None
    baseline: torch.Tensor | None = None


def sdc_table(codebooks: torch.Tensor) -> torch.Tensor:
    """``[M, K, K]`` float32: ||c_mk - c_mk'||^2 for codebooks ``[M, K, d]``, SDC's table (eq. 2), in float32
    whatever autocast is active (the retrieval head's rule: under bf16 autocast the Gram product would lose
    about 2e-3 to rounding), with an exact zero diagonal (a codeword's distance to itself), as FAISS's table."""
    c = codebooks.float()
    with torch.autocast(c.device.type, enabled=False):
        sq = c.pow(2).sum(-1)
        table = (sq[:, :, None] + sq[:, None, :] - 2 * c @ c.transpose(1, 2)).clamp_min(0)
    table.diagonal(dim1=1, dim2=2).zero_()
    return table


def codeword_spread(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[B, M, K]`` float32: ||c_mk - c_{m, b_m}||^2 for codebooks ``[M, K, d]`` and codes ``[B, M]``, the SDC
    distance (eq. 2's table) from each codeword to the query's own."""
    return sdc_table(codebooks)[torch.arange(codebooks.shape[0], device=codes.device)[None, :], codes]


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


def assignment_gaps(logp_adv: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[B, M]``: the logit of code ``b_m`` minus the best other code's logit, per sub-space (differences of log
    probabilities are differences of logits). Positive: ``b_m`` is still the assignment."""
    own = logp_adv.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    others = logp_adv.scatter(-1, codes.unsqueeze(-1), float("-inf")).amax(-1)
    return own - others


def margin_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference, kappa: float = 0.0,
                focus: bool = False) -> torch.Tensor:
    """Margin on the assignment (Carlini-Wagner style): -sum_m w_m max(0, gap_m + kappa), with gap_m the logit of
    the clean query's peak code b_m minus the best other code's logit. Zero, its maximum, once every sub-space has
    left b_m by the margin kappa (logit units); a sub-space that has flipped stops drawing on the budget.
    ``focus``: w_m proportional to 1 / (gap_m + kappa) over the sub-spaces not yet flipped (detached), so the
    sub-spaces closest to flipping get the most weight; else w_m = 1."""
    excess = (assignment_gaps(logp_adv, ref.codes) + kappa).clamp_min(0)
    if focus:
        inverse = torch.where(excess > 0, 1 / excess.detach().clamp_min(1e-12), torch.zeros_like(excess))
        return -(excess * inverse / inverse.sum(1, keepdim=True).clamp_min(1e-12)).sum(1)
    return -excess.sum(1)


def center_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Untargeted centre-code attack: -sum_m log p^_{m, a_m}, pushing the soft assignment away from ``ref.anchor``,
    the centre code of the query's class (the per-sub-space majority codeword of that class's database items)."""
    return -logp_adv.gather(-1, ref.anchor.unsqueeze(-1)).squeeze(-1).sum(1)


def targeted_center_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Targeted centre-code attack: sum_m log p^_{m, t_m}, pulling the soft assignment toward ``ref.anchor``, the
    centre code of the target class. Zero, its maximum, when every sub-space is assigned to t_m with certainty."""
    return logp_adv.gather(-1, ref.anchor.unsqueeze(-1)).squeeze(-1).sum(1)


def far_code_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Distance-weighted APD: sum_m log sum_k p^_mk ||c_mk - c_{m, b_m}||^2, the log of the expected SDC distance
    from the soft assignment to the clean query's peak code b_m, per sub-space. APD's gradient moves the mass to
    the codes that are already likely, the nearest ones, whose cells hold much the same items; this one weights
    each code by its distance from b_m, so the query moves toward the far side of each codebook. In the log, each
    sub-space counts alike whatever its codebook's scale, and the push away from b_m keeps a gradient of order
    one when p^ is saturated on b_m (APD's is 1 - p^_{m, b_m})."""
    if ref.spread is None:
        raise ValueError("far_code_loss: the reference has no codeword spread (attacks.reference computes it; "
                         "or pass Reference(..., spread=codeword_spread(codebooks, codes)))")
    return torch.logsumexp(logp_adv + ref.spread.log(), dim=-1).sum(1)


def class_contrast_loss(z_adv: torch.Tensor, logp_adv: torch.Tensor, ref: Reference) -> torch.Tensor:
    """Class-contrastive far codes: sum_m [log sum_k p^_mk D_mk(y) - log sum_k p^_mk D_mk(all)], with D_mk(y) the
    mean SDC distance from codeword k to the database items of the query's class y (``ref.spread``) and D_mk(all)
    to all items (``ref.baseline``). Far codes push the query away from its own code; this pushes it away from its
    class's items *relative to the others*: a move that takes it far from everything changes no ranking, one that
    takes it toward other classes' items ranks its own class's items last."""
    if ref.spread is None or ref.baseline is None:
        raise ValueError("class_contrast_loss: the reference has no class spreads (the attack stage computes them "
                         "from the database: attacks.centers.class_spreads)")
    own = torch.logsumexp(logp_adv + ref.spread.log(), dim=-1)
    everyone = torch.logsumexp(logp_adv + ref.baseline.log(), dim=-1)
    return (own - everyone).sum(1)


LOSSES: dict[str, Loss] = {
    "basic": feature_distance_loss,
    "apd": peak_distribution_loss,
    "aod": overall_distribution_loss,
    "margin": margin_loss,
    "center": center_loss,
    "center_targeted": targeted_center_loss,
    "far": far_code_loss,
    "contrast": class_contrast_loss,
}


def loss_for(name: str, cfg: Any) -> Loss:
    """The loss ``name`` with its settings from ``cfg`` (an ``AttackConfig``) bound: ``margin``'s kappa and focus."""
    if name == "margin":
        return partial(margin_loss, kappa=float(cfg.kappa), focus=bool(cfg.margin_focus))
    return LOSSES[name]
