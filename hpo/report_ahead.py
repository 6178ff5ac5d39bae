"""What the report at the end of `hpo search` needs, started ahead while the workers train.

The report imports what the search itself does not (Plotly, whose figure classes load their
modules on first use, and Optuna's importance module, which loads scikit-learn and SciPy: a
second or more, needed only where a stage can have two complete trials) and runs the
initialization experiment on the campaign's data, whose section depends on nothing else.
:func:`prepare_in_background` does all of it on a thread of its own at the campaign's start,
while the coordinator only waits for the workers; :func:`init_experiment_for` hands the
experiment and its section to ``hpo.report.write_report``. This module stays apart from
``hpo.report`` so that starting it imports nothing heavy. The search starts it as its local
workers start, before it creates the schema: in a short campaign, the experiment and its
figures are what the report waits for longest.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpo.report.page import Section

# (dataset, seed) -> the initialization experiment's result, computed ahead.
_PREPARED: dict[tuple[str, int], concurrent.futures.Future] = {}


def prepare_in_background(dataset: str, seed: int, *, importance: bool) -> None:
    """Start the report's imports and its initialization experiment on a daemon thread;
    ``importance``: import Optuna's importance module too (some stage will need it)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    _PREPARED[(dataset, seed)] = future

    def prepare() -> None:
        try:
            if importance:
                import optuna.importance  # noqa: F401 - imported ahead, see the module docstring
            from hpo.report import init_section_of, run_init_experiment

            experiment = run_init_experiment(dataset, seed)
            future.set_result((experiment, init_section_of(experiment)))
        except BaseException as e:  # noqa: BLE001 - handed to the report, which says it in words
            future.set_exception(e)

    threading.Thread(target=prepare, name="prepare-report", daemon=True).start()


def wait_until_prepared() -> None:
    """Wait for what :func:`prepare_in_background` started. Call it before importing
    ``hpo.report`` or building a figure: two threads importing the same modules at once can
    deadlock in Python's import system (Plotly's and narwhals' circular imports do), and
    Plotly loads modules on a figure's first use. Whatever it raised, the report says."""
    concurrent.futures.wait(list(_PREPARED.values()))


def init_experiment_for(dataset: str | None, seed: int) -> tuple[dict | str, Section]:
    """The initialization experiment for the report and its section: computed ahead when
    :func:`prepare_in_background` ran for this dataset and seed, else now."""
    from hpo.report import init_section_of, run_init_experiment

    future = _PREPARED.get((dataset, seed)) if dataset is not None else None
    if future is None:
        experiment = run_init_experiment(dataset, seed)
    else:
        try:
            return future.result()
        except Exception as e:  # noqa: BLE001 - said in words in the report's section
            experiment = f"the experiment did not run: {e}"
    return experiment, init_section_of(experiment)
