"""Optuna's tables read with plain SQL: the trial rows both hpo storages decode, and a storage
for the commands that only look.

``RDBStorage``'s constructor loads SQLAlchemy's ORM, Optuna's table models and Alembic before
its first query: about 0.4 s of the 1 s an inspection command took, more than the reading
itself. :class:`ReadOnlyStorage` answers Optuna's storage API for reading (studies, their attrs
and directions, trials) from the same tables with SQLAlchemy Core, in one or two queries per
call, and refuses every write. ``hpo studies / trials / trial / best / health``, ``hpo report``
and ``hpo importance`` read through it; the workers' storage
(``storage.worker_storage.WorkerStorage``) reads trials with the same query and decoding
(:func:`read_details`, :func:`frozen_trial`).

What this module knows of Optuna's schema, and why it may: the table and column names, and
how ``RDBStorage`` stores what is not a plain value (states and directions by enum name, a
value's infinities and NaN in a type column beside a NULL float, naive UTC timestamps,
distributions and attrs as JSON). ``tests/test_reader.py`` compares every read here with
``RDBStorage``'s on the same database, over SQLite and PostgreSQL, and
``tests/test_optuna_internals.py`` checks the value encodings below against Optuna's models,
so a change of schema fails there by name. Private names used: ``FrozenStudy`` (the type
``get_all_studies`` returns; Optuna has no public constructor for it) and ``FrozenTrial``'s
``trial_id`` argument (public in the constructor, private as an attribute).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
from collections.abc import Collection, Container
from typing import Any, NoReturn

import sqlalchemy
from optuna import distributions
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from storage.states import state_name

# How RDBStorage stores a value it cannot put in a float column: the type column's enum name,
# and the value it stands for (the float column is NULL then). A FINITE value is the float.
# Optuna's models: TrialValueModel.TrialValueType, TrialIntermediateValueModel.TrialIntermediateValueType.
NON_FINITE_VALUES = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}

# One row per param / attr / value of the trials asked for: (trial_id, kind, key, num, text,
# int, id). Kinds: 0 param, 1 user attr, 2 system attr, 3 intermediate value, 4 value. The
# casts name each dialect's types (DETAILS_CASTS); ``key`` is quoted where it is a reserved word
# (MySQL). {omit}: empty, or a condition that leaves out the user attrs named in :omit.
DETAILS_SQL = """
SELECT trial_id, 0 AS kind, CAST(param_name AS {varchar}(512)) AS {key}, CAST(param_value AS {double}) AS num,
       CAST(distribution_json AS {text}) AS text, CAST(NULL AS {int}) AS n, param_id AS id
  FROM trial_params WHERE {where}
UNION ALL SELECT trial_id, 1, {key}, NULL, value_json, NULL, trial_user_attribute_id
  FROM trial_user_attributes WHERE {where}{omit}
UNION ALL SELECT trial_id, 2, {key}, NULL, value_json, NULL, trial_system_attribute_id
  FROM trial_system_attributes WHERE {where}
UNION ALL SELECT trial_id, 3, CAST(intermediate_value_type AS {varchar}(16)), intermediate_value, NULL, step, trial_intermediate_value_id
  FROM trial_intermediate_values WHERE {where}
UNION ALL SELECT trial_id, 4, CAST(value_type AS {varchar}(16)), value, NULL, objective, trial_value_id
  FROM trial_values WHERE {where}
