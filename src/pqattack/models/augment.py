"""Batched training augmentation on the tensor's own device: random crop from a padded copy + flip."""

from __future__ import annotations

import torch

PAD_MODES = ("zeros", "reflect")


def random_crop_flip(images: torch.Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None, pad_mode: str = "zeros") -> torch.Tensor:
    """Crop every image of ``[B, C, H, W]`` at a random offset from its ``padding``-padded copy (padded with
    zeros, or by reflection with ``pad_mode="reflect"``), and mirror half of them. One gather for the whole
    batch, no per-image Python loop."""
    b, _, h, w = images.shape
    dev = images.device
    if padding > 0:
        if pad_mode not in PAD_MODES:
            raise ValueError(f"trainer.crop_pad_mode={pad_mode!r}: expected one of {', '.join(PAD_MODES)}")
        padded = torch.nn.functional.pad(images, (padding,) * 4, mode="constant" if pad_mode == "zeros" else pad_mode)
        oy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # [B, H, 1]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # [B, 1, W]
        if flip:
            mirror = torch.rand(b, device=dev, generator=generator) < 0.5
            cols = torch.where(mirror[:, None, None], cols.flip(-1), cols)
        batch = torch.arange(b, device=dev)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # [B, H, W, C]
        return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    if flip:
        mirror = torch.rand(b, device=dev, generator=generator) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
    return images
