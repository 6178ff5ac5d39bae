"""hpo: coarse-to-fine hyperparameter search for NumPy networks, on Optuna studies."""

import sys


# What a Ctrl-C (or a SIGTERM turned into one) can arrive as: ``except STOPS as e`` and
# :func:`stopped_by_signal` tell it from a real import error.
STOPS = (KeyboardInterrupt, ImportError)


def stopped_by_signal(error: BaseException) -> bool:
    """Whether ``error`` is a Ctrl-C: a KeyboardInterrupt, or the ImportError a compiled module
    raises when one reaches it while it initializes (pybind11's "initialization failed",
    raised from the KeyboardInterrupt: SciPy's, while scikit-learn loads a dataset)."""
    return isinstance(error, KeyboardInterrupt) or (
        isinstance(error, ImportError) and isinstance(error.__cause__ or error.__context__, KeyboardInterrupt)
    )


def main() -> None:
    """The `hpo` command. The CLI is imported in here, so that a Ctrl-C while its modules load
    (a second or so) ends the command quietly instead of with a traceback."""
    try:
        from hpo.cli import main as cli_main
    except STOPS as e:
        if not stopped_by_signal(e):
            raise
        exit_interrupted(sys.argv[1] if len(sys.argv) > 1 else None)
    cli_main()


def exit_interrupted(command: str | None) -> None:
    """End a command stopped by Ctrl-C (or SIGTERM) before it took anything on: one line, and
    the exit status a stopped command of its kind has (a worker: 0, as a worker stopped at any
    other moment; any other command: 130)."""
    print("interrupted", file=sys.stderr)
    raise SystemExit(0 if command == "worker" else 130)
