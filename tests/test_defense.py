"""Defenses: adversarial training of the retrieval model, query transforms and the adaptive attacks on them (BPDA,
EOT), the robust evaluation suite and its per-query worst case, and what they put in keys and rows."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from pqattack.attacks import AttackConfig, batch_anchors, pgd, reference
from pqattack.cache import ArtifactCache
from pqattack.config import load_job
from pqattack.defense import (AdversarialTrainingConfig, BitDepthConfig, DefendedBackbone, JpegConfig, QueryTransform,
                              bit_depth, jpeg)
from pqattack.defense.training import AdversarialClassifierModule, AdversarialPQNModule
from pqattack.models.pqn import asymmetric_triplet_loss
from pqattack.errors import ConfigError
from pqattack.metrics import QueryAP
from pqattack.models import RetrievalModel, build_backbone
from pqattack.runtime import Runtime
from pqattack.stages.keys import artifact_keys
from pqattack.stages.suite import member_jobs, worst_case
from pqattack.training import fit

from .conftest import REPO, TINY, compose_config, run_job

CPU = torch.device("cpu")
SMALL = ["dataset=synthetic", "dataset.num_train=300", "dataset.num_test=120", "dataset.num_queries=10",
         "dataset.num_database=80", "model=smallcnn", "attack=apd", "device=cpu", "bits=16", "precision=fp32"]
PQN = ["quantizer=pqn", "quantizer.init_samples=100"]
#: the keys of SMALL (and SMALL + PQN) as computed by the code before the defense group existed
BEFORE_DEFENSES = {
    "kmeans": {"checkpoint": "089736318390601b5202f653", "features": "112c8fd3d69acf4f8f3a59a7",
               "codebooks": "bb0deb121f8df2661d6da28a", "adversarial_queries": "23dc3db15587923d60b0460a",
               "results": "9d09d32abe00baad95a17162"},
    "pqn": {"checkpoint": "6b312ec45a2bf81ba39bd4b2", "base_checkpoint": "089736318390601b5202f653",
            "features": "d2a31fcf11b8daf8cb3a4834", "codebooks": "6b312ec45a2bf81ba39bd4b2",
            "adversarial_queries": "e6a9525af86b9e0ee783bfea", "results": "4376f94780165db0785850ea"},
}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = compose_config(SMALL)
    return instantiate(cfg.dataset).load(ArtifactCache(tmp_path_factory.mktemp("data"), enabled=False))


def keys(overrides: list[str], data) -> dict[str, str]:  # noqa: ANN001
    return artifact_keys(load_job(compose_config(SMALL + overrides)), data, "fp32", CPU)


class Spy(AdversarialPQNModule):
    """Keeps each training step's clean (un-augmented) images next to the batch it trained on."""

    seen: list[tuple[torch.Tensor, torch.Tensor, int]]

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        loss = super().training_step(batch, batch_idx)
        self.seen.append((self.to_float(batch[0]), *self.last_batch))
        return loss


def test_the_defended_training_step_trains_on_adversarial_images(small_data, tmp_path: Path) -> None:  # noqa: ANN001
    """Through the real Lightning trainer: in every batch, the first ratio * B images are replaced by images inside
    the eps-ball of the clean ones (and in [0, 1]) that differ from them; the rest are the clean images."""
    torch.manual_seed(0)
    eps = 4 / 255
    codebooks = torch.nn.functional.normalize(torch.randn(4, 16, 32), dim=-1)
    module = Spy(build_backbone("smallcnn", 10, width=32), codebooks,
                 AdversarialTrainingConfig(eps=eps, iters=2, ratio=0.5), alpha=10.0, schedule="constant",
                 augment=False)
    module.seen = []
    fit(module, small_data, 32, 1, 0, Runtime(CPU, "fp32", ArtifactCache(tmp_path, enabled=False), False), [])
    assert len(module.seen) == len(small_data.train) // 32
    for clean, mixed, n in module.seen:
        assert n == 16
        delta = (mixed[:n] - clean[:n]).abs()
        assert delta.max() <= eps + 1e-6 and (delta.flatten(1).max(1).values > 0).all()
        assert torch.equal(mixed[n:], clean[n:]) and 0 <= mixed.min() and mixed.max() <= 1


def test_trades_trains_on_the_clean_batch_and_its_adversarial_images(small_data, tmp_path: Path) -> None:  # noqa: ANN001
    """defense.trades: through the real Lightning trainer, every step passes the whole clean batch, then the
    adversarial versions of its first ratio * B images (inside the eps-ball, moved)."""
    torch.manual_seed(0)
    eps = 4 / 255
    codebooks = torch.nn.functional.normalize(torch.randn(4, 16, 32), dim=-1)
    module = Spy(build_backbone("smallcnn", 10, width=32), codebooks,
                 AdversarialTrainingConfig(eps=eps, iters=2, ratio=0.5, trades=True), alpha=10.0,
                 schedule="constant", augment=False)
    module.seen = []
    fit(module, small_data, 32, 1, 0, Runtime(CPU, "fp32", ArtifactCache(tmp_path, enabled=False), False), [])
    assert module.seen
    for clean, batch, n in module.seen:
        assert n == 16 and batch.shape[0] == 32 + 16 and torch.equal(batch[:32], clean)
        delta = (batch[32:] - clean[:n]).abs()
        assert delta.max() <= eps + 1e-6 and (delta.flatten(1).max(1).values > 0).all()


def fixed_triplet(x, s, labels, margin):  # noqa: ANN001, ANN201
    """PQN's triplet loss with its positives and negatives drawn from a fixed generator (repeatable by hand)."""
    return asymmetric_triplet_loss(x, s, labels, margin, generator=torch.Generator().manual_seed(0))


def one_step(monkeypatch, **defense: object):  # noqa: ANN001, ANN201
    """A PQN module with ``defense`` (beta 3, eps 8/255) and 12 images of 3 classes: (module, images, labels)."""
    import pqattack.defense.training as training

    monkeypatch.setattr(training, "asymmetric_triplet_loss", fixed_triplet)
    torch.manual_seed(0)
    codebooks = torch.nn.functional.normalize(torch.randn(4, 16, 32), dim=-1)
    module = AdversarialPQNModule(build_backbone("smallcnn", 10, width=32), codebooks,
                                  AdversarialTrainingConfig(eps=8 / 255, iters=2, beta=3.0, **defense),
                                  alpha=10.0, schedule="constant", augment=False)
    module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]  (no trainer to log to)
    return module, torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8), torch.arange(12) % 3


