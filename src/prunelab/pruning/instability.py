"""Pruning during training and its instability (Bartoldson, Morcos, Barbu & Erlebacher, "The
Generalization-Stability Tradeoff in Neural Network Pruning", NeurIPS 2020).

* :class:`PruningEvents` is the instability callback: whenever a subclass prunes (at the end of an
  epoch), it evaluates the test accuracy right before and right after, with no training in
  between, and records instability_t = (acc_before - acc_after) / acc_before (Sec. 3; the paper's
  stability is 1 - instability). The epoch's history row gets ``pre_prune_acc``,
  ``post_prune_acc`` and ``instability``.
* :class:`IterativeStructuredPruning` removes filters/neurons for good on the paper's schedule
  (:class:`LayerSchedule`: per layer a start epoch, end epoch, period and final fraction; the
  number of kept units falls linearly over the events, see
  :func:`prunelab.pruning.structured.kept_units`). Scores come from the ``STRUCTURED`` registry and
  targets are ``smallest`` (Prune_S), ``largest`` (Prune_L) or ``random`` (Prune_R).
* :class:`TemporaryPruning` (zeroing or Gaussian noise for N batches, then released) and
  :class:`ZeroRestorePruning` (zeroed for N batches, then weights and BatchNorm state restored)
  target the same units without removing them (Sec. 4, "pruning as noise"; Appendix D).
* An event that would remove no unit (the linear ramp of :func:`~prunelab.pruning.structured.kept_units`
  can keep a layer's count for an epoch) is skipped: no accuracies, no instability, no history
  entry, as in the authors' code (``_prune_layer`` acts only ``if k > 0``, and their analysis,
  ``figures_and_tables/utils.py``, averages stability over epochs with ``avg_pruned_magnitude > 0``).
* Criterion ``activations`` (their code's running L1 norm of each unit's ReLU input,
  :class:`prunelab.pruning.structured.ActivationL1`) is gathered by the schedule itself during
  training and passed to the score function.
* :func:`hessian_top_eigen_sum` / :class:`HessianEigenSum`: the sum of the top-100 Hessian eigenvalues
  the authors log at the end of training (``experiments.py``: ``compute_hessian_eigenthings(model,
  small_loader, criterion, 100, max_samples=512)`` at epoch 314; summed as
  ``hessian_first_100_eigen_sum`` in ``figures_and_tables/Figure_6.py``), computed with
  :func:`prunelab.analysis.flatness.hessian_eigenvalues`.
* The summaries of a run's history (mean stability, best accuracy after the last event) and the
  stability/accuracy correlations across runs are analyses: :mod:`prunelab.analysis.stability`.
* Resumable training (``fit(..., checkpoint=...)``): every callback here returns what carries over
  an epoch boundary from ``state_dict`` (events, units targeted so far, the random generator of
  ``random`` targets and Gaussian noise, running activation statistics, a pending perturbation or
  restore, Hessian values), so a stopped and resumed run ends bitwise identical to an uninterrupted one.

Epoch convention: a schedule epoch ``e`` is the 0-based index of a training epoch; pruning happens at
the end of that epoch (after ``e + 1`` epochs of training), as in the authors' code. Event records
and history rows use the 1-based ``epoch`` of :func:`prunelab.train.fit`'s history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.analysis.evaluate import evaluate
from prunelab.analysis.flatness import DEFAULT_SAMPLES, fixed_subset, hessian_eigenvalues
from prunelab.analysis.stability import instability
from prunelab.callbacks import Callback, TrainState
from prunelab.errors import PrunelabError
from prunelab.masks import Masks
from prunelab.pruning.context import ScoreContext
from prunelab.pruning.enforce import MaskEnforcer
from prunelab.pruning.structured import (
    STRUCTURED,
    TARGETS,
    ActivationL1,
    ChannelGroup,
    ResidualGates,
    channel_groups,
    expand_unit_masks,
    kept_units,
    select_units,
)

_ORDERED = "__ordered__"


def _keep_order(obj: Any) -> Any:
    """``obj`` with every dict turned into ``{"__ordered__": [[key, value], ...]}``: a training
    checkpoint writes its JSON with sorted keys, which would reorder the columns of event records."""
    if isinstance(obj, dict):
        return {_ORDERED: [[k, _keep_order(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return tuple(_keep_order(v) for v in obj)
    if isinstance(obj, list):
        return [_keep_order(v) for v in obj]
    return obj


def _restore_order(obj: Any) -> Any:
    """The inverse of :func:`_keep_order`."""
    if isinstance(obj, dict):
        if set(obj) == {_ORDERED}:
            return {k: _restore_order(v) for k, v in obj[_ORDERED]}
        return {k: _restore_order(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_restore_order(v) for v in obj)
    if isinstance(obj, list):
        return [_restore_order(v) for v in obj]
    return obj


def _need(state: Mapping[str, Any], keys: Sequence[str], who: str) -> None:
    """PrunelabError unless the checkpointed callback state has ``keys`` (an older checkpoint may not)."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise PrunelabError(
            f"the training checkpoint holds no {', '.join(missing)} of {who} (written by a prunelab whose "
            "callback kept no state?); delete the checkpoint to start the training over"
        )


