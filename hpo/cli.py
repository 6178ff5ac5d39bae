"""The `hpo` command: the group, where each command lives, and how errors end a command.

Results go to stdout (tables, or one JSON object / CSV for scripts); progress and messages go
to stderr. Bad input gets one line and exit status 2, before anything is written.

A command's module is imported only when that command runs: `hpo studies` answers without
loading the training code, the campaign or the report (about half of its time was imports).
:data:`COMMAND_MODULES` is the one place that says which module holds which command;
tests/test_cli.py checks it against each module's ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

import click

from hpo import STOPS, end_if_stopped, ignore_stop_signals
from hpo.extras import missing_extra
from hpo.output import UsageError, one_line

# Command name -> the module whose COMMANDS holds it.
COMMAND_MODULES = {
    "search": "hpo.cli_run",
    "worker": "hpo.cli_worker",
    "launch": "hpo.cli_run",
    "narrow": "hpo.cli_run",
    "train": "hpo.cli_run",
    "init": "hpo.cli_run",
    "studies": "hpo.cli_inspect",
    "trials": "hpo.cli_inspect",
    "trial": "hpo.cli_inspect",
    "best": "hpo.cli_inspect",
    "health": "hpo.cli_inspect",
    "fail-stale": "hpo.cli_inspect",
    "importance": "hpo.cli_importance",
    "report": "hpo.cli_report",
    "evaluate": "hpo.cli_model",
    "predict": "hpo.cli_model",
}

# Errors that mean "the input is wrong" (one line, exit 2), by module and class name: a module
# that was never imported raised none of them, so none is imported to be checked.
INPUT_ERRORS = (
    ("storage.errors", "StorageError"),
    ("workers.space", "SpaceError"),
    ("workers.data.datasets", "DatasetError"),
    ("hpo.campaign", "CampaignError"),
    ("hpo.narrow", "NarrowError"),
)


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in names if module in sys.modules)


def _database_error(error: BaseException) -> str | None:
    """"database error: ..." when ``error`` came from the database (it went away in the middle
    of a command), else None."""
    backend = sys.modules.get("storage.backend")
    if backend is None or not isinstance(error, backend.DB_ERRORS):
        return None
    return f"database error: {backend.driver_message(error)}"


class HpoGroup(click.Group):
    """Loads a command's module when the command runs, and turns the library's domain errors
    into one line and exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMAND_MODULES:
            try:
                module = importlib.import_module(COMMAND_MODULES[name])
            except STOPS as e:  # Ctrl-C while the command's module loads: it took nothing on
                end_if_stopped(e, name)  # click names the command being invoked only after this
                raise
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except STOPS as e:  # Ctrl-C before a command took anything on: nothing to undo
            end_if_stopped(e, ctx.invoked_subcommand)
            if missing := missing_extra(e):  # an optional package (a database driver) is not installed
                raise UsageError(missing) from None
            raise
        except click.UsageError as e:  # click's own parse errors: one line too, no usage block
            raise UsageError(e.format_message()) from None
        except Exception as e:
            if isinstance(e, _loaded(INPUT_ERRORS)):
                raise UsageError(missing_extra(e) or one_line(e)) from None
            if message := _database_error(e):
                raise UsageError(message) from None
            raise


@click.group(cls=HpoGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="hpo")
def cli() -> None:
    """Coarse-to-fine hyperparameter search for NumPy networks, on Optuna studies.

    \b
    Quick start (digits data, SQLite file hpo.db in this folder):
      hpo search                       # three stages, local workers, final test accuracy
      hpo studies                      # what is in the storage
      hpo train --activation tanh --initializer xavier --epochs 20
    """


def main() -> None:
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress says what happens
        cli(prog_name="hpo")
    except STOPS as e:  # Ctrl-C while the modules load: nothing started yet
        end_if_stopped(e, sys.argv[1] if len(sys.argv) > 1 else None)
        raise
    finally:
        ignore_stop_signals()  # a signal during the exit itself changes nothing now