def test_the_trades_objective_has_the_clean_task_loss_and_a_two_sided_consistency(monkeypatch) -> None:  # noqa: ANN001
    """The step's loss and its gradient are L_PQN(clean batch) + beta * KL(p(x) || p(x')), recomputed by hand from
    the batch it trained on, with the gradient through the clean assignment (which the default objective holds
    fixed: there the gradient differs)."""
    module, images, labels = one_step(monkeypatch, trades=True)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    loss = module.training_step((images, labels), 1)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    batch, n = module.last_batch
    assert n == 12 and batch.shape[0] == 24

    def by_hand(detach_clean: bool) -> tuple[torch.Tensor, tuple]:
        sub, soft, _ = module.soft_pq(module.backbone.forward_features(batch))
        logp_clean, logp_adv = module.log_assignment(sub[:12]), module.log_assignment(sub[12:])
        if detach_clean:
            logp_clean = logp_clean.detach()
        kl = (logp_clean.exp() * (logp_clean - logp_adv)).sum((1, 2)).mean()
        value = fixed_triplet(sub[:12], soft[:12], labels, module.margin) + 3.0 * kl
        return value, torch.autograd.grad(value, params, allow_unused=True)

    value, expected = by_hand(detach_clean=False)
    assert torch.allclose(loss, value, rtol=1e-5)
    close = [torch.allclose(g, e, rtol=1e-4, atol=1e-7) for g, e in zip(grads, expected) if g is not None]
    assert close and all(close)
    _, one_sided = by_hand(detach_clean=True)
    assert not all(torch.allclose(g, e, rtol=1e-4, atol=1e-7) for g, e in zip(grads, one_sided) if g is not None)


def test_the_code_target_consistency_is_apds_loss_minimised(monkeypatch) -> None:  # noqa: ANN001
    """defense.code_target: the step's loss is L_PQN(mixed batch) + beta * sum_m -log p_m(x')[b_m(x)], with b(x)
    the clean images' index codes under the network in eval mode, recomputed by hand from the batch it trained on."""
    module, images, labels = one_step(monkeypatch, code_target=True)
    module.eval()
    with torch.no_grad():
        codes = reference(module.attacked_model(), module.to_float(images)).codes
        sub_clean, _, _ = module.soft_pq(module.backbone.forward_features(module.to_float(images)))
    assert torch.equal(codes, module.log_assignment(sub_clean).argmax(-1))  # the index's codes
    module.train()
    loss = module.training_step((images, labels), 1)
    batch, n = module.last_batch
    sub, soft, _ = module.soft_pq(module.backbone.forward_features(batch))
    ce = -module.log_assignment(sub).gather(-1, codes.unsqueeze(-1)).sum((1, 2)).mean()
    assert torch.allclose(loss, fixed_triplet(sub, soft, labels, module.margin) + 3.0 * ce, rtol=1e-5)


def test_trades_for_a_kmeans_target_is_clean_cross_entropy_and_a_two_sided_feature_distance() -> None:
    torch.manual_seed(0)
    module = AdversarialClassifierModule(build_backbone("smallcnn", 10, width=8),
                                         AdversarialTrainingConfig(eps=8 / 255, iters=2, beta=3.0, trades=True),
                                         schedule="constant", augment=False)
    module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]  (no trainer to log to)
    module.train()
    images, labels = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8), torch.arange(12) % 3
    loss = module.training_step((images, labels), 1)
    batch, n = module.last_batch
    assert n == 12 and batch.shape[0] == 24 and torch.equal(batch[:12], module.to_float(images))
    embedding = module.backbone.forward_features(batch)
    z = torch.nn.functional.normalize(embedding, dim=1)
    expected = module.loss(module.backbone.head(embedding[:12]), labels) + 3.0 * (z[12:] - z[:12]).pow(2).sum(1).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_the_kmeans_backbone_trains_on_feature_distance_images(monkeypatch) -> None:  # noqa: ANN001
    """The K-means target's adversarial batch is the PGD loop's images for the feature distance (basic), which moved
    every feature, inside the eps-ball."""
    import pqattack.defense.training as training

    made: list[str] = []
    real_pgd = training.pgd
    monkeypatch.setattr(training, "pgd", lambda model, x, loss, cfg, **kw: made.append(loss)  # noqa: ANN001, ANN003
                        or real_pgd(model, x, loss, cfg, **kw))
    torch.manual_seed(0)
    net = build_backbone("smallcnn", 10, width=8)
    module = AdversarialClassifierModule(net, AdversarialTrainingConfig(eps=4 / 255, iters=2), schedule="constant")
    x = torch.rand(8, 3, 32, 32)
    mixed, n, ref = module.adversarial_batch(x, torch.arange(8) % 2)
    assert made == ["basic"]
    assert n == 8 and module.backbone.training
    assert 0 < (mixed - x).abs().max() <= 4 / 255 + 1e-6
    net.eval()
    with torch.no_grad():
        moved = (torch.nn.functional.normalize(net.forward_features(mixed), dim=1) - ref.z).pow(2).sum(1)
    assert (moved > 1e-6).all()  # the feature-distance attack moved every feature


def test_the_centre_attacks_anchors_in_a_training_batch_are_the_nearest_batch_centres() -> None:
    """defense.attack=center: per class the majority code of the batch's images (ties to the smaller code), and per
    image the class whose centre is nearest to its code in SDC distance, by brute force."""
    torch.manual_seed(0)
    codebooks = torch.randn(3, 5, 4)
    codes = torch.randint(0, 5, (40, 3))
    labels = torch.randint(0, 4, (40,))
    anchors = batch_anchors(codes, labels, codebooks)
    centers = torch.full((4, 3), -1)
    for c in range(4):
        for m in range(3):
            counts = torch.bincount(codes[labels == c, m], minlength=5)
            centers[c, m] = int(torch.nonzero(counts == counts.max())[0])
    for i in range(40):
        dist = [sum(float((codebooks[m, codes[i, m]] - codebooks[m, centers[c, m]]).pow(2).sum()) for m in range(3))
                for c in range(4)]
        assert torch.equal(anchors[i], centers[int(np.argmin(dist))])
    multi = torch.nn.functional.one_hot(labels, 4)  # multi-hot labels of one concept each: the same anchors
    assert torch.equal(batch_anchors(codes, multi, codebooks), anchors)


