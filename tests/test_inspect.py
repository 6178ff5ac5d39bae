"""Read-only views of studies and trials, and fail-stale, on real SQLite files and PostgreSQL.

Studies are built with real Optuna trials (``study.ask`` / ``study.tell``) carrying the attrs the
workers write. On PostgreSQL the tests share the database ``test`` and each uses campaigns of its
own unique name, deleted afterwards.
"""

from __future__ import annotations

import json
import operator
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass

import optuna
import pytest
import sqlalchemy
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo import inspect
from storage import backend, records
from storage.errors import StorageError, StudyNotFound
from tests.helpers import backdate_heartbeats
from workers import stageplan
from workers.record import SUMMARY_ATTRS, read_record, summary_attrs
from workers.stageplan import StagePlan

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

PG_CANDIDATES = (
    "postgresql+psycopg://root@127.0.0.1:5432/test",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
SPACE = {
    "version": 1,
    "params": {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "activation": {"type": "choice", "choices": ["relu", "tanh"]},
    },
}
DISTRIBUTIONS = {
    "learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
    "activation": CategoricalDistribution(["relu", "tanh"]),
}
DIVERGED = "diverged at epoch 3, step 12: loss 7.2 > 3x initial 2.30"


# -- databases -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_test_url() -> str:
    """A PostgreSQL URL for the shared database ``test`` (schema ensured), or a skip."""
    problems = []
    for url in PG_CANDIDATES:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        except Exception as e:  # noqa: BLE001 - any failure means "not this one"
            problems.append(f"{url.split('//')[1].split('@')[0]}: {type(e).__name__}")
            continue
        finally:
            engine.dispose()
        backend.ensure_schema(url)
        return url
    pytest.skip(f"no PostgreSQL server reachable at 127.0.0.1:5432, database 'test' ({'; '.join(problems)})")


@dataclass
class Db:
    url: str
    storage: RDBStorage  # heartbeats on (grace = backend.HEARTBEAT_GRACE), as a worker's
    name: str  # a campaign name no other test uses


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """A SQLite file with Optuna's schema, copied for each test (creating the schema is slow)."""
    path = tmp_path_factory.mktemp("template") / "hpo.db"
    backend.ensure_schema(f"sqlite:///{path}")
    return path


def new_sqlite_url(template, folder) -> str:
    shutil.copyfile(template, folder / "hpo.db")
    return f"sqlite:///{folder / 'hpo.db'}"


def _open_db(kind: str, folder, request) -> Db:
    if kind == "sqlite":
        url = new_sqlite_url(request.getfixturevalue("sqlite_template"), folder)
    else:
        url = request.getfixturevalue("pg_test_url")
    db = Db(url, backend.open_storage(url, heartbeat=True), f"t{uuid.uuid4().hex[:10]}")
    return db


def _close_db(db: Db) -> None:
    for study in db.storage.get_all_studies():
        if study.study_name.startswith(db.name):
            optuna.delete_study(study_name=study.study_name, storage=db.storage)
    db.storage.engine.dispose()


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path):
    """An empty storage for this test, on a SQLite file and on PostgreSQL."""
    db = _open_db(request.param, tmp_path, request)
    yield db
    _close_db(db)


@pytest.fixture(scope="module", params=BACKENDS)
def campaign_db(request, tmp_path_factory):
    """A two-stage campaign with a final result and a plain study, shared by read-only tests."""
    db = _open_db(request.param, tmp_path_factory.mktemp("campaign"), request)
    build_campaign(db.storage, db.name)
    yield db
    _close_db(db)