ORDER BY 1, 2, 7
"""
DETAILS_CASTS = {"mysql": {"varchar": "CHAR", "double": "DOUBLE", "text": "CHAR", "int": "SIGNED"}}
STANDARD_CASTS = {"varchar": "VARCHAR", "double": "DOUBLE PRECISION", "text": "TEXT", "int": "INTEGER"}
MAX_IDS = 2000  # trial ids per details query (bound parameters stay far below every limit)
TRIAL_COLUMNS = "trial_id, number, state, datetime_start, datetime_complete"  # what frozen_trial takes


@functools.lru_cache(maxsize=256)
def sql(text: str, expanding: tuple[str, ...] = ()) -> sqlalchemy.TextClause:
    """``sqlalchemy.text(text)``, made once (``expanding``: binds that take a list)."""
    clause = sqlalchemy.text(text)
    if expanding:
        clause = clause.bindparams(*(sqlalchemy.bindparam(name, expanding=True) for name in expanding))
    return clause


@functools.lru_cache(maxsize=256)
def parse_distribution(text: str) -> distributions.BaseDistribution:
    """A stored distribution, parsed once per text (a study's trials share a few texts). The
    other way round is not cached: distributions compare equal across choice types
    (``(1, 2) == (1.0, 2.0)``, ``(True, False) == (1, 0)``) where their JSON differs."""
    return distributions.json_to_distribution(text)


def local_time(utc: datetime.datetime | str | None) -> datetime.datetime | None:
    """A naive UTC timestamp as stored by Optuna -> naive local time, as Optuna returns it."""
    if utc is None:
        return None
    if isinstance(utc, str):  # SQLite through a text query
        utc = datetime.datetime.fromisoformat(utc)
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def stored_value(num: float | None, type_name: str) -> float:
    """A value or intermediate value as RDBStorage stored it (a float, or NULL and its type)."""
    return NON_FINITE_VALUES[type_name] if type_name in NON_FINITE_VALUES else float(num)  # type: ignore[arg-type]


def read_details(conn: sqlalchemy.Connection, trial_ids: list[int], whole_study: int | None = None,
                 omit_user_attrs: Collection[str] = ()) -> dict[int, list]:
    """The params, attrs and values of ``trial_ids``, per trial id (rows of DETAILS_SQL).

    ``whole_study``: the trials are every trial of that study; above MAX_IDS of them they are
    selected by study, not listed. ``omit_user_attrs``: user attrs not to read."""
    if not trial_ids:
        return {}
    dialect = conn.dialect
    key = dialect.identifier_preparer.quote("key")
    omit = f" AND {key} NOT IN :omit" if omit_user_attrs else ""
    binds: dict[str, Any] = {"omit": sorted(omit_user_attrs)} if omit_user_attrs else {}
    expanding = ("omit",) if omit_user_attrs else ()

    def details(where: str) -> str:
        return DETAILS_SQL.format(where=where, key=key, omit=omit, **DETAILS_CASTS.get(dialect.name, STANDARD_CASTS))

    rows: list = []
    if whole_study is not None and len(trial_ids) > MAX_IDS:
        query = sql(details("trial_id IN (SELECT trial_id FROM trials WHERE study_id = :study_id)"), expanding)
        rows = conn.execute(query, {"study_id": whole_study, **binds}).all()
    else:
        query = sql(details("trial_id IN :ids"), ("ids", *expanding))
        for start in range(0, len(trial_ids), MAX_IDS):
            rows += conn.execute(query, {"ids": trial_ids[start : start + MAX_IDS], **binds}).all()
    by_trial: dict[int, list] = {}
    for row in rows:
        by_trial.setdefault(row[0], []).append(row)
    return by_trial


def frozen_trial(row: Any, details: list | None) -> FrozenTrial:
    """A trial from its row (TRIAL_COLUMNS) and its rows of DETAILS_SQL."""
    trial_id, number, state, start, complete = row
    params: dict[str, Any] = {}
    dists: dict[str, distributions.BaseDistribution] = {}
    user_attrs: dict[str, Any] = {}
    system_attrs: dict[str, Any] = {}
    intermediate: dict[int, float] = {}
    values: dict[int, float] = {}
    for _, kind, key, num, text, n, _ in details or ():
        if kind == 0:
            dist = parse_distribution(text)
            dists[key] = dist
            params[key] = dist.to_external_repr(num)
        elif kind == 1:
            user_attrs[key] = json.loads(text)
        elif kind == 2:
            system_attrs[key] = json.loads(text)
        elif kind == 3:
            intermediate[int(n)] = stored_value(num, key)
        else:
            values[int(n)] = stored_value(num, key)
    return FrozenTrial(
        number=number,
        state=TrialState[state_name(state)],
        value=None,
        values=[values[k] for k in sorted(values)] if values else None,
        datetime_start=local_time(start),
        datetime_complete=local_time(complete),
        params=params,
        distributions=dists,
        user_attrs=dict(sorted(user_attrs.items())),  # by key, as RDBStorage returns them
        system_attrs=dict(sorted(system_attrs.items())),
        intermediate_values=intermediate,
        trial_id=trial_id,
    )


class ReadOnlyStorage(BaseStorage):
    """Optuna's storage API for reading, on the engine of an RDB storage's database; every
    write raises. Reads are not cached: each call reads the database as it is now."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self.engine = engine
        self._key = engine.dialect.identifier_preparer.quote("key")  # reserved on MySQL

    def _rows(self, query: str, params: dict[str, Any], expanding: tuple[str, ...] = ()) -> list[Any]:
        with self.engine.connect() as conn:
            return conn.execute(sql(query, expanding), params).all()

    # -- studies ---------------------------------------------------------------------------------
    def get_study_id_from_name(self, study_name: str) -> int:
        rows = self._rows("SELECT study_id FROM studies WHERE study_name = :name", {"name": study_name})
        if not rows:
            raise KeyError(f"No such study {study_name}.")
        return int(rows[0][0])

    def get_study_name_from_id(self, study_id: int) -> str:
        rows = self._rows("SELECT study_name FROM studies WHERE study_id = :id", {"id": study_id})
        if not rows:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return rows[0][0]

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        rows = self._rows(
            "SELECT s.study_id, d.direction FROM studies s LEFT JOIN study_directions d ON d.study_id = s.study_id "
            "WHERE s.study_id = :id ORDER BY d.objective",
            {"id": study_id},
        )
        if not rows:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return [StudyDirection[state_name(direction)] for _, direction in rows if direction is not None]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("study_user_attributes", study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._study_attrs("study_system_attributes", study_id)

    def _study_attrs(self, table: str, study_id: int) -> dict[str, Any]:
        rows = self._rows(
            f"SELECT s.study_id, a.{self._key}, a.value_json FROM studies s LEFT JOIN {table} a ON a.study_id = s.study_id "
            "WHERE s.study_id = :id",
            {"id": study_id},
        )
        if not rows:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return {key: json.loads(value) for _, key, value in rows if key is not None}

    def get_all_studies(self) -> list[FrozenStudy]:
        """Every study, in id order, with its directions and attrs: four queries in all."""
        with self.engine.connect() as conn:
            names = conn.execute(sql("SELECT study_id, study_name FROM studies ORDER BY study_id")).all()
            directions: dict[int, list[StudyDirection]] = {}
            for study_id, direction in conn.execute(
                sql("SELECT study_id, direction FROM study_directions ORDER BY study_id, objective")
            ):
                directions.setdefault(study_id, []).append(StudyDirection[state_name(direction)])
            attrs: dict[str, dict[int, dict[str, Any]]] = {}
            for table in ("study_user_attributes", "study_system_attributes"):
                attrs[table] = {}
                for study_id, key, value in conn.execute(sql(f"SELECT study_id, {self._key}, value_json FROM {table}")):
                    attrs[table].setdefault(study_id, {})[key] = json.loads(value)
        return [
            FrozenStudy(
                study_name=name,
                direction=None,
                directions=directions.get(study_id, []),
                user_attrs=attrs["study_user_attributes"].get(study_id, {}),
                system_attrs=attrs["study_system_attributes"].get(study_id, {}),
                study_id=study_id,
            )
            for study_id, name in names
        ]

    # -- trials ----------------------------------------------------------------------------------
    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self.engine.connect() as conn:
            row = conn.execute(sql(f"SELECT {TRIAL_COLUMNS} FROM trials WHERE trial_id = :id"), {"id": trial_id}).first()
            if row is None:
                raise KeyError(f"No trial with trial_id {trial_id} exists.")
            return frozen_trial(row, read_details(conn, [trial_id]).get(trial_id))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        rows = self._rows(
            "SELECT trial_id FROM trials WHERE study_id = :study_id AND number = :number",
            {"study_id": study_id, "number": trial_number},
        )
        if not rows:
            raise KeyError(f"No trial with trial number {trial_number} exists in study with study_id {study_id}.")
        return int(rows[0][0])

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None,
        *, omit_user_attrs: Collection[str] = (),
    ) -> list[FrozenTrial]:
        """Every trial of the study in number order (or those in ``states``): two queries.
        Each call builds new trials, so ``deepcopy`` changes nothing. ``omit_user_attrs``: user
        attrs left out of the trials (a view that does not show them need not read them)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sql(f"SELECT {TRIAL_COLUMNS} FROM trials WHERE study_id = :id ORDER BY number"), {"id": study_id}
            ).all()
            if not rows:
                self._check_study(conn, study_id)
            whole_study: int | None = study_id
            if states is not None:
                rows = [r for r in rows if TrialState[state_name(r[2])] in states]
                whole_study = None
            details = read_details(conn, [r[0] for r in rows], whole_study, omit_user_attrs)
        return [frozen_trial(r, details.get(r[0])) for r in rows]

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        """One COUNT, not a read of every trial."""
        with self.engine.connect() as conn:
            counts = conn.execute(
                sql("SELECT state, COUNT(*) FROM trials WHERE study_id = :id GROUP BY state"), {"id": study_id}
            ).all()
            if not counts:
                self._check_study(conn, study_id)
        wanted = None if state is None else {state} if isinstance(state, TrialState) else set(state)
        return sum(int(n) for name, n in counts if wanted is None or TrialState[state_name(name)] in wanted)

    @staticmethod
    def _check_study(conn: sqlalchemy.Connection, study_id: int) -> None:
        if conn.execute(sql("SELECT study_id FROM studies WHERE study_id = :id"), {"id": study_id}).first() is None:
            raise KeyError(f"No study with study_id {study_id} exists.")

    # -- writes: refused -------------------------------------------------------------------------
    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("this storage only reads: open it with storage.backend.open_storage to write")

    create_new_study = delete_study = set_study_user_attr = set_study_system_attr = _refuse
    create_new_trial = set_trial_param = set_trial_state_values = _refuse
    set_trial_intermediate_value = set_trial_user_attr = set_trial_system_attr = _refuse

