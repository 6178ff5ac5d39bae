"""What optuna-dashboard shows of a campaign beyond its trials: each stage's note and figures.

optuna-dashboard reads the stage studies as they are. This module adds what it cannot find
there by itself, in the dashboard's own storage format (``storage.dashboard_format`` writes
what its public ``save_note`` and ``save_plotly_graph_object`` write, without importing it):

- the **note** of each stage study (Markdown, on the study's Note page): the stage's plan in
  words, its searched ranges, links to its parent and child stages, and, once the child exists,
  the narrowing from this stage to it as a table (parameter | old | new | reason) taken from the
  child's lineage. :func:`stage_note` builds it (a pure function); :func:`write_stage_notes`
  writes it, and ``hpo.campaign`` calls that where a stage is created, so a parent's note gains
  its child's table when the child is created. hpo owns the note of its stages: writing it
  again replaces the note (and only when its text changed, so a resume adds no version).
- **figures**: :func:`attach_figures` saves plotly figures on a study under stable ids, so
  saving them again replaces them.

Text that came from a user or from storage (names, datasets, ranges, reasons) is written
literally (:func:`markdown_literal`): it cannot add a link, an image, HTML or a table cell.

optuna-dashboard is the optional ``dashboard`` extra (``pip install hpo[dashboard]``): when it
is not installed, the writers do nothing and return an empty list (a resume writes the notes
that are missing once it is).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hpo.output import plural, visible
from storage import dashboard_format, records
from storage.errors import StudyNotFound
from workers import stageplan
from workers.space import SearchSpace
from workers.stageplan import StagePlan

GRAPH_ID_PREFIX = "hpo-"  # figures saved by attach_figures: "hpo-coarse-to-fine"
_NOT_IN_GRAPH_ID = re.compile(r"[^A-Za-z0-9_.:-]+")  # optuna-dashboard's rule for an id


def markdown_literal(text: Any) -> str:
    """``text`` as Markdown that renders as exactly ``text``, in a paragraph or a table cell.

    Written as code spans, whose content Markdown takes literally: no ``[link](...)``,
    ``<html>``, ``*emphasis*`` or entity can start inside one, and none of GFM's autolinks
    (``www.``, ``https://``, ``user@host``), which a backslash escape would not stop. A ``|``
    would end a table cell even inside a code span, so it stands between spans, escaped.
    Control characters such as a newline are shown as escapes (``\\n``, as the CLI shows them),
    so the text stays on one line."""
    return "\\|".join(_code_span(part) for part in visible(str(text)).split("|"))


def _code_span(text: str) -> str:
    """``text`` as one code span: fenced by one backtick more than its longest run of them, and
    padded with a space on each side where CommonMark strips one (so it keeps its own)."""
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    padded = text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip(" "))
    pad = " " if padded else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _number(value: Any) -> str:
    """A count or a trial number as it is; anything else stored in its place, literally."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else markdown_literal(value)


def stage_link(name: str, study_ids: Mapping[str, int]) -> str:
    """The stage study ``name`` as a link to its page in the dashboard, and to its note.

    The note is shown on ``/dashboard/studies/{id}/note``, so ``../{id}`` from there is the
    study page ``/dashboard/studies/{id}``: relative, it works wherever the dashboard is
    mounted. A study without a known id is its name alone."""
    text = markdown_literal(name)
    if name not in study_ids:
        return text
    study_id = int(study_ids[name])
    return f"[{text}](../{study_id}) ([note](../{study_id}/note))"


def stage_note(plan: StagePlan, study_ids: Mapping[str, int], children: Sequence[StagePlan] = ()) -> str:
    """The Markdown note of the stage ``plan``.

    ``study_ids``: study name -> study id, for the links (a stage missing from it is named
    without a link). ``children``: the stages narrowed from this one (their lineage names it as
    parent); each adds its narrowing table. Sections, in order: the title and links, the plan
    in words, the searched ranges, one "Narrowed into" section per child."""
    lines = [f"## {markdown_literal(plan.study_name)}", ""]
    where = [f"Stage {plan.stage} of {plan.stages} of campaign {markdown_literal(plan.campaign)}."]
    parent = plan.lineage.get("parent")
    if isinstance(parent, str):
        where.append(f"Parent: {stage_link(parent, study_ids)}; this stage's ranges are narrowed from it.")
    for child in children:
        where.append(f"Child: {stage_link(child.study_name, study_ids)}.")
    lines += [" ".join(where), "", _plan_words(plan), "", "### Searched ranges", ""]
    lines += _table(("parameter", "range"), SearchSpace.from_dict(plan.space).describe().items())
    for child in children:
        lines += ["", f"### Narrowed into {markdown_literal(child.study_name)}", ""]
        lines += _narrowing(child)
    return "\n".join(lines) + "\n"


def _plan_words(plan: StagePlan) -> str:
    scored = (f"scored by {plan.cv}-fold cross-validation on the training split" if plan.cv
              else "scored on the held-out validation split")
    return (
        f"**Plan:** a budget of {plural(plan.trials, 'trial')} (finished complete, pruned or diverged) of "
        f"{plural(plan.epochs, 'epoch')} each, on the dataset "
        f"{markdown_literal(plan.dataset)}, {scored}; sampler {markdown_literal(plan.sampler)}, "
        f"pruner {markdown_literal(plan.pruner)}, seed {plan.seed}. The stage stops after "
        f"{plural(plan.max_failures_in_a_row, 'failure')} in a row (trials failed with an error), or when "
        f"failures exceed {plan.max_failure_share:.0%} of its budget."
    )


def _narrowing(child: StagePlan) -> list[str]:
    """Which trials the narrowing into ``child`` came from, its table (one row per change of the
    child's lineage, ``hpo.narrow.ParamChange.to_dict``), and the ranges set over it by hand."""
    lineage, lines = child.lineage, []
    sources = lineage.get("source_trials")
    if isinstance(sources, list) and sources:
        numbers = ", ".join(_number(n) for n in sources)
        best = lineage.get("best_value")
        value = f", value {best:.6g}" if isinstance(best, (int, float)) and not isinstance(best, bool) else ""
        lines += [f"From the top {len(sources)} of {_number(lineage.get('n_ranked', '?'))} complete trials "
                  f"(numbers {numbers}; the best: trial {_number(lineage.get('best_trial', '?'))}{value}).", ""]
    changes = lineage.get("changes")
    changes = [c for c in changes if isinstance(c, Mapping)] if isinstance(changes, list) else []
    lines += _table(("parameter", "old", "new", "reason"),
                    [(c.get("name", ""), c.get("old_text", ""), c.get("new_text", ""), c.get("reason", "")) for c in changes])
    searched = SearchSpace.from_dict(child.space).describe()
    by_hand = [name for name, text in searched.items()
               if any(c.get("name") == name and c.get("new_text") != text for c in changes)]
    if by_hand:
        lines += ["", f"Set over the narrowing (hpo narrow --param or --space): "
                      f"{', '.join(markdown_literal(name) for name in by_hand)}; the child's note shows what it searches."]
    return lines


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GFM table; every cell written literally."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(markdown_literal(cell) for cell in row) + " |" for row in rows]
    return lines


def write_stage_notes(storage, study_names: Iterable[str]) -> list[str]:
    """Write the note of each stage study named (:func:`stage_note`), with links to its parent
    and children and the narrowing into each child, as the storage holds them now. Studies that
    are not hpo stages are passed over. Returns the names whose note was written (a note whose
    text is unchanged is not written again); an empty list when optuna-dashboard is not
    installed. Idempotent: run it again after a crash or a database error."""
    if not dashboard_format.installed():
        return []
    plans = {plan.study_name: plan for stages in stageplan.list_campaigns(storage).values() for plan in stages}
    children: dict[str, list[StagePlan]] = {}
    for plan in plans.values():
        if isinstance(plan.lineage.get("parent"), str):
            children.setdefault(plan.lineage["parent"], []).append(plan)
    written = []
    for name in study_names:
        plan = plans.get(name)
        if plan is None:
            continue
        kids = sorted(children.get(name, []), key=lambda p: (p.campaign, p.stage))
        linked = [name, plan.lineage.get("parent"), *(kid.study_name for kid in kids)]
        ids = _study_ids(storage, [n for n in linked if isinstance(n, str)])
        body = stage_note(plan, ids, kids)
        system_attrs = storage.get_study_system_attrs(ids[name])
        if dashboard_format.read_note(system_attrs) != body:
            dashboard_format.write_note(storage, ids[name], body, system_attrs)
            written.append(name)
    return written


def _study_ids(storage, names: Iterable[str]) -> dict[str, int]:
    ids = {}
    for name in names:
        try:
            ids[name] = records.find_study_id(storage, name)
        except StudyNotFound:  # a parent deleted since: named without a link
            pass
    return ids


def graph_object_id(name: str) -> str:
    """The stable id a figure named ``name`` is saved under: ``hpo-`` and the name, with runs of
    characters an id cannot hold (anything but letters, digits, ``_ . : -``) as one ``-``."""
    slug = _NOT_IN_GRAPH_ID.sub("-", name).strip("-")
    if not slug:
        raise ValueError(f"a figure's name needs a letter or digit to make its id: {name!r}")
    return GRAPH_ID_PREFIX + slug


def attach_figures(storage, study_name: str, figures: Mapping[str, str]) -> list[str]:
    """Save each plotly figure of ``figures`` (name -> the figure's JSON, ``Figure.to_json()``)
    on the study ``study_name``, where the dashboard shows it on the study's page, under
    :func:`graph_object_id` of its name: saving a figure of the same name again replaces it.
    Returns the ids saved, in order; an empty list when optuna-dashboard is not installed.
    ValueError, before anything is saved, when a name makes no id or two names make the same one."""
    ids = [graph_object_id(name) for name in figures]
    if len(set(ids)) < len(ids):
        raise ValueError(f"two figures' names make the same id: {sorted(figures)}")
    if not dashboard_format.installed():
        return []
    study_id = records.find_study_id(storage, study_name)
    system_attrs = storage.get_study_system_attrs(study_id)
    for graph_id, figure in zip(ids, figures.values()):
        dashboard_format.write_figure(storage, study_id, graph_id, figure, system_attrs)
    return ids