# -- realistic studies ---------------------------------------------------------------------
def trial_attrs(number: int, worker: str, params: dict, accuracy: float) -> dict:
    """The attrs a worker stores for a trial that trained three epochs."""
    layers = [
        {"layer": 1, "units": 100, "activation_mean": 0.41, "activation_std": 0.62, "dead_fraction": 0.12,
         "saturation_fraction": 0.0, "grad_norm": 0.031, "update_ratio": 1.1e-3},
        {"layer": 2, "units": 100, "activation_mean": 0.37, "activation_std": 0.55, "dead_fraction": 0.25,
         "saturation_fraction": 0.0, "grad_norm": 0.027, "update_ratio": 9.0e-4},
    ]
    diagnostics = {"probe_size": 256, "layers": layers, "output_layer": {"grad_norm": 0.02, "update_ratio": 1e-3}}
    return {
        "seed": 7919 * number + 11,
        "config": {**params, "hidden_sizes": [100, 100], "epochs": 3, "seed": 7919 * number + 11},
        "curve": {"epoch": [1, 2, 3], "val_accuracy": [accuracy - 0.2, accuracy - 0.05, accuracy],
                  "train_loss": [1.9, 0.8, 0.45]},
        "diagnostics": diagnostics,
        "train_accuracy": min(1.0, accuracy + 0.03),
        "worker": worker,
        "timings": {"train_seconds": 2.0 if worker == "w1" else 4.0, "overhead_seconds": 0.5},
    }


def add_trial(study: optuna.Study, params: dict, state: TrialState | None, value=None, attrs=None) -> optuna.Trial:
    """Ask for a trial with these parameters and end it in ``state`` (None: leave it RUNNING)."""
    study.enqueue_trial(params)
    trial = study.ask(fixed_distributions=DISTRIBUTIONS)
    for key, v in (attrs or {}).items():
        trial.set_user_attr(key, v)
    if state is not None:
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return trial


def make_stage(storage, campaign: str, stage: int = 1, stages: int = 2, budget: int = 12) -> optuna.Study:
    plan = StagePlan(campaign=campaign, stage=stage, stages=stages, trials=budget, epochs=3,
                     dataset="digits", space=SPACE, seed=3)
    return stageplan.create_stage(storage, plan)


def build_campaign(storage, campaign: str) -> None:
    """stage-1: done, two trials. stage-2 (last): 3 complete, 1 pruned, 1 failed, 1 running,
    1 waiting, and the final result. Plus a plain minimizing Optuna study."""
    first = make_stage(storage, campaign, 1)
    for n, (lr, act, acc) in enumerate([(0.02, "relu", 0.80), (0.0003, "tanh", 0.70)]):
        p = {"learning_rate": lr, "activation": act}
        add_trial(first, p, TrialState.COMPLETE, acc, trial_attrs(n, "w1", p, acc))
    records.set_study_attr(storage, first.study_name, records.STATUS_ATTR, "done")

    second = make_stage(storage, campaign, 2, budget=6)
    rows = [
        ("relu", 0.01, TrialState.COMPLETE, 0.91, "w1"),
        ("tanh", 0.0005, TrialState.COMPLETE, 0.85, "w2"),
        ("relu", 0.05, TrialState.PRUNED, None, "w1"),
        ("tanh", 0.002, TrialState.FAIL, None, "w2"),
        ("relu", 0.001, TrialState.COMPLETE, 0.95, "w1"),
    ]
    for n, (act, lr, state, value, worker) in enumerate(rows):
        p = {"learning_rate": lr, "activation": act}
        attrs = trial_attrs(n, worker, p, value or 0.3)
        if state == TrialState.PRUNED:
            attrs = {k: attrs[k] for k in ("seed", "config", "worker", "timings")}
            attrs["reason"] = DIVERGED
            attrs["curve"] = {"epoch": [1, 2], "val_accuracy": [0.3, 0.1], "train_loss": [2.2, 7.2]}
        if state == TrialState.FAIL:
            attrs = {"seed": attrs["seed"], "worker": worker, "reason": "ValueError: bad batch", "timings": attrs["timings"]}
        add_trial(second, p, state, value, attrs)
    running = add_trial(second, {"learning_rate": 0.003, "activation": "tanh"}, None)
    storage.record_heartbeat(running._trial_id)
    second.enqueue_trial({"learning_rate": 0.02, "activation": "relu"})  # trial 6: WAITING
    records.set_study_attr(storage, second.study_name, records.RESULT_ATTR, {
        "study": second.study_name, "trial": 4, "params": {"learning_rate": 0.001, "activation": "relu"},
        "config": {"learning_rate": 0.001, "activation": "relu"}, "val_accuracy": 0.95,
        "train_accuracy": 0.99, "test_accuracy": 0.94, "skipped": [],
    })

    plain = optuna.create_study(storage=storage, study_name=f"{campaign}-plain", direction="minimize")
    for x in (0.5, 0.2, 0.9):
        trial = plain.ask({"x": FloatDistribution(0, 1)})
        plain.tell(trial, x * x)
        assert trial.params["x"] is not None


