"""The GPU path (``pytest -m gpu``; tools/gpu-run's smoke stage runs these first): a bf16 backbone with the float32
retrieval head, training from uint8 batches kept on the GPU with augmentation there, the CUDA attack generator,
and ``precision=auto``. Skipped, with the reason, where torch sees no CUDA device."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from pqattack.attacks import AttackConfig, pgd
from pqattack.cache import ArtifactCache
from pqattack.data import SyntheticSource
from pqattack.models import ClassifierModule, RetrievalModel, build_backbone
from pqattack.models.augment import random_crop_flip

from .conftest import TINY

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU: torch.cuda.is_available() is False here")]

CUDA = torch.device("cuda")


@contextmanager
def deterministic_cudnn() -> Iterator[None]:
    """cuDNN's deterministic algorithms, no autotuning, for the duration (restored after)."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def unit_codebooks(m: int, k: int, dsub: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(m, k, dsub, generator=g), dim=-1)


def test_bf16_backbone_float32_retrieval_head() -> None:
    """Under bf16 autocast the backbone computes in bf16, and z and log p^ (eq. 7) come out float32, equal to a
    float32 head applied to the same bf16 features (a head computed in bf16 is off by about 1e-3)."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", 10).to(CUDA).to(memory_format=torch.channels_last).eval()
    codebooks = unit_codebooks(4, 16, 128).to(CUDA)
    model = RetrievalModel(backbone, codebooks).eval()
    x = torch.rand(64, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    with deterministic_cudnn(), torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        z, logp = model(x)
        features = backbone.forward_features(x)
    assert features.dtype == torch.bfloat16
    assert z.dtype == torch.float32 and logp.dtype == torch.float32
    ref_z = F.normalize(features.float(), dim=1)
    ref_logp = torch.log_softmax(torch.einsum("bmd,mkd->bmk", ref_z.view(64, 4, -1), codebooks), dim=-1)
    torch.testing.assert_close(z, ref_z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)


def test_augmentation_on_the_gpu_crops_and_flips() -> None:
    x = torch.rand(32, 3, 32, 32, device=CUDA)
    out = random_crop_flip(x, padding=4, generator=torch.Generator(device=CUDA).manual_seed(0))
    assert out.device.type == "cuda" and out.is_contiguous(memory_format=torch.channels_last)
    padded = F.pad(x, (4, 4, 4, 4))
    offsets, flipped = set(), 0
    for i in range(len(x)):
        crops = padded[i].unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(81, 3, 32, 32)
        plain = (crops == out[i]).flatten(1).all(1)
        mirrored = (crops.flip(-1) == out[i]).flatten(1).all(1)
        assert plain.any() or mirrored.any(), f"image {i} is not a (mirrored) crop of its padded input"
        offsets.add(int((plain | mirrored).nonzero()[0]))
        flipped += int(bool(mirrored.any()) and not bool(plain.any()))
    assert len(offsets) > 10 and 0 < flipped < len(x)


def test_training_takes_uint8_batches_on_the_gpu(tmp_path: Path) -> None:
    """training.fit on CUDA: every batch arrives as uint8 already on the GPU (no host copy per step), the augmented
    float batch stays there, and the model learns."""
    from pqattack.runtime import Runtime
    from pqattack.training import fit

    data = SyntheticSource(num_train=2048, num_test=300, num_queries=50, num_database=200).load(
        ArtifactCache(tmp_path, enabled=False))
    seen: list[tuple[str, torch.dtype, str]] = []

    class Recording(ClassifierModule):
        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            seen.append((batch[0].device.type, batch[0].dtype, batch[1].device.type))
            return super().training_step(batch, batch_idx)

    net = build_backbone("smallcnn", 10, width=16).to(memory_format=torch.channels_last)
    module = Recording(net, lr=0.05)
    rt = Runtime(CUDA, "bf16", ArtifactCache(tmp_path, enabled=False), progress=False)
    stats = fit(module, data, 128, 3, 0, rt, [])
    assert len(seen) == 3 * (2048 // 128)
    assert set(seen) == {("cuda", torch.uint8, "cuda")}
    assert len(stats["epoch_seconds"]) == 3
    assert stats["train_metrics"]["train/acc"] > 0.3  # 10 classes: chance is 0.1


def test_fastnet_whitens_its_stem_and_trains_on_the_gpu(tmp_path: Path) -> None:
    """fastnet on CUDA: the whitening stem, computed when training starts (the module already on the GPU), equals
    the CPU's from the same images, and the first epoch learns."""
    from pqattack.runtime import Runtime
    from pqattack.training import fit

    data = SyntheticSource(num_train=2048, num_test=300, num_queries=50, num_database=200).load(
        ArtifactCache(tmp_path, enabled=False))
    cpu_net = build_backbone("fastnet", 10)
    cpu_net.init_from_images(data.train.images)
    stems: list[torch.Tensor] = []

    class Recording(ClassifierModule):
        def on_train_start(self) -> None:
            super().on_train_start()
            stems.append(self.backbone.stem.weight.detach().float().cpu().clone())

    net = build_backbone("fastnet", 10).to(memory_format=torch.channels_last)
    rt = Runtime(CUDA, "bf16", ArtifactCache(tmp_path, enabled=False), progress=False)
    stats = fit(Recording(net, lr=0.05), data, 128, 1, 0, rt, [])
    assert len(stems) == 1 and torch.allclose(stems[0], cpu_net.stem.weight.float(), rtol=1e-5, atol=1e-6)
    assert stats["train_metrics"]["train/acc"] > 0.3  # 10 classes: chance is 0.1


def test_cuda_attack_generator_is_deterministic() -> None:
    """The attack's random start comes from a CUDA generator seeded with ``seed``: the same seed gives the same
    adversarial images (with cuDNN's deterministic algorithms), another seed other images."""
    torch.manual_seed(0)
    backbone = build_backbone("smallcnn", 10, width=16).to(CUDA).to(memory_format=torch.channels_last).eval()
    model = RetrievalModel(backbone, unit_codebooks(4, 16, 16).to(CUDA)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    images = torch.randint(0, 256, (128, 3, 32, 32), device=CUDA).float().div(255)

    def attack(seed: int) -> torch.Tensor:
        generator = torch.Generator(device=CUDA).manual_seed(seed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return pgd(model, images, "aod", AttackConfig(name="aod", loss="aod"), generator=generator)

    with deterministic_cudnn():
        first, again, other = attack(0), attack(0), attack(1)
    assert first.device.type == "cuda"
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first - images).abs().max() <= 8 / 255 + 1e-6


def test_precision_auto_is_bf16_on_the_gpu(tmp_path: Path) -> None:
    """``precision=auto`` resolves to bf16 on a GPU, and a job run with it records bf16 and the GPU."""
    from hydra import compose, initialize_config_dir

    from pqattack import pipeline
    from pqattack.config import CONF_DIR
    from pqattack.runtime import resolve_precision

    assert resolve_precision("auto", CUDA) == "bf16"
    overrides = [o for o in TINY if not o.startswith("device=")] + [
        "device=cuda", "precision=auto", "attack=apd", "trainer.max_epochs=1", "cache.enabled=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    import json

    res = json.loads(pipeline.run(cfg, tmp_path / "run").read_text())
    assert res["meta"]["precision"] == "bf16"
    assert res["meta"]["device"] == torch.cuda.get_device_name(CUDA)
    assert {r["attack"] for r in res["rows"]} == {"clean", "apd"}
