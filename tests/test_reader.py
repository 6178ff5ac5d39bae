"""storage.reader.ReadOnlyStorage reads what Optuna's RDBStorage reads, on SQLite and PostgreSQL.

Every read of the read-only storage is compared with RDBStorage's on the same database, holding
what a study can hold: every state, infinite and NaN values, each kind of distribution, nested
attrs, several objectives; a campaign database written by an older hpo too. A change in
Optuna's tables that the reader does not follow fails here.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from storage import backend
from storage.reader import ReadOnlyStorage

FIXTURES = Path(__file__).parent / "fixtures"


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, in nested lists and dicts."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def assert_same_trial(read, expected) -> None:
    for field in ("number", "state", "values", "datetime_start", "datetime_complete", "params",
                  "distributions", "user_attrs", "system_attrs", "intermediate_values", "_trial_id"):
        assert same(getattr(read, field), getattr(expected, field)), (expected.number, field, getattr(read, field), getattr(expected, field))


def fill(url: str) -> None:
    """Two studies holding a bit of everything Optuna stores."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name="one/stage-1", direction="maximize")
    study.set_user_attr("hpo", {"stage": 1, "nested": [1, {"a": None}], "text": "x' OR 1=1 --"})
    study.set_user_attr("hpo_status", "running")
    storage = backend.open_storage(url, heartbeat=False)
    storage.set_study_system_attr(storage.get_study_id_from_name("one/stage-1"), "seen", [1, "a"])
    storage.engine.dispose()
    lr = FloatDistribution(1e-7, 1.0, log=True)
    units = IntDistribution(8, 128, step=8)
    choice = CategoricalDistribution(["relu", "tanh", None, True, 2, 0.5])
    for number, (state, value) in enumerate([
        (TrialState.COMPLETE, 0.91), (TrialState.COMPLETE, math.inf), (TrialState.PRUNED, None),
        (TrialState.FAIL, None), (TrialState.COMPLETE, -math.inf), (TrialState.COMPLETE, -0.0),
    ]):
        study.add_trial(create_trial(
            state=state, value=value,
            params={"learning_rate": 10 ** -(number + 1), "units": 8 * (number + 1), "activation": choice.choices[number]},
            distributions={"learning_rate": lr, "units": units, "activation": choice},
            user_attrs={"reason": f"r{number}", "curve": {"loss": [1.5, math.inf], "acc": [0.1, 0.2]}, "n": number},
            system_attrs={"seed": number},
            intermediate_values={0: 0.1, 1: math.nan, 2: math.inf, 3: -math.inf} if state == TrialState.PRUNED else {0: 0.5},
        ))
    running = study.ask({"learning_rate": lr})  # RUNNING, one param
    study.set_user_attr("running", running.number)
    study.enqueue_trial({"learning_rate": 0.01}, user_attrs={"retry_of": 3})  # WAITING
    optuna.create_study(storage=url, study_name="two objectives", directions=["minimize", "maximize"]).add_trial(
        create_trial(values=[0.5, math.inf], params={}, distributions={})
    )
    optuna.create_study(storage=url, study_name="empty")


@pytest.fixture
def filled(storage_url):
    backend.ensure_schema(storage_url)
    fill(storage_url)
    rdb = backend.open_storage(storage_url, heartbeat=False)
    reader = backend.open_reader(storage_url)
    yield rdb, reader
    rdb.engine.dispose()
    reader.engine.dispose()


def assert_reads_the_same(rdb: RDBStorage, reader: BaseStorage) -> None:
    studies, expected_studies = reader.get_all_studies(), rdb.get_all_studies()
    assert [s.study_name for s in studies] == [s.study_name for s in expected_studies]
    for study, expected in zip(studies, expected_studies):
        assert same(study.user_attrs, expected.user_attrs) and same(study.system_attrs, expected.system_attrs)
        assert study.directions == expected.directions and study._study_id == expected._study_id
        study_id = expected._study_id
        assert reader.get_study_id_from_name(expected.study_name) == study_id
        assert reader.get_study_name_from_id(study_id) == expected.study_name
        assert reader.get_study_directions(study_id) == rdb.get_study_directions(study_id)
        assert same(reader.get_study_user_attrs(study_id), rdb.get_study_user_attrs(study_id))
        assert same(reader.get_study_system_attrs(study_id), rdb.get_study_system_attrs(study_id))
        trials, expected_trials = reader.get_all_trials(study_id), rdb.get_all_trials(study_id)
        assert [t.number for t in trials] == [t.number for t in expected_trials]
        for trial, expected_trial in zip(trials, expected_trials):
            assert_same_trial(trial, expected_trial)
            assert_same_trial(reader.get_trial(expected_trial._trial_id), expected_trial)
            assert reader.get_trial_id_from_study_id_trial_number(study_id, trial.number) == expected_trial._trial_id
        for states in ((TrialState.COMPLETE,), (TrialState.PRUNED, TrialState.FAIL), (TrialState.WAITING,), ()):
            assert [t.number for t in reader.get_all_trials(study_id, states=states)] == [
                t.number for t in rdb.get_all_trials(study_id, states=states)]
            assert reader.get_n_trials(study_id, states) == rdb.get_n_trials(study_id, states)
        assert reader.get_n_trials(study_id) == rdb.get_n_trials(study_id)
        assert reader.get_n_trials(study_id, TrialState.COMPLETE) == rdb.get_n_trials(study_id, TrialState.COMPLETE)