def backdate_heartbeat(storage, trial_id: int, seconds: int) -> None:
    """Make a trial's last heartbeat ``seconds`` older, by the database's own clock."""
    assert backdate_heartbeats(storage.engine, seconds, trial_id) == 1


def snapshot(storage, prefix: str) -> str:
    """Everything stored about the studies whose names start with ``prefix``, heartbeats included."""
    state = []
    for study in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        if not study.study_name.startswith(prefix):
            continue
        trials = storage.get_all_trials(study._study_id)
        state.append([study.study_name, study.user_attrs, [
            [t.number, t.state.name, t.values, t.params, t.user_attrs, t.system_attrs,
             str(t.datetime_start), str(t.datetime_complete), t.intermediate_values]
            for t in trials
        ]])
        with storage.engine.connect() as conn:
            beats = conn.execute(sqlalchemy.text(
                "SELECT h.trial_id, h.heartbeat FROM trial_heartbeats h JOIN trials t ON t.trial_id = h.trial_id "
                "WHERE t.study_id = :id ORDER BY h.trial_id"), {"id": study._study_id}).all()
        state.append([str(b) for b in beats])
    return json.dumps(state, default=str, sort_keys=True)


def stage2(db: Db) -> str:
    return stageplan.stage_study_name(db.name, 2)


# -- hpo studies ---------------------------------------------------------------------------
def test_studies_lists_stages_in_order_with_counts_budget_and_best(campaign_db):
    rows = [r for r in inspect.list_studies(campaign_db.storage) if r["study"].startswith(campaign_db.name)]
    assert [r["study"] for r in rows] == [f"{campaign_db.name}/stage-1", f"{campaign_db.name}/stage-2", f"{campaign_db.name}-plain"]
    first, second, plain = rows
    assert all(tuple(r) == inspect.STUDY_KEYS for r in rows)
    assert (first["stage"], first["stages"], first["status"], first["complete"], first["best"]) == (1, 2, "done", 2, 0.80)
    assert {k: second[k] for k in ("complete", "pruned", "diverged", "fail", "running", "waiting")} == {
        "complete": 3, "pruned": 0, "diverged": 1, "fail": 1, "running": 1, "waiting": 1}  # its PRUNED trial diverged
    assert (second["budget"], second["epochs"], second["best"], second["test_accuracy"]) == (6, 3, 0.95, 0.94)
    # A study hpo did not create is listed too, and its best respects its direction.
    assert plain["campaign"] is None and plain["budget"] is None and plain["direction"] == "minimize"
    assert plain["complete"] == 3 and plain["best"] == pytest.approx(min(t.value for t in optuna.load_study(
        study_name=plain["study"], storage=campaign_db.storage).trials))


# -- hpo trials ----------------------------------------------------------------------------
def test_trials_have_one_column_per_parameter_and_the_workers_attrs(campaign_db):
    selection = inspect.select_trials(campaign_db.storage, stage2(campaign_db))
    assert selection.columns == ["number", "state", "value", "learning_rate", "activation", "duration", "worker", "reason"]
    assert (selection.total, selection.matched) == (7, 7)
    by_number = {r["number"]: r for r in selection.rows}
    assert by_number[2]["state"] == "PRUNED" and by_number[2]["reason"] == DIVERGED
    assert by_number[0]["activation"] == "relu" and by_number[0]["learning_rate"] == 0.01
    assert by_number[0]["worker"] == "w1" and by_number[0]["duration"] >= 0
    assert by_number[5]["state"] == "RUNNING" and by_number[5]["duration"] is None
    assert by_number[6]["state"] == "WAITING"