@pytest.mark.parametrize("attack", ["far", "center"])
def test_the_stronger_attacks_make_the_training_images(monkeypatch, attack: str) -> None:  # noqa: ANN001
    """defense.attack=far|center: the training step's adversarial images are the PGD loop's images for that loss
    (its anchors for center: the batch's own nearest centres), inside the eps-ball, and not APD's."""
    import pqattack.defense.training as training

    made: list[tuple[str, object]] = []
    real_pgd = training.pgd

    def spy(model, x, loss, cfg, **kw):  # noqa: ANN001, ANN003, ANN202
        made.append((loss, kw.get("anchors")))
        return real_pgd(model, x, loss, cfg, **kw)

    monkeypatch.setattr(training, "pgd", spy)
    module, images, labels = one_step(monkeypatch, attack=attack)
    x = module.to_float(images)
    module.train()
    torch.manual_seed(1)
    batch, n, ref = module.adversarial_batch(x, labels)
    loss, anchors = made[-1]
    assert loss == attack and 0 < (batch[:n] - x).abs().max() <= 8 / 255 + 1e-6
    if attack == "center":
        assert torch.equal(anchors, batch_anchors(ref.codes, labels, module.attacked_model().codebooks))
    else:
        assert anchors is None
    apd_module, _, _ = one_step(monkeypatch)  # the same network, the default training attack (APD)
    apd_module.train()
    torch.manual_seed(1)
    apd_batch, _, _ = apd_module.adversarial_batch(x, labels)
    assert made[-1][0] == "apd" and not torch.equal(apd_batch[:n], batch[:n])


def test_bpda_passes_the_gradient_through_the_transform_as_the_identity() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    for cfg, plain in ((JpegConfig(quality=30), lambda v: jpeg(v, [30] * 4)), (BitDepthConfig(depth=3),
                                                                              lambda v: bit_depth(v, 3))):
        t = QueryTransform(cfg, seed=0)
        y = t.bpda(x)
        assert torch.equal(y, plain(x)) and (y - x).abs().max() > 0.02  # forward: the transformed image
        w = torch.randn_like(y)
        (grad,) = torch.autograd.grad((w * y).sum(), x)
        assert grad.abs().sum() > 0 and torch.equal(grad, w)  # backward: the identity on the transform's input
        assert not t.transform(x).requires_grad  # the transform passes no gradient of its own (what BPDA replaces)


def test_a_random_jpeg_draws_anew_and_eot_averages_over_draws() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32)) / 255  # 8-bit images: the rounded result stays in the ball
    t = QueryTransform(JpegConfig(quality=90, quality_min=10), seed=0)
    assert not torch.equal(t.transform(x), t.transform(x))
    calls = []
    inner = build_backbone("smallcnn", 10, width=8).eval()
    defended = DefendedBackbone(inner, t)
    original = t.transform
    t.transform = lambda v: calls.append(1) or original(v)  # type: ignore[method-assign]
    model = RetrievalModel(defended, torch.randn(4, 16, 8))
    cfg = AttackConfig(name="apd", loss="apd", iters=2, eot=3)
    adv = pgd(model, x, "apd", cfg)
    assert len(calls) == 1 + 2 * 3  # the reference, then 3 draws per step
    assert 0 < (adv - x).abs().max() <= cfg.eps + 1e-6

    # the step follows the gradient of the mean loss over the draws (here two identity draws and a mirrored image),
    # computed here by hand; the last draw alone would step elsewhere
    from pqattack.attacks import Reference
    from pqattack.attacks.losses import LOSSES

    flat = lambda v: v  # noqa: E731
    plan = [flat, flat, flat, lambda v: v.flip(-1)]  # the clean reference, then the step's three draws
    draws = iter(plan)
    t.transform = lambda v: next(draws)(v)  # type: ignore[method-assign]
    one = AttackConfig(name="apd", loss="apd", iters=1, eot=3, random_start=False, quantize_8bit=False)
    got = pgd(model, x, "apd", one)

    def step(draws: list) -> torch.Tensor:  # noqa: ANN001
        t.transform = flat  # type: ignore[method-assign]
        with torch.no_grad():
            z, logp = model(x)
            ref = Reference(z, logp, model.index_codes(z))
        delta = torch.zeros_like(x).requires_grad_(True)
        losses = []
        for f in draws:
            t.transform = f  # type: ignore[method-assign]
            z_adv, logp_adv = model(x + delta)
            losses.append(LOSSES["apd"](z_adv, logp_adv, ref).sum())
        (grad,) = torch.autograd.grad(sum(losses) / len(losses), delta)
        delta = (one.step * grad.sign()).clamp(-one.eps, one.eps)
        return x + ((x + delta).clamp(0, 1) - x)

    assert torch.allclose(got, step(plan[1:]), atol=1e-6)
    assert not torch.allclose(got, step(plan[-1:]), atol=1e-6)


def test_dither_makes_bpda_exact_in_expectation_through_bit_depth() -> None:
    """Uniform noise of one level's width before a d-bit quantiser: the mean quantised image is the image itself
    (what makes BPDA's identity backward the gradient of E[T(x + r)]), where the plain quantiser is off by up to
    half a level."""
    from pqattack.attacks.pgd import dithered
    from pqattack.defense.transforms import bit_depth

    depth, level = 3, 1 / 7
    x = 0.1 + 0.8 * torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    mean = torch.stack([bit_depth(dithered(x, level, gen), depth) for _ in range(4000)]).mean(0)
    assert (mean - x).abs().max() < 0.01
    assert (bit_depth(x, depth) - x).abs().max() > 0.05


def test_dither_draws_a_fresh_input_per_evaluation_and_off_is_the_plain_loop() -> None:
    """With attack.dither and attack.eot, every loss evaluation sees x + delta plus its own noise of at most half
    the width (eot draws per step, whatever the defense); the result stays in the ball. With dither 0 the loop is
    the plain one, bit for bit, and consumes no extra random numbers."""
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0)) / 255
    inner = build_backbone("smallcnn", 10, width=8).eval()
    seen: list[torch.Tensor] = []
    features = inner.forward_features
    inner.forward_features = lambda v: seen.append(v.detach().clone()) or features(v)  # type: ignore[method-assign]
    model = RetrievalModel(inner, torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(1)))
    cfg = AttackConfig(name="apd", loss="apd", iters=2, eot=3, dither=0.1)
    adv = pgd(model, x, "apd", cfg, generator=torch.Generator().manual_seed(2))
    assert len(seen) == 1 + 2 * 3  # the clean reference, then 3 draws per step
    assert torch.equal(seen[0], x)  # the reference is the clean query, undithered
    step1 = seen[1:4]
    assert not torch.equal(step1[0], step1[1]) and not torch.equal(step1[1], step1[2])
    # the three draws share x + delta, each with its own noise in [-0.05, 0.05]: two of them differ by at most the
    # width, and over 12,288 pixels nearly by the width (a wider or a narrower noise fails one of the two)
    spread = max((a - b).abs().max().item() for i, a in enumerate(step1) for b in step1[i + 1:])
    assert 0.09 < spread <= 0.1 + 1e-6
    assert 0 < (adv - x).abs().max() <= cfg.eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    # dither 0: the random start is the only draw (equal to PQ-AG's loop bit for bit: test_beyond's
    # test_with_every_option_off_the_loop_is_pq_ags_bit_for_bit); a dither draws more
    for dither, extra in ((0.0, False), (0.1, True)):
        gen, start = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        pgd(model, x, "apd", AttackConfig(name="apd", loss="apd", iters=2, dither=dither), generator=gen)
        torch.rand(x.shape, generator=start)
        assert torch.equal(gen.get_state(), start.get_state()) != extra


