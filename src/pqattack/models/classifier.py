"""LightningModule that trains a backbone with cross-entropy (the paper's pre-training step)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from ..data.labels import top1_hit
from ..errors import NumericsError
from .augment import random_crop_flip
from .backbones import Backbone


class ClassifierModule(pl.LightningModule):
    """Cross-entropy training; SGD with Nesterov momentum and a one-cycle learning rate.

    Batches arrive as uint8 images; conversion to [0, 1] and augmentation happen on the device.
    Label smoothing defaults to 0: it masks gradients and inflates attacked mAP (see the README).
    Multi-label data (multi-hot labels, e.g. NUS-WIDE) trains with binary cross-entropy per concept instead.

    Options of the fast recipes (their defaults leave training as without them):
    - ``schedule="triangle"``: the learning rate rises linearly from ``lr_start * lr`` to ``lr`` over the first
      ``warmup`` of the steps, then falls linearly to ``lr_end * lr``; momentum stays constant.
    - ``norm_lr_scale``: the learning rate of the batch-norm parameters is ``norm_lr_scale`` times ``lr``, and
      their weight decay is divided by it, so their decay per step is that of the other weights.
    - ``lookahead`` (0: off): every ``lookahead_every`` steps the weights are pulled towards a slow copy,
      ``slow <- slow + (1 - rho) (weights - slow); weights <- slow`` with
      ``rho = lookahead ** lookahead_every * (step / steps) ** 3``, and set to it at the end of every epoch.
    - ``crop_padding``, ``crop_pad_mode``: translation range of the random crop, padding with zeros or by
      reflection.
    - a backbone with ``init_from_images`` (fastnet's whitening stem) gets the training images once, at the
      start of training.
    """

    def __init__(self, backbone: Backbone, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                 nesterov: bool = True, label_smoothing: float = 0.0, schedule: str = "onecycle",
                 augment: bool = True, crop_padding: int = 4, multilabel: bool = False, crop_pad_mode: str = "zeros",
                 warmup: float = 0.25, lr_start: float = 0.2, lr_end: float = 0.0, norm_lr_scale: float = 1.0,
                 lookahead: float = 0.0, lookahead_every: int = 5) -> None:
        super().__init__()
        self.backbone = backbone
        self.save_hyperparameters(ignore=["backbone"])
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.bce = nn.BCEWithLogitsLoss()
        self.slow: dict[str, torch.Tensor] | None = None

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for class labels ``[B]``; binary cross-entropy for multi-hot labels ``[B, C]``."""
        if self.hparams.multilabel:
            return self.bce(logits.float(), labels.float())
        return self.ce(logits, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @staticmethod
    def to_float(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0).contiguous(memory_format=torch.channels_last)

    @property
    def step_value_on_progress_bar(self) -> bool:
        """Whether a per-step value goes to the progress bar. Lightning reads progress-bar values back to the host
        (``.item()``) after every step, with or without a bar; on a GPU that waits for the step to finish, so the
        next step's kernels are not queued while it runs. There the step loss goes to the logger only."""
        return self.device.type != "cuda"

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        """The batch as floats in [0, 1], randomly cropped and flipped when ``augment`` is on."""
        x = self.to_float(images)
        if self.hparams.augment:
            x = random_crop_flip(x, padding=self.hparams.crop_padding, pad_mode=self.hparams.crop_pad_mode)
        return x

    def on_train_start(self) -> None:
        """Data-dependent initialisation of a backbone trained from scratch (fastnet's whitening stem)."""
        init = getattr(self.backbone, "init_from_images", None)
        if init is not None:
            init(self.trainer.train_dataloader.images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.backbone(self.augmented(images))
        loss = self.loss(logits, labels)
        if batch_idx % 50 == 0 and not torch.isfinite(loss):  # a NaN stays NaN: checking now and then suffices
            raise NumericsError(f"training loss is {loss.item()} at step {self.global_step}: the backbone "
                                     f"diverged; lower trainer.lr or check the data")
        self.log("train/loss", loss, prog_bar=self.step_value_on_progress_bar, on_step=True, on_epoch=True)
        self.log("train/acc", top1_hit(logits, labels).float().mean(), prog_bar=True, on_epoch=True,
                 on_step=False)
        return loss

    # ------------------------------------------------------------------------------------------ lookahead
    @torch.no_grad()
    def pull_to_slow_weights(self, rho: float) -> None:
        """``slow <- slow + (1 - rho) (current - slow)``, then ``current <- slow`` (float weights and buffers)."""
        state = {k: v for k, v in self.backbone.state_dict().items() if v.is_floating_point()}
        if self.slow is None:
            self.slow = {k: v.detach().clone() for k, v in state.items()}
        for k, v in state.items():
            self.slow[k].lerp_(v, 1 - rho)
            v.copy_(self.slow[k])

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        hp = self.hparams
        if hp.lookahead > 0 and self.global_step % hp.lookahead_every == 0:
            progress = self.global_step / max(1, self.trainer.estimated_stepping_batches)
            self.pull_to_slow_weights(hp.lookahead ** hp.lookahead_every * progress ** 3)

    def on_train_epoch_end(self) -> None:
        if self.hparams.lookahead > 0:
            self.pull_to_slow_weights(1.0)

    # ------------------------------------------------------------------------------------------ optimiser
    def parameter_groups(self) -> list[dict]:
        """The trained parameters: the batch-norm ones (at ``norm_lr_scale``) and the others."""
        hp = self.hparams
        norm = [p for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for p in m.parameters(recurse=False) if p.requires_grad]
        ids = {id(p) for p in norm}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest},
                {"params": norm, "lr": hp.lr * hp.norm_lr_scale, "weight_decay": hp.weight_decay / hp.norm_lr_scale}]

    def configure_optimizers(self):  # noqa: ANN201
        hp = self.hparams
        opt = torch.optim.SGD(self.parameter_groups(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=hp.nesterov and hp.momentum > 0)
        if hp.schedule == "constant":
            return opt
        steps = int(self.trainer.estimated_stepping_batches)
        if hp.schedule == "triangle":
            peak = round(hp.warmup * steps)

            def factor(step: int) -> float:
                if step < peak:
                    return hp.lr_start + (1 - hp.lr_start) * step / peak
                return 1 + (hp.lr_end - 1) * min(1.0, (step - peak) / max(1.0, steps - peak))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        else:
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                        total_steps=max(steps, 10),  # a few steps per phase
                                                        pct_start=0.25, anneal_strategy="linear")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
