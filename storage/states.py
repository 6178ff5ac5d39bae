"""How a trial ended, by name: Optuna's states, and diverged runs apart from pruned ones.

Plain functions without SQL, so pure modules (``hpo.narrow``) use them as the storage's
queries do. A diverged run is stored PRUNED (it has no value to rank) with the reason
``workers.train.TrainingDiverged`` writes, which starts with :data:`DIVERGED_REASON_PREFIX`
(``tests/test_outcomes.py`` checks the two agree), or with the user attr ``diverged`` set to
true by a program of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DIVERGED_REASON_PREFIX = "diverged at epoch"


def state_name(state: Any) -> str:
    """A trial state's name: "COMPLETE" from TrialState.COMPLETE, or from a state column as a
    database driver returns it ("COMPLETE", "TrialState.COMPLETE"), or from "complete"."""
    return str(getattr(state, "name", state)).rsplit(".", 1)[-1].upper()


def is_diverged(state: Any, user_attrs: Mapping[str, Any]) -> bool:
    """Whether a trial in ``state`` with these user attrs diverged."""
    reason = user_attrs.get("reason")
    return state_name(state) == "PRUNED" and (
        user_attrs.get("diverged") is True or (isinstance(reason, str) and reason.startswith(DIVERGED_REASON_PREFIX))
    )