def test_a_bare_reference_is_the_clean_query_through_the_bare_backbone() -> None:
    """attack.reference=bare: the clean reference is computed by the bare backbone on the untransformed query, and
    every step still goes through the transform (BPDA); by default the reference is the transformed clean query."""
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0)) / 255
    inner = build_backbone("smallcnn", 10, width=8).eval()
    seen: list[torch.Tensor] = []
    features = inner.forward_features
    inner.forward_features = lambda v: seen.append(v.detach().clone()) or features(v)  # type: ignore[method-assign]
    codebooks = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(1))
    defended = RetrievalModel(DefendedBackbone(inner, QueryTransform(BitDepthConfig(depth=3), seed=0)), codebooks)
    bare = RetrievalModel(inner, codebooks)
    cfg = AttackConfig(name="apd", loss="apd", iters=2, reference="bare")
    pgd(defended, x, "apd", cfg, generator=torch.Generator().manual_seed(2), reference_models=[bare])
    assert len(seen) == 3 and torch.equal(seen[0], x)  # the reference: the query itself
    assert all(torch.equal(s, bit_depth(s, 3)) for s in seen[1:])  # the steps: through the 3-bit transform
    seen.clear()
    pgd(defended, x, "apd", AttackConfig(name="apd", loss="apd", iters=2), generator=torch.Generator().manual_seed(2))
    assert torch.equal(seen[0], bit_depth(x, 3))
    with pytest.raises(ValueError, match="2 reference models for 1 models"):
        pgd(defended, x, "apd", cfg, reference_models=[bare, bare])


def test_a_bare_reference_job_attacks_through_the_transform_against_the_bare_backbone(
        tmp_path: Path, shared_cache: Path, monkeypatch) -> None:  # noqa: ANN001
    """The stage gives pgd the defended model to differentiate and the bare backbone for the reference; the row
    says so, and the set is not the default adaptive one."""
    import pqattack.stages.attack as stage

    calls = []
    real = stage.pgd
    monkeypatch.setattr(stage, "pgd", lambda models, *a, **k: calls.append((models, k["reference_models"])) or
                        real(models, *a, **k))
    base = [o for o in TINY if not o.startswith("attack.")]
    res = run_job([*base, "attack=apd", "defense=bitdepth", "attack.reference=bare"], tmp_path / "bare", shared_cache)
    models, refs = calls[0]
    assert isinstance(models[0].backbone, DefendedBackbone) and refs[0].backbone is models[0].backbone.inner
    row = next(r for r in res["rows"] if r["attack"] == "apd")
    assert row["reference"] == "bare" and not row["oblivious"]
    calls.clear()
    default = run_job([*base, "attack=apd", "defense=bitdepth"], tmp_path / "default", shared_cache)
    assert calls[0][1][0] is calls[0][0][0] and next(r for r in default["rows"] if r["attack"] == "apd")[
        "reference"] is None
    assert res["meta"]["cache_keys"]["adversarial_queries"] != default["meta"]["cache_keys"]["adversarial_queries"]


def test_defense_none_keeps_the_keys_from_before_defenses(small_data) -> None:  # noqa: ANN001
    assert keys(["defense=none"], small_data) == BEFORE_DEFENSES["kmeans"] == keys(["~defense"], small_data)
    assert keys(PQN + ["defense=none"], small_data) == BEFORE_DEFENSES["pqn"]


