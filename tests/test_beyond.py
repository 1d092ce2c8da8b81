"""The attacks beyond the paper: the margin and centre-code losses against hand computations, centre codes against a
majority vote, the loop options (restarts, MI, DI, cosine steps, annealed temperature, ensembles) inside the
eps-ball, the off path bit for bit as PQ-AG's loop, t-mAP and the ranking diagnostics against brute force, the new
keys' checks, and one small job per new attack through ``pipeline.run``."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from pqattack.attacks import (AttackConfig, Reference, center_codes, center_loss, class_contrast_loss, class_spreads,
                              codeword_spread, far_code_loss, margin_loss, nearest_centers, pgd, random_other_classes,
                              reference, targeted_center_loss)
from pqattack.attacks.losses import LOSSES
from pqattack.attacks.pgd import diverse_input, step_sizes, temperatures
from pqattack.config import ConfigError, load_job, validate
from pqattack.data.types import ImageSet, RetrievalData
from pqattack.metrics.ranking import ranking_diagnostics
from pqattack.models import RetrievalModel, build_backbone
from pqattack.quant import PQIndex
from pqattack.records import perceptibility, targeted_fields
from pqattack.stages.target import Target, targeted_scores

from .conftest import CONF, TINY, compose_config
from .test_config import make


def log_sig(t: float) -> float:
    """log softmax of a 2-way split with logit difference t."""
    return -math.log1p(math.exp(-t))


def tiny_logp() -> torch.Tensor:
    """M=2 sub-spaces, K=2 codes: logits m=0: [-0.5, 0.5], m=1: [0, 0] (test_attacks.tiny_case's adversarial z)."""
    return torch.log_softmax(torch.tensor([[[-0.5, 0.5], [0.0, 0.0]]]), -1)


def ref_with(codes: list[int], anchor: list[int] | None = None) -> Reference:
    z = torch.zeros(1, 2)
    return Reference(z, tiny_logp(), torch.tensor([codes]), None if anchor is None else torch.tensor([anchor]))


# ----------------------------------------------------------------------------------------------------- losses
def test_margin_loss_by_hand() -> None:
    """gap_m = logit of b_m - best other logit: m=0: -0.5 - 0.5 = -1 (flipped), m=1: 0 - 0 = 0."""
    la, ref = tiny_logp(), ref_with([0, 0])
    assert float(margin_loss(None, la, ref, kappa=0.0)) == pytest.approx(0.0, abs=1e-7)  # both at or past the edge
    assert float(margin_loss(None, la, ref, kappa=0.5)) == pytest.approx(-(0.0 + 0.5), rel=1e-6)
    assert float(margin_loss(None, la, ref, kappa=2.0)) == pytest.approx(-(1.0 + 2.0), rel=1e-6)
    # focus: w_m = (1 / excess_m) / sum_j (1 / excess_j) over the unflipped: excess (1, 2) -> w = (2/3, 1/3)
    assert float(margin_loss(None, la, ref, kappa=2.0, focus=True)) == pytest.approx(-(1 * 2 / 3 + 2 / 3), rel=1e-6)
    # codes (1, 1): m=0 gap 1, m=1 gap 0
    assert float(margin_loss(None, la, ref_with([1, 1]), kappa=0.25)) == pytest.approx(-(1.25 + 0.25), rel=1e-6)


def test_margin_loss_is_zero_at_its_target_and_stops_pushing_flipped_subspaces() -> None:
    logits = torch.tensor([[[0.0, 3.0, 1.0], [2.0, 0.5, 0.0]]], requires_grad=True)
    la = torch.log_softmax(logits, -1)
    ref = Reference(torch.zeros(1, 2), la.detach(), torch.tensor([[0, 0]]))
    # m=0 has left code 0 by 3 (> kappa 1): no loss, no gradient; m=1 still holds code 0 by 1.5
    loss = margin_loss(None, la, ref, kappa=1.0)
    assert float(loss.detach()) == pytest.approx(-(1.5 + 1.0), rel=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.equal(grad[0, 0], torch.zeros(3)) and grad[0, 1].abs().sum() > 0
    flipped = torch.log_softmax(torch.tensor([[[0.0, 3.0, 1.0], [0.0, 2.0, 0.5]]]), -1)
    assert float(margin_loss(None, flipped, ref, kappa=1.0)) == 0.0  # its maximum: every sub-space left b_m by kappa
    assert float(margin_loss(None, la, ref, kappa=1.0)) < 0


def test_centre_losses_by_hand_and_at_their_target() -> None:
    la = tiny_logp()
    ref = ref_with([0, 0], anchor=[1, 0])
    # -log p^_{0,1} - log p^_{1,0} = -(log_sig(1) + log 0.5)
    assert float(center_loss(None, la, ref)) == pytest.approx(-(log_sig(1.0) + math.log(0.5)), rel=1e-6)
    assert float(targeted_center_loss(None, la, ref)) == pytest.approx(log_sig(1.0) + math.log(0.5), rel=1e-6)
    # at the anchor with certainty: the untargeted loss is at its minimum (0), the targeted one at its maximum (0)
    at_anchor = torch.log_softmax(torch.tensor([[[-50.0, 50.0], [50.0, -50.0]]]), -1)
    assert float(center_loss(None, at_anchor, ref)) == pytest.approx(0.0, abs=1e-12)
    assert float(targeted_center_loss(None, at_anchor, ref)) == pytest.approx(0.0, abs=1e-12)
    assert float(center_loss(None, la, ref)) > 0 > float(targeted_center_loss(None, la, ref))


def test_far_code_loss_by_hand_and_at_its_target() -> None:
    """Codebooks M=2, K=3 of 1-d codewords: m=0 at 0, 1, 3; m=1 at 0, 2, -1. Clean codes b = (0, 2)."""
    codebooks = torch.tensor([[[0.0], [1.0], [3.0]], [[0.0], [2.0], [-1.0]]])
    codes = torch.tensor([[0, 2]])
    spread = codeword_spread(codebooks, codes)
    assert torch.equal(spread, torch.tensor([[[0.0, 1.0, 9.0], [1.0, 9.0, 0.0]]]))  # (c_mk - c_{m,b_m})^2
    logits = torch.tensor([[[0.0, 1.0, -1.0], [0.5, 0.0, 0.0]]])
    la = torch.log_softmax(logits, -1)
    p = la.exp()
    ref = Reference(torch.zeros(1, 2), la, codes, None, spread)
    want = math.log(p[0, 0, 1] * 1 + p[0, 0, 2] * 9) + math.log(p[0, 1, 0] * 1 + p[0, 1, 1] * 9)
    assert float(far_code_loss(None, la, ref)) == pytest.approx(want, rel=1e-6)
    # its maximum: every sub-space on its farthest codeword with certainty, log 9 + log 9; no distribution beats it
    at_target = torch.log_softmax(torch.tensor([[[-50.0, -50.0, 50.0], [-50.0, 50.0, -50.0]]]), -1)
    top = float(far_code_loss(None, at_target, ref))
    assert top == pytest.approx(2 * math.log(9), rel=1e-6)
    others = torch.log_softmax(torch.randn(200, 2, 3, generator=torch.Generator().manual_seed(0)) * 3, -1)
    assert float(far_code_loss(None, others, Reference(torch.zeros(200, 2), others, codes.expand(200, 2), None,
                                                       spread.expand(200, 2, 3))).max()) < top
    # the push away from b_m keeps a gradient of order one when p^ is saturated on b_m (APD's vanishes)
    saturated = torch.tensor([[[30.0, 0.0, 0.0], [0.0, 0.0, 30.0]]], requires_grad=True)
    (g_far,) = torch.autograd.grad(far_code_loss(None, torch.log_softmax(saturated, -1), ref).sum(), saturated)
    (g_apd,) = torch.autograd.grad(LOSSES["apd"](None, torch.log_softmax(saturated, -1), ref).sum(), saturated)
    assert float(g_far[0, 0, 0]) == pytest.approx(-1.0, abs=1e-6)
    assert float(g_far[0, 1, 2]) == pytest.approx(-1.0, abs=1e-6)
    assert g_apd.abs().max() < 1e-10
    with pytest.raises(ValueError, match="spread"):
        far_code_loss(None, la, Reference(torch.zeros(1, 2), la, codes))


def test_codeword_spread_is_the_index_sdc_table_row_of_the_clean_code() -> None:
    g = torch.Generator().manual_seed(3)
    codebooks = torch.randn(4, 16, 8, generator=g)
    index = PQIndex(codebooks, torch.randn(300, 32, generator=g))
    codes = torch.randint(0, 16, (10, 4), generator=g)
    want = index.sdc_table[torch.arange(4)[None, :], codes]
    assert torch.allclose(codeword_spread(codebooks, codes), want, rtol=1e-5, atol=1e-5)


def test_class_spreads_are_mean_sdc_distances_to_the_class_items() -> None:
    g = torch.Generator().manual_seed(5)
    n, m, k, classes = 120, 3, 5, 4
    codes = torch.randint(0, k, (n, m), generator=g)
    labels = torch.randint(0, classes - 1, (n,), generator=g)  # the last class has no items
    table = torch.rand(m, k, k, generator=g)
    got = class_spreads(codes, labels, classes, table)
    assert got.shape == (classes + 1, m, k)
    for c, members in [(c, codes[labels == c]) for c in range(classes - 1)] + [(classes, codes)]:
        for j in range(m):
            for kk in range(k):
                want = float(np.mean([float(table[j, kk, int(b)]) for b in members[:, j]]))
                assert float(got[c, j, kk]) == pytest.approx(want, rel=1e-5)
    assert got[classes - 1].isnan().all()
    multi = torch.zeros(n, classes, dtype=torch.bool)
    multi[:, 0] = True
    assert torch.allclose(class_spreads(codes, multi, classes, table)[0], got[classes])


def test_class_contrast_loss_by_hand_and_where_it_is_largest() -> None:
    """M=1, K=3: the class's items all on code 0, the others on codes 1 and 2; 1-d codewords at 0, 1 and 3."""
    codebooks = torch.tensor([[[0.0], [1.0], [3.0]]])
    table = codeword_spread(codebooks, torch.arange(3)[None, :]).squeeze(0)[None]  # [1, 3, 3]
    db_codes = torch.tensor([[0], [0], [1], [2]])
    spreads = class_spreads(db_codes, torch.tensor([0, 0, 1, 1]), 2, table)
    assert torch.allclose(spreads[0, 0], torch.tensor([0.0, 1.0, 9.0]))  # to class 0's items (both at 0)
    assert torch.allclose(spreads[2, 0], torch.tensor([(0 + 0 + 1 + 9) / 4, (1 + 1 + 0 + 4) / 4, (9 + 9 + 4 + 0) / 4]))
    own, everyone = spreads[0][None], spreads[2][None]
    la = torch.log_softmax(torch.tensor([[[0.2, 1.0, -0.5]]]), -1)
    p = la.exp()[0, 0]
    ref = Reference(torch.zeros(1, 1), la, torch.tensor([[0]]), spread=own, baseline=everyone)
    want = math.log(float(p @ own[0, 0])) - math.log(float(p @ everyone[0, 0]))
    assert float(class_contrast_loss(None, la, ref)) == pytest.approx(want, rel=1e-6)
    # per codeword (a one-hot assignment) the loss is log D(own) - log D(all); the largest is codeword 2 here
    ratios = (own[0, 0] / everyone[0, 0]).log()
    hot = torch.log_softmax(torch.eye(3)[:, None, :] * 60 - 30, -1)  # [3, 1, 3]
    per_code = class_contrast_loss(None, hot, Reference(torch.zeros(3, 1), hot, torch.zeros(3, 1).long(),
                                                        spread=own.expand(3, 1, 3), baseline=everyone.expand(3, 1, 3)))
    assert torch.allclose(per_code[1:], ratios[1:], atol=1e-5) and per_code[0] < -20  # code 0: log 0 (its own)
    assert int(per_code.argmax()) == 2
    with pytest.raises(ValueError, match="class spreads"):
        class_contrast_loss(None, la, Reference(torch.zeros(1, 1), la, torch.tensor([[0]]), spread=own))
    with pytest.raises(ValueError, match="references"):
        pgd(small_model(), images(2), "contrast", AttackConfig(loss="contrast"))


# ---------------------------------------------------------------------------------------------- centre codes
def majority(codes: list[int]) -> int:
    counts = Counter(codes)
    best = max(counts.values())
    return min(c for c, n in counts.items() if n == best)


def test_centre_codes_are_the_per_subspace_majority_vote() -> None:
    g = torch.Generator().manual_seed(0)
    n, m, k, classes = 200, 4, 8, 6
    codes = torch.randint(0, k, (n, m), generator=g)
    labels = torch.randint(0, classes - 1, (n,), generator=g)  # the last class has no items
    got = center_codes(codes, labels, classes, k)
    for c in range(classes - 1):
        members = codes[labels == c]
        assert got[c].tolist() == [majority(members[:, j].tolist()) for j in range(m)]
    assert got[classes - 1].tolist() == [-1] * m
    multi = torch.rand(n, classes, generator=g) < 0.3  # multi-label: per concept, the items that carry it
    got = center_codes(codes, multi, classes, k)
    for c in range(classes):
        members = codes[multi[:, c]]
        expect = [majority(members[:, j].tolist()) for j in range(m)] if len(members) else [-1] * m
        assert got[c].tolist() == expect


def test_nearest_centres_and_random_other_classes() -> None:
    sdc = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1))
    sdc = sdc + sdc.transpose(1, 2)
    sdc[:, range(4), range(4)] = 0
    centers = torch.tensor([[0, 1], [2, 3], [-1, -1], [3, 3]])
    queries = torch.tensor([[0, 1], [2, 3], [3, 2], [1, 0]])
    got = nearest_centers(queries, centers, sdc)
    for q, c in zip(queries, got):
        dists = [float(sdc[0, q[0], cc[0]] + sdc[1, q[1], cc[1]]) if cc[0] >= 0 else math.inf for cc in centers]
        assert int(c) == int(np.argmin(dists))
    assert got[:2].tolist() == [0, 1]
    labels = torch.arange(10).repeat(20)
    other = random_other_classes(labels, 10, torch.Generator().manual_seed(0))
    assert (other != labels).all() and other.min() >= 0 and other.max() < 10 and len(set(other.tolist())) == 10
    multi = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 1, 1]]).bool()
    drawn = random_other_classes(multi, 3, torch.Generator().manual_seed(0))
    assert drawn[0] == 2 and drawn[1] == 0


