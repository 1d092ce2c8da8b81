"""CIFAR-size backbones built on torchvision's definitions.

Every backbone maps images in [0, 1] (``[B, 3, H, W]``) to an embedding (``forward_features``) and
the embedding to class logits (``head``). Input normalisation is part of the model, so attacks work
in pixel space. The retrieval feature is the l2-normalised embedding (see ``RetrievalModel``).

How each differs from torchvision's ImageNet model:
- resnet18/34/50: first conv 3x3 stride 1 (not 7x7 stride 2), no max-pool; the rest is torchvision's.
  Embedding: the 512-d (2048-d for resnet50) global average pool.
- vgg11/13/16: torchvision's ``make_layers`` with batch norm (the ``_bn`` variants); at 32x32 the five
  max-pools leave 1x1x512, so the 7x7 adaptive pool and the 4096-wide classifier are replaced by a
  single linear layer. Embedding: the 512-d flattened conv output.
- alexnet: torchvision's five conv layers (64-192-384-256-256) with the 11x11/4 first conv replaced by
  3x3/1, the 5x5 second conv kept, 3x3/2 max-pools replaced by 2x2/2 and the 6x6 adaptive pool by 2x2;
  the classifier keeps its dropout-FC-ReLU x2 shape at width ``hidden`` (default 1024, not 4096).
  Embedding: the second hidden layer (after ReLU).
- smallcnn: not from the paper; four conv layers for the demo and the tests.
- fastnet: not from the paper; a small network co-designed with a fast training recipe after airbench
  (``models/fastnet.py``). Embedding: the 256-d (``widths[-1]``) pooled output of its last block.
"""

from __future__ import annotations

import torch
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.values = (tuple(mean), tuple(std))  # what a CPU copy is made from, wherever the buffers are
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Backbone(nn.Module):
    """``images [0,1] -> normalize -> body -> embedding [B, D] -> head -> logits``."""

    def __init__(self, body: nn.Module, embed_dim: int, num_classes: int,
                 mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.embed_dim = embed_dim
        self.head = nn.Linear(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _resnet(name: str) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()  # torchvision's forward flattens the average pool before fc
    return net, dim


VGG_CFGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D"}


def _vgg(name: str, batch_norm: bool) -> tuple[nn.Module, int]:
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs[VGG_CFGS[name]], batch_norm=batch_norm)
    return nn.Sequential(features, nn.Flatten()), 512


def _alexnet(hidden: int, dropout: float) -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.AlexNet(num_classes=10, dropout=dropout)
    f = net.features  # conv, relu, pool, conv, relu, pool, conv, relu, conv, relu, conv, relu, pool
    f[0] = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1)
    for i in (2, 5, 12):
        f[i] = nn.MaxPool2d(kernel_size=2, stride=2)
    net.avgpool = nn.AdaptiveAvgPool2d(2)
    c = net.classifier  # dropout, linear, relu, dropout, linear, relu, linear
    c[1] = nn.Linear(256 * 2 * 2, hidden)
    c[4] = nn.Linear(hidden, hidden)
    net.classifier = nn.Sequential(*list(c.children())[:-1])  # the head is Backbone.head
    return net, hidden


def _smallcnn(width: int) -> tuple[nn.Module, int]:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    body = nn.Sequential(*block(3, w), nn.MaxPool2d(2), *block(w, 2 * w), nn.MaxPool2d(2),
                         *block(2 * w, 4 * w), nn.MaxPool2d(2), *block(4 * w, 4 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, 4 * w


DEFAULT_BACKBONE_BUILDER = "pqattack.models.build_backbone"  # the `_target_` of every conf/model option
ARCHITECTURES = ("alexnet", "vgg11", "vgg13", "vgg16", "resnet18", "resnet34", "resnet50", "smallcnn", "fastnet")


RESNET_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def embedding_dim(arch: str, hidden: int = 1024, width: int = 32, widths: tuple[int, ...] = (64, 256, 256)) -> int:
    """The size of ``build_backbone(arch, ...)``'s embedding, without building it (the config checks use it)."""
    if arch == "fastnet":
        return int(widths[-1])
    if arch in RESNET_DIMS:
        return RESNET_DIMS[arch]
    if arch in VGG_CFGS:
        return 512
    if arch == "alexnet":
        return int(hidden)
    if arch == "smallcnn":
        return 4 * int(width)
    raise ValueError(f"model.arch={arch!r} is not one of {', '.join(ARCHITECTURES)}")


def build_backbone(arch: str, num_classes: int, batch_norm: bool = True, hidden: int = 1024,
                   dropout: float = 0.5, width: int = 32, widths: tuple[int, ...] = (64, 256, 256),
                   neck: str | None = None) -> Backbone:
    """Instantiate a CIFAR-size backbone by name (one of ``ARCHITECTURES``); ``neck`` (fastnet only): ``bn``, a
    batch norm between the pooled output and the head, whose output is the embedding, or ``centre``, its centring."""
    if neck is not None and arch != "fastnet":
        raise ValueError(f"model.neck={neck!r}: only model.arch=fastnet has a neck option")
    if arch == "fastnet":
        from .fastnet import FastNet

        return FastNet(num_classes, tuple(widths), neck=neck)
    if arch.startswith("resnet"):
        body, dim = _resnet(arch)
    elif arch in VGG_CFGS:
        body, dim = _vgg(arch, batch_norm)
    elif arch == "alexnet":
        body, dim = _alexnet(hidden, dropout)
    elif arch == "smallcnn":
        body, dim = _smallcnn(width)
    else:
        raise ValueError(f"model.arch={arch!r} is not one of {', '.join(ARCHITECTURES)}")
    return Backbone(body, dim, num_classes)
