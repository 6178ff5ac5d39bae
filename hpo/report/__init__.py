"""``hpo report``: a campaign (or a single study) as one offline HTML page of figures.

- :mod:`hpo.report.collect` reads everything the report shows from storage into plain data;
- the ``sections_*`` modules turn that data into sections of figures, tables and words;
- :mod:`hpo.report.page` writes the sections as one self-contained HTML file.

:func:`write_report` is what ``hpo report`` and the end of ``hpo search`` call.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

from hpo.output import plural
from workers.atomic_file import write_atomically
from hpo.report.common import TEMPLATE
from hpo.report.collect import MULTI_OBJECTIVE, ReportData, collect
from hpo.report.page import Figure, Section, Words, render_page
from hpo.report.sections_layers import layers_section
from hpo.report.sections_trials import choices_section, curves_section, workers_section
from hpo.report.sections_search import (
    activation_colors, coarse_section, history_section, importance_section, stage_coarse_items, summary_section,
)

_UNSAFE = re.compile(r"[^\w.-]+")  # \w: letters and digits of any script, and "_"
# Bytes of a name kept in its default file name: a file name ends at 255 bytes, and an Optuna
# study name may have 512 characters (of up to 4 bytes each in UTF-8).
_NAME_BYTES = 200


def default_path(name: str) -> Path:
    """``NAME-report.html`` in the working folder, with what a file name should not hold (``/``
    of a stage study, spaces, punctuation, control characters, ...) written as ``-``, and a
    name too long for a file cut short."""
    safe = _UNSAFE.sub("-", name).strip("-.")
    safe = safe.encode()[:_NAME_BYTES].decode(errors="ignore").rstrip("-.") or "study"
    return Path(f"{safe}-report.html")


def banner(data: ReportData) -> str | None:
    """The line above the sections: a campaign still running, stopped, or with nothing to show;
    and trials whose value no figure can draw."""
    said = _state(data)
    infinite = sum(t.value is not None and not math.isfinite(t.value) for t in data.trials)
    if infinite:
        them = "it" if infinite == 1 else "them"
        note = (
            f"{infinite} trial{'s' if infinite != 1 else ''} stored an infinite value, which no figure can draw: "
            f"the figures leave {them} out, and the best-so-far line stops where one is the best."
        )
        said = f"{said} {note}" if said else note
    return said


def _state(data: ReportData) -> str | None:
    trials = data.trials
    if data.failed:
        return f"This campaign stopped: {data.failed}. The report shows the trials it ran."
    if data.running:
        running = sum(t.outcome == "RUNNING" for t in trials)
        waiting = sum(t.outcome == "WAITING" for t in trials)
        where = f"stage {len(data.stages)} of {data.planned_stages}" if data.campaign else "trials are still queued or running"
        if not running and not waiting:  # stopped (Ctrl-C), or its workers not started yet
            return (
                f"Not finished ({where}), and no trial is running or queued now: its workers are starting or none "
                f"is attached, or the campaign was stopped (hpo search --name {data.campaign} resumes it). "
                "This report shows what existed when it was written."
            )
        return (
            f"Still running ({where}; {plural(running, 'trial')} running, {waiting} queued): this report shows what existed "
            "when it was written. Run hpo report again for a newer one."
        )
    several = [s.study for s in data.stages if s.direction == MULTI_OBJECTIVE]
    if several:
        return (
            f"{', '.join(several)} optimizes several objectives at once: this report draws a single objective's "
            "values, so it shows these trials' parameters and outcomes only."
        )
    finished = [t for t in trials if t.outcome != "FAIL"]
    if finished and all(t.outcome == "DIVERGED" for t in finished):
        return "Every trial diverged: no configuration trained. Lower the learning rate's range, or try batch norm."
    return None


INIT_SECTION = ("why-initialization", "Why initialization matters, on your data")


def run_init_experiment(dataset: str | None, seed: int = 0) -> dict | str:
    """The lecture's initialization experiment on the campaign's own training inputs, or why
    it could not run here (the dataset is a file on another machine, say)."""
    from hpo.extras import missing_extra
    from workers.data.datasets import DatasetError
    from workers.init_experiment import init_experiment
    from workers.run import cached_dataset  # the coordinator's copy, when it has one

    if dataset is None:
        return "this study does not record its dataset, so the experiment has no data to run on"
    try:
        inputs = cached_dataset(dataset, seed).X_train
    except (DatasetError, OSError, ValueError) as e:
        why = missing_extra(e) or str(e)
        return f"the dataset {dataset} could not be loaded here ({why}), so the experiment did not run"
    try:
        return init_experiment(inputs, seed=seed)
    except ValueError as e:
        return f"the experiment did not run on the training inputs of {dataset}: {e}"


def init_section_of(result: dict | str | None) -> Section:
    """The "why initialization matters" section of an experiment's result (or of why it did
    not run): it depends on nothing else, so it can be built ahead (``hpo.report_ahead``)."""
    from hpo.report.why_init import init_section

    if isinstance(result, dict):
        return init_section(result)
    return Section(*INIT_SECTION, (Words(f"Not shown: {result or 'the experiment was not run'}."),))


def sections(data: ReportData, init_section: Section | None = None) -> list[Section]:
    """The report's sections in order; ``init_section``: the last one, when it was built ahead
    from ``data.init_experiment``."""
    return [
        summary_section(data),
        coarse_section(data),
        choices_section(data),
        history_section(data),
        importance_section(data),
        curves_section(data),
        layers_section(data),
        workers_section(data),
        init_section or init_section_of(data.init_experiment),
    ]


def render(data: ReportData, init_section: Section | None = None) -> str:
    what = "campaign" if data.campaign else "study"
    return render_page(f"hpo report: {what} {data.name}", sections(data, init_section), banner=banner(data))


class ReportPathError(ValueError):
    """The report cannot be written where it was asked to be (one line, for the user)."""


def target_path(name: str, path: str | os.PathLike | None = None) -> Path:
    """Where the report of ``name`` goes; checked before anything is collected, so a typo in
    ``-o`` costs nothing."""
    target = Path(path) if path is not None else default_path(name)
    folder = target.parent
    if not folder.is_dir():
        raise ReportPathError(f"cannot write the report to {target}: there is no folder {folder}")
    try:
        is_folder = target.is_dir()
        # The page is renamed over the target: a pipe or a device (/dev/null) would be replaced.
        is_special = not is_folder and target.exists() and not target.is_file()
    except OSError as e:  # a file name too long for the file system, say
        raise ReportPathError(f"cannot write the report to {target}: {e.strerror or e}") from None
    if is_folder:
        raise ReportPathError(f"cannot write the report to {target}: it is a folder")
    if is_special:
        raise ReportPathError(f"cannot write the report to {target}: it is not a regular file")
    if not os.access(folder, os.W_OK):
        raise ReportPathError(f"cannot write the report to {target}: the folder {folder} is not writable")
    return target


# A figure whose JSON is longer than this is not attached to a study for optuna-dashboard: it
# is stored split into study attrs of 2 KB each, and the report file holds it anyway.
DASHBOARD_FIGURE_CHARS = 1_000_000


def dashboard_figures(data: ReportData) -> dict[str, dict[str, Any]]:
    """study name -> {figure name: plotly figure} for optuna-dashboard: each stage its
    coarse-to-fine figures, the last stage the layers' figures too."""
    colors = activation_colors(data)
    per_study: dict[str, dict[str, Any]] = {}
    for stage in data.stages:
        figures = [item.figure for item in stage_coarse_items(stage, colors) if isinstance(item, Figure)]
        per_study[stage.study] = {f"coarse-to-fine-{i}": figure for i, figure in enumerate(figures, 1)}
    layers = [item.figure for item in layers_section(data).items if isinstance(item, Figure)]
    per_study[data.stages[-1].study].update({f"layers-{i}": figure for i, figure in enumerate(layers, 1)})
    return per_study


