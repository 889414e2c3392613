"""The training recipe as one validated, hashable pydantic model.

Every field has a default, so ``TrainConfig()`` is a valid (SGD, momentum 0.9, constant lr 0.1, 10
epochs) recipe. Bad values (to the constructor, :meth:`TrainConfig.build`, which
:func:`prunelab.train.fit` uses for dicts, or an assignment) raise a one-line :class:`PrunelabError`
naming each bad field and its value. Float fields must be finite (``lr=inf`` is an error).
``TrainConfig.model_validate`` keeps pydantic's ``ValidationError`` (so a config nesting a
``TrainConfig`` reports all its errors at once, with their full paths).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prunelab.errors import validation_error
from prunelab.utils import DEVICES

DEFAULT_EPOCHS = 10
_MISSING = object()


class _OneLineErrors(type(BaseModel)):  # type: ignore[misc]  # pydantic's model metaclass
    """``Model(...)`` raises a one-line :class:`PrunelabError` instead of pydantic's ValidationError.

    Done in the metaclass' ``__call__``, not by overriding ``__init__``: pydantic validates a model
    with its own ``__init__`` through that ``__init__`` (also inside a config that nests it), which
    would turn nested errors into one opaque "Value error" and report only the first.
    ``model_validate`` and nested validation keep pydantic's errors.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise validation_error(exc, "training config", cls) from None


