"""Adversarial training of the retrieval model (``defense=adv``).

Each training batch (augmented as usual) has its first ``ratio`` share replaced by adversarial images, made on the
fly with ``iters``-step L-inf PGD (``attacks.pgd``, the loop every attack uses) against the network as it is at that
step, in eval mode (batch norm on its running statistics, which the attack leaves unchanged): APD (eq. 8) against
PQN's current soft assignment, softmax(alpha <x_m, c_mk>) with the codebooks as they are (or ``defense.attack``:
AOD, far codes, centre codes), or the feature distance (eq. 3) for a K-means target, whose codebooks are built after
training. The network then trains, in train mode, on the mixed batch with

    PQN:      L_PQN(mixed batch) + beta * mean_i sum_m KL(p_m(x_i) || p_m(x_i^adv))
    K-means:  CE(mixed batch)    + beta * mean_i ||z(x_i^adv) - z(x_i)||^2

where the clean image's assignment p(x_i) (its feature z(x_i)) is computed once per step without gradient, in
eval mode: TRADES's consistency with a fixed target. The adversarial images replace clean ones, so an epoch has as
many steps as a clean epoch, each costing about iters + 1.3 clean steps (the attack's forward-backward passes, the
reference and the training step).

With ``trades=true`` the objective is TRADES's own (Zhang et al. 2019, eq. 5): the target's loss on the clean
batch, and the consistency with gradient through both sides, the clean images' assignments (features) taken from
the same train-mode forward pass as the adversarial ones':

    PQN:      L_PQN(clean batch) + beta * mean_i sum_m KL(p_m(x_i) || p_m(x_i^adv))
    K-means:  CE(clean batch)    + beta * mean_i ||z(x_i^adv) - z(x_i)||^2

The training step then passes B + ratio * B images, about iters + 2.3 clean steps for ratio 1.

With ``code_target=true`` (PQN) the consistency is the cross-entropy of the adversarial image's assignment with its
clean image's codes b_m(x) (the index's, eq. 1), mean_i sum_m -log p_m(x_i^adv)[b_m(x_i)]: APD's loss (eq. 8),
which the training attack maximises, minimised. Its target is peaked, where the KL's is the clean assignment itself.
"""

from __future__ import annotations

import dataclasses

import torch

from ..attacks import AttackConfig, Reference, batch_anchors, pgd, reference
from ..errors import NumericsError
from ..models import Backbone, ClassifierModule, RetrievalModel
from ..models.pqn import PQNModule, asymmetric_triplet_loss
from .config import AdversarialTrainingConfig


def training_attack(defense: AdversarialTrainingConfig, pqn: bool) -> AttackConfig:
    """The PGD attack that makes the training images (continuous: no 8-bit rounding)."""
    loss = defense.training_attack(pqn)
    return AttackConfig(name=loss, loss=loss, eps=defense.eps, step=defense.pgd_step(), iters=defense.iters,
                        random_start=defense.random_start, quantize_8bit=False)


class AdversarialBatches:
    """What both adversarial modules share: the mixed batch, made against ``attacked_model()``."""

    backbone: Backbone
    defense: AdversarialTrainingConfig
    attack: AttackConfig

    def attacked_model(self) -> RetrievalModel:
        raise NotImplementedError

    def on_train_start(self) -> None:
        """Nothing to initialise from the data: the network is already trained (fastnet's whitening stays)."""

    def adversarial_batch(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, Reference]:
        """``(batch, n, reference)``: the first n = round(ratio * B) (at least 1) images of ``x`` replaced by their
        adversarial versions (with ``trades``: the whole clean ``x``, then the n adversarial images), and those n
        clean images' reference (features, log assignment, codes). ``defense.attack=center`` pushes each image
        away from the centre code nearest to its code among the n images' own per-class centres
        (``attacks.batch_anchors``; the database's are not at hand while training)."""
        n = max(1, round(self.defense.ratio * x.shape[0]))
        model = self.attacked_model()
        training = self.backbone.training
        self.backbone.eval()
        try:
            ref = reference(model, x[:n], self.attack.peak)
            anchors = batch_anchors(ref.codes, labels[:n], model.codebooks) if self.attack.loss == "center" else None
            with torch.enable_grad():  # the attack starts from this reference (one forward pass, not two)
                adv = pgd(model, x[:n], self.attack.loss, self.attack, anchors=anchors,
                          references=[dataclasses.replace(ref, anchor=anchors)])
        finally:
            self.backbone.train(training)
        parts = [x, adv.to(x.dtype)] if self.defense.trades else [adv.to(x.dtype), x[n:]]
        return torch.cat(parts).contiguous(memory_format=torch.channels_last), n, ref

    def split(self, batch: torch.Tensor, n: int) -> tuple[slice, slice, slice]:
        """Where, in the training step's ``batch``, the task loss's images, the adversarial images and their clean
        versions lie."""
        if self.defense.trades:
            b = batch.shape[0] - n
            return slice(0, b), slice(b, b + n), slice(0, n)
        return slice(0, batch.shape[0]), slice(0, n), slice(0, n)

    def check(self, loss: torch.Tensor, batch_idx: int) -> None:
        if batch_idx % 50 == 0 and not torch.isfinite(loss):
            raise NumericsError(f"adversarial training loss is {loss.item()} at step "
                                f"{self.global_step}: lower defense.lr or defense.beta")  # type: ignore[attr-defined]


