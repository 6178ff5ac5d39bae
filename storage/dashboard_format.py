"""optuna-dashboard's storage format for a study's note and figures: hpo's one wall around it.

optuna-dashboard keeps a study's note and its user figures as study system attrs, each text
split into chunks of at most 2,045 characters under numbered keys (its private modules
``optuna_dashboard._note`` and ``optuna_dashboard._custom_plot_data``). Its public
``save_note`` and ``save_plotly_graph_object`` write exactly these attrs, but importing
``optuna_dashboard`` loads its whole web application and, through it, Optuna's importance
module with scikit-learn and SciPy: more than a second that ``hpo search`` paid on every
campaign for a few attrs. So hpo writes the attrs here, with no import of optuna-dashboard.

Every private name this relies on is checked against the installed optuna-dashboard by
tests/test_dashboard_format.py (and what is written here is read back through the
dashboard's public ``get_note`` and its HTTP API), so an upgrade that moves the format fails
there, naming what moved.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

# Private names of optuna-dashboard this module mirrors (tests/test_dashboard_format.py):
#   optuna_dashboard._note.SYSTEM_ATTR_MAX_LENGTH, note_ver_key(None), note_str_key_prefix(None)
#   optuna_dashboard._custom_plot_data.SYSTEM_ATTR_PLOT_DATA, SYSTEM_ATTR_MAX_LENGTH
CHUNK_CHARS = 2045
NOTE_VERSION_KEY = "dashboard:note_ver"
NOTE_CHUNK_PREFIX = "dashboard:note_str:"
FIGURE_PREFIX = "dashboard:plot_data:"


def installed() -> bool:
    """Whether optuna-dashboard is installed, found without importing it."""
    return importlib.util.find_spec("optuna_dashboard") is not None


def _chunks(text: str, prefix: str) -> dict[str, str]:
    return {f"{prefix}{i}": text[i * CHUNK_CHARS:(i + 1) * CHUNK_CHARS] for i in range(math.ceil(len(text) / CHUNK_CHARS))}


def _joined(system_attrs: dict[str, Any], prefix: str) -> str:
    count = sum(1 for key in system_attrs if key.startswith(prefix))
    return "".join(system_attrs[f"{prefix}{i}"] for i in range(count))


def _write_chunks(storage, study_id: int, prefix: str, text: str, system_attrs: dict[str, Any]) -> None:
    """Write ``text`` under ``prefix``, then blank the chunks a longer text left after it (as
    the dashboard does: it reads as many chunks as there are keys)."""
    chunks = _chunks(text, prefix)
    for key, value in chunks.items():
        storage.set_study_system_attr(study_id, key, value)
    before = sum(1 for key in system_attrs if key.startswith(prefix))
    for i in range(len(chunks), before):
        storage.set_study_system_attr(study_id, f"{prefix}{i}", "")


def read_note(system_attrs: dict[str, Any]) -> str:
    """The study's note in ``system_attrs`` (the study's system attrs); "" when it has none."""
    if NOTE_VERSION_KEY not in system_attrs:
        return ""
    return _joined(system_attrs, NOTE_CHUNK_PREFIX)


def write_note(storage, study_id: int, body: str, system_attrs: dict[str, Any]) -> None:
    """Save ``body`` as the study's note, one version after the stored one, as
    ``optuna_dashboard.save_note`` does. ``system_attrs``: the study's, read just before."""
    storage.set_study_system_attr(study_id, NOTE_VERSION_KEY, int(system_attrs.get(NOTE_VERSION_KEY, 0)) + 1)
    _write_chunks(storage, study_id, NOTE_CHUNK_PREFIX, body, system_attrs)


def write_figure(storage, study_id: int, graph_id: str, figure_json: str, system_attrs: dict[str, Any]) -> None:
    """Save a plotly figure's JSON on the study under ``graph_id`` (a valid id: letters,
    digits, ``_ . : -``), replacing the one saved under it before, as
    ``optuna_dashboard.save_plotly_graph_object`` does. ``system_attrs``: the study's."""
    _write_chunks(storage, study_id, f"{FIGURE_PREFIX}{graph_id}:", figure_json, system_attrs)
