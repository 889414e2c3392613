"""The model zoo: ``create(name, num_classes, input_shape, **options)`` and the ``MODELS`` registry.

Families: fully connected ReLU nets (``mlp``, ``lenet300``, ``mlpnet``), ``lenet5``, CIFAR VGGs
(``vgg11/13/16/19``) and ResNets (``resnet20/32/56``, ``resnet18``). All are He-initialised
(:mod:`prunelab.models.init`); docs/models.md lists their structure and parameter counts.

:mod:`prunelab.models.adapters` says how any model is called and what its loss is (plain tensor
models, ``transformers`` models, or an adapter of your own): ``adapter_for(model)``.
"""

from __future__ import annotations

from prunelab.models import lenet, mlp, resnet, vgg, vgg_width  # noqa: F401  (registers the models)
from prunelab.models.adapters import (
    HFCausalLMAdapter,
    HFImageClassificationAdapter,
    HFSeq2SeqLMAdapter,
    HFSequenceClassificationAdapter,
    HFTokenClassificationAdapter,
    ModelAdapter,
    TensorAdapter,
    adapter_for,
    is_conv1d,
    is_transformers_model,
    logits_of,
)
from prunelab.models.init import build_he_initialised, he_init_
from prunelab.models.mlp import build_mlp
from prunelab.models.resnet import BasicBlock, PadShortcut, ResNet
from prunelab.models.vgg import VGG
from prunelab.models.zoo import MODELS, create

__all__ = [
    "MODELS",
    "VGG",
    "BasicBlock",
    "HFCausalLMAdapter",
    "HFImageClassificationAdapter",
    "HFSeq2SeqLMAdapter",
    "HFSequenceClassificationAdapter",
    "HFTokenClassificationAdapter",
    "ModelAdapter",
    "PadShortcut",
    "ResNet",
    "TensorAdapter",
    "adapter_for",
    "build_he_initialised",
    "build_mlp",
    "create",
    "he_init_",
    "is_conv1d",
    "is_transformers_model",
    "logits_of",
]