class TrainConfig(BaseModel, metaclass=_OneLineErrors):
    """How to train: optimiser, learning-rate schedule, length, regularisation, seed and device.

    - ``optimizer``: ``sgd`` (``torch.optim.SGD`` with ``momentum``, ``nesterov``) or ``adam``
      (``torch.optim.Adam`` with ``betas=(momentum, 0.999)``: ``momentum`` is Adam's beta1).
      ``weight_decay`` is the coupled L2 penalty of both torch optimisers.
    - ``epochs`` or ``iterations`` (optimizer steps): give one; without either, ``epochs=10``.
    - ``lr_schedule``: ``constant``; ``step`` (multiply by ``gamma`` at each of ``milestones``, given in
      epochs); ``cosine`` (Loshchilov & Hutter, 2017, SGDR, Eq. 5 without restarts, annealed per step to
      0 at the end of training). ``warmup_epochs`` adds a linear warm-up (Goyal et al., 2017, Sec. 2.2)
      that multiplies the schedule: ``min(1, (t+1)/W)`` for step ``t`` and ``W`` warm-up steps.
    - ``augment``: the CIFAR random crop (padding 4) + horizontal flip, on image tensors.
    - ``l1``: strength of an L1 penalty ``l1 * sum |W|`` over all ``nn.Linear`` weights (Serra, Kumar &
      Ramalingam, 2020, "Lossless compression of deep neural networks", CPAIOR: L1 regularisation
      to make ReLUs stable before exact compression).
    - ``label_smoothing``: of the training cross-entropy (Szegedy et al., 2016, Sec. 7); evaluation
      loss is always the plain cross-entropy.
    - ``jumpstart``: strength of the jumpstart penalty on dead/linear units and unseparated points
      (Riera, Rey, Serra, Puertas & Pujol, CPAIOR 2022), see :mod:`prunelab.train.jumpstart`.
    - ``eval_every``: evaluate every that many epochs (0: only at the end; the end always is).
    - ``deterministic``: call ``torch.use_deterministic_algorithms(True, warn_only=True)`` during
      ``fit`` (needed for bitwise-reproducible CUDA runs; CPU runs are reproducible without it).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (momentum, nesterov) or adam")
    lr: float = Field(0.1, description="learning rate (> 0, finite)")
    momentum: float = Field(0.9, description="SGD momentum; Adam beta1")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD only)")
    weight_decay: float = Field(0.0, description="L2 penalty of the optimiser")
    epochs: int | None = Field(DEFAULT_EPOCHS, description="passes over the training set (or give iterations)")
    iterations: int | None = Field(None, description="optimizer steps, instead of epochs")
    batch_size: int = Field(128, description="training batch size")
    lr_schedule: Literal["constant", "step", "cosine"] = Field("constant", description="learning-rate schedule")
    milestones: list[int] = Field(default_factory=list, description="epochs where the step schedule multiplies lr by gamma")
    gamma: float = Field(0.1, description="step-schedule factor")
    warmup_epochs: float = Field(0.0, description="linear learning-rate warm-up, in epochs")
    augment: bool = Field(False, description="CIFAR random crop (pad 4) + horizontal flip")
    l1: float = Field(0.0, description="L1 penalty on Linear weights (exact compression recipe)")
    label_smoothing: float = Field(0.0, description="label smoothing of the training loss")
    jumpstart: float = Field(0.0, ge=0.0, description="jumpstart regularisation strength lambda "
                             "(Riera et al. 2022; 0 = off)")
    jumpstart_aggregate: Literal["norm", "mean"] = Field("norm", description="jumpstart penalty: L2 norm or mean of the slacks")
    jumpstart_sites: Literal["layer_outputs", "relu_inputs"] = Field(
        "layer_outputs", description="jumpstart constrains every Linear/Conv output incl. the logits, before "
        "BatchNorm (the authors'), or the ReLU inputs")
    seed: int = Field(0, description="seed of the batch order and augmentation")
    device: str = Field("auto", description="auto, cpu or cuda")
    eval_every: int = Field(1, description="evaluate every N epochs (0: only at the end)")
    deterministic: bool = Field(False, description="deterministic algorithms (for bitwise-reproducible CUDA)")

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic has already stored the value when a model validator (``_consistent``) rejects it:
        # put the old one back, so a failed assignment leaves the config as it was.
        old, fields_set = self.__dict__.get(name, _MISSING), set(self.__pydantic_fields_set__)
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            if old is not _MISSING:
                self.__dict__[name] = old
            object.__setattr__(self, "__pydantic_fields_set__", fields_set)
            raise validation_error(exc, "training config", type(self)) from None

    @model_validator(mode="before")
    @classmethod
    def _iterations_replace_default_epochs(cls, data: Any) -> Any:
        # ``iterations=...`` alone means "no epochs", not "both".
        if isinstance(data, dict) and data.get("iterations") is not None and "epochs" not in data:
            data = {**data, "epochs": None}
        return data

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("lr must be a positive number")
        return v

    @field_validator("momentum")
    @classmethod
    def _momentum_range(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("momentum must be in [0, 1)")
        return v

    @field_validator("weight_decay", "l1", "warmup_epochs")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("gamma")
    @classmethod
    def _gamma_positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("gamma must be > 0")
        return v

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing_range(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("label_smoothing must be in [0, 1)")
        return v

    @field_validator("epochs", "iterations", "batch_size")
    @classmethod
    def _positive_int(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError("must be a positive integer")
        return v

    @field_validator("seed", "eval_every")
    @classmethod
    def _non_negative_int(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be a non-negative integer")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones_increasing(cls, v: list[int]) -> list[int]:
        if any(m <= 0 for m in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("milestones must be positive epochs in strictly increasing order")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        base, _, index = v.partition(":")
        if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError(
                f"give exactly one of epochs or iterations, got epochs={self.epochs}, "
                f"iterations={self.iterations}"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov=True needs optimizer='sgd' and momentum > 0")
        if self.lr_schedule == "step" and not self.milestones:
            raise ValueError("lr_schedule='step' needs milestones (epochs at which lr *= gamma)")
        if self.lr_schedule != "step" and self.milestones:
            raise ValueError(f"milestones are only used by lr_schedule='step', not {self.lr_schedule!r}")
        if self.epochs is not None:
            late = [m for m in self.milestones if m >= self.epochs]
            if late:
                raise ValueError(f"milestones {late} are not inside training (epochs={self.epochs})")
            if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
                raise ValueError(
                    f"warmup_epochs={self.warmup_epochs} must be shorter than training (epochs={self.epochs})"
                )
        return self

    @classmethod
    def build(cls, **kwargs: Any) -> TrainConfig:
        """``TrainConfig(**kwargs)``: bad values raise a one-line :class:`PrunelabError`."""
        return cls(**kwargs)
