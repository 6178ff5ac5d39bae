"""The trial record: everything a worker stores on a trial, declared once.

A trial's record lives in its Optuna user attrs, so `hpo trials`, a report and optuna-dashboard
all read the same thing. :func:`write_record` is the one writer, :func:`read_record` the one
reader; the shape of each attr is declared here and nowhere else. This module imports only the
standard library and ``storage.states`` (plain names, no database): ``hpo`` reads records it
fetched through ``storage``, and a record can be written to anything with
``set_user_attr(key, value)`` (an ``optuna.Trial``).

Layout, version 4 (user attr key: JSON value)::

    record_version  4; layout 3 is layout 4 without the summary attrs saturation_fraction_max,
                    update_ratio_max and update_ratio_min; layout 2 is layout 3 without the
                    summary attrs below; a trial without record_version was written in
                    layout 1, which is layout 2 without this attr (workers before the version
                    was stored)
    worker          "host-pid" of the worker that ran the trial; written when it is claimed
    seed            int, the training seed (workers.objective.trial_seed)
    config          {name: value}: the TrainConfig trained (workers.train.TrainConfig.to_dict)
    reason          why the trial did not complete: "diverged at epoch E, step S: ..." (stored
                    PRUNED), "pruned at step S: ..." (PRUNED), an error's first line (FAIL),
                    or why a queued trial was closed unrun (FAIL, written by storage)
    diagnostics     {"probe_size": int,
                     "layers": [{"layer", "units", "activation_mean", "activation_std",
                                 "dead_fraction", "saturation_fraction", "grad_norm",
                                 "update_ratio"}, ...],          one per hidden layer
                     "output_layer": {"grad_norm", "update_ratio"}}
                    of the last epoch; a measure that was not finite is null
    histograms      [{"layer": int, "edges": [21 floats], "counts": [20 ints]}, ...]: the
                    activations of each hidden layer on the probe batch after the last epoch
    train_accuracy  float
    fold_values     [float]: the validation accuracy of each fold (cross-validated stages)
    curve           {"epoch": [int], "val_accuracy": [float], "train_loss": [float]}: one entry
                    per epoch trained, with cross-validation the mean over the folds at that
                    epoch (empty lists when the run diverged in its first epoch, and for a
                    cross-validated trial of a worker before the folds trained side by side)
    timings         {"train_seconds": float, "overhead_seconds": float}: time in training, and
                    from the claim to the last report outside it
    seeded_from     the stage whose best trial this queued trial repeats (written by the
                    campaign when it queues the trial)

The summary attrs (layouts 3 and 4): scalars derived from the attrs above by :func:`summary_attrs`
when the record is written, so that optuna-dashboard, which shows an attr of a list or dict cut
at 1,024 characters, shows and sorts them whole. Each is written only when the record holds
what it is derived from; they are not read back (the reader derives them again)::

    final_train_loss   float, the curve's last train_loss (of the last epoch trained: for a
                       diverged run, the epoch before it diverged)
    best_epoch         int, the curve's epoch of the highest val_accuracy (the first if tied)
    diverged           bool, whether the reason says the run diverged (storage.states); written
                       with the timings, that is for every trial a worker finished
    dead_fraction_max  float, the largest dead_fraction over the hidden layers' diagnostics
    saturation_fraction_max
                       float, the largest saturation_fraction over the hidden layers
    update_ratio_max, update_ratio_min
                       float, the largest and the smallest update_ratio over every weight
                       matrix (the hidden layers' and the output layer's)
    train_seconds      float, timings.train_seconds

Which attrs a trial has depends on how far it got. Every trial a worker took has ``worker``
and ``record_version`` (written when it is claimed: a trial whose worker was stopped has only
these); a COMPLETE one adds everything but ``reason`` (``fold_values`` only when
cross-validated); a PRUNED or diverged one ``seed``, ``config``, ``reason``, ``curve`` and
``timings``; one that failed with an error ``reason`` and ``timings``; each with the summary
attrs of what it has. Any other user attr (set by hand, or through optuna-dashboard) is kept in
:attr:`TrialRecord.extra` and written back as it is; one set by hand under a summary attr's
name is not (the summary is derived again).

The trial's state and value are Optuna's own columns, not attrs: :func:`read_record` takes them
from a FrozenTrial, and the worker tells them after writing the attrs (a finished trial takes
no more attrs).

The reader is tolerant: a record is read to be shown, so an attr of the wrong shape reads as
absent (None) instead of hiding the rest, and a record of a newer layout is read as far as its
keys are known here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from storage.states import DIVERGED_REASON_PREFIX

RECORD_VERSION = 4
VERSION_ATTR = "record_version"

Number = int | float


def _number(value: Any) -> Number | None:
    """A stored number as it is (int or float); booleans and anything else read as None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_is(value: Any) -> Any:
    return value


def _tuple(value: Any, item: Any) -> tuple | None:
    """A stored list as a tuple, each item read by ``item``."""
    return tuple(item(v) for v in value) if isinstance(value, list) else None


