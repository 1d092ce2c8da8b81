"""Backbones: CIFAR-size variants of torchvision's definitions; augmentation; the training module."""

import pytest
import torch

from pqattack.models import ARCHITECTURES, RetrievalModel, build_backbone
from pqattack.models.augment import random_crop_flip

EMBED = {"alexnet": 1024, "vgg11": 512, "vgg13": 512, "vgg16": 512, "resnet18": 512, "resnet34": 512,
         "resnet50": 2048, "smallcnn": 128, "fastnet": 256}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_backbone_shapes(arch: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(arch, num_classes=7).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        f = net.forward_features(x)
        logits = net(x)
    assert f.shape == (2, EMBED[arch]) and logits.shape == (2, 7)
    assert torch.isfinite(f).all()


def test_resnet_is_the_cifar_variant() -> None:
    net = build_backbone("resnet18", 10)
    assert net.body.conv1.kernel_size == (3, 3) and net.body.conv1.stride == (1, 1)
    assert isinstance(net.body.maxpool, torch.nn.Identity)


def test_vgg16_has_13_conv_layers_with_batch_norm() -> None:
    net = build_backbone("vgg16", 10)
    mods = list(net.body.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in mods) == 13
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in mods) == 13


def test_unknown_architecture_names_the_key() -> None:
    with pytest.raises(ValueError, match="model.arch"):
        build_backbone("vgg99", 10)


def test_retrieval_features_are_unit_norm_and_distribution_sums_to_one() -> None:
    net = build_backbone("smallcnn", 10, width=8).eval()
    model = RetrievalModel(net, torch.randn(4, 16, 8))
    z, logp = model(torch.rand(3, 3, 32, 32))
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert logp.shape == (3, 4, 16) and torch.allclose(logp.exp().sum(-1), torch.ones(3, 4), atol=1e-5)


def test_random_crop_flip_moves_pixels_but_keeps_content() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    y = random_crop_flip(x, padding=4, generator=g)
    assert y.shape == x.shape
    # every output pixel is an input pixel of the same image or zero padding
    for i in range(4):
        vals = set(x[i].flatten().tolist()) | {0.0}
        assert set(y[i].flatten().tolist()) <= vals
    assert not torch.equal(x, y)
    same = random_crop_flip(x, padding=0, flip=False)
    assert torch.equal(same, x)
