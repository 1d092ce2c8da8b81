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
    """

    def __init__(self, backbone: Backbone, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                 nesterov: bool = True, label_smoothing: float = 0.0, schedule: str = "onecycle",
                 augment: bool = True, crop_padding: int = 4, multilabel: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.save_hyperparameters(ignore=["backbone"])
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.bce = nn.BCEWithLogitsLoss()

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

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        x = self.to_float(images)
        if self.hparams.augment:
            x = random_crop_flip(x, padding=self.hparams.crop_padding)
        logits = self.backbone(x)
        loss = self.loss(logits, labels)
        if batch_idx % 50 == 0 and not torch.isfinite(loss):  # a NaN stays NaN: checking now and then suffices
            raise NumericsError(f"training loss is {loss.item()} at step {self.global_step}: the backbone "
                                     f"diverged; lower trainer.lr or check the data")
        self.log("train/loss", loss, prog_bar=self.step_value_on_progress_bar, on_step=True, on_epoch=True)
        self.log("train/acc", top1_hit(logits, labels).float().mean(), prog_bar=True, on_epoch=True,
                 on_step=False)
        return loss

    def configure_optimizers(self):  # noqa: ANN201
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=hp.nesterov and hp.momentum > 0)
        if hp.schedule == "constant":
            return opt
        steps = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=max(steps, 10),  # OneCycleLR needs a few steps per phase
                                                    pct_start=0.25, anneal_strategy="linear")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