# ------------------------------------------------------------------------------------------------ loop options
def small_model(seed: int = 0) -> RetrievalModel:
    torch.manual_seed(seed)
    net = build_backbone("smallcnn", 10, width=4).eval()
    return RetrievalModel(net, torch.randn(4, 16, net.embed_dim // 4) * 0.3)


def images(n: int = 4) -> torch.Tensor:
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)).float()
    x = x / 255
    x[0], x[1] = 0.0, 1.0  # saturated images exercise the [0, 1] clamp
    return x


LOOP_OPTIONS = {
    "momentum": {"momentum": 1.0},
    "diversity": {"diversity": 1.0},
    "restarts": {"restarts": 3},
    "cosine": {"step_schedule": "cosine", "iters": 4},
    "annealed": {"temperature_final": 0.05, "logit_norm": True},
    "all": {"momentum": 0.9, "diversity": 0.5, "restarts": 2, "step_schedule": "cosine"},
}


@pytest.mark.parametrize("option,loss", [(o, "apd") for o in sorted(LOOP_OPTIONS)] + [("all", "margin")])
def test_loop_options_stay_in_the_ball_in_range_and_on_the_grid(option: str, loss: str) -> None:
    model, x = small_model(), images()
    cfg = AttackConfig(loss=loss, **LOOP_OPTIONS[option])
    adv = pgd(model, x, loss, cfg, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= cfg.eps + 1e-6
    assert torch.equal(torch.round(adv * 255), adv * 255)
    assert (adv != x).any()
    raw = pgd(model, x, loss, AttackConfig(loss=loss, quantize_8bit=False, **LOOP_OPTIONS[option]),
              generator=torch.Generator().manual_seed(0))
    assert (raw - x).abs().max() <= cfg.eps + 1e-6 and raw.min() >= 0 and raw.max() <= 1


def test_schedules_by_hand() -> None:
    cos = step_sizes(AttackConfig(step=0.02, iters=4, step_schedule="cosine"))
    assert cos == pytest.approx([0.02, 0.02 * (1 + math.cos(math.pi / 4)) / 2, 0.01,
                                 0.02 * (1 + math.cos(3 * math.pi / 4)) / 2])
    assert step_sizes(AttackConfig(step=0.02, iters=3)) == [0.02] * 3
    assert temperatures(1.0, AttackConfig(iters=3, temperature_final=0.01)) == pytest.approx([1.0, 0.1, 0.01])
    assert temperatures(0.5, AttackConfig(iters=3)) == [0.5] * 3


def test_diverse_input_keeps_the_size_and_is_a_shrunk_padded_copy() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(diverse_input(x, 0.0, torch.Generator().manual_seed(0)), x)
    out = diverse_input(x, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    nonzero = (out.abs().sum((0, 1)) > 0)
    rows, cols = nonzero.any(1).nonzero(), nonzero.any(0).nonzero()
    side = int(rows.max() - rows.min() + 1)
    assert 28 <= side < 32 and int(cols.max() - cols.min() + 1) == side  # r in [7/8 s, s), square, zero padding


def test_restarts_keep_the_best_loss_per_query_and_follow_a_pick() -> None:
    """The first restart is the single run (same generator); the loss pick is never worse than it per query."""
    model, x = small_model(), images()
    one = pgd(model, x, "apd", AttackConfig(), generator=torch.Generator().manual_seed(0))
    three = pgd(model, x, "apd", AttackConfig(restarts=3), generator=torch.Generator().manual_seed(0))
    ref = reference(model, x)
    with torch.no_grad():
        loss_one = LOSSES["apd"](*model(one), ref)
        loss_three = LOSSES["apd"](*model(three), ref)
    assert (loss_three >= loss_one).all() and (loss_three > loss_one).any()
    seen: list[list[torch.Tensor]] = []

    def first(candidates: list[torch.Tensor]) -> torch.Tensor:
        seen.append(candidates)
        return torch.zeros(len(x), dtype=torch.int64)

    picked = pgd(model, x, "apd", AttackConfig(restarts=3), generator=torch.Generator().manual_seed(0), pick=first)
    assert len(seen[0]) == 3 and torch.equal(picked, one)


def test_momentum_changes_the_path_and_an_ensemble_of_one_model_twice_is_that_model() -> None:
    model, x = small_model(), images()
    cfg = AttackConfig(iters=3)
    plain = pgd(model, x, "aod", cfg, generator=torch.Generator().manual_seed(0))
    mi = pgd(model, x, "aod", AttackConfig(iters=3, momentum=1.0), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(plain, mi)
    twice = pgd([model, model], x, "aod", cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(twice, plain)
    other = small_model(seed=1)
    both = pgd([model, other], x, "aod", cfg, generator=torch.Generator().manual_seed(0))
    alone = pgd(other, x, "aod", cfg, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(both, plain) and not torch.equal(both, alone)


def paper_pgd(model: RetrievalModel, images: torch.Tensor, loss_fn, cfg: AttackConfig,  # noqa: ANN001
              generator: torch.Generator | None = None) -> torch.Tensor:
    """PQ-AG's loop as it was before the options beyond the paper (frozen here as the reference)."""
    x = images.detach()
    with torch.no_grad():
        z, logp = model(x)
        ref = Reference(z, logp, model.index_codes(z) if cfg.peak == "index" else model.argmax_codes(z))
    if cfg.random_start:
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * cfg.eps
        delta = (x + delta).clamp(0, 1) - x
    else:
        delta = torch.zeros_like(x)
    for _ in range(cfg.iters):
        delta.requires_grad_(True)
        z_adv, logp_adv = model(x + delta)
        loss = loss_fn(z_adv, logp_adv, ref).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + cfg.step * grad.sign()
            delta = delta.clamp(-cfg.eps, cfg.eps)
            delta = (x + delta).clamp(0, 1) - x
    x_adv = (x + delta).detach()
    if cfg.quantize_8bit:
        x_adv = torch.round(x_adv * 255) / 255
    return x_adv


@pytest.mark.parametrize("loss", ["basic", "apd", "aod"])
@pytest.mark.parametrize("settings", [{}, {"quantize_8bit": False, "iters": 3}, {"peak": "argmax", "temperature": 0.1}])
def test_with_every_option_off_the_loop_is_pq_ags_bit_for_bit(loss: str, settings: dict) -> None:
    model, x = small_model(), images()
    if "temperature" in settings:
        model.temperature = settings["temperature"]
    cfg = AttackConfig(loss=loss, **settings)
    got = pgd(model, x, loss, cfg, generator=torch.Generator().manual_seed(5))
    want = paper_pgd(model, x, LOSSES[loss], cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
    assert not torch.equal(pgd(model, x, loss, AttackConfig(loss=loss, momentum=0.5, **settings),
                               generator=torch.Generator().manual_seed(5)), want)


# ------------------------------------------------------------------------------------------ t-mAP, diagnostics
def brute_ap(dist: np.ndarray, rel: np.ndarray) -> float:
    order = np.argsort(dist, kind="stable")
    hits = rel[order]
    if not hits.any():
        return 0.0
    ranks = np.nonzero(hits)[0] + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def test_tmap_is_the_map_with_the_target_class_relevant() -> None:
    """ADC distances to items of distinct codes do not tie, so AP is the plain sorted-list AP; t-mAP averages it
    over the queries whose own class is not their target."""
    cb = torch.arange(4.0).view(1, 4, 1).repeat(2, 1, 1)  # M=2, K=4, one dimension per sub-space
    cells = torch.tensor(list(itertools.product(range(4), range(4))), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    db = cells[torch.randperm(16, generator=g)[:12]]
    db_labels = torch.randint(0, 3, (12,), generator=g)
    clean = torch.rand(5, 2, generator=g) * 3
    adv = torch.rand(5, 2, generator=g) * 3
    q_labels = torch.tensor([0, 1, 2, 0, 1])
    targets = torch.tensor([1, 1, 0, 2, 0])  # query 1 is of its target class already: left out
    index = PQIndex(cb, db)
    img = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    data = RetrievalData("toy", ImageSet(img[:1], q_labels[:1]), ImageSet(img, q_labels),
                         ImageSet(torch.zeros(12, 3, 4, 4, dtype=torch.uint8), db_labels))
    target = Target(None, "ckpt", {"query": clean, "database": db}, cb, "cb", index)
    job = load_job(compose_config(TINY + ["attack=center_targeted", "system=adc"]))
    fields = targeted_fields(targeted_scores(target, adv, data, targets, ["adc"], None)["adc"], targets, data, job)

    def brute(z: torch.Tensor) -> float:
        aps = [brute_ap(((z[q, None] - db) ** 2).sum(1).numpy(), (db_labels == targets[q]).numpy())
               for q in range(5) if q_labels[q] != targets[q]]
        return 100 * float(np.mean(aps))

    assert fields["tmap_queries"] == 4
    assert fields["tmap"] == pytest.approx(brute(adv), abs=1e-3)
    assert fields["tmap_clean"] == pytest.approx(brute(clean), abs=1e-3)


def test_ranking_diagnostics_are_expectations_over_random_tie_orders() -> None:
    dist = np.array([[1, 0, 1, 2, 1, 0, 2], [3, 3, 3, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    rel = np.array([[0, 0, 1, 1, 1, 0, 0], [1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], dtype=bool)
    k = 3
    rank, precision = ranking_diagnostics(dist, rel, k)
    for q in range(3):
        firsts, precs = [], []
        for perm in itertools.permutations(range(7)):
            order = sorted(range(7), key=lambda i: (dist[q, i], perm[i]))
            hits = rel[q, order]
            firsts.append(int(np.argmax(hits)) + 1 if hits.any() else math.nan)
            precs.append(hits[:k].mean())
        if rel[q].any():
            assert rank[q] == pytest.approx(np.mean(firsts))
        else:
            assert math.isnan(rank[q])
        assert precision[q] == pytest.approx(np.mean(precs))


def test_floor_ap_is_the_ap_of_every_relevant_item_last() -> None:
    """``floor_ap``: the worst ranking's AP, (1/R) sum_i i / (N - R + i), whatever the distances; below chance."""
    from pqattack.quant import PQIndex

    rng = np.random.default_rng(3)
    codebooks = torch.from_numpy(rng.normal(size=(2, 4, 2)).astype(np.float32))
    db = torch.from_numpy(rng.normal(size=(60, 4)).astype(np.float32))
    queries = torch.from_numpy(rng.normal(size=(5, 4)).astype(np.float32))
    db_labels = torch.from_numpy(rng.integers(0, 3, 60))
    query_labels = torch.tensor([0, 1, 2, 0, 1])
    d = PQIndex(codebooks, db).ranking_diagnostics(queries, "sdc", query_labels, db_labels)
    n = len(db_labels)
    for q, label in enumerate(query_labels.tolist()):
        r = int((db_labels == label).sum())
        assert d["floor_ap"][q] == pytest.approx(np.mean([i / (n - r + i) for i in range(1, r + 1)]))
        assert d["floor_ap"][q] < d["chance_ap"][q]


def test_perceptibility_by_hand() -> None:
    clean = torch.full((2, 3, 16, 16), 0.5)
    adv = clean.clone()
    adv[0] += 0.1
    got = perceptibility(adv, clean)
    assert got["linf"] == pytest.approx(0.1, abs=1e-5)
    assert got["l2"] == pytest.approx((0.1 * math.sqrt(3 * 16 * 16) + 0) / 2, rel=1e-4)
    assert got["psnr"] == pytest.approx(20.0, abs=1e-3)  # only the changed query: 10 log10(1 / 0.01)
    # SSIM of two constant images is its luminance term alone, (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) with
    # C1 = (0.01 x data range)^2; the mean over the two queries, the unchanged one at 1
    luminance = (2 * 0.6 * 0.5 + 1e-4) / (0.6**2 + 0.5**2 + 1e-4)
    assert got["ssim"] == pytest.approx((luminance + 1) / 2, abs=1e-5)
    assert perceptibility(clean, clean)["psnr"] is None and perceptibility(clean, clean)["ssim"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides,key", [
    (["attack=margin", "attack.kappa=-1"], "attack.kappa"),
    (["attack=center_targeted", "attack.target_class=-1"], "attack.target_class"),
    (["attack=center_targeted", "attack.target_class=10"], "attack.target_class"),
    (["attack.temperature_final=0"], "attack.temperature_final"),
    (["attack.restarts=1"], "attack.restarts"),
    (["attack.restart_pick=best", "attack.restarts=2"], "attack.restart_pick"),
    (["attack.restart_pick=oracle"], "attack.restart_pick"),
    (["attack.momentum=-0.5"], "attack.momentum"),
    (["attack.diversity=1.5"], "attack.diversity"),
    (["attack.step_schedule=linear"], "attack.step_schedule"),
    (["attack.save_prefixes=[0,2]"], "attack.save_prefixes"),
    (["attack.save_prefixes=[2]", "attack.restarts=2"], "attack.save_prefixes"),
    # a random query transform's draws at each step come from a seed of the whole set's own
    (["attack.save_prefixes=[2]", "defense=jpeg_random"], "attack.save_prefixes"),
    (["transfer.source_model=[vgg11,nosuchnet]"], "transfer.source_model"),
    (["transfer.source_model=[vgg11,vgg11]"], "transfer.source_model"),
    (["transfer.source_model=[]"], "transfer.source_model"),
])
def test_bad_values_of_the_new_keys_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(make(overrides))


def test_prefixes_are_saved_through_a_fixed_transform_or_obliviously() -> None:
    for extra in (["defense=jpeg"], ["defense=jpeg_random", "attack.oblivious=true"], ["defense=bitdepth"]):
        validate(make(["attack.save_prefixes=[2]", *extra]))


def test_query_set_spec_of_the_paper_attacks_holds_only_the_paper_settings() -> None:
    """With the defaults, the options beyond the paper are left out of basic/APD/AOD's query-set spec, so their keys
    (and the sets in existing caches) are the ones made before the options existed."""
    from pqattack.stages.keys import ATTACK_CORE, attack_settings, results_spec, settings

    paper = {"name", "loss", "eps", "step", "iters", "random_start", "quantize_8bit", "similarity", "temperature",
             "peak", "batch_size"}
    for attack, ignored in (("basic", {"similarity", "temperature", "peak"}), ("apd", set()), ("aod", {"peak"})):
        job = load_job(make([f"attack={attack}"]))
        spec = settings(attack_settings(job), ATTACK_CORE)
        assert set(spec) == paper - ignored, attack
        # and the job's results key: no loop option at its off value (a word for some) enters it
        assert set(results_spec(job, "fp32")["attack"]) <= paper, attack


def test_the_query_sets_of_the_attacks_that_read_the_database_hold_its_key() -> None:
    """Centre codes and class spreads come from the database's codes and labels: another database, another set."""
    from pqattack.stages.keys import attack_spec

    data = type("D", (), {"query_key": "q", "database_key": "d"})()
    for attack in ("center", "center_targeted", "contrast", "apd", "far"):
        spec = attack_spec(load_job(make([f"attack={attack}"])), data, "c", "b", "fp32")
        assert (spec.get("database") == "d") == (attack in ("center", "center_targeted", "contrast")), attack


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("beyond_cache")


def run_job(extra: list[str], cache: Path, out: Path) -> list[dict]:
    return run_results(extra, cache, out)["rows"]


def run_results(extra: list[str], cache: Path, out: Path) -> dict:
    from pqattack.pipeline import run

    cfg = compose_config(TINY + [f"cache.dir={cache}"] + extra)
    return json.loads(run(cfg, out).read_text())


ROW_FIELDS = ("psnr", "ssim", "l2", "linf", "codes_changed", "precision_at_10", "first_relevant_rank")


@pytest.mark.parametrize("extra", [["attack=margin"], ["attack=center"], ["attack=center_targeted"], ["attack=far"],
                                   ["attack=contrast"],
                                   ["attack=margin", "attack.restarts=2", "attack.momentum=1.0",
                                    "attack.diversity=0.5", "attack.step_schedule=cosine"]])
def test_a_job_per_new_attack_carries_the_new_fields(extra: list[str], tiny_cache: Path, tmp_path: Path) -> None:
    rows = run_job(extra, tiny_cache, tmp_path)
    clean = [r for r in rows if r["attack"] == "clean"]
    attacked = [r for r in rows if r["attack"] != "clean"]
    assert {r["system"] for r in attacked} == {"sdc", "adc"}
    assert all(r["precision_at_10"] is not None and r["first_relevant_rank"] >= 1 for r in clean)
    assert all(0 < r["map_floor"] < r["map_chance"] for r in rows)
    for r in attacked:
        assert all(r[f] is not None for f in ROW_FIELDS), r
        assert len(r["codes_changed_per_subspace"]) == 4 and 0 < r["codes_changed"] <= 1
        assert r["codes_changed"] == pytest.approx(sum(r["codes_changed_per_subspace"]) / 4, abs=1e-4)
        assert r["linf"] <= 8 / 255 + 1e-4 and 0 < r["ssim"] <= 1 and 0 <= r["precision_at_10"] <= 100
        assert ("tmap" in r) == (r["attack"] == "center_targeted")
        if r["attack"] == "center_targeted":
            assert 0 <= r["tmap"] <= 100 and 0 <= r["tmap_clean"] <= 100 and r["tmap_queries"] > 0
        if "attack.restarts=2" in extra:
            assert (r["restarts"], r["momentum"], r["step_schedule"]) == (2, 1.0, "cosine")
        else:
            assert r["restarts"] is None and r["momentum"] is None and r["step_schedule"] is None


@pytest.mark.slow  # trains the tiny backbone twice (two caches): about 25 s on 2 shared cores
def test_saved_prefixes_are_the_shorter_jobs_sets(tiny_cache: Path, tmp_path: Path) -> None:
    """attack.save_prefixes=[1, 2, 5] on a 2-step run (2 and 5 skipped) caches the 1-step set under the 1-step job's key: that job finds it
    and its images are those of a 1-step run made from scratch."""
    from pqattack.transfer import AdversarialSet

    run_job(["attack=apd", "attack.iters=2", "attack.save_prefixes=[1,2,5]"], tiny_cache, tmp_path / "two")
    one = run_results(["attack=apd", "attack.iters=1"], tiny_cache, tmp_path / "one")
    key = one["meta"]["cache_keys"]["adversarial_queries"]
    assert f"adversarial_queries/{key}" in one["meta"]["cache_hits"]
    run_job(["attack=apd", "attack.iters=1"], tmp_path / "fresh_cache", tmp_path / "fresh")
    prefix = AdversarialSet.load_entry(tmp_path / "one" / "adversarial_queries" / key)
    scratch = AdversarialSet.load_entry(tmp_path / "fresh" / "adversarial_queries" / key)
    assert one["rows"][-1]["iters"] == 1 and torch.equal(prefix.images, scratch.images)


# ------------------------------------------------------------------------------------------------------ presets
def sweep_jobs(experiment: str) -> list[list[str]]:
    """Every job of a preset's sweep, in Hydra's order (the product of its params, the last varying fastest)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = [[f"{k}={v}" for v in str(vals).split(",")] for k, vals in cfg.hydra.sweeper.params.items()]
    return [[f"experiment={experiment}", *job] for job in itertools.product(*params)]


def test_beyond_preset_jobs_validate() -> None:
    jobs = sweep_jobs("beyond_cpu")
    assert len(jobs) == 3 * 3 * 9
    attacks, epochs = set(), {}
    for job in jobs[:9] + jobs[-9:]:  # every attack, on the first and the last cell
        cfg = make(job)
        validate(cfg)
        attacks.add((cfg.attack.name, cfg.attack.restarts, cfg.attack.momentum))
        epochs[cfg.model.name] = cfg.trainer.max_epochs  # each victim keeps its own recipe
        assert (cfg.attack.eps, cfg.attack.iters) == (8 / 255, 5)
    assert epochs == {"fastnet": 10, "resnet18": 2}
    assert ("margin", 4, 0.0) in attacks and ("margin", None, 1.0) in attacks and ("far", None, 0.0) in attacks
    assert len(attacks) == 9


def test_budget_preset_makes_each_iteration_curve_in_one_run() -> None:
    """The iterations vary fastest and start at the longest run, whose saved prefixes are the shorter jobs' sets."""
    jobs = sweep_jobs("budget_cpu")
    assert len(jobs) == 2 * 3 * 5 * 7  # bits x attacks (apd, far, margin) x eps x iterations
    for group in (jobs[:7], jobs[-7:]):
        cfgs = [make(job) for job in group]
        for cfg in cfgs:
            validate(cfg)
        iters = [cfg.attack.iters for cfg in cfgs]
        assert iters == [100, 50, 20, 10, 5, 2, 1]
        assert set(iters[1:]) <= set(cfgs[0].attack.save_prefixes) and len({c.attack.eps for c in cfgs}) == 1
        assert {c.model.name for c in cfgs} == {"fastnet"}


def test_transfer_boost_preset_crosses_the_boosters_with_table4_fast_cpu() -> None:
    jobs = sweep_jobs("transfer_boost_cpu")
    assert len(jobs) == 2 * 2 * 4 * 4
    seen = set()
    for job in jobs[::7]:
        cfg = make(job)
        validate(cfg)
        seen.add((cfg.attack.momentum, cfg.attack.diversity, cfg.model.name, cfg.transfer.source_model))
        assert (cfg.attack.name, cfg.bits, cfg.attack.iters) == ("aod", 16, 5)
        assert cfg.trainer.max_epochs == {"fastnet": 10, "fastnet_narrow": 10}.get(cfg.model.name, 2)
    assert {s[:2] for s in seen} == {(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)}
    assert {s[2] for s in seen} == {s[3] for s in seen} == {"fastnet", "fastnet_narrow", "vgg16", "resnet18"}


def test_bits_transfer_boost_preset_crosses_the_boosters_with_table3_cpu() -> None:
    jobs = sweep_jobs("transfer_boost_bits_cpu")
    assert len(jobs) == 2 * 2 * 2 * 3 * 3
    seen = set()
    for job in jobs[::5]:
        cfg = make(job)
        validate(cfg)
        seen.add((cfg.attack.momentum, cfg.attack.diversity, cfg.model.name, cfg.transfer.source_bits, cfg.bits))
        assert (cfg.attack.name, cfg.attack.iters, cfg.trainer.max_epochs) == ("aod", 5, 2)
        assert cfg.transfer.source_model is None
    assert {s[:2] for s in seen} == {(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)}
    assert {s[2] for s in seen} == {"vgg16", "resnet18"}
    assert {s[3] for s in seen} == {s[4] for s in seen} == {16, 24, 36}


@pytest.mark.slow  # trains a second backbone: about 35 s on 2 shared cores
def test_an_ensemble_transfer_job_averages_its_sources_under_the_key_artifact_keys_computes(
        tiny_cache: Path, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from pqattack.cache import ArtifactCache
    from pqattack.stages.keys import artifact_keys

    extra = ["attack=apd", "transfer.source_model=[smallcnn,fastnet_narrow]", "attack.momentum=1.0",
             "attack.diversity=0.5"]
    res = run_results(extra, tiny_cache, tmp_path)
    attacked = [r for r in res["rows"] if r["attack"] != "clean"]
    assert {r["source_model"] for r in attacked} == {"smallcnn+fastnet_narrow"} and all(r["transfer"] for r in attacked)
    assert all((r["momentum"], r["diversity"]) == (1.0, 0.5) for r in attacked)
    from pqattack.report.tables import source_epochs_of  # what the report derives for records made before the field
    from pqattack.transfer import source_jobs

    sources = source_jobs(load_job(compose_config(TINY + [f"cache.dir={tiny_cache}"] + extra)))
    epochs = "+".join(str(s.trainer["max_epochs"]) for s in sources)
    assert {r["source_epochs"] for r in attacked} == {epochs} == {source_epochs_of(res["meta"]["config"])}
    cfg = compose_config(TINY + [f"cache.dir={tiny_cache}"] + extra)
    data = instantiate(cfg.dataset).load(ArtifactCache(tiny_cache))
    keys = artifact_keys(load_job(cfg), data, res["meta"]["precision"], torch.device("cpu"))
    assert keys["adversarial_queries"] == res["meta"]["cache_keys"]["adversarial_queries"]
    single = compose_config(TINY + [f"cache.dir={tiny_cache}", "attack=apd", "transfer.source_model=fastnet_narrow",
                                    "attack.momentum=1.0", "attack.diversity=0.5"])
    assert artifact_keys(load_job(single), data, res["meta"]["precision"], torch.device("cpu"))[
        "adversarial_queries"] != keys["adversarial_queries"]


def test_a_rows_diagnostics_are_the_means_of_the_per_query_values() -> None:
    """``records.score_fields`` turns the per-query diagnostics into row fields: means over the queries, the first
    relevant rank over those that have one, precision@10 and the chance and floor mAPs in %."""
    from pqattack.metrics.average_precision import average_precision_unranked
    from pqattack.records import score_fields

    job = load_job(compose_config(TINY))
    aps = average_precision_unranked(np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]),
                                     np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=bool))
    diagnostics = {"first_relevant_rank": np.array([1.0, 3.0, np.nan]), "precision_at_k": np.array([0.3, 0.4, 0.35]),
                   "chance_ap": np.array([0.1, 0.2, 0.3]), "floor_ap": np.array([0.05, 0.05, 0.08])}
    out = score_fields({"aps": aps, "diagnostics": diagnostics}, job)
    assert out["first_relevant_rank"] == 2.0
    assert out["precision_at_10"] == pytest.approx(35.0)
    assert out["map_chance"] == pytest.approx(20.0) and out["map_floor"] == pytest.approx(6.0)
    assert out["map"] == pytest.approx((100 + 100 / 3 + 0) / 3, abs=1e-3)  # queries without a relevant item: 0


def test_a_sets_changed_codes_and_logits_are_those_of_its_own_features(trained_demo, tmp_path: Path) -> None:
    """``score_set``: which sub-space codes the adversarial queries changed is their codes (eq. 1, by brute force)
    against the clean queries', and the classifier's logits are the backbone's on the adversarial images."""
    from pqattack.attacks import pgd
    from pqattack.cache import ArtifactCache
    from pqattack.runtime import Runtime
    from pqattack.stages.attack import retrieval_model
    from pqattack.stages.target import score_set

    job, data, target = trained_demo
    rt = Runtime(torch.device("cpu"), "fp32", ArtifactCache(tmp_path, enabled=False), progress=False)
    x = data.query.images.float() / 255
    adv = pgd(retrieval_model(job, target, torch.device("cpu")), x, "apd", AttackConfig(name="apd", loss="apd"),
              generator=torch.Generator().manual_seed(0))
    adv = (adv * 255).round().to(torch.uint8)
    scored = score_set(target, adv, "test", data, job, rt)
    codebooks = target.codebooks.float()

    def codes(z: torch.Tensor) -> torch.Tensor:
        sub = z.view(len(z), codebooks.shape[0], -1)
        return (sub[:, :, None, :] - codebooks[None]).pow(2).sum(-1).argmin(-1)

    want = codes(scored.z) != codes(target.features["query"])
    assert 0.2 < want.float().mean() and (scored.changed == want).float().mean() > 0.99  # up to float near-ties
    with torch.no_grad():
        logits = target.backbone(adv.float() / 255)
    assert torch.allclose(scored.logits, logits, atol=1e-4)
    assert (scored.logits.argmax(1) != target.backbone(x).argmax(1)).any()  # the attack moved some predictions
