"""hpo: coarse-to-fine hyperparameter search for NumPy networks, on Optuna studies."""

import sys


def main() -> None:
    """The `hpo` command. The CLI is imported in here, so that a Ctrl-C while its modules load
    (a second or so) ends the command quietly instead of with a traceback."""
    try:
        from hpo.cli import main as cli_main
    except KeyboardInterrupt:
        exit_interrupted(sys.argv[1] if len(sys.argv) > 1 else None)
    cli_main()


def exit_interrupted(command: str | None) -> None:
    """End a command stopped by Ctrl-C (or SIGTERM) before it took anything on: one line, and
    the exit status a stopped command of its kind has (a worker: 0, as a worker stopped at any
    other moment; any other command: 130)."""
    print("interrupted", file=sys.stderr)
    raise SystemExit(0 if command == "worker" else 130)