def attach_to_dashboard(storage, data: ReportData) -> list[str]:
    """Attach :func:`dashboard_figures` to their studies (``hpo.dashboard.attach_figures``; a
    figure saved again replaces the one before). The ids attached; none without the package."""
    from hpo.dashboard import attach_figures
    from storage import dashboard_format

    if not dashboard_format.installed():  # no figure to build for it
        return []
    attached = []
    for study_name, figures in dashboard_figures(data).items():
        for figure in figures.values():  # the page adds its template when it draws; the dashboard does not
            figure.update_layout(template=TEMPLATE)
        as_json = {name: figure.to_json() for name, figure in figures.items()}
        small = {name: text for name, text in as_json.items() if len(text) <= DASHBOARD_FIGURE_CHARS}
        if small:
            attached += attach_figures(storage, study_name, small)
    return attached


def write_report(storage, url: str, name: str, path: str | os.PathLike | None = None, *, dashboard: bool = False) -> Path:
    """Collect ``name`` from ``storage`` and write its report to ``path`` (default
    :func:`default_path`), atomically: a reader never sees half a page. Returns the path.
    With ``dashboard``, the stages' figures are also attached to their studies for
    optuna-dashboard (:func:`attach_to_dashboard`).

    ReportPathError when the path cannot be written; StudyNotFound when there is no such
    campaign or study."""
    target = target_path(name, path)
    data = collect(storage, url, name)
    from hpo.report_ahead import init_experiment_for

    experiment, init_section = init_experiment_for(data.dataset, data.seed)
    data = dataclasses.replace(data, init_experiment=experiment)
    if dashboard:
        attach_to_dashboard(storage, data)
    page = render(data, init_section)
    write_atomically(target, lambda f: f.write(page.encode("utf-8")))
    return target
