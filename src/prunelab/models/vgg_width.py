"""``vgg_scaled``: the CIFAR VGGs of :mod:`prunelab.models.vgg` with every convolution's width scaled.

Reduced CPU settings of the reproductions train narrow VGGs (Bartoldson et al. 2020's VGG11-BN at a
quarter width, You et al. 2020's VGG-16-BN at an eighth): conv ``i`` gets
``max(1, round(width * c_i))`` channels, where ``c_i`` is the configuration's width (Simonyan &
Zisserman 2015, Table 1); ``width=1`` is the registered ``vgg<depth>`` itself (same modules, same
parameter names, same initialisation draws). Module layout, pooling and classifier are those of
:class:`prunelab.models.vgg.VGG`, so layer names (``features.15``, ...) match the full-width model.

Registered on import of :mod:`prunelab.models` (``from prunelab.models import vgg_width``).
"""

from __future__ import annotations

import numbers

from prunelab.errors import PrunelabError
from prunelab.models.init import build_he_initialised
from prunelab.models.vgg import CONFIGS, MIN_SIZE, VGG
from prunelab.models.zoo import MODELS, require_bool, require_image

DEPTHS = (11, 13, 16, 19)


def scaled_config(depth: int, width: float) -> list[int | str]:
    """The VGG-``depth`` configuration with conv widths ``max(1, round(width * c))`` ("M" = max-pool)."""
    if isinstance(depth, bool) or depth not in DEPTHS:
        raise PrunelabError(f"vgg_scaled depth must be one of {', '.join(map(str, DEPTHS))}, got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, numbers.Real) or not 0 < width <= 16:
        raise PrunelabError(f"vgg_scaled width must be a number in (0, 16] (a multiplier of the widths), got {width!r}")
    return [c if c == "M" else max(1, round(float(width) * int(c))) for c in CONFIGS[f"vgg{depth}"]]


@MODELS.register("vgg_scaled")
def vgg_scaled(num_classes: int, input_shape: tuple[int, ...], *, depth: int = 11, width: float = 1.0,
               batch_norm: bool = True) -> VGG:
    """VGG-``depth`` (11, 13, 16 or 19; Simonyan & Zisserman 2015) with conv widths multiplied by ``width``.

    Parameters: those of ``vgg<depth>`` at ``width=1`` (VGG-11-BN on CIFAR-10: 9,231,114), about
    ``width**2`` times as many otherwise (VGG-11-BN at 0.25: 579,786; VGG-16-BN at 0.125: 232,274).
    """
    name = f"vgg_scaled(depth={depth}, width={width})"
    channels, _, _ = require_image(name, input_shape, MIN_SIZE, "five 2x2 max-pools")
    bn = require_bool(batch_norm, f"{name} batch_norm")
    config = scaled_config(depth, width)
    return build_he_initialised(lambda: VGG(config, channels, num_classes, bn))
