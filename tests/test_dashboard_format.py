"""The contract with optuna-dashboard's storage format (storage/dashboard_format.py).

hpo writes a study's note and figures as the system attrs optuna-dashboard's private modules
define, without importing it (the import costs more than a second). Each private name mirrored
there is checked against the installed optuna-dashboard, and what hpo writes is read back by
the dashboard's public API (tests/test_dashboard.py reads it back through its HTTP API too), so
an upgrade that moves the format fails here, naming what moved.
"""

from __future__ import annotations

import subprocess
import sys

import optuna
import optuna_dashboard
import plotly.graph_objects as go
import pytest

from storage import dashboard_format
from storage import backend

_note = pytest.importorskip("optuna_dashboard._note")
_plot = pytest.importorskip("optuna_dashboard._custom_plot_data")


MIRRORED = [  # (the private name, how to read it from the installed dashboard, hpo's copy)
    ("optuna_dashboard._note.SYSTEM_ATTR_MAX_LENGTH", lambda: _note.SYSTEM_ATTR_MAX_LENGTH, dashboard_format.CHUNK_CHARS),
    ("optuna_dashboard._note.note_ver_key(None)", lambda: _note.note_ver_key(None), dashboard_format.NOTE_VERSION_KEY),
    ("optuna_dashboard._note.note_str_key_prefix(None)", lambda: _note.note_str_key_prefix(None),
     dashboard_format.NOTE_CHUNK_PREFIX),
    ("optuna_dashboard._custom_plot_data.SYSTEM_ATTR_PLOT_DATA", lambda: _plot.SYSTEM_ATTR_PLOT_DATA,
     dashboard_format.FIGURE_PREFIX),
    ("optuna_dashboard._custom_plot_data.SYSTEM_ATTR_MAX_LENGTH", lambda: _plot.SYSTEM_ATTR_MAX_LENGTH,
     dashboard_format.CHUNK_CHARS),
]


@pytest.mark.parametrize(("private", "read", "ours"), MIRRORED, ids=[name for name, _, _ in MIRRORED])
def test_each_mirrored_name_equals_the_installed_dashboards(private, read, ours):
    try:
        theirs = read()
    except AttributeError as e:
        pytest.fail(f"optuna-dashboard {optuna_dashboard.__version__} no longer has {private} ({e}): "
                    f"storage/dashboard_format.py mirrors it")
    assert theirs == ours, (f"optuna-dashboard {optuna_dashboard.__version__} changed {private} "
                            f"(now {theirs!r}; storage/dashboard_format.py has {ours!r})")


@pytest.fixture
def study(tmp_path):
    url = f"sqlite:///{tmp_path / 'format.db'}"
    backend.ensure_schema(url)
    study = optuna.create_study(study_name="s", storage=url)
    storage = backend.open_storage(url, heartbeat=False)
    yield study, storage, storage.get_study_id_from_name("s")
    storage.engine.dispose()


def test_a_note_written_here_is_the_dashboards_note_and_a_shorter_one_replaces_it(study):
    study, storage, study_id = study
    long_body = "| a | b |\n" + "é" * (3 * dashboard_format.CHUNK_CHARS + 7)  # four chunks
    dashboard_format.write_note(storage, study_id, long_body, storage.get_study_system_attrs(study_id))
    assert optuna_dashboard.get_note(study) == long_body
    dashboard_format.write_note(storage, study_id, "short", storage.get_study_system_attrs(study_id))
    assert optuna_dashboard.get_note(study) == "short"
    attrs = storage.get_study_system_attrs(study_id)
    assert _note.get_note_from_system_attrs(attrs, None) == {"version": 2, "body": "short"}
    # and the other way: the dashboard's own save is read here
    optuna_dashboard.save_note(study, "written *by* the dashboard")
    assert dashboard_format.read_note(storage.get_study_system_attrs(study_id)) == "written *by* the dashboard"


def test_a_study_without_a_note_reads_as_empty(study):
    study, storage, study_id = study
    assert dashboard_format.read_note(storage.get_study_system_attrs(study_id)) == "" == optuna_dashboard.get_note(study)


def test_a_figure_written_here_is_what_the_dashboard_serves_and_rewriting_it_replaces_it(study):
    _, storage, study_id = study
    big = go.Figure(go.Scatter(x=list(range(800)), y=[i * 0.5 for i in range(800)])).to_json()
    small = go.Figure(go.Bar(x=["a"], y=[1])).to_json()
    assert len(big) > 2 * dashboard_format.CHUNK_CHARS
    dashboard_format.write_figure(storage, study_id, "hpo-a", big, storage.get_study_system_attrs(study_id))
    dashboard_format.write_figure(storage, study_id, "hpo-a-1", small, storage.get_study_system_attrs(study_id))
    assert _plot.get_plotly_graph_objects(storage.get_study_system_attrs(study_id)) == {"hpo-a": big, "hpo-a-1": small}
    dashboard_format.write_figure(storage, study_id, "hpo-a", small, storage.get_study_system_attrs(study_id))
    assert _plot.get_plotly_graph_objects(storage.get_study_system_attrs(study_id)) == {"hpo-a": small, "hpo-a-1": small}


def test_writing_notes_and_figures_does_not_import_the_dashboard(tmp_path):
    """The reason this module exists: the coordinator's path stays free of optuna-dashboard and
    of what it imports (Optuna's importance module, scikit-learn)."""
    url = f"sqlite:///{tmp_path / 'imports.db'}"
    code = f"""
import sys, optuna
from storage import backend
from storage import dashboard_format
backend.ensure_schema({url!r})
optuna.create_study(study_name="s", storage={url!r})
storage = backend.open_storage({url!r}, heartbeat=False)
study_id = storage.get_study_id_from_name("s")
dashboard_format.write_note(storage, study_id, "note", storage.get_study_system_attrs(study_id))
dashboard_format.write_figure(storage, study_id, "hpo-x", "{{}}", storage.get_study_system_attrs(study_id))
assert dashboard_format.installed()
loaded = [m for m in ("optuna_dashboard", "optuna.importance", "sklearn") if m in sys.modules]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], check=True)
