"""VGG-11/13/16/19 for CIFAR-sized images (Simonyan & Zisserman 2015, Table 1, configurations A, B, D, E).

The common CIFAR adaptation (kuangliu/pytorch-cifar; the same convolutions and parameter count as the
CIFAR VGGs of SynFlow, Tanaka et al. 2020, GraSP, Wang et al. 2020, and open_lth, Frankle & Carbin
2019): the paper's convolution stack of 3x3 convs (padding 1, with bias) each followed by BatchNorm
(optional) and ReLU, the five 2x2 max-pools, then global average pooling and a single
``Linear(512, classes)`` instead of the three fully connected ImageNet layers. On 32x32 inputs the
feature map after the fifth pool is 1x1, so the average pool changes nothing; it lets larger images
(e.g. 64x64) through with the same classifier. (SynFlow/GraSP/open_lth drop the fifth max-pool and
average the 2x2 map instead: the same parameters, a different pooling op.)

Structure: ``features`` is an ``nn.Sequential`` (index names) of ``Conv2d, BatchNorm2d, ReLU`` triples
(``Conv2d, ReLU`` without BN) and ``MaxPool2d``; then ``pool`` (``AdaptiveAvgPool2d(1)``), a flatten
and ``classifier`` (one ``Linear``).
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.models.init import build_he_initialised
from prunelab.models.zoo import MODELS, require_bool, require_image

# Simonyan & Zisserman (2015), Table 1: conv widths, "M" = 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

MIN_SIZE = 32  # five 2x2 max-pools need 32 pixels to leave a 1x1 map


class VGG(nn.Module):
    """A CIFAR VGG: ``classifier(flatten(pool(features(x))))``; see the module docstring."""

    def __init__(self, config: list[int | str], in_channels: int, num_classes: int, batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(item, int)
            layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU())
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _vgg(name: str, num_classes: int, input_shape: tuple[int, ...], batch_norm: bool) -> VGG:
    channels, _, _ = require_image(name, input_shape, MIN_SIZE, "five 2x2 max-pools")
    bn = require_bool(batch_norm, f"{name} batch_norm")
    return build_he_initialised(lambda: VGG(CONFIGS[name], channels, num_classes, bn))


@MODELS.register("vgg11")
def vgg11(num_classes: int, input_shape: tuple[int, ...], *, batch_norm: bool = True) -> VGG:
    """VGG-11 (Simonyan & Zisserman 2015, configuration A), CIFAR form.

    Parameters on CIFAR-10 (3, 32, 32): 9,231,114 with BatchNorm, 9,225,610 without.
    """
    return _vgg("vgg11", num_classes, input_shape, batch_norm)


@MODELS.register("vgg13")
def vgg13(num_classes: int, input_shape: tuple[int, ...], *, batch_norm: bool = True) -> VGG:
    """VGG-13 (Simonyan & Zisserman 2015, configuration B), CIFAR form.

    Parameters on CIFAR-10 (3, 32, 32): 9,416,010 with BatchNorm, 9,410,122 without.
    """
    return _vgg("vgg13", num_classes, input_shape, batch_norm)


@MODELS.register("vgg16")
def vgg16(num_classes: int, input_shape: tuple[int, ...], *, batch_norm: bool = True) -> VGG:
    """VGG-16 (Simonyan & Zisserman 2015, configuration D), CIFAR form.

    Parameters on CIFAR-10 (3, 32, 32): 14,728,266 with BatchNorm, 14,719,818 without.
    """
    return _vgg("vgg16", num_classes, input_shape, batch_norm)


@MODELS.register("vgg19")
def vgg19(num_classes: int, input_shape: tuple[int, ...], *, batch_norm: bool = True) -> VGG:
    """VGG-19 (Simonyan & Zisserman 2015, configuration E), CIFAR form.

    Parameters on CIFAR-10 (3, 32, 32): 20,040,522 with BatchNorm, 20,029,514 without.
    """
    return _vgg("vgg19", num_classes, input_shape, batch_norm)
