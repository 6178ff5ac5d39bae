"""Time and size of ``hpo report`` for campaigns of 100, 1,000 and 10,000 trials.

Each campaign is synthetic but stored as hpo stores a real one, through the real storage (a
SQLite file in a temporary folder, or ``--storage URL``):

- three stages of 60%, 30% and 10% of the trials at the default 2, 8 and 30 epochs, created
  by the campaign's own code (``hpo.campaign.open_campaign``, then ``open_next_stage``: the
  real narrowing of the stage before, its lineage with the ``changes`` the report tables);
  each later stage's first trial repeats the best configuration of the stage before, as
  ``seed_queue`` queues it, and the last stage holds a final result;
- trials with parameters drawn uniformly in their stage's space (the default space with a
  weight decay, a batch size and three network shapes), each with the full record a worker
  writes (``workers.record.record_attrs``: seed, the real ``TrainConfig``, a learning curve,
  per-layer diagnostics and 21-edge histograms from ``benchmarks.common.stub_trainer``,
  timings, the worker's name) and its epochs reported as intermediate values;
- outcomes about 70% complete, 15% pruned, 10% diverged (at high learning rates, with the
  reason ``TrainingDiverged`` writes) and 5% failed, of which 2 in 5 lost their worker and
  were retried (the retry carries ``retry_history`` as ``backend.fail_with_retry`` queues it)
  and the rest failed with an error; start and end times follow 4 workers taking trials in
  turn, so the timeline has the shape of a real run.

Each trial is built as an ``optuna.trial.FrozenTrial`` (``create_trial``, start and end times
set) and a stage's trials are stored with :func:`insert_trials`: multi-row inserts into
Optuna's own tables, which read back exactly as ``study.add_trials`` stores them (a test
checks it) but take seconds where ``add_trials`` took four minutes for 10,000 trials.
Generation is timed apart and is not part of the report's time. Everything is seeded, so
runs are comparable (the same size gives the same campaign and the same page size).

For each size: ``write_report`` (collect + render + write) wall seconds, best of ``--repeat``
runs (default 3, and 1 at 10,000 trials and more), the file's size, and how the time splits
between ``collect`` (reading storage, importances) and ``render`` (figures, JSON, HTML),
each timed on its own as well (``rest``: what ``write_report`` does besides). The page is
split by section: bytes, figures, and the bytes of the figures' hover texts. The size of
Plotly's script, which every page carries, is printed as the floor. Target (issue): at
10,000 trials, under 20 s and under 20 MB; the figures are printed, never asserted.

Usage::

    python benchmarks/report.py                       # 100, 1,000 and 10,000 trials (~2 min)
    python benchmarks/report.py --sizes 1000 --repeat 5 --profile
    python benchmarks/report.py --storage postgresql://postgres@127.0.0.1:5432/bench
    python benchmarks/report.py --json --out reports/  # keep the reports written
    python benchmarks/report.py --quick                # a smoke run: 30 trials
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import datetime
import heapq
import io
import json
import logging
import math
import pstats
import re
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
from optuna.distributions import distribution_to_json  # noqa: E402
from optuna.storages import RDBStorage  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from benchmarks.common import dump_json, machine, print_table, stub_trainer  # noqa: E402
from hpo.campaign import (  # noqa: E402
    DEFAULT_EPOCHS, CampaignSpec, FinalResult, close_stage, open_campaign, open_next_stage, seed_queue,
    store_result,
)
from hpo.inspect import open_for_reading  # noqa: E402
from hpo.report import render, sections, write_report  # noqa: E402
from hpo.report.collect import collect  # noqa: E402
from storage import backend  # noqa: E402
from storage.errors import StorageError  # noqa: E402
from storage.states import is_diverged  # noqa: E402
from storage.url import mask_url, resolve_url  # noqa: E402
from workers.objective import config_for, trial_seed  # noqa: E402
from workers.record import (  # noqa: E402
    Curve, Diagnostics, Timings, TrialRecord, histograms_from_json, read_record, record_attrs,
)
from workers.space import Choice, FloatRange, IntRange, SearchSpace, default_space, parse_param  # noqa: E402
from workers.stageplan import StagePlan  # noqa: E402
from workers.train import TrainConfig, TrainingDiverged  # noqa: E402

SIZES = (100, 1_000, 10_000)
STAGE_SHARES = (0.6, 0.3, 0.1)
OUTCOME_SHARES = {"COMPLETE": 0.70, "PRUNED": 0.15, "DIVERGED": 0.10, "FAIL": 0.05}
STALE_SHARE = 0.4  # of the failed trials: the worker was lost and the trial retried
WORKERS = ("node-a-21034", "node-a-21035", "node-b-7781", "node-b-7782")
STARTED = datetime.datetime(2025, 3, 3, 9, 0, 0)  # when the synthetic campaign began
SEED = 20250303
TARGET_TRIALS = 10_000
TARGET_SECONDS = 20.0
TARGET_MB = 20.0
ERRORS = (  # the first line of an exception, as the worker stores it
    "Unable to allocate 1.53 GiB for an array with shape (1437, 100, 2800) and data type float32",
    "overflow encountered in matmul",
    "[Errno 28] No space left on device",
)


def bench_space() -> SearchSpace:
    """The first stage's space: the default one, a weight decay, a batch size, three networks."""
    extra = ("weight_decay=log:1e-6..1e-2", "batch_size=int:32..256:32", "hidden_sizes=100-100,200,50-50-50")
    return default_space().updated(dict(parse_param(p) for p in extra))


