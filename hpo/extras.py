"""The optional packages: which of pyproject's extras installs each, what needs it, and the one
line a user reads when it is missing.

The layers below do not word this line themselves: a missing optional module reaches the edge
as a ModuleNotFoundError, or as the cause of the error it became on the way (Optuna's
ImportError for a database driver, ``workers.data.DatasetError`` for a dataset package). The
CLI's edge (``hpo.cli.HpoGroup``) and ``docker/dashboard.py`` ask :func:`missing_extra` for the
line, and exit with status 2.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Extra:
    """An optional package: the module imported, the distribution pip installs, the extra of
    pyproject.toml that installs it, and what needs it, in the words a user asked for it."""

    module: str
    distribution: str
    extra: str
    needed_by: str

    def line(self) -> str:
        return (f"{self.needed_by} needs the {self.distribution} package, which is not installed: "
                f"install hpo's {self.extra} extra (pip install 'hpo[{self.extra}]')")


EXTRAS: dict[str, Extra] = {extra.module: extra for extra in (
    Extra("psycopg", "psycopg", "postgres", "a postgresql:// storage"),
    Extra("pymysql", "pymysql", "mysql", "a mysql:// storage"),
    Extra("mnist1d", "mnist1d", "mnist1d", "--dataset mnist1d"),
    Extra("optuna_dashboard", "optuna-dashboard", "dashboard", "the dashboard"),
)}


def missing_extra(error: BaseException | None) -> str | None:
    """The line for the optional package whose import failed, if ``error`` is a ModuleNotFoundError
    of one of :data:`EXTRAS` or was raised from one (followed as a traceback shows it: the cause,
    else the context unless suppressed); None otherwise, so the caller reports ``error`` as it
    would have."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ModuleNotFoundError) and error.name:
            extra = EXTRAS.get(error.name.partition(".")[0])
            if extra is not None:
                return extra.line()
        error = error.__cause__ if error.__cause__ is not None else (
            None if error.__suppress_context__ else error.__context__)
    return None