def test_a_campaign_name_means_its_newest_stage(campaign_db):
    assert inspect.resolve_study(campaign_db.storage, campaign_db.name) == (stage2(campaign_db), campaign_db.name)
    assert inspect.resolve_study(campaign_db.storage, stage2(campaign_db)) == (stage2(campaign_db), None)
    with pytest.raises(StudyNotFound, match=r"^no study named 'nope' in this storage$"):
        inspect.resolve_study(campaign_db.storage, "nope")


@pytest.mark.parametrize(("where", "numbers"), [
    (["activation=relu"], [0, 2, 4, 6]),
    (["activation=RELU"], [0, 2, 4, 6]),  # text compares case-insensitively
    (["activation!=relu"], [1, 3, 5]),
    (["learning_rate>1e-3"], [0, 2, 3, 5, 6]),  # numbers compare as numbers, not as text
    (["learning_rate>=0.001", "learning_rate<=0.01"], [0, 3, 4, 5]),
    (["learning_rate=1e-2"], [0]),
    (["value>0.9"], [0, 4]),  # trials without a value never pass an ordering filter ...
    (["value!=0.91"], [1, 2, 3, 4, 5, 6]),  # ... but do pass "!="
    (["state=pruned"], [2]),
    (["worker = w2"], [1, 3]),
])
def test_where_filters(campaign_db, where, numbers):
    rows = inspect.select_trials(campaign_db.storage, stage2(campaign_db), where=where).rows
    assert [r["number"] for r in rows] == numbers


def test_state_filter_sort_limit_and_columns(campaign_db):
    selection = inspect.select_trials(campaign_db.storage, stage2(campaign_db), states="complete,Pruned",
                                      sort="-value", limit=3, columns="number,value,seed")
    assert selection.columns == ["number", "value", "seed"]
    assert [r["number"] for r in selection.rows] == [4, 0, 1]  # best first; the pruned trial (no value) last
    assert (selection.matched, selection.total) == (4, 4)
    ascending = inspect.select_trials(campaign_db.storage, stage2(campaign_db), states="complete,pruned", sort="value")
    assert [r["number"] for r in ascending.rows] == [1, 0, 4, 2]  # missing values go last either way
    by_text = inspect.select_trials(campaign_db.storage, stage2(campaign_db), sort="-activation")
    assert [r["activation"] for r in by_text.rows] == ["tanh"] * 3 + ["relu"] * 4


def test_a_filter_value_is_a_literal_never_sql(campaign_db):
    before = snapshot(campaign_db.storage, campaign_db.name)
    for where in ("activation=relu' OR '1'='1", "activation=relu\"; DROP TABLE trials; --", "reason=%"):
        assert inspect.select_trials(campaign_db.storage, campaign_db.name, where=[where]).rows == []
    assert snapshot(campaign_db.storage, campaign_db.name) == before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"where": ["colour=red"]}, "unknown column 'colour'; columns are: number, state, value, learning_rate"),
    ({"where": ["activation"]}, "bad filter 'activation'"),
    ({"where": ["learning_rate="]}, "bad filter"),
    ({"where": ["activation>relu"]}, "'>' needs a number"),
    ({"sort": "-colour"}, "unknown column 'colour'"),
    ({"columns": "number,colour"}, "unknown column 'colour'"),
    ({"states": "complete,done"}, "unknown state 'done': use complete, pruned, fail, running, waiting"),
])
def test_bad_queries_are_one_line_errors(campaign_db, kwargs, message):
    with pytest.raises(inspect.QueryError, match=message.replace("(", r"\(")) as info:
        inspect.select_trials(campaign_db.storage, stage2(campaign_db), **kwargs)
    assert "\n" not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(a=st.floats(allow_nan=False, allow_infinity=False, width=32),
       b=st.floats(allow_nan=False, allow_infinity=False, width=32),
       op=st.sampled_from(["<", "<=", ">", ">="]))