def test_defense_none_trains_as_before(tmp_path: Path) -> None:
    """A job with defense=none and the same job composed without the defense group (the configs before it), each
    trained in its own cache: the same checkpoint bits, the same numbers."""
    job = [*TINY, "quantizer=pqn", "quantizer.epochs=1", "quantizer.init_samples=200", "precision=fp32"]
    a = run_job([*job, "defense=none"], tmp_path / "a", tmp_path / "cache_a")
    b = run_job([*job, "~defense"], tmp_path / "b", tmp_path / "cache_b")
    assert [r["map"] for r in a["rows"]] == [r["map"] for r in b["rows"]]
    key = a["meta"]["cache_keys"]["checkpoint"]
    assert key == b["meta"]["cache_keys"]["checkpoint"]
    ta, tb = (ArtifactCache(tmp_path / c).load("checkpoint", key)[0] for c in ("cache_a", "cache_b"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_defenses_are_in_the_keys_of_what_they_change(small_data) -> None:  # noqa: ANN001
    """Adversarial training is a new checkpoint on top of the undefended one, keyed by its whole config; a query
    transform changes no checkpoint, and the query set only when the attack is made through it (adaptive): the
    oblivious attack's set is the undefended model's."""
    for q in ([], PQN):
        none = keys(q + ["defense=none"], small_data)
        adv = keys(q + ["defense=adv"], small_data)
        assert adv["undefended_checkpoint"] == none["checkpoint"] and adv.get("base_checkpoint") == none.get(
            "base_checkpoint")
        variants = [adv] + [keys(q + ["defense=adv", c], small_data) for c in
                            ("defense.eps=0.0156", "defense.beta=2", "defense.iters=3", "defense.ratio=0.5",
                             "defense.epochs=2", "defense.lr=0.02")]
        assert len({k["checkpoint"] for k in variants} | {none["checkpoint"]}) == len(variants) + 1
    base = keys([], small_data)
    oblivious = keys(["defense=jpeg", "attack.oblivious=true"], small_data)
    adaptive = keys(["defense=jpeg"], small_data)
    other = keys(["defense=jpeg", "defense.quality=50"], small_data)
    eot = keys(["defense=jpeg_random", "attack.eot=2"], small_data)
    assert {k: v for k, v in oblivious.items() if k != "results"} == {k: v for k, v in base.items() if k != "results"}
    assert adaptive["checkpoint"] == base["checkpoint"] and adaptive["features"] == base["features"]
    assert len({base["adversarial_queries"], adaptive["adversarial_queries"], other["adversarial_queries"],
                eot["adversarial_queries"]}) == 4


def test_differently_trained_models_never_share_a_label() -> None:
    """The label names eps, beta and k, then each other setting off its default: rows and tables of two models
    that differ in any setting (epochs, ratio, ...) stay apart; the defaults' labels are as before."""
    assert AdversarialTrainingConfig().label() == "adv (eps=8/255, beta=1, k=2)"
    assert AdversarialTrainingConfig(eps=2 / 255, beta=0.3).label() == "adv (eps=2/255, beta=0.3, k=2)"
    variants = [AdversarialTrainingConfig(**{k: v}) for k, v in
                (("epochs", 3), ("ratio", 0.5), ("lr", 0.02), ("attack", "aod"), ("step", 0.01),
                 ("random_start", False), ("num_train", 1000), ("eps", 2.5 / 255))]
    labels = [c.label() for c in variants]
    assert len(set(labels)) == len(labels) and AdversarialTrainingConfig().label() not in labels
    assert labels[:2] == ["adv (eps=8/255, beta=1, k=2, epochs=3)", "adv (eps=8/255, beta=1, k=2, ratio=0.5)"]
    assert labels[-1] == "adv (eps=2.5/255, beta=1, k=2)"


@pytest.mark.parametrize("defense", [AdversarialTrainingConfig(attack="far", lr=0.02, step=0.004, num_train=500),
                                     JpegConfig(quality=60, quality_min=30), BitDepthConfig(depth=3)])
def test_rows_carry_every_defense_setting(defense) -> None:  # noqa: ANN001
    """A defended row names its defense and carries each setting of its schema, so rows of models trained with a
    different attack or learning rate never read alike."""
    row = defense.row_fields()
    assert row.pop("defense") == defense.label()
    assert row == {f"defense_{f.name}": getattr(defense, f.name) for f in dataclasses.fields(defense)
                   if f.name != "kind"}
    if isinstance(defense, AdversarialTrainingConfig):
        assert (row["defense_attack"], row["defense_lr"], row["defense_num_train"]) == ("far", 0.02, 500)


def test_the_worst_case_is_the_per_query_minimum() -> None:
    rng = np.random.default_rng(0)
    parts = [QueryAP(rng.random(50), rng.random(50), np.ones(50), np.ones(50)) for _ in range(4)]
    worst = worst_case(parts)
    assert np.array_equal(worst.expected, np.min([p.expected for p in parts], 0))
    assert np.array_equal(worst.grouped, np.min([p.grouped for p in parts], 0))
    assert worst.mean() < min(p.mean() for p in parts)
    # mAP@k with empty=drop: a member that leaves a query out (AP 0, found 0) once took the query out of the worst
    # case's denominator too, and the worst case (50) came out above a member (30)
    a = QueryAP(np.array([0.0, 0.5]), np.array([0.0, 0.5]), np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    b = QueryAP(np.array([0.1, 0.5]), np.array([0.1, 0.5]), np.ones(2), np.ones(2))
    for ties in ("expected", "grouped"):
        drop = worst_case([a, b]).mean(ties, "drop")
        assert drop <= min(a.mean(ties, "drop"), b.mean(ties, "drop")) and drop == pytest.approx(25.0)


def test_suite_members_follow_the_defense() -> None:
    suite = 'eval.suite=[basic,"apd iters=7","apd eot=2","apd oblivious=true"]'
    plain = member_jobs(load_job(compose_config(SMALL + ["attack=none", suite])))
    assert [(j.attack.loss, j.attack.iters) for j in plain] == [("basic", 5), ("apd", 7)]
    jpeg_jobs = member_jobs(load_job(compose_config(SMALL + ["attack=none", suite, "defense=jpeg"])))
    assert [j.attack.oblivious for j in jpeg_jobs] == [False, False, True]
    bare = 'eval.suite=[apd,"apd reference=bare"]'
    assert len(member_jobs(load_job(compose_config(SMALL + ["attack=none", bare])))) == 1
    assert [j.attack.reference for j in member_jobs(load_job(compose_config(
        SMALL + ["attack=none", bare, "defense=bitdepth"])))] == ["attacked", "bare"]
    random_jobs = member_jobs(load_job(compose_config(SMALL + ["attack=none", suite, "defense=jpeg_random"])))
    assert [(j.attack.eot, j.attack.oblivious) for j in random_jobs] == [(0, False), (0, False), (2, False),
                                                                        (0, True)]


def test_a_member_can_be_limited_to_defense_kinds() -> None:
    """``defense=<kind>`` in a member keeps it to jobs of that kind (jpeg covers the random JPEG), so one preset's
    suite carries a member meant for one defense only; without it the member goes with every defense it applies
    to, as before."""
    suite = ('eval.suite=[basic,"apd reference=bare defense=bitdepth","apd oblivious=true defense=jpeg",'
             '"basic iters=7 defense=adv,bitdepth"]')

    def attacks(defense: str) -> list[tuple]:
        job = load_job(compose_config(SMALL + ["attack=none", suite, f"defense={defense}"]))
        return [(j.attack.loss, j.attack.reference, j.attack.oblivious, j.attack.iters) for j in member_jobs(job)]

    assert attacks("none") == [("basic", "attacked", False, 5)]
    assert attacks("adv") == [("basic", "attacked", False, 5), ("basic", "attacked", False, 7)]
    assert attacks("bitdepth") == [("basic", "attacked", False, 5), ("apd", "bare", False, 5),
                                   ("basic", "attacked", False, 7)]
    assert attacks("jpeg") == attacks("jpeg_random") == [("basic", "attacked", False, 5),
                                                         ("apd", "attacked", True, 5)]
    # the filter is not an attack setting: the member's query set is the plain member's (its key, its rows)
    limited = load_job(compose_config(SMALL + ["attack=none", 'eval.suite=["apd reference=bare defense=bitdepth"]',
                                               "defense=bitdepth"]))
    plain = load_job(compose_config(SMALL + ["attack=none", 'eval.suite=["apd reference=bare"]', "defense=bitdepth"]))
    assert member_jobs(limited)[0].attack == member_jobs(plain)[0].attack
    # two members of one attack for disjoint kinds are two members; for a kind they share, the same attack twice
    both = load_job(compose_config(SMALL + ["attack=none", 'eval.suite=["apd defense=jpeg","apd defense=bitdepth"]',
                                            "defense=jpeg"]))
    assert len(member_jobs(both)) == 1
    for twice in ('eval.suite=[apd,"apd defense=jpeg"]', 'eval.suite=["apd defense=jpeg,adv","apd defense=adv"]'):
        with pytest.raises(ConfigError, match="are the same attack"):
            load_job(compose_config(SMALL + ["attack=none", twice]))


def test_the_defense_presets_suite_gives_each_recorded_job_its_members() -> None:
    """``experiment=defense_cpu`` carries the 16-draw bit-depth members (limited to defense=bitdepth): with its
    suite, every job of results/defense_cpu.json (the bit-depth ones run with a command-line suite of 13 members,
    the others with the preset's 11) evaluates the same attacks in the same order, so the preset alone reproduces
    the record; the GPU preset's suite is the same list."""
    import json

    from omegaconf import OmegaConf

    preset = list(compose_config(["experiment=defense_cpu"]).eval.suite)
    assert list(compose_config(["experiment=defense"]).eval.suite) == preset
    jobs = json.loads((REPO / "results" / "defense_cpu.json").read_text())["meta"]["jobs"]
    kinds = set()
    for meta in jobs:
        recorded = OmegaConf.create(meta["config"])
        with_preset = OmegaConf.create(meta["config"])
        with_preset.eval.suite = preset
        ran = [j.attack for j in member_jobs(load_job(recorded))]
        assert [j.attack for j in member_jobs(load_job(with_preset))] == ran, meta["config"]["defense"]
        kinds.add((meta["config"]["defense"]["kind"], len(ran)))
    assert {k for k, _ in kinds} == {"none", "adv", "jpeg", "bitdepth"}
    assert max(n for k, n in kinds if k == "bitdepth") > max(n for k, n in kinds if k == "jpeg")


@pytest.mark.parametrize("overrides,message", [
    (["defense=adv", "defense.eps=0"], "defense.eps=0"),
    (["defense=adv", "defense.ratio=1.5"], "defense.ratio"),
    (["defense=adv", "defense.iters=0"], "defense.iters"),
    (["defense=adv", "defense.attack=cw"], "defense.attack='cw'"),
    (["defense=adv", "defense.attack=apd"], "defense.attack=apd"),
    (["defense=adv", "defense.attack=far"], "defense.attack=far"),
    (["defense=adv", "defense.attack=center"], "defense.attack=center"),
    (["defense=adv", "defense.code_target=true"], "defense.code_target=true"),
    (["defense=jpeg", "defense.quality=0"], "defense.quality=0"),
    (["defense=jpeg", "defense.quality_min=90"], "defense.quality_min=90"),
    (["defense=bitdepth", "defense.depth=8"], "defense.depth=8"),
    (["attack.oblivious=true"], "attack.oblivious=true"),
    (["defense=jpeg", "attack.eot=4"], "attack.eot=4"),
    (["attack.eot=1", "defense=jpeg_random"], "attack.eot=1"),
    (["defense=bitdepth", "attack.dither=-0.1"], "attack.dither=-0.1"),
    (["defense=bitdepth", "attack.dither=2"], "attack.dither=2"),
    (["defense=bitdepth", "attack.reference=clean"], "attack.reference='clean'"),
    (["attack.reference=bare"], "defense=none has no query transform"),
    (["defense=bitdepth", "attack.reference=bare", "attack.oblivious=true"], "attack.oblivious=true already"),
    (["attack=none", "eval.suite=[apd,nope]"], "'nope' is not an attack"),
    (["attack=none", "eval.suite=[\"apd iters=0\"]"], "attack.iters=0"),
    (["attack=none", "eval.suite=[\"apd colour=1\"]"], "apd colour=1"),
    (["attack=none", "eval.suite=[apd,apd]"], "listed twice"),
    (["attack=none", 'eval.suite=["apd defense=cw"]'], "defense='cw' names the defense kinds"),
    (["attack=none", 'eval.suite=["apd defense=jpeg_random"]'], "defense=jpeg covers defense=jpeg_random"),
    (["attack=none", 'eval.suite=["apd defense=jpeg"]'], "a member's defense=<kind> limits it"),
    (["eval.suite=[apd]"], "attack=none"),
])
def test_bad_defense_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_job(compose_config(SMALL + overrides))


def test_a_defended_suite_job(tmp_path: Path, shared_cache: Path) -> None:
    """A real JPEG-defended job with a suite: a row per member that applies, the oblivious member's queries are the
    undefended model's, and the worst case is at most every member's mAP."""
    base = [o for o in TINY if not o.startswith("attack.")]
    plain = run_job([*base, "attack=apd"], tmp_path / "plain", shared_cache)  # the member's attack settings
    res = run_job([*base, "attack=none", "defense=jpeg",
                   'eval.suite=[basic,apd,"apd oblivious=true","apd eot=2"]'], tmp_path / "jpeg", shared_cache)
    rows = res["rows"]
    assert all(r["defense"] == "jpeg (q=75)" and r["defense_quality"] == 75 for r in rows)
    for s in ("sdc", "adc"):
        at = {(r["attack"], r.get("oblivious")): r for r in rows if r["system"] == s and r["attack"] != "clean"}
        assert set(at) == {("basic", False), ("apd", False), ("apd", True), ("worst-case", None)}
        worst = at.pop(("worst-case", None))
        assert worst["map"] <= min(r["map"] for r in at.values()) and len(worst["suite"]) == 3
    # the same query set: the suite loaded the plain job's from the cache (any set at this eps has its L-inf)
    assert f"adversarial_queries/{plain['meta']['cache_keys']['adversarial_queries']}" in res["meta"]["cache_hits"]
    obl = [r for r in rows if r.get("oblivious")][0]
    assert obl["l2"] == next(r for r in plain["rows"] if r["attack"] == "apd")["l2"]


def test_a_random_transform_evaluates_alike_whether_its_sets_were_built_or_cached(tmp_path: Path,
                                                                                   shared_cache: Path) -> None:
    """A random JPEG defense draws its qualities per pass from a seed of the pass's own: a suite job whose attack
    sets are built in the process (the attacks draw too) and the same job with every set from the cache give the
    same rows, and the set keys and results key say how the draws are seeded (sets made before came from one
    stream per process and are not reused)."""
    base = [o for o in TINY if not o.startswith("attack.")]
    job = [*base, "attack=none", "defense=jpeg_random", 'eval.suite=[basic,apd,"apd eot=2"]']
    cache = tmp_path / "cache"
    shutil.copytree(shared_cache, cache)  # the tiny backbone from the shared cache; the JPEG sets are new here
    built = run_job(job, tmp_path / "built", cache)["rows"]
    assert built and any(r["attack"] == "apd" for r in built)
    cached = run_job(job, tmp_path / "cached", cache)
    assert not [b for b in cached["meta"]["cache_builds"] if b.startswith("adversarial_queries/")]  # all cached
    assert [(r["attack"], r["system"], r["map"]) for r in cached["rows"]] == \
        [(r["attack"], r["system"], r["map"]) for r in built]
    from pqattack.stages.keys import RANDOM_DRAWS, attack_spec, results_spec

    job_cfg = load_job(compose_config(SMALL + ["defense=jpeg_random"]))
    data_stub = type("D", (), {"query_key": "q", "database_key": "d"})()
    assert attack_spec(job_cfg, data_stub, "c", "b", "fp32")["defense"]["draws"] == RANDOM_DRAWS
    assert results_spec(job_cfg, "fp32")["defense"]["draws"] == RANDOM_DRAWS
    fixed = load_job(compose_config(SMALL + ["defense=jpeg"]))
    assert "draws" not in attack_spec(fixed, data_stub, "c", "b", "fp32")["defense"]


def _row(attack: str, value: float, defense: str | None = None, **kw) -> dict:  # noqa: ANN003
    base = {"dataset": "cifar10", "model": "fastnet", "quantizer": "pqn", "bits": 24, "system": "sdc", "epochs": 10,
            "pqn_epochs": 1, "alpha": 10.0, "device": "cpu", "precision": "bf16", "queries": 500, "topk": None,
            "attack": attack, "map": value}
    if attack != "clean" and attack != "worst-case":
        base.update(eps=8 / 255, step=0.01, iters=5)
    return {**base, **({"defense": defense} if defense else {}), **kw}


def test_the_defense_tables_are_computed_from_rows() -> None:
    from pqattack.report.defense import adaptive_grid, masking_grid, summary_grid

    rows = [_row("clean", 80.0), _row("apd", 10.0), _row("basic", 12.0), _row("worst-case", 8.0),
            _row("clean", 70.0, "adv"), _row("apd", 30.0, "adv"), _row("worst-case", 20.0, "adv"),
            _row("apd", 26.0, "adv", iters=100), _row("apd", 20.0, "adv", eps=16 / 255),
            _row("clean", 79.0, "jpeg"), _row("apd", 40.0, "jpeg", oblivious=True),
            _row("apd", 16.0, "jpeg", oblivious=False), _row("worst-case", 15.0, "jpeg")]
    summary = {r[3]: r for r in summary_grid(rows).rows}
    assert summary["adv"][4:10] == ["70.0", "30.0", "20.0", "2.50x", "10.0", "0"]
    # a defended suite that lacks one of the undefended suite's attacks is marked (its worst case may be too high)
    suites = [{**r, "suite": ["apd", "basic"]} if r["attack"] == "worst-case" and "defense" not in r else
              {**r, "suite": ["apd"]} if r["attack"] == "worst-case" and r.get("defense") == "adv" else r for r in rows]
    assert {r[3]: r[7] for r in summary_grid(suites).rows}["adv"] == "2.50x †"
    assert summary["none"][6] == "8.0" and summary["jpeg"][7] == "1.88x"
    adaptive = adaptive_grid(rows).rows
    assert adaptive == [["fastnet+pqn", "24", "SDC", "jpeg", "apd", "10.0", "40.0", "16.0", "80%", "apd 16.0", "80%"]]
    more = adaptive_grid([*rows, _row("apd", 13.0, "jpeg", oblivious=False, iters=100),
                          _row("apd", 11.0, "bitdepth", oblivious=True), _row("apd", 10.5, "bitdepth", oblivious=False)])
    assert more.rows[1][8:] == ["80%", "apd (iters=100) 13.0", "90%"]
    assert more.rows[0][3] == "bitdepth" and more.rows[0][8] == "none apparent"  # 1 point of apparent robustness
    masking = masking_grid(rows).rows
    assert masking == [["fastnet+pqn", "24", "SDC", "adv", "26.0 <= 30.0: ok", "20.0 < 30.0: ok"]]
    flagged = masking_grid([*rows[:-1], _row("apd", 35.0, "adv", iters=100)]).rows  # a rise: flagged
    assert any("FLAG" in cell for row in flagged for cell in row)
    # a dithered APD, or one with the bare reference, is another attack: neither the 5-step point nor a row of the
    # plain table (the bare reference's 5-step APD once took the plain one's cell, whichever came last)
    assert masking_grid([*rows, _row("apd", 50.0, "adv", dither=0.1)]).rows == masking
    assert masking_grid([*rows, _row("apd", 50.0, "adv", reference="bare")]).rows == masking
    # another step schedule at 100 steps: compared only where plain APD has no many-step row, and named
    assert masking_grid([*rows, _row("apd", 5.0, "adv", iters=100, step_schedule="cosine")]).rows == masking
    cosine = masking_grid([*rows[:7], *rows[8:], _row("apd", 31.0, "adv", iters=100, step_schedule="cosine")]).rows
    assert cosine[0][4] == "31.0 (cosine) <= 30.0: FLAG"
    # the strongest adaptive attack is one at the paper's eps, not a larger budget's
    wide = adaptive_grid([*rows, _row("apd", 2.0, "jpeg", oblivious=False, eps=16 / 255, iters=100)]).rows
    assert wide == adaptive
    assert adaptive_grid([*rows, _row("apd", 5.0, "jpeg", oblivious=False, dither=0.1)]).rows[0][5:9] == \
        ["10.0", "40.0", "16.0", "80%"]


def test_two_seeds_of_one_defended_target_are_rows_told_apart() -> None:
    """A second seed's bit-depth records beside the first's: the defense tables printed two rows alike (model, bits,
    system and defense the same) where the recipe differs; the model now names its recipe where the records hold
    several, and is unchanged where they hold one."""
    from pqattack.report.defense import adaptive_grid, masking_grid, summary_grid

    rows = []
    for seed, shift in ((0, 0.0), (1, 1.0)):
        kw = dict(quantizer="kmeans", epochs=2, precision="fp32", seed=seed)
        rows += [_row("clean", 60.0 + shift, **kw), _row("worst-case", 7.0 + shift, **kw),
                 _row("clean", 50.0 + shift, "bitdepth", **kw), _row("worst-case", 7.5 + shift, "bitdepth", **kw),
                 _row("apd", 8.0 + shift, "bitdepth", oblivious=True, **kw),
                 _row("apd", 9.0 + shift, "bitdepth", oblivious=False, **kw),
                 _row("apd", 9.5 + shift, "bitdepth", oblivious=False, iters=100, **kw)]
    rows = [{k: v for k, v in r.items() if k not in ("pqn_epochs", "alpha")} for r in rows]  # a K-means target
    names = [r[0] for r in summary_grid(rows).rows]
    recipe = "2 epochs, cpu, fp32, 500 queries"
    assert names == [f"fastnet ({recipe})"] * 2 + [f"fastnet ({recipe}, seed 1)"] * 2
    assert [r[0] for r in adaptive_grid(rows).rows] == [names[0], names[2]]
    assert [r[0] for r in masking_grid(rows).rows] == [names[0], names[2]]
    assert {r[0] for r in summary_grid([r for r in rows if r["seed"] == 1]).rows} == {"fastnet"}


def test_the_pareto_figure_draws_a_line_per_radius_through_its_betas() -> None:
    from pqattack.report.defense import pareto_figure, pareto_points, pareto_series

    rows = [_row("clean", 80.0), _row("worst-case", 8.0)]
    for label, clean, worst in (("adv (eps=2/255, beta=1, k=2)", 72.0, 15.0),
                                ("adv (eps=2/255, beta=0.1, k=2)", 81.0, 10.0),
                                ("adv (eps=2/255, beta=0, k=2)", 82.0, 9.0),
                                ("adv (eps=4/255, beta=1, k=2)", 52.0, 22.0),
                                ("adv (eps=2/255, beta=1, k=2, epochs=3)", 74.0, 18.0)):
        rows += [_row("clean", clean, label), _row("worst-case", worst, label)]
    [points] = pareto_points(rows).values()
    series = pareto_series(points)
    assert series["adv (eps=2/255, k=2)"] == [(0.0, 82.0, 9.0), (0.1, 81.0, 10.0), (1.0, 72.0, 15.0)]
    assert series["none"] == [(None, 80.0, 8.0)] and series["adv (eps=2/255, k=2, epochs=3)"] == [(1.0, 74.0, 18.0)]
    [ax] = pareto_figure(rows, "t").axes
    lines = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()}
    assert lines["eps=2/255, k=2"] == [(82.0, 9.0), (81.0, 10.0), (72.0, 15.0)]
    assert set(lines) == {"undefended", "eps=2/255, k=2", "eps=2/255, k=2, epochs=3", "eps=4/255, k=2"}
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0.1", "1", "1", "1"]


def test_no_two_pareto_series_look_alike() -> None:
    """Fourteen series in one panel (defense_pareto_cpu's 24-bit panels have as many): past the ten default colours
    the marker changes, so no two series share colour and marker, and the undefended target stands apart."""
    from matplotlib.colors import to_hex

    from pqattack.report.defense import pareto_figure

    rows = [_row("clean", 80.0), _row("worst-case", 8.0)]
    for i in range(14):
        label = f"adv (eps=2/255, beta=1, k=2, epochs={i + 2})"
        rows += [_row("clean", 70.0 - i, label), _row("worst-case", 10.0 + i, label)]
    [ax] = pareto_figure(rows, "t").axes
    styles = [(to_hex(line.get_color()), line.get_marker()) for line in ax.get_lines()]
    assert len(styles) == 15 and len(set(styles)) == 15


def test_the_pareto_legend_hides_no_point() -> None:
    """With many series in six narrow panels, the legend inside a panel covered points wherever it went (the
    undefended target among them); it goes below the panel, and no point is under it."""
    from pqattack.report.defense import pareto_figure
    from pqattack.report.figures import FIGSIZE

    rows = []
    for bits in (16, 24, 36):  # six panels, as defense_pareto_cpu's with defense_cpu's targets
        for system in ("sdc", "adc"):
            at = {"bits": bits, "system": system}
            rows += [_row("clean", 82.6, None, **at), _row("worst-case", 8.1, None, **at)]
            for i in range(12 if bits == 24 else 2):  # points all over the panel
                for j, beta in enumerate((0.03, 0.3, 1.0)):
                    label = f"adv (eps={i + 1}/255, beta={beta}, k=2)"
                    rows += [_row("clean", 25.0 + 5 * i, label, **at),
                             _row("worst-case", 2.0 + 8 * j + (i % 4) * 2, label, **at)]
    fig = pareto_figure(rows, "t")
    fig.canvas.draw()
    assert len(fig.axes) == 6 and tuple(fig.get_size_inches()) == FIGSIZE["pareto"]
    for ax in fig.axes:
        box = ax.get_legend().get_window_extent()
        for line in ax.get_lines():
            for x, y in ax.transData.transform(line.get_xydata()):
                assert not box.contains(x, y), line.get_label()


def test_a_transfer_source_is_the_undefended_surrogate() -> None:
    """The attacker's surrogate has no defense: with the bare reference against a transform (once a config error
    raised by the source job, after the target job had passed its checks), and as the target's own model named as
    the source of a defended target (once the defended target itself, white-box); without a transfer key, or
    undefended, the own model stays white-box."""
    from pqattack.transfer import source_jobs

    [src] = source_jobs(load_job(compose_config(SMALL + ["defense=bitdepth", "attack.reference=bare",
                                                         "transfer.source_model=fastnet"])))
    assert (src.model["name"], src.defense.kind, src.attack.reference) == ("fastnet", "none", "attacked")
    [own] = source_jobs(load_job(compose_config(SMALL + ["defense=adv", "transfer.source_model=smallcnn"])))
    assert (own.model["name"], own.defense.kind) == ("smallcnn", "none")
    assert source_jobs(load_job(compose_config(SMALL + ["defense=adv"]))) is None
    assert source_jobs(load_job(compose_config(SMALL + ["transfer.source_model=smallcnn"]))) is None


def test_the_training_attack_starts_from_the_steps_reference() -> None:
    """The adversarial batch computes the clean reference once (for the consistency term) and the attack starts from
    it: one forward pass fewer per step than the attack computing its own, and the same images bit for bit."""
    from pqattack.attacks import pgd as plain_pgd

    torch.manual_seed(0)
    net = build_backbone("smallcnn", 10, width=8)
    module = AdversarialClassifierModule(net, AdversarialTrainingConfig(eps=4 / 255, iters=2), schedule="constant")
    x, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 2
    calls = []
    forward = net.forward_features
    net.forward_features = lambda v: calls.append(1) or forward(v)  # type: ignore[method-assign]
    torch.manual_seed(1)
    batch, n, _ = module.adversarial_batch(x, labels)
    assert len(calls) == 1 + 2  # the reference, then the attack's two steps
    net.forward_features = forward  # type: ignore[method-assign]
    net.eval()
    torch.manual_seed(1)
    alone = plain_pgd(module.attacked_model(), x[:n], module.attack.loss, module.attack)
    assert torch.equal(batch[:n], alone)


def test_the_step_cost_tool_times_both_steps(capsys: pytest.CaptureFixture) -> None:
    """``tools/adversarial_step_cost.py`` at toy size: a line with both medians and their ratio, for the clean
    comparison of either target and the reference comparison; bad sizes and combinations refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_cost", REPO / "tools" / "adversarial_step_cost.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # type: ignore[union-attr]
    for target in ("pqn", "kmeans"):
        tool.main(["--target", target, "--model", "smallcnn", "--batch", "8", "--runs", "2"])
        out = capsys.readouterr().out
        line = re.search(rf"{target} target, smallcnn, batch 8, k = 2, cpu: .*median training step ([0-9.]+) s "
                         r"clean, ([0-9.]+) s adversarial; [0-9.]+x \(goal: at most k \+ 1.3 = 3.3x\)", out)
        assert line, out
        assert float(line.group(2)) > float(line.group(1)), out  # two attack passes more than the clean step
    tool.main(["--compare", "reference", "--model", "smallcnn", "--batch", "8", "--runs", "2"])
    out = capsys.readouterr().out
    assert re.search(r"smallcnn, batch 8, k = 2, cpu: .*median step [0-9.]+ s with two reference passes, [0-9.]+ s "
                     r"with one; [0-9.]+x", out), out
    for bad in (["--runs", "0"], ["--compare", "reference", "--target", "pqn"]):
        with pytest.raises(SystemExit) as err:
            tool.main(bad)
        assert err.value.code == 2
