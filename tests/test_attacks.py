"""PGD and the PQ-AG losses: the eps-ball, [0, 1], the 8-bit grid, and the losses against hand computations."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from pqattack.attacks import (CENTER_LOSSES, LOSSES, AttackConfig, Reference, feature_distance_loss,
                              overall_distribution_loss, peak_distribution_loss, pgd, reference)
from pqattack.models import RetrievalModel, build_backbone


def tiny_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # M=2 subspaces of dimension 1, K=2 codewords each
    codebooks = torch.tensor([[[1.0], [-1.0]], [[2.0], [0.0]]])
    z_clean = torch.tensor([[0.5, 1.0]])
    z_adv = torch.tensor([[-0.5, 0.0]])
    return codebooks, z_clean, z_adv


def logp(z: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.einsum("bmd,mkd->bmk", z.view(1, 2, 1), codebooks), -1)


def test_apd_and_aod_by_hand() -> None:
    cb, zc, za = tiny_case()
    lc, la = logp(zc, cb), logp(za, cb)
    # clean logits: m=0: [0.5, -0.5] -> peak 0; m=1: [2, 0] -> peak 0
    # adversarial logits: m=0: [-0.5, 0.5]; m=1: [0, 0]
    ref = Reference(zc, lc, torch.tensor([[0, 0]]))
    log_sig = lambda t: -math.log1p(math.exp(-t))  # noqa: E731  log softmax of a 2-way split
    apd = -(log_sig(-1.0) + math.log(0.5))  # -log p^_{0,0} - log p^_{1,0}
    assert float(peak_distribution_loss(za, la, ref)) == pytest.approx(apd, rel=1e-6)
    # another peak code: -log p^_{0,1} - log p^_{1,1}
    other = Reference(zc, lc, torch.tensor([[1, 1]]))
    assert float(peak_distribution_loss(za, la, other)) == pytest.approx(-(log_sig(1.0) + math.log(0.5)), rel=1e-6)
    p0 = [math.exp(log_sig(1.0)), math.exp(log_sig(-1.0))]
    p1 = [math.exp(log_sig(2.0)), math.exp(log_sig(-2.0))]
    aod = -(p0[0] * log_sig(-1.0) + p0[1] * log_sig(1.0) + p1[0] * math.log(0.5) + p1[1] * math.log(0.5))
    assert float(overall_distribution_loss(za, la, ref)) == pytest.approx(aod, rel=1e-6)
    assert float(feature_distance_loss(za, la, ref)) == pytest.approx(1.0 + 1.0)


def test_retrieval_model_soft_assignment_options() -> None:
    cb, zc, _ = tiny_case()
    net = build_backbone("smallcnn", 10, width=4)
    model = RetrievalModel(net, cb, similarity="dot", temperature=0.5)
    logits = model.assignment_logits(zc)
    assert torch.allclose(logits, torch.tensor([[[1.0, -1.0], [4.0, 0.0]]]))
    cos = RetrievalModel(net, cb, similarity="cos").assignment_logits(zc)
    assert torch.allclose(cos, torch.tensor([[[1.0, -1.0], [1.0, 0.0]]]))
    # l2: -(z_m - c_mk)^2 / T: m=0: -(0.5-1)^2, -(0.5+1)^2; m=1: -(1-2)^2, -(1-0)^2
    l2 = RetrievalModel(net, cb, similarity="l2", temperature=0.5).assignment_logits(zc)
    assert torch.allclose(l2, torch.tensor([[[-0.25, -2.25], [-1.0, -1.0]]]) / 0.5)
    with pytest.raises(ValueError, match="attack.similarity"):
        AttackConfig(similarity="hamming")


def test_index_peak_is_eq1_and_argmax_peak_is_eq6() -> None:
    """With codewords of unequal norms the largest inner product (eq. 6) and the nearest codeword (eq. 1, the
    index's code) differ: z_1 = 0.8 is nearer c_11 = 0 (0.64 < 1.44) but has the larger product with c_10 = 2."""
    cb = torch.tensor([[[1.0], [-1.0]], [[2.0], [0.0]]])
    z = torch.tensor([[0.5, 0.8]])
    net = build_backbone("smallcnn", 10, width=4)
    model = RetrievalModel(net, cb)
    assert model.index_codes(z).tolist() == [[0, 1]]
    assert model.argmax_codes(z).tolist() == [[0, 0]]
    from pqattack.quant import PQIndex

    assert PQIndex(cb).encode(z).tolist() == [[0, 1]]  # the FAISS index agrees with eq. (1)


def test_apd_peak_option_chooses_the_target_code() -> None:
    """attack.peak=index pushes away from the index's code, argmax from eq. (6)'s; the references differ
    exactly where the two codes differ."""
    torch.manual_seed(0)
    net = build_backbone("smallcnn", 10, width=8).eval()
    cb = torch.randn(4, 64, 8) * torch.rand(4, 64, 1)  # unequal norms, as K-means centroids have
    model = RetrievalModel(net, cb)
    x = torch.rand(16, 3, 32, 32)
    by_index, by_argmax = reference(model, x, "index"), reference(model, x, "argmax")
    assert torch.equal(by_index.codes, model.index_codes(by_index.z))
    assert torch.equal(by_argmax.codes, model.argmax_codes(by_argmax.z))
    assert (by_index.codes != by_argmax.codes).any()
    with pytest.raises(ValueError, match="attack.peak"):
        AttackConfig(peak="mode")


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_pgd_stays_in_eps_ball_and_image_range(loss: str) -> None:
    torch.manual_seed(0)
    net = build_backbone("smallcnn", 10, width=8).eval()
    model = RetrievalModel(net, torch.randn(4, 16, 32 // 4) * 0.3)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8).float() / 255
    x[0] = 0.0  # saturated images exercise the [0, 1] clamp
    x[1] = 1.0
    cfg = AttackConfig()
    anchors = torch.randint(0, 16, (6, 4)) if loss in CENTER_LOSSES else None  # centre codes: any codes will do
    refs = [with_class_spreads(reference(model, x), 0)] if loss == "contrast" else None  # any positive spreads
    adv = pgd(model, x, loss, cfg, generator=torch.Generator().manual_seed(0), anchors=anchors, references=refs)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= cfg.eps + 1e-6
    assert torch.equal(torch.round(adv * 255), adv * 255)  # on the 8-bit grid
    assert (adv != x).any()
    # without rounding, the float result is still in the ball (and moved: without the random start the feature
    # distance's gradient is 0 at the clean image, so basic would not move at all)
    raw = pgd(model, x, loss, AttackConfig(quantize_8bit=False), generator=torch.Generator().manual_seed(1),
              anchors=anchors, references=refs)
    assert 0 < (raw - x).abs().max() <= cfg.eps + 1e-6 and raw.min() >= 0 and raw.max() <= 1


def with_class_spreads(ref: Reference, seed: int) -> Reference:
    """``ref`` with random positive class spreads in place of ``contrast``'s (attacks.centers.class_spreads)."""
    g = torch.Generator().manual_seed(seed)
    return dataclasses.replace(ref, spread=torch.rand(ref.logp.shape, generator=g) + 0.1,
                               baseline=torch.rand(ref.logp.shape, generator=g) + 0.1)


def test_pgd_increases_its_loss() -> None:
    """PGD ascends each loss: from the same random start, its result scores higher than the same loop run on the
    negated loss (a descent). Beating the clean image would not do: it is the minimum of basic's and AOD's losses,
    so that any move, even a descent from the random start, beats it."""
    from pqattack.attacks.losses import loss_for

    torch.manual_seed(1)
    net = build_backbone("smallcnn", 10, width=8).eval()
    model = RetrievalModel(net, torch.randn(4, 16, 8) * 0.3)
    x = torch.rand(8, 3, 32, 32)
    anchors = torch.randint(0, 16, (8, 4), generator=torch.Generator().manual_seed(1))
    ref = reference(model, x, anchor=anchors)
    cfg = AttackConfig(quantize_8bit=False, iters=10)
    for name in LOSSES:
        fn = loss_for(name, cfg)
        own = with_class_spreads(ref, 1) if name == "contrast" else ref
        refs = [own] if name == "contrast" else None
        # random start matters for basic: its gradient is exactly zero at the clean image
        ascent = pgd(model, x, fn, cfg, generator=torch.Generator().manual_seed(0), anchors=anchors, references=refs)
        descent = pgd(model, x, lambda z, lp, r, fn=fn: -fn(z, lp, r), cfg, generator=torch.Generator().manual_seed(0),
                      anchors=anchors, references=refs)
        with torch.no_grad():
            assert float(fn(*model(ascent), own).sum()) > float(fn(*model(descent), own).sum()), name


@pytest.mark.parametrize("kw,key", [({"eps": 0}, "attack.eps"), ({"eps": 1.5}, "attack.eps"),
                                    ({"step": 0}, "attack.step"), ({"iters": 0}, "attack.iters")])
def test_pgd_config_rejects_bad_values(kw: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        AttackConfig(**kw)


def test_pgd_model_is_not_trained_by_the_attack() -> None:
    net = build_backbone("smallcnn", 10, width=8).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = RetrievalModel(net, torch.randn(4, 8, 8))
    pgd(model, torch.rand(4, 3, 32, 32), "aod", AttackConfig())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(model.backbone.head, nn.Linear)


def test_every_attack_setting_is_recorded_with_its_query_set() -> None:
    """A query set's metadata lists every setting of the attack but two: ``oblivious`` (its set is the undefended
    model's, the rows say it) and ``save_prefixes`` (which other sets to cache); the loop options are one list,
    ``labels.LOOP_OPTIONS``, shared by the sets, the rows and the table cells, so a new option cannot be left out of
    one of them."""
    from dataclasses import fields

    from pqattack.labels import LOOP_OPTIONS
    from pqattack.records import ROW_SETTINGS
    from pqattack.report.tables import CELL_FIELDS
    from pqattack.transfer import ATTACK_FIELDS

    assert {f.name for f in fields(AttackConfig)} - set(ATTACK_FIELDS) == {"oblivious", "save_prefixes"}
    for listing in (ATTACK_FIELDS, ROW_SETTINGS, CELL_FIELDS):
        assert set(LOOP_OPTIONS) <= set(listing)