def test_ordering_filters_compare_like_numbers(a, b, op):
    condition = inspect.parse_where(f"x{op}{b!r}")
    expected = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op](a, b)
    assert condition.matches({"x": a}) == expected
    assert condition.matches({"x": repr(a)}) == expected  # numbers stored as text, too


# -- hpo trials CAMPAIGN -------------------------------------------------------------------
def test_a_campaign_lists_every_stage_with_a_stage_column(campaign_db):
    selection = inspect.select_trials(campaign_db.storage, campaign_db.name)
    assert selection.columns == ["stage", "number", "state", "value", "learning_rate", "activation", "duration", "worker", "reason"]
    assert [(r["stage"], r["number"]) for r in selection.rows] == [(1, 0), (1, 1), *((2, n) for n in range(7))]
    assert (selection.study, selection.campaign, selection.stages, selection.total) == (campaign_db.name, campaign_db.name, (1, 2), 9)
    # Each row is the row of its stage's study (the same trial, the same values).
    for stage in (1, 2):
        alone = inspect.select_trials(campaign_db.storage, stageplan.stage_study_name(campaign_db.name, stage))
        assert [r for r in selection.rows if r["stage"] == stage] == alone.rows
    # Filters, sorting and the stage column work across stages.
    best = inspect.select_trials(campaign_db.storage, campaign_db.name, states="complete", sort="-value", limit=3)
    assert [(r["stage"], r["number"], r["value"]) for r in best.rows] == [(2, 4, 0.95), (2, 0, 0.91), (2, 1, 0.85)]
    assert (best.matched, best.total) == (5, 5)
    first = inspect.select_trials(campaign_db.storage, campaign_db.name, where=["stage=1"])
    assert [(r["stage"], r["value"]) for r in first.rows] == [(1, 0.80), (1, 0.70)]


def test_stage_k_picks_one_stage_of_a_campaign(campaign_db):
    picked = inspect.select_trials(campaign_db.storage, campaign_db.name, stage=1)
    assert (picked.study, picked.stages, picked.total) == (f"{campaign_db.name}/stage-1", (1,), 2)
    assert picked.columns[0] == "stage" and {r["stage"] for r in picked.rows} == {1}
    # A study keeps its columns; its stage is there to ask for.
    study = inspect.select_trials(campaign_db.storage, stage2(campaign_db), columns="stage,number")
    assert {r["stage"] for r in study.rows} == {2} and study.campaign is None
    plain = inspect.select_trials(campaign_db.storage, f"{campaign_db.name}-plain", columns="stage,number")
    assert [r["stage"] for r in plain.rows] == [None] * 3


@pytest.mark.parametrize(("name", "stage", "message"), [
    ("{c}", 3, "campaign '{c}' has no stage 3; its stages are 1, 2"),
    ("{c}/stage-2", 2, "'{c}/stage-2' is a study, not a campaign: name the campaign to pick stage 2"),
])
def test_a_stage_the_campaign_does_not_have_is_a_query_error(campaign_db, name, stage, message):
    with pytest.raises(inspect.QueryError) as info:
        inspect.select_trials(campaign_db.storage, name.format(c=campaign_db.name), stage=stage)
    assert str(info.value) == message.format(c=campaign_db.name)


SUMMARY_COLUMNS = "final_train_loss,best_epoch,diverged,dead_fraction_max,saturation_fraction_max,update_ratio_max,update_ratio_min,train_seconds"


