"""Model adapters: how prunelab calls a model and what its loss is.

Every criterion, weight update and analysis that runs a model goes through one small contract,
**batch -> model call -> outputs -> logits -> loss**, held by a :class:`ModelAdapter`:

``adapter.call(model, batch, params=None)``
    run the model on one batch (``params``: tensors that replace parameters for this call, through
    ``torch.func.functional_call``; that is how criteria score masked copies of the weights);
``adapter.logits(outputs, batch)``
    the logits tensor in what the model returned (a tensor, a ``transformers`` ``ModelOutput`` or a
    dict with ``"logits"``, a tuple whose first element is the logits: see :func:`logits_of`);
``adapter.loss_from_logits(logits, batch)`` / ``adapter.loss(model, batch, params, temperature=1)``
    the scalar training loss;
``adapter.batches(data, device)``, ``batch_size``, ``select``, ``concat``, ``sample_shape``
    normalise data to a list of ``(inputs, targets)`` pairs and take them apart (per-sample Fisher
    gradients);
``adapter.dummy_input(model, input_shape, ...)`` / ``adapter.synflow_input(...)``
    data-free inputs: zeros for FLOP counting, all ones for SynFlow (for token models an all-ones
    *embedding* input, since token ids have no "all ones" that means anything).

:func:`adapter_for` picks one for a model:

* a plain ``nn.Module`` (the zoo): :class:`TensorAdapter` -- batches are ``(x, y)`` tensor pairs,
  ``model(x)``, ``loss_fn(logits, y)`` (cross-entropy by default). This is prunelab's original
  behaviour, operation for operation, so the zoo's scores do not change.
* ``transformers`` models, recognised by class name (``...ForSequenceClassification``,
  ``...ForImageClassification``, ``...ForTokenClassification``, ``...ForMaskedLM``,
  ``...ForCausalLM`` / ``...LMHeadModel``, encoder-decoder ``...ForConditionalGeneration``): batches
  are dicts (``input_ids``, ``attention_mask``, ``labels``, any other model keyword) or
  ``(inputs, targets)`` pairs whose inputs is such a dict (or the model's main input tensor:
  ``input_ids`` / ``pixel_values``). Losses are those of the model's own ``loss`` head: mean
  cross-entropy over the labelled positions (label ``-100`` and, where an ``attention_mask`` is
  given, padding are ignored); the causal LM predicts token t+1 from tokens <= t (labels default to
  ``input_ids``, shifted by one); seq2seq models (T5) take ``labels`` and build the decoder input by
  shifting them right (``model.prepare_decoder_input_ids_from_labels``).

``transformers`` stays optional: it is never imported here. Its models and its ``Conv1D`` layer are
recognised by duck typing on class names and modules (:func:`is_transformers_model`,
:func:`is_conv1d`), so prunelab imports and runs without it.

Writing an adapter for any other model: subclass :class:`ModelAdapter` and override what differs,
usually :meth:`ModelAdapter.model_inputs` (how a batch becomes the call's positional and keyword
arguments) and :meth:`ModelAdapter.loss_from_logits`; pass it as ``prunelab.prune(..., adapter=...)``.
docs/models.md has an example.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from prunelab.errors import PrunelabError

#: One batch: (inputs, targets); inputs a tensor or a dict of tensors, targets a tensor or None.
Pair = tuple[Any, Any]

IGNORE_INDEX = -100  # the label ``transformers`` (and torch's cross-entropy) ignore


# --- duck typing for transformers ---------------------------------------------------------------
def _from_transformers(cls: type, name: str) -> bool:
    return any(c.__name__ == name and c.__module__.startswith("transformers") for c in cls.__mro__)


def is_transformers_model(model: Any) -> bool:
    """Whether ``model`` is a ``transformers`` ``PreTrainedModel`` (checked without importing it)."""
    return isinstance(model, nn.Module) and _from_transformers(type(model), "PreTrainedModel")


def is_conv1d(module: Any) -> bool:
    """Whether ``module`` is ``transformers``' ``Conv1D`` (GPT-2): a Linear whose weight is stored
    transposed, ``(in_features, out_features)``, computing ``x @ W + b``."""
    return isinstance(module, nn.Module) and _from_transformers(type(module), "Conv1D")


def is_linear_like(module: Any) -> bool:
    """``nn.Linear`` or ``transformers.Conv1D`` (a Linear with a transposed weight)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear-like module (Conv1D's weight is (in, out))."""
    if is_conv1d(module):
        n_in, n_out = module.weight.shape
        return int(n_in), int(n_out)
    return int(module.in_features), int(module.out_features)


def in_repeated_block(model: nn.Module, module_name: str) -> bool:
    """Whether ``module_name`` lies inside an ``nn.ModuleList`` of ``model`` (a transformer's stack of
    blocks: ``encoder.layer.0...``, ``transformer.h.1...``, ``model.layers.0...``)."""
    parts = module_name.split(".")
    for i in range(1, len(parts)):
        try:
            parent = model.get_submodule(".".join(parts[:i]))
        except AttributeError:
            return False
        if isinstance(parent, nn.ModuleList):
            return True
    return False


@contextmanager
def differentiable_twice() -> Iterator[None]:
    """Run attention with torch's math SDPA kernel, whose backward can itself be differentiated.

    The fused CPU/CUDA kernels of ``scaled_dot_product_attention`` have no double backward, which
    GraSP's Hessian-vector product needs; models without attention are not affected.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the math kernel is chosen whenever a fused one cannot run
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


# --- outputs ---------------------------------------------------------------------------------------
def logits_of(outputs: Any) -> Tensor:
    """The logits in a model's outputs: a tensor as is, ``outputs["logits"]`` of a dict or
    ``ModelOutput``, ``outputs.logits``, or the first element of a tuple/list."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"]
    if isinstance(getattr(outputs, "logits", None), Tensor):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    keys = f" with keys {list(outputs)}" if isinstance(outputs, Mapping) else ""
    raise PrunelabError(
        f"the model returned a {type(outputs).__name__}{keys} without logits; a model must return a tensor, "
        "a dict/ModelOutput with 'logits', or a tuple whose first element is the logits (or pass adapter=)"
    )


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(i: int, n: int) -> str:
    return f"batch {i}" if n > 1 else "the batch"


