"""``vgg_scaled``: the CIFAR VGGs with scaled conv widths."""

import pytest
import torch

from prunelab import models
from prunelab.errors import PrunelabError
from prunelab.models import vgg_width  # noqa: F401  (registers vgg_scaled)
from prunelab.models.vgg_width import scaled_config


def test_width_one_is_the_registered_vgg_with_the_same_initialisation():
    torch.manual_seed(3)
    a = models.create("vgg_scaled", num_classes=10, input_shape=(3, 32, 32), depth=11)
    torch.manual_seed(3)
    b = models.create("vgg11", num_classes=10, input_shape=(3, 32, 32))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_quarter_width_keeps_the_layer_names():
    m = models.create("vgg_scaled", num_classes=10, input_shape=(3, 32, 32), depth=11, width=0.25)
    convs = {n: mod.out_channels for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d)}
    assert convs == {"features.0": 16, "features.4": 32, "features.8": 64, "features.11": 64, "features.15": 128,
                     "features.18": 128, "features.22": 128, "features.25": 128}
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert scaled_config(16, 0.125)[:3] == [8, 8, "M"]
    assert min(c for c in scaled_config(11, 0.001) if c != "M") == 1


@pytest.mark.parametrize("kw, match", [({"depth": 12}, "depth"), ({"width": 0}, "width"), ({"width": True}, "width"),
                                       ({"batch_norm": 1}, "batch_norm")])
def test_bad_options(kw, match):
    with pytest.raises(PrunelabError, match=match):
        models.create("vgg_scaled", num_classes=10, input_shape=(3, 32, 32), **kw)