@dataclass(frozen=True)
class Curve:
    """The learning curve: one entry per epoch trained, in order."""

    epoch: tuple[int | None, ...] = ()
    val_accuracy: tuple[Number | None, ...] = ()
    train_loss: tuple[Number | None, ...] = ()

    def to_json(self) -> dict[str, list]:
        return {"epoch": list(self.epoch), "val_accuracy": list(self.val_accuracy), "train_loss": list(self.train_loss)}

    @classmethod
    def from_json(cls, value: Any) -> Curve | None:
        if not isinstance(value, Mapping):
            return None
        return cls(
            epoch=_tuple(value.get("epoch"), _int) or (),
            val_accuracy=_tuple(value.get("val_accuracy"), _number) or (),
            train_loss=_tuple(value.get("train_loss"), _number) or (),
        )


@dataclass(frozen=True)
class LayerDiagnostics:
    """One hidden layer's health after the last epoch (see workers.train)."""

    layer: int  # 1-based
    units: int | None = None
    activation_mean: Number | None = None
    activation_std: Number | None = None
    dead_fraction: Number | None = None
    saturation_fraction: Number | None = None
    grad_norm: Number | None = None
    update_ratio: Number | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Any, position: int) -> LayerDiagnostics | None:
        """``position``: the layer's 1-based place in the list, its number if none is stored."""
        if not isinstance(value, Mapping):
            return None
        measures = {name: _number(value.get(name)) for name in _LAYER_MEASURES}
        return cls(layer=_int(value.get("layer")) or position, units=_int(value.get("units")), **measures)


_LAYER_MEASURES = tuple(f.name for f in dataclasses.fields(LayerDiagnostics) if f.name not in ("layer", "units"))


@dataclass(frozen=True)
class OutputLayerDiagnostics:
    grad_norm: Number | None = None
    update_ratio: Number | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> OutputLayerDiagnostics | None:
        if not isinstance(value, Mapping):
            return None
        return cls(grad_norm=_number(value.get("grad_norm")), update_ratio=_number(value.get("update_ratio")))


@dataclass(frozen=True)
class Diagnostics:
    """Per-layer diagnostics of the last epoch, measured on a fixed probe batch."""

    probe_size: int | None = None
    layers: tuple[LayerDiagnostics, ...] = ()
    output_layer: OutputLayerDiagnostics | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "probe_size": self.probe_size,
            "layers": [layer.to_json() for layer in self.layers],
            "output_layer": self.output_layer.to_json() if self.output_layer else None,
        }

    @classmethod
    def from_json(cls, value: Any) -> Diagnostics | None:
        """From the dict ``workers.train`` returns and the worker stores."""
        if not isinstance(value, Mapping):
            return None
        layers = value.get("layers") if isinstance(value.get("layers"), list) else []
        return cls(
            probe_size=_int(value.get("probe_size")),
            layers=tuple(row for i, v in enumerate(layers) if (row := LayerDiagnostics.from_json(v, i + 1))),
            output_layer=OutputLayerDiagnostics.from_json(value.get("output_layer")),
        )


@dataclass(frozen=True)
class Histogram:
    """Activations of one hidden layer on the probe batch: ``counts[i]`` in ``[edges[i], edges[i+1])``."""

    layer: int
    edges: tuple[Number | None, ...] = ()
    counts: tuple[int | None, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "edges": list(self.edges), "counts": list(self.counts)}

    @classmethod
    def from_json(cls, value: Any, position: int) -> Histogram | None:
        if not isinstance(value, Mapping):
            return None
        return cls(
            layer=_int(value.get("layer")) or position,
            edges=_tuple(value.get("edges"), _number) or (),
            counts=_tuple(value.get("counts"), _int) or (),
        )


def histograms_from_json(value: Any) -> tuple[Histogram, ...] | None:
    """The stored list of histograms (as ``workers.train`` returns them)."""
    if not isinstance(value, list):
        return None
    return tuple(h for i, v in enumerate(value) if (h := Histogram.from_json(v, i + 1)))


@dataclass(frozen=True)
class Timings:
    train_seconds: Number | None = None
    overhead_seconds: Number | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> Timings | None:
        if not isinstance(value, Mapping):
            return None
        return cls(train_seconds=_number(value.get("train_seconds")), overhead_seconds=_number(value.get("overhead_seconds")))


@dataclass(frozen=True)
class TrialRecord:
    """What a trial holds, typed. Every field may be None: see the module docstring for which
    fields a trial has, by how it ended."""

    # Optuna's own columns, read from a FrozenTrial; the worker tells them, they are not attrs.
    state: str | None = None  # a TrialState name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None = None  # the objective value of a single-objective trial
    # The user attrs, in the order a worker writes them.
    worker: str | None = None
    seed: int | None = None
    config: Mapping[str, Any] | None = None
    reason: str | None = None
    diagnostics: Diagnostics | None = None
    histograms: tuple[Histogram, ...] | None = None
    train_accuracy: Number | None = None
    fold_values: tuple[Number | None, ...] | None = None
    curve: Curve | None = None
    timings: Timings | None = None
    seeded_from: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # user attrs that are not the record's
    version: int = RECORD_VERSION  # the layout it was read from


