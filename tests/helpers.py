"""Small builders shared by the integration tests: stages, worker processes, SQL checks."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys

import sqlalchemy

from hpo.campaign import CampaignSpec
from storage import backend
from workers import stageplan
from workers.space import build_space


def make_stage(url: str, name: str, *, trials: int = 6, epochs: int = 1, params: list[str] | None = None, stages: int = 1):
    """Create stage 1 of campaign ``name`` and return (storage, plan)."""
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    space = build_space(None, None, params or ["hidden_sizes=32", "batch_size=128"])
    spec = CampaignSpec(name=name, space=space, stages=stages, trials=[trials] * stages, epochs=[epochs] * stages)
    plan = spec.plan(1, space)
    stageplan.create_stage(storage, plan)
    return storage, plan


def worker_env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HPO_STORAGE": url, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}, **extra)
    return env


def start_worker(url: str, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", *args],
        env=worker_env(url, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def sql(url: str, query: str, **params):
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text(query), params).all()
    finally:
        engine.dispose()


def backdate_heartbeats(engine: sqlalchemy.Engine, seconds: int, trial_id: int | None = None) -> int:
    """Move the heartbeats of a trial (or of all trials) ``seconds`` into the past, as if their
    workers had stopped beating then; returns the rows changed."""
    shift = {
        "sqlite": "datetime(heartbeat, '-' || :s || ' seconds')",
        "postgresql": "heartbeat - make_interval(secs => :s)",
        "mysql": "heartbeat - INTERVAL :s SECOND",
    }[engine.dialect.name]
    where = "" if trial_id is None else " WHERE trial_id = :id"
    with engine.begin() as conn:
        query = sqlalchemy.text(f"UPDATE trial_heartbeats SET heartbeat = {shift}{where}")
        return conn.execute(query, {"s": seconds, "id": trial_id}).rowcount


def duplicate_trial_numbers(url: str) -> list:
    """(study_id, number) pairs that occur more than once — Optuna's schema does not forbid it."""
    return sql(url, "SELECT study_id, number, COUNT(*) FROM trials GROUP BY study_id, number HAVING COUNT(*) > 1")


def states(url: str, study_name: str) -> dict[str, int]:
    rows = sql(
        url,
        "SELECT t.state, COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = :name GROUP BY t.state",
        name=study_name,
    )
    return {str(state).removeprefix("TrialState."): n for state, n in rows}


# Periods that end no sentence (a caption may use these); a number's point (0.5, 1e-3 written
# 0.001) is followed by a digit, so it ends none either.
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def assert_one_sentence(text: str) -> None:
    """``text`` is one sentence: it ends with a period, and no '.', '!' or '?' followed by a space
    ends one before it."""
    plain = text
    for abbreviation in ABBREVIATIONS:
        plain = plain.replace(abbreviation, abbreviation.replace(".", ""))
    ends = [m.start() for m in _SENTENCE_END.finditer(plain)]
    assert plain.endswith(".") and ends == [len(plain) - 1], f"not one sentence: {text!r}"


def page_captions(page: str) -> list[str]:
    """Every figure caption of a report page, as the reader sees it (unescaped)."""
    return [html.unescape(text) for text in re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.S)]