# --- the contract ----------------------------------------------------------------------------------
class ModelAdapter:
    """How prunelab calls a model: batch -> (args, kwargs) -> outputs -> logits -> loss.

    A batch is an ``(inputs, targets)`` pair; ``inputs`` is a tensor (called as ``model(inputs)``) or
    a dict of tensors (called as ``model(**inputs)``), ``targets`` a tensor or None. ``loss_fn(logits,
    targets) -> scalar`` defaults to cross-entropy. Subclasses override what differs (see the module
    docstring); every method here works for any model that follows this convention.
    """

    name = "custom"

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise PrunelabError(f"loss_fn must be a function (logits, targets) -> scalar loss, got {loss_fn!r}")
        self.custom_loss = loss_fn is not None and loss_fn is not nn.functional.cross_entropy
        self.loss_fn: Callable[[Tensor, Tensor], Tensor] = loss_fn if loss_fn is not None else nn.functional.cross_entropy

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- batches ----------------------------------------------------------------------------
    def split(self, item: Any, where: str) -> Pair:
        """One raw batch -> (inputs, targets): a pair as is; a dict's ``"labels"`` become the targets."""
        if isinstance(item, Mapping):
            inputs = {k: v for k, v in item.items() if k != "labels"}
            return inputs, item.get("labels")
        if isinstance(item, (tuple, list)) and len(item) == 2:
            inputs, targets = item
            if isinstance(inputs, Mapping) and "labels" in inputs:
                if targets is not None:
                    raise PrunelabError(
                        f"data: {where} gives labels twice (inputs['labels'] and the pair's targets); give one"
                    )
                targets = inputs["labels"]
                inputs = {k: v for k, v in inputs.items() if k != "labels"}
            return (dict(inputs) if isinstance(inputs, Mapping) else inputs), targets
        raise PrunelabError(
            f"data: {where} is a {type(item).__name__}; give a dict of tensors (input_ids, attention_mask, "
            "labels, ...) or an (inputs, targets) pair"
        )

    @staticmethod
    def _is_one_batch(data: Any) -> bool:
        if isinstance(data, Mapping):
            return True
        return (
            isinstance(data, (tuple, list))
            and len(data) == 2
            and isinstance(data[0], (Tensor, Mapping))
            and (data[1] is None or isinstance(data[1], Tensor))
        )

    def batches(self, data: Any, device: torch.device | str = "cpu", *, who: str | None = None) -> list[Pair] | None:
        """``data`` (None, one batch, or an iterable of batches) -> a list of pairs on ``device``.

        Checks what needs no model: every tensor of a batch has the same batch size, no batch is
        empty, and the main input has the same per-sample shape in every batch.
        """
        if data is None:
            return None
        items: Iterable[Any] = [data] if self._is_one_batch(data) else data
        out: list[Pair] = []
        try:
            raw = list(items)
        except TypeError:
            raise PrunelabError(
                f"data must be a batch (a dict of tensors or an (inputs, targets) pair) or an iterable of "
                f"batches, got {type(data).__name__}"
            ) from None
        for i, item in enumerate(raw):
            inputs, targets = self.split(item, _where(i, len(raw)))
            out.append(self._to(self._check_structure(inputs, targets, _where(i, len(raw))), device))
        if not out or all(self.batch_size(b) == 0 for b in out):
            whose = f"data for criterion {who!r}" if who else "data"
            raise PrunelabError(f"{whose} has 0 samples: give at least one batch with at least one sample")
        first = None
        for i, b in enumerate(out):
            where = _where(i, len(out))
            if self.batch_size(b) == 0:
                raise PrunelabError(
                    f"data: {where} of {len(out)} has 0 samples; every batch needs at least one "
                    "(a mean loss over 0 samples is NaN)"
                )
            shape = self.sample_shape(b)
            if first is None:
                first = shape
            elif shape != first:
                raise PrunelabError(
                    f"data: {where} has inputs of per-sample shape {shape} but batch 0 has {first}; every batch "
                    "must have the same per-sample shape (pad all batches to one length)"
                )
        return out

    def _check_structure(self, inputs: Any, targets: Any, where: str) -> Pair:
        tensors = dict(inputs) if isinstance(inputs, Mapping) else {"inputs": inputs}
        if not tensors:
            raise PrunelabError(f"data: the inputs of {where} are an empty dict")
        for k, v in tensors.items():
            if not isinstance(v, Tensor):
                raise PrunelabError(f"data: inputs[{k!r}] of {where} is a {type(v).__name__}; give tensors")
            if v.dim() == 0:
                raise PrunelabError(f"data: inputs[{k!r}] of {where} is a 0-d tensor; the batch dimension comes first")
        if targets is not None and (not isinstance(targets, Tensor) or targets.dim() == 0):
            what = "a 0-d tensor" if isinstance(targets, Tensor) else f"a {type(targets).__name__}"
            raise PrunelabError(f"data: the targets of {where} are {what}; give a tensor with the batch dimension first")
        sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
        if targets is not None:
            sizes["targets"] = int(targets.shape[0])
        if len(set(sizes.values())) > 1:
            raise PrunelabError(
                f"data: the tensors of {where} have different batch sizes {sizes}; they must have the same length"
            )
        for k, v in tensors.items():
            if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
                raise PrunelabError(f"data: inputs[{k!r}] of {where} contain NaN or inf")
        return inputs, targets

    @staticmethod
    def _to(batch: Pair, device: torch.device | str) -> Pair:
        inputs, targets = batch
        if isinstance(inputs, Mapping):
            inputs = {k: v.to(device) for k, v in inputs.items()}
        else:
            inputs = inputs.to(device)
        return inputs, (targets.to(device) if targets is not None else None)

    def main_input(self, batch: Pair) -> Tensor:
        """The tensor that sets the batch size and the per-sample shape."""
        inputs = batch[0]
        return inputs if isinstance(inputs, Tensor) else next(iter(inputs.values()))

    def batch_size(self, batch: Pair) -> int:
        return int(self.main_input(batch).shape[0])

    def sample_shape(self, batch: Pair) -> tuple[int, ...]:
        """Per-sample shape of the main input (no batch dim): (C, H, W) for images, (T,) for tokens."""
        return tuple(int(d) for d in self.main_input(batch).shape[1:])

    def select(self, batch: Pair, index: Tensor) -> Pair:
        """The samples ``index`` (a 1-d long tensor) of ``batch``."""
        inputs, targets = batch
        index = index.to(self.main_input(batch).device)
        pick = lambda t: t.index_select(0, index)
        inputs = {k: pick(v) for k, v in inputs.items()} if isinstance(inputs, Mapping) else pick(inputs)
        return inputs, (pick(targets) if targets is not None else None)

    def concat(self, batches: Sequence[Pair]) -> Pair:
        """All ``batches`` as one (same keys and per-sample shapes, which :meth:`batches` checked)."""
        inputs0, targets0 = batches[0]
        if isinstance(inputs0, Mapping):
            keys = list(inputs0)
            if any(not isinstance(b[0], Mapping) or list(b[0]) != keys for b in batches):
                raise PrunelabError(f"data: every batch must have the same input keys as batch 0 ({keys})")
            inputs: Any = {k: torch.cat([b[0][k] for b in batches]) for k in keys}
        else:
            inputs = torch.cat([b[0] for b in batches])
        if any((b[1] is None) != (targets0 is None) for b in batches):
            raise PrunelabError("data: either every batch has targets or none has")
        targets = torch.cat([b[1] for b in batches]) if targets0 is not None else None
        return inputs, targets

    # --- calling ----------------------------------------------------------------------------
    def model_inputs(self, model: nn.Module, batch: Pair) -> tuple[tuple, dict[str, Any]]:
        """The positional and keyword arguments of the model call for ``batch``."""
        inputs = batch[0]
        return ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})

    def call(self, model: nn.Module, batch: Pair, params: Mapping[str, Tensor] | None = None) -> Any:
        """The model's outputs on ``batch``; ``params`` replace parameters for this call only."""
        args, kwargs = self.model_inputs(model, batch)
        if params is None:
            return model(*args, **kwargs)
        return functional_call(model, dict(params), args, kwargs or None)

    def logits(self, outputs: Any, batch: Pair | None = None) -> Tensor:
        return logits_of(outputs)

    def forward(self, model: nn.Module, batch: Pair, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """``logits(call(model, batch, params))``."""
        return self.logits(self.call(model, batch, params), batch)

    def loss_from_logits(self, logits: Tensor, batch: Pair) -> Tensor:
        return self.loss_fn(logits, batch[1])

    def loss(
        self, model: nn.Module, batch: Pair, params: Mapping[str, Tensor] | None = None, *, temperature: float = 1.0
    ) -> Tensor:
        """The scalar loss on ``batch``; the logits are divided by ``temperature`` first (GraSP)."""
        logits = self.forward(model, batch, params)
        return self.loss_from_logits(logits / temperature if temperature != 1.0 else logits, batch)

    def scored(self, logits: Tensor, batch: Pair) -> tuple[Tensor | None, Tensor | None, int]:
        """What a training loop tallies for one batch: ``(predicted, target, weight)``. ``predicted`` and
        ``target`` are the class predicted and the true class at every position that counts (None, None
        where the task has no class accuracy: no targets, float targets, regression); ``weight`` is the
        number of positions the mean loss averages over (the batch size here), so that a dataset's mean
        loss is the ``weight``-weighted mean of its batches' losses."""
        y = batch[1]
        n = self.batch_size(batch)
        if y is None or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            return None, None, n
        if logits.dim() == 2 and y.dim() == 1:
            return logits.argmax(dim=1), y, n
        return None, None, n

    # --- checks against the model ---------------------------------------------------------------
    def probe(self, model: nn.Module, batch: Pair) -> Tensor:
        """Logits of one forward pass on (at most) two samples, eval mode, no gradients; a failure is a
        one-line PrunelabError naming the input shapes."""
        small = self.select(batch, torch.arange(min(2, self.batch_size(batch))))
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                return self.forward(model, small)
        except PrunelabError:
            raise
        except Exception as exc:  # noqa: BLE001  (whatever the model raises on input it cannot take)
            inputs = small[0]
            shapes = (
                {k: tuple(v.shape) for k, v in inputs.items()} if isinstance(inputs, Mapping) else tuple(inputs.shape)
            )
            raise PrunelabError(f"data: the model's forward pass fails on inputs {shapes}: {_first_line(exc)}") from None
        finally:
            for m, flag in modes:
                m.training = flag

    def check(self, model: nn.Module, batches: list[Pair]) -> list[Pair]:
        """Check ``batches`` against ``model`` (one probe forward pass); return them (labels as int64)."""
        self.probe(model, batches[0])
        return batches

    # --- data-free inputs ---------------------------------------------------------------------
    def default_input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        """The per-sample input shape the model carries (``model.input_shape``), else None."""
        shape = getattr(model, "input_shape", None)
        return tuple(shape) if shape is not None else None

    def dummy_input(
        self, model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype, device: torch.device
    ) -> tuple[tuple, dict[str, Any]]:
        """(args, kwargs) of a zero input of one sample (FLOP counting)."""
        return (torch.zeros((1, *input_shape), dtype=dtype, device=device),), {}

    def synflow_input(
        self, model: nn.Module, input_shape: Sequence[int], *, dtype: torch.dtype, device: torch.device
    ) -> tuple[tuple, dict[str, Any]]:
        """(args, kwargs) of SynFlow's all-ones input of one sample (Tanaka et al. 2020)."""
        return (torch.ones((1, *input_shape), dtype=dtype, device=device),), {}


class TensorAdapter(ModelAdapter):
    """Plain models (the zoo): ``(x, y)`` tensor batches, ``model(x)``, ``loss_fn(logits, y)``.

    Exactly prunelab's behaviour before adapters (the same operations in the same order), so scores
    of the zoo models are bit-identical. Outputs that are not a tensor go through :func:`logits_of`.
    """

    name = "tensor"

    def call(self, model: nn.Module, batch: Pair, params: Mapping[str, Tensor] | None = None) -> Any:
        x = batch[0]
        return model(x) if params is None else functional_call(model, params, (x,))

    def check(self, model: nn.Module, batches: list[Pair]) -> list[Pair]:
        return batches  # prunelab.pruning.context.check_data does the tensor checks


class UnsupportedAdapter(ModelAdapter):
    """Stands for a model no built-in adapter knows: data-free use (magnitude, masks) works; running the
    model on data raises ``reason`` as a one-line PrunelabError."""

    name = "unsupported"

    def __init__(self, reason: str, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__(loss_fn)
        self.reason = reason

    def require(self) -> None:
        raise PrunelabError(self.reason)

    def batches(self, data: Any, device: torch.device | str = "cpu", *, who: str | None = None) -> list[Pair] | None:
        if data is None:
            return None
        self.require()

    def call(self, model: nn.Module, batch: Pair, params: Mapping[str, Tensor] | None = None) -> Any:
        self.require()

    def dummy_input(self, model, input_shape, *, dtype, device):
        self.require()

    def synflow_input(self, model, input_shape, *, dtype, device):
        self.require()


# --- transformers ----------------------------------------------------------------------------------
class HFAdapter(ModelAdapter):
    """Base of the ``transformers`` adapters: dict batches, keyword calls, ``use_cache=False``.

    ``main`` is the model's main input (``model.main_input_name``: ``input_ids`` or ``pixel_values``);
    a batch given as ``(tensor, targets)`` calls the model with ``{main: tensor}``. Token ids must be
    integers in ``0..vocab_size-1``; an ``attention_mask`` has the shape of ``input_ids`` and 0/1 values.
    """

    name = "transformers"
    token_level = False  # targets per position (N, T) rather than per sample (N,)

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__(loss_fn)
        self.main = str(getattr(model, "main_input_name", "input_ids") or "input_ids")
        config = getattr(model, "config", None)
        self.vocab_size = getattr(config, "vocab_size", None) if self.main == "input_ids" else None
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self._use_cache = "use_cache" in params

    def __repr__(self) -> str:
        return f"{type(self).__name__}(main={self.main!r})"

    def split(self, item: Any, where: str) -> Pair:
        inputs, targets = super().split(item, where)
        if isinstance(inputs, Tensor):
            inputs = {self.main: inputs}
        return inputs, targets

    def main_input(self, batch: Pair) -> Tensor:
        inputs = batch[0]
        return inputs[self.main] if self.main in inputs else next(iter(inputs.values()))

    def _check_structure(self, inputs: Any, targets: Any, where: str) -> Pair:
        if self.main not in inputs:
            raise PrunelabError(
                f"data: the inputs of {where} have no {self.main!r} (keys: {sorted(inputs)}); this model's main "
                f"input is {self.main!r}"
            )
        inputs, targets = super()._check_structure(inputs, targets, where)
        x = inputs[self.main]
        if self.main == "input_ids":
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or x.dim() != 2:
                raise PrunelabError(
                    f"data: input_ids of {where} have dtype {x.dtype} and shape {tuple(x.shape)}; token ids are "
                    "integers of shape (N, T)"
                )
            if x.shape[1] == 0:
                raise PrunelabError(f"data: input_ids of {where} have 0 tokens per sample")
            if x.numel():
                lo, hi = int(x.min()), int(x.max())
                if lo < 0 or (self.vocab_size is not None and hi >= self.vocab_size):
                    allowed = f"0..{self.vocab_size - 1}" if self.vocab_size is not None else ">= 0"
                    raise PrunelabError(
                        f"data: input_ids of {where} range from {lo} to {hi}; token ids must be in {allowed} "
                        f"(the model's vocab_size is {self.vocab_size})"
                    )
        mask = inputs.get("attention_mask")
        if mask is not None:
            if tuple(mask.shape) != tuple(x.shape[:2]) and tuple(mask.shape) != tuple(x.shape):
                raise PrunelabError(
                    f"data: attention_mask of {where} has shape {tuple(mask.shape)}, but {self.main} has "
                    f"{tuple(x.shape)}; they must match"
                )
            if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
                raise PrunelabError(f"data: attention_mask of {where} must hold 0 (padding) and 1 (token) only")
        return inputs, targets

    def model_inputs(self, model: nn.Module, batch: Pair) -> tuple[tuple, dict[str, Any]]:
        kwargs = dict(batch[0])
        if self._use_cache:
            kwargs.setdefault("use_cache", False)
        return (), kwargs

    # --- labels -------------------------------------------------------------------------------
    def targets(self, batch: Pair) -> Tensor | None:
        return batch[1]

    def _label_check(self, batches: list[Pair], classes: int, what: str, shape_of: Callable[[Pair], tuple]) -> list[Pair]:
        """Integer labels of shape ``shape_of(batch)`` in 0..classes-1 (``-100`` allowed where ignored)."""
        fixed: list[Pair] = []
        lo, hi = math.inf, -math.inf
        for i, b in enumerate(batches):
            where = _where(i, len(batches))
            y = self.targets(b)
            if y is None:
                raise PrunelabError(
                    f"data: {where} has no labels; {what} needs them: give {{'labels': ...}} in the batch dict or "
                    "an (inputs, labels) pair"
                )
            if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
                raise PrunelabError(
                    f"data: the labels of {where} have dtype {y.dtype}; the default cross-entropy loss needs integer "
                    f"class labels in 0..{classes - 1}: convert them (y.long()) or pass loss_fn="
                )
            want = shape_of(b)
            if tuple(y.shape) != tuple(want):
                raise PrunelabError(f"data: the labels of {where} have shape {tuple(y.shape)}; {what} needs {tuple(want)}")
            y = y.long()
            used = y[y != IGNORE_INDEX] if self.token_level else y
            if used.numel():
                b_lo, b_hi = torch.aminmax(used)
                lo, hi = min(lo, int(b_lo)), max(hi, int(b_hi))
            fixed.append((b[0], y) if b[1] is not None else b)
        if lo < 0 or hi >= classes:
            extra = f" or {IGNORE_INDEX} (ignored)" if self.token_level else ""
            raise PrunelabError(
                f"data: labels must be class indices in 0..{classes - 1}{extra} (the model has {classes} outputs), "
                f"got labels from {lo} to {hi}"
            )
        return fixed

    def _valid_positions(self, logits: Tensor, batch: Pair) -> tuple[Tensor, Tensor]:
        """(logits, targets) at the positions that count, flattened to (M, C) and (M,)."""
        raise NotImplementedError

    def loss_from_logits(self, logits: Tensor, batch: Pair) -> Tensor:
        flat, target = self._valid_positions(logits, batch)
        return self.loss_fn(flat, target)

    def scored(self, logits: Tensor, batch: Pair) -> tuple[Tensor | None, Tensor | None, int]:
        """Token-level heads: the predicted and true token at every position that counts (those the loss
        averages over, so ``weight`` is their number); see :meth:`ModelAdapter.scored`."""
        if not self.token_level:
            return super().scored(logits, batch)
        flat, target = self._valid_positions(logits, batch)
        return flat.argmax(dim=-1), target, int(target.numel())

    def _check_has_tokens(self, batches: list[Pair], what: str) -> None:
        for i, b in enumerate(batches):
            probe = torch.zeros((*self.targets_shape(b), 1))
            _, t = self._valid_positions(probe, b)
            if t.numel() == 0:
                raise PrunelabError(
                    f"data: {_where(i, len(batches))} has no position to predict ({what}: every label is -100 or "
                    "padding); the mean loss over 0 tokens is NaN"
                )

    def targets_shape(self, batch: Pair) -> tuple[int, ...]:
        return tuple(self.main_input(batch).shape[:2])

    # --- data-free inputs ---------------------------------------------------------------------
    def default_input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        """``model.input_shape`` if set, else the context length from the config (token models:
        ``max_position_embeddings`` / ``n_positions``; (T,) per sample), else None."""
        shape = super().default_input_shape(model)
        if shape is not None:
            return shape
        config = getattr(model, "config", None)
        for key in ("max_position_embeddings", "n_positions"):
            n = getattr(config, key, None)
            if isinstance(n, int) and n > 0:
                return (n,)
        return None

    def _token_shape(self, input_shape: Sequence[int]) -> int:
        if len(input_shape) != 1:
            raise PrunelabError(
                f"input_shape {tuple(input_shape)} is not a token shape: token models take (T,), the sequence length"
            )
        return int(input_shape[0])

    def dummy_input(self, model, input_shape, *, dtype, device):
        t = self._token_shape(input_shape)
        ids = torch.zeros((1, t), dtype=torch.long, device=device)
        return self.model_inputs(model, ({self.main: ids, "attention_mask": torch.ones_like(ids)}, None))

    def synflow_input(self, model, input_shape, *, dtype, device):
        """An all-ones *embedding* input ``inputs_embeds = 1`` of shape (1, T, hidden): token ids have no
        all-ones input, so SynFlow's input of ones enters right after the token embedding (position and
        type embeddings are still added by the model)."""
        t = self._token_shape(input_shape)
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        weight = getattr(emb, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise PrunelabError(
                f"SynFlow on {type(model).__name__}: the model has no token embedding (get_input_embeddings) to "
                "feed an all-ones embedding input to"
            )
        ones = torch.ones((1, t, int(weight.shape[1])), dtype=dtype, device=device)
        kwargs: dict[str, Any] = {"inputs_embeds": ones}
        if self._use_cache:
            kwargs["use_cache"] = False
        return (), kwargs


class HFSequenceClassificationAdapter(HFAdapter):
    """``...ForSequenceClassification`` (and image classification): logits (N, C), labels (N,).

    Loss as in ``transformers``: ``num_labels == 1`` regression (MSE), integer labels single-label
    cross-entropy, float labels (N, C) multi-label (BCE with logits); ``config.problem_type`` wins.
    """

    name = "sequence_classification"

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__(model, loss_fn)
        config = getattr(model, "config", None)
        self.num_labels = int(getattr(config, "num_labels", 0) or 0)
        self.problem_type = getattr(config, "problem_type", None)

    def _problem(self, y: Tensor) -> str:
        if self.problem_type is not None:
            return str(self.problem_type)
        if self.num_labels == 1:
            return "regression"
        if not (y.is_floating_point() or y.is_complex()) and y.dtype != torch.bool:
            return "single_label_classification"
        return "multi_label_classification"

    def loss_from_logits(self, logits: Tensor, batch: Pair) -> Tensor:
        y = batch[1]
        if self.custom_loss:
            return self.loss_fn(logits, y)
        problem = self._problem(y)
        if problem == "regression":
            return nn.functional.mse_loss(logits.squeeze(), y.squeeze().to(logits.dtype))
        if problem == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
        return self.loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def scored(self, logits: Tensor, batch: Pair) -> tuple[Tensor | None, Tensor | None, int]:
        """Single-label classification: (argmax, label) per sample; regression and multi-label have no
        class accuracy (None, None); the weight is the batch size."""
        y, n = batch[1], self.batch_size(batch)
        if y is None or self._problem(y) != "single_label_classification":
            return None, None, n
        return logits.reshape(-1, logits.shape[-1]).argmax(dim=-1), y.reshape(-1), n

    def check(self, model: nn.Module, batches: list[Pair]) -> list[Pair]:
        logits = self.probe(model, batches[0])
        if self.custom_loss:
            return batches
        y0 = batches[0][1]
        if y0 is not None and self._problem(y0) != "single_label_classification":
            return batches
        return self._label_check(
            batches, int(logits.shape[-1]), f"{type(model).__name__} (classification)",
            lambda b: (self.batch_size(b),),
        )

    def default_input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        if self.main != "pixel_values":
            return super().default_input_shape(model)
        shape = ModelAdapter.default_input_shape(self, model)
        if shape is not None:
            return shape
        config = getattr(model, "config", None)
        size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
        if isinstance(size, int):
            size = (size, size)
        if isinstance(channels, int) and isinstance(size, (tuple, list)) and len(size) == 2:
            return (channels, int(size[0]), int(size[1]))
        return None

    def dummy_input(self, model, input_shape, *, dtype, device):
        if self.main != "pixel_values":
            return super().dummy_input(model, input_shape, dtype=dtype, device=device)
        x = torch.zeros((1, *input_shape), dtype=dtype, device=device)
        return self.model_inputs(model, ({self.main: x}, None))

    def synflow_input(self, model, input_shape, *, dtype, device):
        if self.main != "pixel_values":
            return super().synflow_input(model, input_shape, dtype=dtype, device=device)
        x = torch.ones((1, *input_shape), dtype=dtype, device=device)  # an image of ones, as for a CNN
        return self.model_inputs(model, ({self.main: x}, None))


class HFImageClassificationAdapter(HFSequenceClassificationAdapter):
    """``...ForImageClassification`` (ViT): ``pixel_values`` (N, C, H, W), labels (N,)."""

    name = "image_classification"


class HFTokenClassificationAdapter(HFAdapter):
    """``...ForTokenClassification`` and ``...ForMaskedLM``: logits (N, T, C), labels (N, T);
    positions labelled -100 (and padding, attention_mask 0) do not count."""

    name = "token_classification"
    token_level = True

    def _valid_positions(self, logits: Tensor, batch: Pair) -> tuple[Tensor, Tensor]:
        y = batch[1]
        valid = y != IGNORE_INDEX
        mask = batch[0].get("attention_mask")
        if mask is not None:
            valid = valid & (mask != 0)
        return logits[valid], y[valid]

    def check(self, model: nn.Module, batches: list[Pair]) -> list[Pair]:
        logits = self.probe(model, batches[0])
        if not self.custom_loss:
            batches = self._label_check(batches, int(logits.shape[-1]), f"{type(model).__name__} (token labels)",
                                        self.targets_shape)
        self._check_has_tokens(batches, "token labels")
        return batches

    def _check_has_tokens(self, batches: list[Pair], what: str) -> None:
        for b in batches:
            if b[1] is None:
                raise PrunelabError(f"data: a batch has no labels; {what} needs them")
        super()._check_has_tokens(batches, what)


class HFCausalLMAdapter(HFAdapter):
    """``...ForCausalLM`` / ``...LMHeadModel`` (GPT-2, Llama): next-token loss.

    Position t's logits predict token t+1: ``logits[:, :-1]`` against ``labels[:, 1:]``, labels
    defaulting to ``input_ids``; positions whose label is -100 or whose target token is padding
    (``attention_mask[:, 1:] == 0``) are ignored; the loss is the mean over the rest (what the model's
    own loss computes for labels with padding set to -100).
    """

    name = "causal_lm"
    token_level = True

    def targets(self, batch: Pair) -> Tensor:
        return batch[1] if batch[1] is not None else batch[0]["input_ids"]

    def _valid_positions(self, logits: Tensor, batch: Pair) -> tuple[Tensor, Tensor]:
        y = self.targets(batch)[:, 1:]
        valid = y != IGNORE_INDEX
        mask = batch[0].get("attention_mask")
        if mask is not None and mask.dim() == 2:
            valid = valid & (mask[:, 1:] != 0)
        return logits[:, :-1][valid], y[valid]

    def check(self, model: nn.Module, batches: list[Pair]) -> list[Pair]:
        logits = self.probe(model, batches[0])
        if not self.custom_loss:
            batches = self._label_check(batches, int(logits.shape[-1]), f"{type(model).__name__} (next-token labels)",
                                        self.targets_shape)
        self._check_has_tokens(batches, "next-token prediction needs at least 2 tokens")
        return batches


class HFSeq2SeqLMAdapter(HFAdapter):
    """Encoder-decoder ``...ForConditionalGeneration`` (T5, BART): ``labels`` (N, T') are required; the
    decoder input is ``model.prepare_decoder_input_ids_from_labels(labels)`` (labels shifted right,
    -100 replaced by the pad token) unless the batch gives ``decoder_input_ids``; mean cross-entropy
    over labels that are not -100."""

    name = "seq2seq_lm"
    token_level = True

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__(model, loss_fn)
        self._shift = getattr(model, "prepare_decoder_input_ids_from_labels", None)
        if self._shift is None and hasattr(model, "_shift_right"):
            self._shift = lambda labels: model._shift_right(labels)

    def model_inputs(self, model: nn.Module, batch: Pair) -> tuple[tuple, dict[str, Any]]:
        args, kwargs = super().model_inputs(model, batch)
        if "decoder_input_ids" not in kwargs and "decoder_inputs_embeds" not in kwargs:
            labels = batch[1]
            if labels is None:
                raise PrunelabError(
                    f"{type(model).__name__} is an encoder-decoder model: every batch needs 'labels' (the target "
                    "tokens; the decoder input is built from them)"
                )
            if self._shift is None:
                raise PrunelabError(f"{type(model).__name__} has no way to build decoder inputs from labels: give "
                                    "'decoder_input_ids' in the batch")
            kwargs["decoder_input_ids"] = self._shift(labels=labels) if _takes_labels_kw(self._shift) else self._shift(labels)
        return args, kwargs

    def targets_shape(self, batch: Pair) -> tuple[int, ...]:
        y = batch[1]
        return tuple(y.shape) if y is not None else tuple(self.main_input(batch).shape[:2])

    def _valid_positions(self, logits: Tensor, batch: Pair) -> tuple[Tensor, Tensor]:
        y = batch[1]
        valid = y != IGNORE_INDEX
        mask = batch[0].get("decoder_attention_mask")
        if mask is not None:
            valid = valid & (mask != 0)
        return logits[valid], y[valid]

    def check(self, model: nn.Module, batches: list[Pair]) -> list[Pair]:
        for i, b in enumerate(batches):
            if b[1] is None:
                raise PrunelabError(
                    f"data: {_where(i, len(batches))} has no labels; {type(model).__name__} (encoder-decoder) needs "
                    "them: give {'labels': ...} in the batch dict or an (inputs, labels) pair"
                )
            if b[1].dim() != 2:
                raise PrunelabError(f"data: the labels of {_where(i, len(batches))} have shape {tuple(b[1].shape)}; "
                                    "an encoder-decoder model needs target tokens of shape (N, T)")
        logits = self.probe(model, batches[0])
        if not self.custom_loss:
            batches = self._label_check(batches, int(logits.shape[-1]), f"{type(model).__name__} (target tokens)",
                                        self.targets_shape)
        self._check_has_tokens(batches, "target tokens")
        return batches

    def dummy_input(self, model, input_shape, *, dtype, device):
        t = self._token_shape(input_shape)
        ids = torch.zeros((1, t), dtype=torch.long, device=device)
        inputs = {self.main: ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids.clone()}
        return self.model_inputs(model, (inputs, None))

    def synflow_input(self, model, input_shape, *, dtype, device):
        """All-ones embedding inputs for the encoder and for the decoder, (1, T, hidden) each."""
        args, kwargs = super().synflow_input(model, input_shape, dtype=dtype, device=device)
        kwargs["decoder_inputs_embeds"] = torch.ones_like(kwargs["inputs_embeds"])
        return args, kwargs

    def default_input_shape(self, model: nn.Module) -> tuple[int, ...] | None:
        return ModelAdapter.default_input_shape(self, model) or super().default_input_shape(model)


def _takes_labels_kw(fn: Callable[..., Any]) -> bool:
    try:
        return "labels" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


#: class-name suffix -> adapter class, checked in this order
_BY_SUFFIX: tuple[tuple[str, type[HFAdapter]], ...] = (
    ("ForImageClassification", HFImageClassificationAdapter),
    ("ForSequenceClassification", HFSequenceClassificationAdapter),
    ("ForTokenClassification", HFTokenClassificationAdapter),
    ("ForMaskedLM", HFTokenClassificationAdapter),
    ("ForCausalLM", HFCausalLMAdapter),
    ("LMHeadModel", HFCausalLMAdapter),
    ("ForConditionalGeneration", HFSeq2SeqLMAdapter),
)


def adapter_for(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> ModelAdapter:
    """The built-in adapter for ``model``: :class:`TensorAdapter` for plain modules, a ``transformers``
    adapter chosen by the model's class name, or an :class:`UnsupportedAdapter` that explains (when the
    model is run on data) which ``transformers`` heads are supported.

    ``loss_fn(logits, targets)`` replaces the default loss; for the token-level adapters it receives
    the logits and targets of the positions that count, flattened to (M, C) and (M,).
    """
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not is_transformers_model(model):
        return TensorAdapter(loss_fn)
    names = [c.__name__ for c in type(model).__mro__]
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    for suffix, cls in _BY_SUFFIX:
        if any(n.endswith(suffix) for n in names):
            if cls is HFCausalLMAdapter and encoder_decoder:
                continue
            if cls is HFSeq2SeqLMAdapter and not encoder_decoder:
                continue
            return cls(model, loss_fn)
    heads = ", ".join(s for s, _ in _BY_SUFFIX)
    return UnsupportedAdapter(
        f"no built-in adapter for {type(model).__name__}: prunelab knows the transformers heads ...{heads}; a model "
        "without a head has no loss: use one with a head or pass adapter= (see docs/models.md)",
        loss_fn,
    )


def check_adapter(adapter: Any) -> ModelAdapter:
    """``adapter`` if it is a :class:`ModelAdapter`, else a one-line PrunelabError."""
    if not isinstance(adapter, ModelAdapter):
        raise PrunelabError(
            f"adapter must be a prunelab.models.adapters.ModelAdapter (e.g. adapter_for(model) or a subclass), "
            f"got {type(adapter).__name__}"
        )
    return adapter