class AdversarialPQNModule(AdversarialBatches, PQNModule):
    """PQN's joint training on adversarial batches, with the KL consistency of the soft assignments."""

    def __init__(self, backbone: Backbone, codebooks: torch.Tensor, defense: AdversarialTrainingConfig,
                 **kw: object) -> None:
        super().__init__(backbone, codebooks, **kw)
        self.defense, self.attack = defense, training_attack(defense, pqn=True)

    def attacked_model(self) -> RetrievalModel:
        """PQN's soft layer as the attack sees it: unit sub-vectors, the current unit codewords, 1 / alpha."""
        return RetrievalModel(self.backbone, self.soft_pq.unit_codebooks().detach(), "dot", 1.0 / self.soft_pq.alpha,
                              subvector_norm=True)

    def log_assignment(self, sub: torch.Tensor) -> torch.Tensor:
        """log softmax(alpha <x_m, c_mk>) of sub-vectors ``sub`` (B, M, d), in fp32."""
        logits = self.soft_pq.alpha * torch.einsum("bmd,mkd->bmk", sub.float(), self.soft_pq.unit_codebooks())
        return torch.log_softmax(logits, dim=-1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        mixed, n, ref = self.adversarial_batch(self.augmented(images), labels)
        self.last_batch = (mixed.detach(), n)  # what this step trained on (tests read it)
        task, adv, clean = self.split(mixed, n)
        sub, soft, _ = self.soft_pq(self.backbone.forward_features(mixed))
        pqn_loss = torch.zeros((), device=images.device)
        if "triplet" in self.pqn_loss:
            pqn_loss = pqn_loss + asymmetric_triplet_loss(sub[task], soft[task], labels, self.margin)
        if "ce" in self.pqn_loss:
            pqn_loss = pqn_loss + self.loss(self.backbone.head(soft[task].flatten(1)), labels)
        with torch.autocast(mixed.device.type, enabled=False):
            logp_adv = self.log_assignment(sub[adv])
            if self.defense.code_target:
                consistency = -logp_adv.gather(-1, ref.codes.unsqueeze(-1)).sum((1, 2)).mean()
            else:
                logp_clean = self.log_assignment(sub[clean]) if self.defense.trades else ref.logp
                consistency = (logp_clean.exp() * (logp_clean - logp_adv)).sum((1, 2)).mean()
        loss = pqn_loss + self.defense.beta * consistency
        self.check(loss, batch_idx)
        self.log_dict({"train/pqn_loss": pqn_loss, "train/consistency": consistency}, on_step=True, on_epoch=True,
                      prog_bar=self.step_value_on_progress_bar)
        return loss


class AdversarialClassifierModule(AdversarialBatches, ClassifierModule):
    """Cross-entropy training on adversarial batches made with the feature distance, with the squared feature
    distance as the consistency term (the backbone of a K-means target)."""

    def __init__(self, backbone: Backbone, defense: AdversarialTrainingConfig, **kw: object) -> None:
        super().__init__(backbone, **kw)
        self.defense, self.attack = defense, training_attack(defense, pqn=False)

    def attacked_model(self) -> RetrievalModel:
        """The l2-normalised embedding, with one zero codeword: the feature distance reads no assignment."""
        zero = torch.zeros(1, 1, self.backbone.embed_dim, device=self.device)
        return RetrievalModel(self.backbone, zero)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        mixed, n, ref = self.adversarial_batch(self.augmented(images), labels)
        self.last_batch = (mixed.detach(), n)
        task, adv, clean = self.split(mixed, n)
        embedding = self.backbone.forward_features(mixed)
        ce = self.loss(self.backbone.head(embedding[task]), labels)
        with torch.autocast(mixed.device.type, enabled=False):
            z_adv = torch.nn.functional.normalize(embedding[adv].float(), dim=1)
            z_clean = torch.nn.functional.normalize(embedding[clean].float(), dim=1) if self.defense.trades else ref.z
            consistency = (z_adv - z_clean).pow(2).sum(1).mean()
        loss = ce + self.defense.beta * consistency
        self.check(loss, batch_idx)
        self.log_dict({"train/loss": ce, "train/consistency": consistency}, on_step=True, on_epoch=True,
                      prog_bar=self.step_value_on_progress_bar)
        return loss