@dataclass(frozen=True)
class LayerSchedule:
    """When and how much to prune one layer (module name ``layer``).

    Events at the end of 0-based epochs ``start, start + period, ...`` up to ``end`` inclusive (the
    authors' ``range(start, end + 1, period)``); after the last one, ``fraction`` of the layer's
    units are gone.
    """

    layer: str
    fraction: float
    start: int
    end: int
    period: int

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise PrunelabError(f"layer must be a module name, got {self.layer!r}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 <= self.fraction < 1:
            raise PrunelabError(f"layer {self.layer!r}: fraction must be in [0, 1), got {self.fraction!r}")
        for what in ("start", "end", "period"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if what == "period" else 0):
                raise PrunelabError(f"layer {self.layer!r}: {what} must be an integer >= "
                                    f"{1 if what == 'period' else 0}, got {v!r}")
        if self.end < self.start:
            raise PrunelabError(f"layer {self.layer!r}: end {self.end} is before start {self.start}")

    def epochs(self) -> list[int]:
        return list(range(self.start, self.end + 1, self.period))


class PruningEvents(Callback):
    """Base class: at the end of an epoch where :meth:`due` holds, measure accuracy, :meth:`act`, measure.

    ``events`` collects one dict per event (``epoch``, ``iteration``, ``acc_before``,
    ``acc_after``, ``instability`` and what :meth:`act` returns). Accuracies are on
    ``state.data.x_test, y_test`` (the paper's choice) unless ``split="val"``.
    """

    def __init__(self, split: str = "test", eval_batch_size: int = 1024) -> None:
        if split not in ("test", "val"):
            raise PrunelabError(f"split must be 'test' or 'val', got {split!r}")
        self.split, self.eval_batch_size = split, eval_batch_size
        self.events: list[dict[str, Any]] = []

    def due(self, state: TrainState) -> bool:
        raise NotImplementedError

    def act(self, state: TrainState) -> dict[str, Any]:
        raise NotImplementedError

    def accuracy(self, state: TrainState) -> float:
        x, y = getattr(state.data, f"x_{self.split}", None), getattr(state.data, f"y_{self.split}", None)
        if x is None or y is None:
            raise PrunelabError(f"instability is measured on the {self.split} split, which the data lacks")
        return evaluate(state.model, x, y, batch_size=self.eval_batch_size).accuracy

    def on_epoch_end(self, state: TrainState) -> None:
        if not self.due(state):
            return
        before = self.accuracy(state)
        info = self.act(state)
        after = self.accuracy(state)
        value = instability(before, after)
        self.events.append({"epoch": state.epoch + 1, "iteration": state.iteration, "acc_before": before,
                            "acc_after": after, "instability": value, **info})
        state.metrics.update(pre_prune_acc=before, post_prune_acc=after, instability=value)

    def state_dict(self) -> dict[str, Any]:
        """The events so far (subclasses add what they carry across epochs)."""
        return {"events": _keep_order(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _need(state, ["events"], type(self).__name__)
        self.events = list(_restore_order(state["events"]))


class _StructuredSchedule(PruningEvents):
    """Shared part of the schedule callbacks: which units each event targets.

    ``removed[layer]`` (bool per unit) accumulates the targeted units; each event of a layer targets
    ``units - kept_units(...) - removed`` more of the units not yet targeted, chosen by ``criterion``
    scores and ``target``. Layers due in the same epoch are scored before any of them changes. An
    epoch where no scheduled layer would lose a unit is not an event. With criterion
    ``activations`` an :class:`ActivationL1` (``activation_every``, ``activation_momentum``: their
    code's 10 and 0.1) runs during training and its values go to the score function.
    """

    def __init__(
        self,
        schedules: Sequence[LayerSchedule],
        criterion: str = "l2",
        target: str = "smallest",
        *,
        seed: int = 0,
        groups: Mapping[str, ChannelGroup] | None = None,
        options: Mapping[str, Any] | None = None,
        split: str = "test",
        activation_every: int = 10,
        activation_momentum: float = 0.1,
    ) -> None:
        super().__init__(split)
        schedules = list(schedules)
        if not schedules or not all(isinstance(s, LayerSchedule) for s in schedules):
            raise PrunelabError("schedules must be a non-empty list of LayerSchedule")
        names = [s.layer for s in schedules]
        if len(set(names)) != len(names):
            raise PrunelabError(f"a layer is scheduled twice: {names}")
        if target not in TARGETS:
            raise PrunelabError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
        self.score_fn = STRUCTURED.get(criterion)
        self.criterion, self.target, self.seed = criterion, target, seed
        self.schedules = {s.layer: s for s in schedules}
        self._given_groups = dict(groups) if groups is not None else None
        self.options = dict(options or {})
        self.groups: dict[str, ChannelGroup] = {}
        self.removed: dict[str, torch.Tensor] = {}
        self.activation_every, self.activation_momentum = activation_every, activation_momentum
        self.activation_stats: ActivationL1 | None = None

    def on_train_begin(self, state: TrainState) -> None:
        if self._given_groups is not None:
            missing = [x for x in self.schedules if x not in self._given_groups]
            if missing:
                raise PrunelabError(f"no ChannelGroup given for scheduled layer(s) {missing}")
            self.groups = {x: self._given_groups[x] for x in self.schedules}
        else:
            self.groups = channel_groups(state.model, list(self.schedules))
        late = {x: s.end for x, s in self.schedules.items() if s.end >= state.total_epochs}
        if late:
            raise PrunelabError(f"pruning ends at epoch(s) {late} (0-based), after training ends "
                                f"(epochs={state.total_epochs}): those layers would never reach their fraction")
        device = next(state.model.parameters()).device
        self._device = device
        self.removed = {x: torch.zeros(g.num_units, dtype=torch.bool, device=device) for x, g in self.groups.items()}
        self.events = []
        self._generator = torch.Generator().manual_seed(self.seed)
        self._prepare(state)
        if self.activation_stats is not None:
            self.activation_stats.detach()
            self.activation_stats = None
        if self.criterion == "activations":  # after _prepare: its hooks see the gated residuals
            self.activation_stats = ActivationL1(state.model, self.groups, self.activation_every,
                                                 self.activation_momentum).attach()

    def _prepare(self, state: TrainState) -> None:
        """Subclass set-up that must run before the activation statistics are attached."""

    def state_dict(self) -> dict[str, Any]:
        """Events, the units targeted so far, the generator of ``random`` targets (and noise) and the
        running activation statistics with their forward count."""
        state = super().state_dict()
        state["removed"] = [[x, r] for x, r in self.removed.items()]
        state["generator"] = self._generator.get_state()
        stats = self.activation_stats
        state["activations"] = None if stats is None else {
            "values": [[x, v] for x, v in stats.values.items()], "forwards": stats.forwards}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after ``on_train_begin``, which built the groups and statistics)."""
        who = type(self).__name__
        _need(state, ["events", "removed", "generator", "activations"], who)
        removed = dict(state["removed"])
        if list(removed) != list(self.removed):
            raise PrunelabError(f"{who}: the checkpoint targets layers {list(removed)}, this schedule "
                                f"{list(self.removed)}")
        for x, r in removed.items():
            if r.dtype != torch.bool or r.shape != self.removed[x].shape:
                raise PrunelabError(f"{who}: the checkpoint's unit mask of layer {x!r} is a {r.dtype} tensor of "
                                    f"shape {tuple(r.shape)}, the layer has {self.groups[x].num_units} units")
        if (state["activations"] is None) != (self.activation_stats is None):
            raise PrunelabError(f"{who}: the checkpoint {'lacks' if state['activations'] is None else 'has'} "
                                f"running activation statistics, criterion {self.criterion!r} "
                                f"{'needs' if self.activation_stats is not None else 'has'} none")
        super().load_state_dict(state)
        self.removed = {x: removed[x].to(self._device) for x in self.removed}
        self._generator.set_state(state["generator"])
        if self.activation_stats is not None:
            stats = self.activation_stats
            values = dict(state["activations"]["values"])
            stats.values = {x: values[x].to(device=v.device, dtype=v.dtype) for x, v in stats.values.items()}
            stats.forwards = int(state["activations"]["forwards"])

    def on_train_end(self, state: TrainState) -> None:
        if self.activation_stats is not None:
            self.activation_stats.detach()

    def _counts(self, state: TrainState) -> dict[str, int]:
        """Units each layer scheduled at this epoch loses now (``kept_units`` ramp)."""
        counts = {}
        for x, s in self.schedules.items():
            epochs = s.epochs()
            if state.epoch in epochs:
                n_units = self.groups[x].num_units
                kept = kept_units(n_units, s.fraction, epochs.index(state.epoch) + 1, len(epochs))
                counts[x] = max(n_units - kept - int(self.removed[x].sum()), 0)
        return counts

    def due(self, state: TrainState) -> bool:
        return any(k > 0 for k in self._counts(state).values())

    def unit_masks(self) -> dict[str, torch.Tensor]:
        """layer -> bool per unit, True = not targeted so far."""
        return {x: ~r for x, r in self.removed.items()}

    def _select(self, state: TrainState) -> dict[str, torch.Tensor]:
        due = {x: k for x, k in self._counts(state).items() if k > 0}
        options = dict(self.options)
        if self.activation_stats is not None:
            options["activations"] = self.activation_stats.values
        ctx = ScoreContext(seed=self.seed, device=next(state.model.parameters()).device, options=options)
        scores = self.score_fn(state.model, {x: self.groups[x] for x in due}, self.unit_masks(), ctx)
        new = {}
        for x, k in due.items():
            new[x] = select_units(scores[x], ~self.removed[x], k, self.target, self._generator)
        for x, chosen in new.items():
            self.removed[x] |= chosen
        return new

    def act(self, state: TrainState) -> dict[str, Any]:
        new = self._select(state)
        self.apply(state, new)
        return {"units": {x: int(c.sum()) for x, c in new.items()},
                "units_targeted": {x: int(r.sum()) for x, r in self.removed.items()}}

    def apply(self, state: TrainState, new: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


class IterativeStructuredPruning(_StructuredSchedule):
    """Permanent filter/neuron pruning on a :class:`LayerSchedule` per layer, with instability.

    Removed units stay removed: their parameters (weight rows, bias, following BatchNorm's
    weight/bias) are kept at zero by a :class:`~prunelab.pruning.enforce.MaskEnforcer`, together with
    their gradients and optimizer state, and residual additions into them are gated off. The gates
    stay on the model after training (the pruned model needs them); :meth:`detach` removes them.
    """

    def _prepare(self, state: TrainState) -> None:
        if getattr(self, "gates", None) is not None:
            self.gates.remove()  # a second fit with the same callback starts afresh
        self._model = state.model
        self.gates = ResidualGates(state.model, self.groups)
        self.enforcer: MaskEnforcer | None = None

    @property
    def masks(self) -> Masks:
        """Parameter masks of the units removed so far (weights, biases and BatchNorm entries)."""
        if getattr(self, "_model", None) is None:
            raise PrunelabError("the callback has no masks before training starts (it needs the model)")
        return expand_unit_masks(self._model, self.unit_masks(), self.groups)

    def apply(self, state: TrainState, new: dict[str, torch.Tensor]) -> None:
        self.enforcer = MaskEnforcer(self.masks)
        self.enforcer.on_train_begin(state)  # zero the pruned parameters and their optimizer state
        self.gates.update(self.unit_masks())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the units removed so far and put their enforcer and residual gates back (the
        restored weights and optimizer state already have them at zero)."""
        super().load_state_dict(state)
        gone = any(bool(r.any()) for r in self.removed.values())
        self.enforcer = MaskEnforcer(self.masks) if gone else None
        self.gates.update(self.unit_masks())

    def after_backward(self, state: TrainState) -> None:
        if self.enforcer is not None:
            self.enforcer.after_backward(state)

    def after_step(self, state: TrainState) -> None:
        if self.enforcer is not None:
            self.enforcer.after_step(state)

    def detach(self) -> None:
        self.gates.remove()


class TemporaryPruning(_StructuredSchedule):
    """The schedule's targets are zeroed (``mode="zero"``) or perturbed with Gaussian noise
    (``mode="gaussian"``) at the event and before each of the next ``batches`` training batches,
    then released (trained freely from wherever they are).

    Follows the authors' noise experiments (``_noisy_conv_forward``): only the layer's weights are
    touched (``include_bn=True`` also zeroes bias and BatchNorm weight/bias in ``zero`` mode); the
    noise is N(0, sigma^2) with sigma the standard deviation of the layer's weights over units not
    targeted so far, measured at the event (the code uses the first such filter); noise is drawn
    afresh for every batch and adds up. ``cumulative=False`` targets the units chosen at the latest
    event (the code's ``iter_`` runs), ``True`` all units chosen so far (``cumu_``). Batches are
    training batches only (the code also counted test batches).
    """

    MODES = ("zero", "gaussian")

    def __init__(self, schedules: Sequence[LayerSchedule], criterion: str = "l2", target: str = "largest", *,
                 mode: str = "zero", batches: int = 0, cumulative: bool = False, include_bn: bool = False,
                 **kw: Any) -> None:
        super().__init__(schedules, criterion, target, **kw)
        if mode not in self.MODES:
            raise PrunelabError(f"unknown mode {mode!r}; valid: {', '.join(self.MODES)}")
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
            raise PrunelabError(f"batches must be an integer >= 0, got {batches!r}")
        self.mode, self.batches, self.cumulative, self.include_bn = mode, batches, cumulative, include_bn
        self._left = 0
        self._active: dict[str, torch.Tensor] = {}
        self._sigma: dict[str, float] = {}

    def apply(self, state: TrainState, new: dict[str, torch.Tensor]) -> None:
        self._active = {x: (self.removed[x] if self.cumulative else c).clone() for x, c in new.items()}
        self._active = {x: t for x, t in self._active.items() if bool(t.any())}
        if self.mode == "gaussian":
            self._sigma = {}
            for x, t in self._active.items():
                w = state.model.get_submodule(x).weight.detach()
                rest = w[~self.removed[x]]
                self._sigma[x] = float(rest.std()) if rest.numel() > 1 else float(w.std())
        self._left = self.batches
        self._perturb(state.model)

    @torch.no_grad()
    def _perturb(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for x, units in self._active.items():
            w = params[f"{x}.weight"]
            if self.mode == "gaussian":
                noise = torch.randn(w[units].shape, generator=self._generator) * self._sigma[x]
                w[units] += noise.to(w.device, w.dtype)
                continue
            names = self.groups[x].params if self.include_bn else (f"{x}.weight",)
            for name in names:
                params[name][units] = 0

    def on_batch_begin(self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor) -> None:
        if self._left > 0:
            self._perturb(state.model)
            self._left -= 1

    def state_dict(self) -> dict[str, Any]:
        """Adds the perturbation in progress: the units, batches left and noise scales."""
        state = super().state_dict()
        state.update(left=self._left, active=[[x, t] for x, t in self._active.items()],
                     sigma=[[x, s] for x, s in self._sigma.items()])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _need(state, ["left", "active", "sigma"], type(self).__name__)
        super().load_state_dict(state)
        self._left = int(state["left"])
        self._active = {x: t.to(self._device) for x, t in state["active"]}  # order: the noise draws'
        self._sigma = {x: float(s) for x, s in state["sigma"]}


class ZeroRestorePruning(_StructuredSchedule):
    """The targets are zeroed (weights, bias, BatchNorm weight and bias) at the event and kept at zero
    for ``batches`` training batches; then weights *and* BatchNorm state (weight, bias, running mean
    and variance) are restored to their values at the event (the authors' ``cumu_N_zeroing_restore``
    runs, Appendix D; ``cumulative=True`` by default, as there). A restore still pending when
    training ends happens in ``on_train_end``, so the final model is complete.
    """

    def __init__(self, schedules: Sequence[LayerSchedule], criterion: str = "l2", target: str = "largest", *,
                 batches: int = 0, cumulative: bool = True, **kw: Any) -> None:
        super().__init__(schedules, criterion, target, **kw)
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
            raise PrunelabError(f"batches must be an integer >= 0, got {batches!r}")
        self.batches, self.cumulative = batches, cumulative
        self._saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # tensor name -> (units, values)
        self._left = 0

    def _tensors(self, model: nn.Module, layer: str) -> dict[str, torch.Tensor]:
        group = self.groups[layer]
        named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        names = list(group.params)
        if group.bn is not None:
            names += [f"{group.bn}.{b}" for b in ("running_mean", "running_var") if f"{group.bn}.{b}" in named]
        return {n: named[n] for n in names}

    @torch.no_grad()
    def _zero(self, model: nn.Module) -> None:
        named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for name, (units, _) in self._saved.items():
            if not name.endswith(("running_mean", "running_var")):
                named[name][units] = 0

    @torch.no_grad()
    def _restore(self, model: nn.Module) -> None:
        named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for name, (units, values) in self._saved.items():
            named[name][units] = values
        self._saved = {}

    def apply(self, state: TrainState, new: dict[str, torch.Tensor]) -> None:
        if self._saved:
            self._restore(state.model)
        for x, chosen in new.items():
            units = (self.removed[x] if self.cumulative else chosen).clone()
            if bool(units.any()):
                for name, t in self._tensors(state.model, x).items():
                    self._saved[name] = (units, t.detach()[units].clone())
        self._left = self.batches
        self._zero(state.model)

    def on_batch_begin(self, state: TrainState, xb: torch.Tensor, yb: torch.Tensor) -> None:
        if not self._saved:
            return
        if self._left > 0:
            self._zero(state.model)
            self._left -= 1
        else:
            self._restore(state.model)

    def state_dict(self) -> dict[str, Any]:
        """Adds a restore still pending: the zeroed units and their values at the event, batches left."""
        state = super().state_dict()
        state.update(left=self._left, saved=[[name, units, values] for name, (units, values) in self._saved.items()])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _need(state, ["left", "saved"], type(self).__name__)
        super().load_state_dict(state)
        self._left = int(state["left"])
        self._saved = {name: (units.to(self._device), values.to(self._device)) for name, units, values in state["saved"]}

    def on_train_end(self, state: TrainState) -> None:
        if self._saved:
            self._restore(state.model)
        super().on_train_end(state)


# --- flatness at the end of training ---------------------------------------------------------------
TOP_EIGEN_K = 100  # the authors' compute_hessian_eigenthings(..., 100, ...)
EIGEN_ITERS = 20  # their deflated_power_iteration(power_iter_steps=20)


def hessian_top_eigen_sum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = TOP_EIGEN_K,
    *,
    samples: int = DEFAULT_SAMPLES,
    method: str = "power",
    iters: int = EIGEN_ITERS,
    tol: float = 1e-4,
    seed: int = 0,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Sum of the top-``k`` Hessian eigenvalues of the mean cross-entropy on the first ``samples`` of (x, y).

    Bartoldson et al. (2020, Sec. 5; ``hessian_first_100_eigen_sum``): k = 100 by deflated power
    iteration (largest magnitude, 20 steps each, tolerance 1e-4) on the first 512 test samples, eval
    mode. Uses :func:`prunelab.analysis.flatness.hessian_eigenvalues`.
    """
    xs, ys = fixed_subset(x, y, samples)
    values = hessian_eigenvalues(model, xs, ys, k, method=method, masks=masks, iters=iters, tol=tol, seed=seed)
    return float(sum(values))


class HessianEigenSum(Callback):
    """Writes ``hessian_top<k>_eigen_sum`` into the history at the end of the given 0-based epochs
    (default: the last epoch only, as the authors' epoch 314 of 315), on ``split`` (default test).

    Put it before a pruning callback in the list to measure before that epoch's pruning, as the
    authors do. ``kw`` goes to :func:`hessian_top_eigen_sum`.
    """

    def __init__(self, k: int = TOP_EIGEN_K, epochs: Sequence[int] | None = None, split: str = "test",
                 **kw: Any) -> None:
        if split not in ("test", "val", "train"):
            raise PrunelabError(f"split must be 'test', 'val' or 'train', got {split!r}")
        if epochs is not None and (isinstance(epochs, (str, int)) or not all(
                isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs)):
            raise PrunelabError(f"epochs must be a list of 0-based epoch indices, got {epochs!r}")
        self.k, self.split, self.kw = k, split, kw
        self.epochs = None if epochs is None else set(epochs)
        self.values: dict[int, float] = {}

    @property
    def key(self) -> str:
        return f"hessian_top{self.k}_eigen_sum"

    def on_epoch_end(self, state: TrainState) -> None:
        due = state.epoch + 1 == state.total_epochs if self.epochs is None else state.epoch in self.epochs
        if not due:
            return
        x, y = getattr(state.data, f"x_{self.split}", None), getattr(state.data, f"y_{self.split}", None)
        if x is None or y is None:
            raise PrunelabError(f"the Hessian is measured on the {self.split} split, which the data lacks")
        value = hessian_top_eigen_sum(state.model, x, y, self.k, **self.kw)
        self.values[state.epoch + 1] = value
        state.metrics[self.key] = value

    def state_dict(self) -> dict[str, Any]:
        """The values so far (1-based epoch -> sum)."""
        return {"values": dict(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _need(state, ["values"], type(self).__name__)
        self.values = {int(e): float(v) for e, v in state["values"].items()}