def draw_params(space: SearchSpace, rng: np.random.Generator) -> dict[str, Any]:
    """One configuration drawn uniformly in ``space`` (log-uniformly on a log range)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, Choice):
            params[name] = spec.choices[int(rng.integers(len(spec.choices)))]
        elif isinstance(spec, FloatRange):
            if spec.log:
                value = 10 ** rng.uniform(math.log10(spec.low), math.log10(spec.high))
            else:
                value = rng.uniform(spec.low, spec.high)
            params[name] = min(max(float(value), spec.low), spec.high)
        elif isinstance(spec, IntRange):
            if spec.log:
                value = round(math.exp(rng.uniform(math.log(spec.low), math.log(spec.high))))
            else:
                value = spec.low + spec.step * int(rng.integers((spec.high - spec.low) // spec.step + 1))
            params[name] = min(max(int(value), spec.low), spec.high)
    return params


def diverging(space: SearchSpace, params: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """``params`` with a learning rate from the top fifth of its (log) range: runs diverge there."""
    spec = space.get("learning_rate")
    if not isinstance(spec, FloatRange) or not spec.log:
        return params
    low, high = math.log10(spec.low), math.log10(spec.high)
    return {**params, "learning_rate": min(spec.high, float(10 ** rng.uniform(high - (high - low) / 5, high)))}


@dataclasses.dataclass
class Outcome:
    """How one synthetic trial ended: what its record, value and reported epochs are."""

    state: TrialState
    record: TrialRecord
    value: float | None
    intermediate: dict[int, float]
    epochs_run: int


class _Stop(Exception):
    pass


def run_stub(config: TrainConfig, stop_after: int | None = None):
    """The stub's epochs (and its result, unless stopped after ``stop_after`` epochs). The stub
    diverges on its own above a learning rate of 2 without batch norm; outcomes are drawn here,
    so it trains at 2 there (its curve is a guess's either way)."""
    reports = []

    def on_epoch(report):
        reports.append(report)
        if stop_after is not None and len(reports) >= stop_after:
            raise _Stop

    trained = dataclasses.replace(config, learning_rate=min(config.learning_rate, 2.0))
    try:
        score = stub_trainer(trained, on_epoch=on_epoch)
    except _Stop:
        return reports, None
    return reports, score


def outcome_of(kind: str, plan: StagePlan, space: SearchSpace, params: dict[str, Any], number: int,
               rng: np.random.Generator) -> Outcome:
    """The record a worker would store for a trial of ``plan`` that ends as ``kind``."""
    seed = trial_seed(plan.seed, number)
    config = config_for(plan, space, params, seed)
    base = TrialRecord(seed=seed, config=config.to_dict())
    epochs = plan.epochs
    if kind == "COMPLETE":
        reports, score = run_stub(config)
        result = score.result
        record = dataclasses.replace(
            base, diagnostics=Diagnostics.from_json(result.diagnostics), histograms=histograms_from_json(result.histograms),
            train_accuracy=result.train_accuracy,
        )
        state, value, run = TrialState.COMPLETE, float(score.value), epochs
    elif kind == "PRUNED":
        run = int(rng.integers(1, max(2, epochs)))
        reports, _ = run_stub(config, stop_after=run)
        value = float(reports[-1].val_accuracy)
        record = dataclasses.replace(base, reason=f"pruned at step {run}: {value:.4f} below the median")
        state = TrialState.PRUNED
    elif kind == "DIVERGED":
        at = int(rng.integers(1, epochs + 1))
        reports, _ = run_stub(config, stop_after=at - 1) if at > 1 else ([], None)
        loss = float("nan") if rng.random() < 0.5 else float(rng.uniform(30, 300))
        error = TrainingDiverged(at, int(rng.integers(1, 23)), loss, 2.3, "non-finite" if math.isnan(loss) else "exceeded")
        record = dataclasses.replace(base, reason=str(error))
        state, value, run = TrialState.PRUNED, (float(reports[-1].val_accuracy) if reports else None), at
    else:  # FAIL with an error: only the reason (and timings, added by the caller)
        run = int(rng.integers(0, epochs))
        reports, _ = run_stub(config, stop_after=run) if run else ([], None)
        return Outcome(TrialState.FAIL, TrialRecord(reason=ERRORS[int(rng.integers(len(ERRORS)))]), None,
                       {r.epoch: r.val_accuracy for r in reports}, max(run, 1))
    curve = Curve(epoch=tuple(r.epoch for r in reports), val_accuracy=tuple(r.val_accuracy for r in reports),
                  train_loss=tuple(r.train_loss for r in reports))
    return Outcome(state, dataclasses.replace(record, curve=curve), value, {r.epoch: r.val_accuracy for r in reports}, run)


class Timeline:
    """Start and end times of trials taken in turn by 4 workers, each as soon as it is free."""

    def __init__(self, start: datetime.datetime, rng: np.random.Generator) -> None:
        self.rng = rng
        self.free = [(start, name) for name in WORKERS]
        heapq.heapify(self.free)

    def epoch_seconds(self, config: dict[str, Any]) -> float:
        """Digits-sized epochs: wider networks and smaller batches take longer."""
        units = sum(config.get("hidden_sizes") or (100, 100))
        return 0.15 * units / 200 * math.sqrt(64 / config.get("batch_size", 64)) * float(self.rng.lognormal(0, 0.2))

    def take(self, seconds: float, not_before: datetime.datetime | None = None) -> tuple[str, datetime.datetime, datetime.datetime]:
        """(worker, start, end) of the next trial, which runs ``seconds`` and is queued at
        ``not_before`` (a retry: when the lost trial was failed)."""
        free_at, worker = heapq.heappop(self.free)
        free_at = max(free_at, not_before) if not_before else free_at
        start = free_at + datetime.timedelta(seconds=float(self.rng.uniform(0.02, 0.2)))
        end = start + datetime.timedelta(seconds=seconds)
        heapq.heappush(self.free, (end, worker))
        return worker, start, end

    def end(self) -> datetime.datetime:
        return max(t for t, _ in self.free)

    def restart(self, at: datetime.datetime) -> None:
        """Every worker waits until ``at`` (the next stage is opened then)."""
        self.free = [(max(t, at), w) for t, w in self.free]
        heapq.heapify(self.free)


def frozen(state: TrialState, value: float | None, params: dict[str, Any], space: SearchSpace, record: TrialRecord,
           intermediate: dict[int, float], start: datetime.datetime, end: datetime.datetime,
           system_attrs: dict[str, Any] | None = None) -> FrozenTrial:
    trial = optuna.trial.create_trial(
        state=state, value=value, params=params, distributions=space.to_distributions(),
        user_attrs=record_attrs(record), system_attrs=system_attrs or {}, intermediate_values=intermediate,
    )
    trial.datetime_start, trial.datetime_complete = start, end
    return trial


def stage_outcomes(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` outcomes in the target shares (a lost worker's trial and its retry count as two)."""
    kinds = list(OUTCOME_SHARES)
    drawn = list(rng.choice(kinds, size=n, p=list(OUTCOME_SHARES.values())))
    kinds_out: list[str] = []
    for kind in drawn:
        if len(kinds_out) >= n:
            break
        if kind == "FAIL" and rng.random() < STALE_SHARE and len(kinds_out) + 2 <= n:
            retry = rng.choice(kinds[:3], p=np.array(list(OUTCOME_SHARES.values())[:3]) / 0.95)
            kinds_out += ["STALE", f"RETRY:{retry}"]
        else:
            kinds_out.append(str(kind))
    return kinds_out[:n]


def stage_trials(plan: StagePlan, kinds: list[str], timeline: Timeline, rng: np.random.Generator,
                 first: tuple[dict[str, Any], dict[str, Any]] | None = None) -> list[FrozenTrial]:
    """The trials of one stage in number order; ``first`` (params, user attrs): the queued
    configuration it starts with (it completes)."""
    space = SearchSpace.from_dict(plan.space)
    trials: list[FrozenTrial] = []
    stale: tuple[int, dict[str, Any], datetime.datetime] | None = None
    for number, kind in enumerate(kinds):
        system: dict[str, Any] = {}
        seeded_from, queued_at = None, None
        if number == 0 and first is not None:  # as enqueue_trial stores it
            params, seeded_from = dict(first[0]), read_record(first[1]).seeded_from
            system = {"fixed_params": params}
            kind = "COMPLETE"
        elif kind.startswith("RETRY:") and stale is not None:  # as fail_with_retry queues it
            lost, params, queued_at = stale
            system = {"failed_trial": lost, "retry_history": [lost]}
            kind = kind.split(":", 1)[1]
        else:
            kind = kind.split(":", 1)[-1]
            params = draw_params(space, rng)
            if kind == "DIVERGED":
                params = diverging(space, params, rng)
        if kind == "STALE":  # the worker was lost mid-run: only its name and the epochs reported
            config = config_for(plan, space, params, trial_seed(plan.seed, number))
            run = int(rng.integers(1, plan.epochs + 1))
            reports, _ = run_stub(config, stop_after=run)
            seconds = run * timeline.epoch_seconds(config.to_dict()) + 60.0  # the heartbeat's grace
            worker, start, end = timeline.take(seconds)
            trials.append(frozen(TrialState.FAIL, None, params, space, TrialRecord(worker=worker),
                                 {r.epoch: r.val_accuracy for r in reports}, start, end))
            stale = (number, params, end)
            continue
        outcome = outcome_of(kind, plan, space, params, number, rng)
        config = outcome.record.config or config_for(plan, space, params, 0).to_dict()
        train = outcome.epochs_run * timeline.epoch_seconds(config)
        overhead = float(rng.uniform(0.008, 0.03))
        worker, start, end = timeline.take(train + overhead, queued_at)
        record = dataclasses.replace(
            outcome.record, worker=worker, seeded_from=seeded_from,
            timings=Timings(train_seconds=round(train, 4), overhead_seconds=round(overhead, 4)),
        )
        trials.append(frozen(outcome.state, outcome.value, params, space, record, outcome.intermediate, start, end, system))
    return trials


# -- writing trials fast ---------------------------------------------------------------------
TRIAL_TABLES = ("trials", "trial_params", "trial_values", "trial_intermediate_values",
                "trial_user_attributes", "trial_system_attributes")


def _stored_float(value: float, nan: bool = False) -> tuple[float | None, str]:
    """A value and its type as Optuna's schema stores them (infinities and NaN as a type)."""
    if nan and math.isnan(value):
        return None, "NAN"
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


def _utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    """Optuna stores naive UTC and reads it back as naive local time."""
    return None if moment is None else moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def insert_trials(storage: RDBStorage, study_name: str, trials: list[FrozenTrial]) -> None:
    """Store ``trials`` after the study's own, as ``study.add_trials`` would, in one transaction.

    Optuna writes a trial with some 40 ORM statements (a 10,000-trial campaign took four
    minutes that way); this writes every table in a few multi-row inserts into the storage's
    own schema. tests/test_benchmarks_smoke.py checks that both store the same trials."""
    engine = storage.engine
    meta = sqlalchemy.MetaData()
    meta.reflect(engine, only=TRIAL_TABLES)
    t = meta.tables
    study_id = storage.get_study_id_from_name(study_name)
    first = storage.get_n_trials(study_id)
    with engine.begin() as conn:
        rows = [{"number": first + i, "study_id": study_id, "state": trial.state.name,
                 "datetime_start": _utc(trial.datetime_start), "datetime_complete": _utc(trial.datetime_complete)}
                for i, trial in enumerate(trials)]
        result = conn.execute(t["trials"].insert().returning(t["trials"].c.trial_id, sort_by_parameter_order=True), rows)
        ids = [row[0] for row in result]
        params, values, steps, user, system = [], [], [], [], []
        for trial_id, trial in zip(ids, trials):
            for name, value in trial.params.items():
                dist = trial.distributions[name]
                params.append({"trial_id": trial_id, "param_name": name, "param_value": dist.to_internal_repr(value),
                               "distribution_json": distribution_to_json(dist)})
            for objective, value in enumerate(trial.values or ()):
                stored, kind = _stored_float(value)
                values.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
            for step, value in trial.intermediate_values.items():
                stored, kind = _stored_float(value, nan=True)
                steps.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                              "intermediate_value_type": kind})
            user += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in trial.user_attrs.items()]
            system += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in trial.system_attrs.items()]
        for table, batch in (("trial_params", params), ("trial_values", values), ("trial_intermediate_values", steps),
                             ("trial_user_attributes", user), ("trial_system_attributes", system)):
            if batch:
                conn.execute(t[table].insert(), batch)


@dataclasses.dataclass
class Campaign:
    name: str
    trials: int
    seconds: float  # to generate and store it
    outcomes: dict[str, int]
    stages: list[int]


def generate(url: str, name: str, n: int, seed: int = SEED) -> Campaign:
    """Store a finished 3-stage campaign of ``n`` trials named ``name`` at ``url``."""
    started = time.perf_counter()
    rng = np.random.default_rng([seed, n])
    sizes = [round(share * n) for share in STAGE_SHARES[:-1]]
    sizes.append(n - sum(sizes))
    kinds = [stage_outcomes(size, rng) for size in sizes]
    budgets = [max(1, sum(k.split(":")[-1] not in ("FAIL", "STALE") for k in ks)) for ks in kinds]
    spec = CampaignSpec(name=name, space=bench_space(), stages=3, trials=budgets, epochs=list(DEFAULT_EPOCHS),
                        seed=seed % 100_000, seed_best=0)  # the seeded trial is written below, with its times
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    timeline = Timeline(STARTED, rng)
    try:
        plans, _ = open_campaign(url, storage, spec)
        plan, first = plans[0], None
        counts: Counter[str] = Counter()
        for stage in range(1, 4):
            if stage > 1:
                timeline.restart(timeline.end() + datetime.timedelta(seconds=3))  # the narrowing
                parent = plan
                plan, result = open_next_stage(url, storage, spec, parent)
                queued = seed_queue(result, result.space, parent, 1)
                first = queued[0] if queued else None
            trials = stage_trials(plan, kinds[stage - 1], timeline, rng, first)
            insert_trials(storage, plan.study_name, trials)
            close_stage(url, storage, plan)
            counts.update(outcome_name(t) for t in trials)
        # The stage's trials are numbered in the order they were added (it held none before).
        number, best = max(((i, t) for i, t in enumerate(trials) if t.state == TrialState.COMPLETE), key=lambda it: it[1].value)
        store_result(url, storage, spec, plan, FinalResult(
            study=plan.study_name, trial=number, params=dict(best.params), config=best.user_attrs["config"],
            val_accuracy=float(best.value), train_accuracy=min(1.0, best.value + 0.02), test_accuracy=best.value - 0.01,
        ))
    finally:
        storage.engine.dispose()
    return Campaign(name, n, time.perf_counter() - started, dict(counts), sizes)


def outcome_name(trial: FrozenTrial) -> str:
    """COMPLETE, PRUNED, DIVERGED, FAIL (an error), or FAIL_LOST (its worker was lost; retried)."""
    if is_diverged(trial.state.name, trial.user_attrs):
        return "DIVERGED"
    if trial.state == TrialState.FAIL and not trial.user_attrs.get("reason"):
        return "FAIL_LOST"
    return trial.state.name


# -- measuring -------------------------------------------------------------------------------
def measure(url: str, name: str, path: Path, repeat: int, profile: bool) -> dict[str, Any]:
    """Best-of-``repeat`` seconds of write_report, and of collect, render and the sections'
    figures (``hpo.report.sections``, part of render) timed apart; the page's bytes by section."""
    runs, collects, renders, builds = [], [], [], []
    storage = open_for_reading(url)
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            write_report(storage, url, name, path)
            runs.append(time.perf_counter() - started)
            started = time.perf_counter()
            data = collect(storage, url, name)
            collects.append(time.perf_counter() - started)
            started = time.perf_counter()
            render(data)
            renders.append(time.perf_counter() - started)
            started = time.perf_counter()
            sections(data)
            builds.append(time.perf_counter() - started)
        profiled = None
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            write_report(storage, url, name, path)
            prof.disable()
            profiled = profile_text(prof)
    finally:
        storage.engine.dispose()
    size = path.stat().st_size
    figures = {
        "report_seconds": round(min(runs), 3),
        "report_runs": [round(r, 3) for r in runs],
        "collect_seconds": round(min(collects), 3),
        "render_seconds": round(min(renders), 3),
        "sections_build_seconds": round(min(builds), 3),
        # What write_report does besides collect and render (writing the file, and whatever it
        # adds to the collected data); from best-of figures, so approximate.
        "rest_seconds": round(max(0.0, min(runs) - min(collects) - min(renders)), 3),
        "size_mb": round(size / 1e6, 3),
        "sections": page_sections(path.read_text(encoding="utf-8")),
        "report": str(path),
    }
    if profiled is not None:
        figures["profile"] = profiled
    return figures


_SECTION = re.compile(r'<section id="([^"]+)"')
_HOVER = re.compile(r'"(?:hover)?text":\[')


def _array_bytes(text: str, start: int) -> int:
    """The bytes of the JSON array that opens at ``text[start]`` (nested arrays included)."""
    depth, quoted, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if quoted:
            escaped, quoted = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            quoted = True
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return len(text[start:i + 1].encode())
    return 0


def page_sections(page: str) -> dict[str, dict[str, float]]:
    """The written page's bytes by part: ``head`` (Plotly's script, styles, title), the page's
    table of hover texts (each text once, shared by every figure that shows it), then each
    section (its figures' data included), with its figure count and the bytes of the hover
    texts written in its figures themselves (``text`` / ``hovertext`` arrays not shared)."""
    starts = [(m.start(), m.group(1)) for m in _SECTION.finditer(page)]
    table = page.find("<script>const HOVER_TEXTS")
    head = [(0, "head")] + ([(table, "hover texts (shared)"), (page.find("</script>", table) + len("</script>"), "head")] if table >= 0 else [])
    bounds = head + starts + [(len(page), None)]
    pieces: dict[str, list[str]] = {}  # the head comes in two pieces, around the table
    for (start, key), (end, _) in zip(bounds, bounds[1:]):
        pieces.setdefault(key, []).append(page[start:end])
    parts = {}
    for key, texts in pieces.items():
        text = "".join(texts)
        parts[key] = {
            "mb": round(len(text.encode()) / 1e6, 3),
            "figures": text.count("data-figure"),
            "hover_mb": round(sum(_array_bytes(text, m.end() - 1) for m in _HOVER.finditer(text)) / 1e6, 3),
        }
    return parts


def profile_text(prof: cProfile.Profile, lines: int = 25) -> str:
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)
    return text.getvalue()


def plotly_js_mb() -> float:
    import plotly.offline

    return round(len(plotly.offline.get_plotlyjs().encode()) / 1e6, 3)


def run(sizes: list[int], storage_url: str | None, repeat: int | None, profile: bool, out: Path | None,
        log=print) -> dict[str, Any]:
    token = uuid.uuid4().hex[:6]
    results = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-report-") as folder:
        reports = out or Path(folder)
        for n in sizes:
            url = storage_url or f"sqlite:///{Path(folder) / f'campaign-{n}.db'}"
            name = f"bench-{n}-{token}"
            campaign = generate(url, name, n)
            log(f"{n} trials: generated in {campaign.seconds:.1f}s {campaign.outcomes}")
            times = repeat or (1 if n >= TARGET_TRIALS else 3)
            figures = measure(url, name, reports / f"report-{n}.html", times, profile)
            log(f"{n} trials: report {figures['report_seconds']}s, {figures['size_mb']} MB")
            if profile:
                log(figures.pop("profile"))
            results.append({"trials": n, "stages": campaign.stages, "outcomes": campaign.outcomes,
                            "generation_seconds": round(campaign.seconds, 2), "repeat": times, **figures})
            if storage_url:
                forget(storage_url, name)
    return {"benchmark": "report", "machine": machine(), "storage": mask_url(storage_url) if storage_url else "sqlite (temporary file)",
            "plotly_js_mb": plotly_js_mb(), "results": results, "targets": targets(results)}


def forget(url: str, name: str) -> None:
    """Delete the campaign's stage studies from a storage the user gave."""
    storage = backend.open_storage(url, heartbeat=False)
    try:
        for stage in range(1, len(STAGE_SHARES) + 1):
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=f"{name}/stage-{stage}", storage=storage)
    finally:
        storage.engine.dispose()


def targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, at 10,000 trials (or the largest size measured, said as such)."""
    if not results:
        return {}
    r = max(results, key=lambda r: r["trials"])
    return {
        "at_trials": r["trials"],
        "target_trials": TARGET_TRIALS,
        "seconds": r["report_seconds"], "max_seconds": TARGET_SECONDS,
        "seconds_ratio": round(r["report_seconds"] / TARGET_SECONDS, 3),
        "seconds_met": r["report_seconds"] < TARGET_SECONDS,
        "mb": r["size_mb"], "max_mb": TARGET_MB,
        "mb_ratio": round(r["size_mb"] / TARGET_MB, 3),
        "mb_met": r["size_mb"] < TARGET_MB,
    }


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"hpo report of a 3-stage campaign ({report['storage']}); best of N runs")
    print(f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}, Optuna {m['optuna']}\n")
    rows = []
    for r in report["results"]:
        total = r["collect_seconds"] + r["render_seconds"]
        rows.append({
            "trials": r["trials"], "generate s": r["generation_seconds"], "N": r["repeat"],
            "report s": r["report_seconds"], "collect s": r["collect_seconds"], "render s": r["render_seconds"],
            "rest s": r["rest_seconds"],
            "collect %": round(100 * r["collect_seconds"] / total) if total else None,
            "MB": r["size_mb"],
        })
    print_table(rows, list(rows[0]) if rows else [])
    for r in report["results"]:
        section_rows = [{"part": key, "figures": part["figures"], "MB": part["mb"], "hover text MB": part["hover_mb"]}
                        for key, part in r["sections"].items()]
        print_table(section_rows, ["part", "figures", "MB", "hover text MB"],
                    title=f"{r['trials']} trials: the page by part (the sections' figures built in "
                          f"{r['sections_build_seconds']} s, within render)")
    print(f"Plotly's script, in every page whatever its size: {report['plotly_js_mb']} MB\n")
    t = report["targets"]
    if t:
        at = f"{t['at_trials']:,} trials" + ("" if t["at_trials"] == t["target_trials"] else f" (target set at {t['target_trials']:,})")
        print(f"target: report < {t['max_seconds']:g} s at {at}: {t['seconds']} s, "
              f"{t['seconds_ratio']:.2f}x the target -> {'PASS' if t['seconds_met'] else 'FAIL'}")
        print(f"target: file < {t['max_mb']:g} MB at {at}: {t['mb']} MB, "
              f"{t['mb_ratio']:.2f}x the target -> {'PASS' if t['mb_met'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated trial counts")
    parser.add_argument("--storage", default=None, help="a storage URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per size, the best counts (default 3; 1 at 10,000+)")
    parser.add_argument("--out", type=Path, default=None, help="a folder to keep the reports in (default: removed)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of write_report at each size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 trials, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = "30", args.repeat or 1
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated whole numbers, got {args.sizes!r}")
    if not sizes or min(sizes) < 10:
        parser.error("--sizes: each campaign needs at least 10 trials (3 stages, each with a complete trial)")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.out is not None and not args.out.is_dir():
        parser.error(f"--out: there is no folder {args.out}")
    if args.storage is not None:
        try:
            args.storage = resolve_url(args.storage)  # as hpo reads --storage: postgresql:// with psycopg 3
        except StorageError as e:
            parser.error(f"--storage: {e}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("hpo").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    try:
        report = run(sizes, args.storage, args.repeat, args.profile, args.out, log=lambda s: print(s, file=sys.stderr))
    except StorageError as e:  # a storage URL that is wrong or unreachable: one line
        print(f"report.py: {e}", file=sys.stderr)
        return 2
    except backend.DB_ERRORS as e:
        print(f"report.py: {backend.describe_db_error(args.storage or '', e)}", file=sys.stderr)
        return 2
    if args.json:
        dump_json(report)
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