def test_the_diagnostic_summaries_are_columns_equal_to_the_records(campaign_db):
    selection = inspect.select_trials(campaign_db.storage, campaign_db.name, columns=f"stage,number,{SUMMARY_COLUMNS}")
    assert selection.columns == ["stage", "number", *SUMMARY_COLUMNS.split(",")]
    rows = {(r["stage"], r["number"]): r for r in selection.rows}
    # Trial 0 of stage 2 (written as a worker writes it, two hidden layers): the worst layer's
    # dead and saturated fractions, the update ratios of every weight matrix, the last loss.
    assert {k: rows[2, 0][k] for k in SUMMARY_COLUMNS.split(",")} == {
        "final_train_loss": 0.45, "best_epoch": 3, "diverged": False, "dead_fraction_max": 0.25,
        "saturation_fraction_max": 0.0, "update_ratio_max": 1.1e-3, "update_ratio_min": 9.0e-4, "train_seconds": 2.0}
    assert (rows[2, 2]["diverged"], rows[2, 2]["final_train_loss"], rows[2, 2]["dead_fraction_max"]) == (True, 7.2, None)
    assert rows[2, 5]["diverged"] is None  # still running: nothing to say yet
    for stage in (1, 2):
        study = optuna.load_study(study_name=stageplan.stage_study_name(campaign_db.name, stage), storage=campaign_db.storage)
        for trial in study.trials:
            expected = summary_attrs(read_record(trial))
            row = rows[stage, trial.number]
            assert {k: row[k] for k in SUMMARY_ATTRS if row[k] is not None} == expected


@pytest.mark.parametrize(("where", "sort", "keys"), [
    (["diverged=true"], None, [(2, 2)]),
    (["diverged=false", "stage=2"], None, [(2, 0), (2, 1), (2, 3), (2, 4)]),  # the failed trial did not diverge
    (["dead_fraction_max>=0.25"], "-value", [(2, 4), (2, 0), (2, 1), (1, 0), (1, 1)]),
    (["final_train_loss>1"], None, [(2, 2)]),
    (["update_ratio_min<1e-3"], "-final_train_loss", [(1, 0), (1, 1), (2, 0), (2, 1), (2, 4)]),  # ties keep stage order
    ([], "-final_train_loss", [(2, 2), (1, 0), (1, 1), (2, 0), (2, 1), (2, 4), (2, 3), (2, 5), (2, 6)]),
])
def test_diagnostic_columns_filter_and_sort(campaign_db, where, sort, keys):
    rows = inspect.select_trials(campaign_db.storage, campaign_db.name, where=where, sort=sort).rows
    assert [(r["stage"], r["number"]) for r in rows] == keys


# -- hpo trial -----------------------------------------------------------------------------
def test_trial_record_has_curve_diagnostics_seed_timings_and_worker(campaign_db):
    record = inspect.trial_record(campaign_db.storage, campaign_db.name, 0)
    assert (record["state"], record["value"], record["params"]["activation"]) == ("COMPLETE", 0.91, "relu")
    stored = read_record(record["user_attrs"])
    assert inspect.curve_rows(stored.curve) == [
        {"epoch": 1, "val_accuracy": pytest.approx(0.71), "train_loss": 1.9},
        {"epoch": 2, "val_accuracy": pytest.approx(0.86), "train_loss": 0.8},
        {"epoch": 3, "val_accuracy": 0.91, "train_loss": 0.45},
    ]
    layers = inspect.layer_rows(stored.diagnostics)
    assert [(r["layer"], r["dead_fraction"]) for r in layers] == [(1, 0.12), (2, 0.25)]
    summary = {r["field"]: r["value"] for r in inspect.summary_rows(record)}
    assert summary["seed"] == 11 and summary["worker"] == "w1" and summary["train_seconds"] == 2.0
    json.dumps(record)  # JSON-ready as it is


def test_diagnostics_become_one_row_per_layer(campaign_db):
    stored = read_record(inspect.trial_record(campaign_db.storage, campaign_db.name, 1)["user_attrs"])
    assert [(r["layer"], r["activation_std"]) for r in inspect.layer_rows(stored.diagnostics)] == [(1, 0.62), (2, 0.55)]
    as_trained = {"probe_size": 256, "layers": [{"layer": 1, "units": 100, "grad_norm": 1.0}, {"grad_norm": 2.0}],
                  "output_layer": {"grad_norm": 0.9}}  # the shape workers.train returns, partly filled
    rows = inspect.layer_rows(as_trained)
    assert [(r["layer"], r["units"], r["grad_norm"], r["dead_fraction"]) for r in rows] == [(1, 100, 1.0, None), (2, None, 2.0, None)]
    assert inspect.layer_rows(None) == [] and inspect.layer_rows("garbage") == []