def test_every_read_equals_rdbstorage(filled):
    rdb, reader = filled
    assert_reads_the_same(rdb, reader)
    # what the fill meant to store is there (so the comparison compared something)
    study_id = reader.get_study_id_from_name("one/stage-1")
    states = [t.state for t in reader.get_all_trials(study_id)]
    assert states.count(TrialState.COMPLETE) == 4 and {TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL} <= set(states)
    pruned = reader.get_all_trials(study_id, states=(TrialState.PRUNED,))[0]
    assert math.isnan(pruned.intermediate_values[1]) and pruned.intermediate_values[2] == math.inf
    assert reader.get_study_directions(reader.get_study_id_from_name("two objectives")) == [
        StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE]


def test_optuna_reads_a_study_through_it(filled):
    """Optuna's own Study API (what hpo importance and the report use) works over it."""
    rdb, reader = filled
    study = optuna.load_study(study_name="one/stage-1", storage=reader)
    expected = optuna.load_study(study_name="one/stage-1", storage=rdb)
    assert study.best_trial.number == expected.best_trial.number and study.best_value == math.inf
    assert [t.number for t in study.trials] == [t.number for t in expected.trials]


def test_missing_names_raise_keyerror_as_optuna_does(filled):
    rdb, reader = filled
    missing_id = max(s._study_id for s in rdb.get_all_studies()) + 100
    for call in (
        lambda s: s.get_study_id_from_name("nope"),
        lambda s: s.get_study_name_from_id(missing_id),
        lambda s: s.get_study_directions(missing_id),
        lambda s: s.get_study_user_attrs(missing_id),
        lambda s: s.get_study_system_attrs(missing_id),
        lambda s: s.get_all_trials(missing_id),
        lambda s: s.get_n_trials(missing_id),
        lambda s: s.get_trial(10**9),
        lambda s: s.get_trial_id_from_study_id_trial_number(s.get_study_id_from_name("empty"), 0),
    ):
        with pytest.raises(KeyError):
            call(rdb)
        with pytest.raises(KeyError):
            call(reader)
    empty = reader.get_study_id_from_name("empty")
    assert reader.get_all_trials(empty) == [] and reader.get_n_trials(empty) == 0


def test_every_write_is_refused_and_nothing_is_written(filled):
    rdb, reader = filled
    before = len(rdb.get_all_studies())
    writes = sorted(name for name in BaseStorage.__abstractmethods__ if not name.startswith("get_"))
    assert len(writes) == 10
    for name in writes:
        with pytest.raises(NotImplementedError, match="only reads"):
            getattr(reader, name)(0, "x", 1)
    with pytest.raises(NotImplementedError):
        optuna.create_study(storage=reader, study_name="new")
    assert len(rdb.get_all_studies()) == before


def test_a_campaign_written_by_an_earlier_hpo_reads_the_same(tmp_path):
    path = tmp_path / "trials_v1.db"
    shutil.copy(FIXTURES / "trials_v1.db", path)
    url = f"sqlite:///{path}"
    rdb = backend.open_storage(url, heartbeat=False, check_version=False)
    reader = backend.open_reader(url)
    try:
        assert sum(len(rdb.get_all_trials(s._study_id)) for s in rdb.get_all_studies()) > 0
        assert_reads_the_same(rdb, reader)
    finally:
        rdb.engine.dispose()
        reader.engine.dispose()


def test_reading_loads_no_orm_models_or_alembic(tmp_path):
    """The point of the reader: a command that only reads loads neither SQLAlchemy's ORM,
    Optuna's models nor Alembic (about 0.4 s), whatever it reads."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'r.db'}"
    backend.ensure_schema(url)
    fill(url)
    code = (
        "import sys; from storage import backend; r = backend.open_reader(sys.argv[1]); "
        "n = len(r.get_all_studies()); "
        "loaded = [m for m in ('sqlalchemy.orm', 'optuna.storages._rdb.models', 'alembic') if m in sys.modules]; "
        "print(n, loaded)"
    )
    result = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent.parent)
    assert result.stdout.split(" ", 1) == ["3", "[]\n"], result.stdout + result.stderr


def test_hpo_trials_reads_the_same_rows_without_the_attrs_it_does_not_show(tmp_path, monkeypatch):
    """`hpo trials` leaves the record's largest attrs unread (hpo.inspect.UNLISTED_ATTRS): every
    column, the diagnostic summaries included, is what it is when every attr is read."""
    from benchmarks.report import generate
    from hpo import inspect

    url = f"sqlite:///{tmp_path / 'c.db'}"
    backend.ensure_schema(url)
    generate(url, "c", 60)
    reader = backend.open_reader(url)
    every_column = ",".join(inspect.select_trials(reader, "c").columns + list(inspect.EXTRA_TRIAL_COLUMNS))
    shown = inspect.select_trials(reader, "c", columns=every_column)
    monkeypatch.setattr(inspect, "UNLISTED_ATTRS", ())
    whole = inspect.select_trials(reader, "c", columns=every_column)
    trial = reader.get_all_trials(reader.get_study_id_from_name("c/stage-1"))[0]
    reader.engine.dispose()
    assert len(shown.rows) == 60 and shown == whole
    assert {"histograms", "config"} <= set(trial.user_attrs)  # they were there to leave out