class HasUserAttrs(Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


# attr key -> (from the field to JSON, from JSON to the field); the fields of the same names.
_ATTRS: dict[str, tuple[Any, Any]] = {
    "worker": (str, _text),
    "seed": (int, _int),
    "config": (dict, lambda v: dict(v) if isinstance(v, Mapping) else None),
    "reason": (str, _text),
    "diagnostics": (Diagnostics.to_json, Diagnostics.from_json),
    "histograms": (lambda hs: [h.to_json() for h in hs], histograms_from_json),
    "train_accuracy": (_as_is, _number),
    "fold_values": (list, lambda v: _tuple(v, _number)),
    "curve": (Curve.to_json, Curve.from_json),
    "timings": (Timings.to_json, Timings.from_json),
    "seeded_from": (str, _text),
}


SUMMARY_ATTRS = ("final_train_loss", "best_epoch", "diverged", "dead_fraction_max", "saturation_fraction_max",
                 "update_ratio_max", "update_ratio_min", "train_seconds")
_NOT_EXTRA = {*SUMMARY_ATTRS, VERSION_ATTR}  # attr keys that are neither a field nor an extra attr


def summary_attrs(record: TrialRecord) -> dict[str, Any]:
    """The summary attrs of ``record`` (see the module docstring): scalars derived from its
    curve, diagnostics, reason and timings, each present only when what it comes from is."""
    summary: dict[str, Any] = {}
    curve = record.curve or Curve()
    if curve.train_loss and curve.train_loss[-1] is not None:
        summary["final_train_loss"] = curve.train_loss[-1]
    scored = [(v, e) for e, v in zip(curve.epoch, curve.val_accuracy) if e is not None and v is not None]
    if scored:
        summary["best_epoch"] = max(scored, key=lambda ve: ve[0])[1]  # max keeps the first of ties
    diverged = record.reason is not None and record.reason.startswith(DIVERGED_REASON_PREFIX)
    if diverged or record.timings is not None:
        summary["diverged"] = diverged
    hidden = record.diagnostics.layers if record.diagnostics else ()
    dead = [layer.dead_fraction for layer in hidden if layer.dead_fraction is not None]
    if dead:
        summary["dead_fraction_max"] = max(dead)
    saturated = [layer.saturation_fraction for layer in hidden if layer.saturation_fraction is not None]
    if saturated:
        summary["saturation_fraction_max"] = max(saturated)
    # Every weight matrix's ratio, the output layer's too: ~1e-3 is healthy, and a layer far off
    # either way is the one to look at, so both ends are kept.
    output = record.diagnostics.output_layer if record.diagnostics else None
    ratios = [layer.update_ratio for layer in (*hidden, *([output] if output else [])) if layer.update_ratio is not None]
    if ratios:
        summary["update_ratio_max"] = max(ratios)
        summary["update_ratio_min"] = min(ratios)
    if record.timings is not None and record.timings.train_seconds is not None:
        summary["train_seconds"] = record.timings.train_seconds
    return summary


def record_attrs(record: TrialRecord) -> dict[str, Any]:
    """The user attrs that store ``record`` (its fields that are not None, its summary attrs,
    its extra attrs, and the layout version), JSON-ready."""
    attrs = {key: to_json(getattr(record, key)) for key, (to_json, _) in _ATTRS.items() if getattr(record, key) is not None}
    attrs.update(summary_attrs(record))
    attrs.update((k, v) for k, v in record.extra.items() if k not in _ATTRS and k not in _NOT_EXTRA)
    attrs[VERSION_ATTR] = RECORD_VERSION
    return attrs


def write_record(trial: HasUserAttrs, record: TrialRecord) -> None:
    """Store ``record`` on ``trial`` as user attrs (not its state or value: tell those after).

    Fields that are None are left as they are on the trial, so a worker writes its name when
    it claims a trial and the rest when the trial ends."""
    for key, value in record_attrs(record).items():
        trial.set_user_attr(key, value)


def read_reason(attrs: Mapping[str, Any]) -> str | None:
    """Only the ``reason`` of a trial's user attrs, as :func:`read_record` reads it, without
    parsing the rest (the claim reads it of every finished trial when one failed)."""
    return _ATTRS["reason"][1](attrs.get("reason"))


def read_record(trial: Any) -> TrialRecord:
    """The record of ``trial``: an ``optuna.trial.FrozenTrial`` (state and value included), or
    a trial's user attrs as a mapping. Trials written before the layout was versioned read as
    version 1; a field absent or of the wrong shape reads as None. The summary attrs are not
    read: :func:`summary_attrs` derives them from the record."""
    if isinstance(trial, Mapping):
        attrs, state, value = trial, None, None
    else:
        attrs, state = trial.user_attrs, trial.state.name
        value = trial.values[0] if trial.values is not None and len(trial.values) == 1 else None
    version = _int(attrs.get(VERSION_ATTR))
    return TrialRecord(
        state=state,
        value=value,
        **{key: from_json(attrs.get(key)) for key, (_, from_json) in _ATTRS.items()},
        extra={k: v for k, v in attrs.items() if k not in _ATTRS and k not in _NOT_EXTRA},
        version=version if version is not None and version >= 1 else 1,
    )