def test_unknown_trial_number_is_a_query_error(campaign_db):
    with pytest.raises(inspect.QueryError, match="no trial 99 in"):
        inspect.trial_record(campaign_db.storage, campaign_db.name, 99)


# -- hpo best ------------------------------------------------------------------------------
def test_best_ranks_complete_trials_and_shows_the_campaigns_final_result(campaign_db):
    result = inspect.best_trials(campaign_db.storage, campaign_db.name, top=2)
    assert list(result) == ["study", "campaign", "direction", "trials", "final"]
    assert [(t["rank"], t["number"], t["value"]) for t in result["trials"]] == [(1, 4, 0.95), (2, 0, 0.91)]
    assert result["trials"][0]["params"] == {"learning_rate": 0.001, "activation": "relu"}
    assert result["trials"][0]["seed"] == 4 * 7919 + 11
    assert result["final"]["test_accuracy"] == 0.94
    # Named by its stage, the study shows its trials only.
    assert inspect.best_trials(campaign_db.storage, stage2(campaign_db))["final"] is None
    plain = inspect.best_trials(campaign_db.storage, f"{campaign_db.name}-plain", top=3)
    values = [t["value"] for t in plain["trials"]]
    assert plain["direction"] == "minimize" and values == sorted(values)


# -- hpo health ----------------------------------------------------------------------------
def build_running(db: Db, workers=("w1", "w2")) -> tuple[optuna.Study, list[optuna.Trial]]:
    """A stage with two finished trials and one RUNNING trial per worker, all beating now."""
    study = make_stage(db.storage, db.name)
    for n, worker in enumerate(workers):
        p = {"learning_rate": 0.01, "activation": "relu"}
        add_trial(study, p, TrialState.COMPLETE, 0.9, trial_attrs(n, worker, p, 0.9))
    running = []
    for worker in workers:
        trial = add_trial(study, {"learning_rate": 0.02, "activation": "tanh"}, None, attrs={"worker": worker})
        db.storage.record_heartbeat(trial._trial_id)
        running.append(trial)
    return study, running


def test_health_reports_heartbeat_ages_workers_and_time(db):
    study, running = build_running(db)
    backdate_heartbeat(db.storage, running[1]._trial_id, 120)
    report = inspect.study_health(db.storage, study.study_name, grace=30)
    assert report["counts"] == {"COMPLETE": 2, "PRUNED": 0, "DIVERGED": 0, "FAIL": 0, "RUNNING": 2, "WAITING": 0}
    fresh, old = report["running"]
    assert (fresh["number"], fresh["worker"], fresh["stale"]) == (2, "w1", False)
    assert 0 <= fresh["heartbeat_age"] < 10
    assert (old["number"], old["worker"], old["stale"]) == (3, "w2", True)
    assert 115 < old["heartbeat_age"] < 130
    assert report["stale"] == [3]
    assert [(w["worker"], w["trials"], w["complete"], w["mean_train_seconds"]) for w in report["workers"]] == [
        ("w1", 2, 1, 2.0), ("w2", 2, 1, 4.0)]  # RUNNING trials count for their worker, without timings
    assert report["time"] == {"train_seconds": 6.0, "overhead_seconds": 1.0, "overhead_fraction": round(1 / 7, 4)}


def test_a_running_trial_without_a_heartbeat_is_never_stale(db):
    study = make_stage(db.storage, db.name)
    add_trial(study, {"learning_rate": 0.01, "activation": "relu"}, None)
    report = inspect.study_health(db.storage, study.study_name, grace=0)
    assert report["running"] == [{"number": 0, "worker": None, "heartbeat_age": None, "stale": False}]


# -- hpo fail-stale ------------------------------------------------------------------------
def test_fail_stale_fails_once_and_queues_one_retry(db):
    study, running = build_running(db)
    backdate_heartbeat(db.storage, running[0]._trial_id, 300)
    first = inspect.fail_stale(db.storage, db.url, study.study_name)
    assert [(f["number"], f["worker"], f["retry"]) for f in first["failed"]] == [(2, "w1", 4)]
    assert first["failed"][0]["heartbeat_age"] > 290 and first["still_running"] == 1
    again = inspect.fail_stale(db.storage, db.url, study.study_name)
    assert again["failed"] == [] and again["still_running"] == 1
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "RUNNING", "WAITING"]
    retry = trials[4]
    assert retry.system_attrs["failed_trial"] == 2 and retry.params == trials[2].params
    record = inspect.trial_record(db.storage, study.study_name, 2)
    assert record["retry"]["retried_as"] == [4]


def test_fail_stale_with_workers_reaping_at_the_same_time_fails_each_trial_once(db):
    study, running = build_running(db, workers=("w1", "w2", "w3"))
    for trial in running:
        backdate_heartbeat(db.storage, trial._trial_id, 300)
    reports, errors = [], []

    def command() -> None:
        storage = backend.open_storage(db.url, heartbeat=True)
        try:
            reports.append(inspect.fail_stale(storage, db.url, study.study_name))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            storage.engine.dispose()

    def worker() -> None:  # what a worker does before taking a trial
        storage = backend.open_storage(db.url, heartbeat=True)
        try:
            with backend.exclusive(db.url, study.study_name, storage.engine):
                optuna.storages.fail_stale_trials(optuna.load_study(study_name=study.study_name, storage=storage))
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        finally:
            storage.engine.dispose()

    threads = [threading.Thread(target=f) for f in (command, worker, command, worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    trials = study.get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3 + ["FAIL"] * 3 + ["WAITING"] * 3
    assert sorted(t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING) == [3, 4, 5]
    assert sum(len(r["failed"]) for r in reports) <= 3


def test_a_retry_that_goes_stale_is_failed_without_another_retry(db):
    study, running = build_running(db, workers=("w1",))
    backdate_heartbeat(db.storage, running[0]._trial_id, 300)
    assert inspect.fail_stale(db.storage, db.url, study.study_name)["failed"][0]["retry"] == 2
    retry = study.ask(fixed_distributions=DISTRIBUTIONS)  # a worker takes the retry ...
    assert retry.number == 2
    db.storage.record_heartbeat(retry._trial_id)
    backdate_heartbeat(db.storage, retry._trial_id, 300)  # ... and dies too
    report = inspect.fail_stale(db.storage, db.url, study.study_name)
    assert [(f["number"], f["retry"]) for f in report["failed"]] == [(2, None)]
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "FAIL"]


def test_a_heartbeat_older_than_a_tiny_grace_period_goes_stale_in_real_time(db):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = RDBStorage(db.url, heartbeat_interval=1, grace_period=1,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    try:
        study = make_stage(storage, db.name)
        trial = add_trial(study, {"learning_rate": 0.01, "activation": "relu"}, None, attrs={"worker": "w9"})
        storage.record_heartbeat(trial._trial_id)
        assert inspect.study_health(storage, study.study_name, grace=1)["stale"] == []
        time.sleep(2.1 if storage.engine.dialect.name == "sqlite" else 1.3)  # SQLite beats in whole seconds
        assert inspect.study_health(storage, study.study_name, grace=1)["stale"] == [0]
        report = inspect.fail_stale(storage, db.url, study.study_name)
        assert [(f["number"], f["worker"], f["retry"]) for f in report["failed"]] == [(0, "w9", 1)]
    finally:
        storage.engine.dispose()


def test_fail_stale_needs_a_heartbeat_storage(db):
    make_stage(db.storage, db.name)
    storage = backend.open_storage(db.url, heartbeat=False)
    try:
        with pytest.raises(ValueError, match="heartbeats enabled"):
            inspect.fail_stale(storage, db.url, db.name)
    finally:
        storage.engine.dispose()


# -- opening -------------------------------------------------------------------------------
def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(StorageError, match=r"^no database at sqlite:///.*missing\.db: nothing to inspect yet$"):
        inspect.open_for_reading(f"sqlite:///{path}")
    assert not path.exists()
