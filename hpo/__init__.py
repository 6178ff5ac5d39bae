"""hpo: coarse-to-fine hyperparameter search for NumPy networks, on Optuna studies."""

import gc
import os
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


_stopped = False  # a stop signal reached this process and a handler took it


def record_stop() -> None:
    """Called where a stop is handled: the process then ends as :func:`main` says."""
    global _stopped
    _stopped = True


def end_if_stopped(error: BaseException, command: str | None) -> None:
    """End ``command`` as a stop (:func:`exit_interrupted`) when ``error`` is a Ctrl-C that
    reached it before it took anything on; return otherwise, for the caller to raise ``error``."""
    if stopped_by_signal(error):
        ignore_stop_signals()
        exit_interrupted(command)


def ignore_stop_signals() -> None:
    """From here on SIGINT and SIGTERM are ignored: the process is stopping already, and a
    second Ctrl-C (or its coordinator's SIGTERM on top of a terminal's SIGINT) must not turn a
    clean stop into a traceback or another exit status."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _redeliver_swallowed_stop(unraisable) -> None:
    """A Ctrl-C that lands while a finalizer runs (a weakref callback during garbage
    collection) cannot propagate: Python would print it as "Exception ignored ... Traceback"
    and carry on as if it had not been pressed. Deliver it again instead, so the command stops
    the way a Ctrl-C anywhere else stops it. Not from inside this hook: a signal raised here is
    handled before the hook returns, and its KeyboardInterrupt would be one more unraisable
    error. A short timer delivers it once the hook has returned."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread
        import threading

        try:
            threading.Timer(0.05, _thread.interrupt_main).start()
        except RuntimeError:  # the interpreter is shutting down: the command is ending anyway
            pass
        return
    sys.__unraisablehook__(unraisable)


def main() -> None:
    """The `hpo` command. The CLI is imported in here, so that a Ctrl-C while its modules load
    (a second or so) ends the command quietly instead of with a traceback."""
    sys.unraisablehook = _redeliver_swallowed_stop
    try:
        try:
            from hpo.cli import main as cli_main
        except STOPS as e:
            end_if_stopped(e, sys.argv[1] if len(sys.argv) > 1 else None)
            raise
        cli_main()
    except SystemExit as end:
        # The command is done: its objects are left to the end of the process, which frees
        # them without the full garbage collection CPython runs at exit over every object still
        # alive (Plotly's, SQLAlchemy's, the report's: 0.4 s after an hpo search).
        gc.freeze()
        if not _stopped:
            raise
        # CPython ends a process in which a KeyboardInterrupt ever left code that C ran through
        # PyRun_* (SciPy's module init does, while a dataset loads) by killing it with SIGINT
        # at exit, whatever its exit status: a handled Ctrl-C would end -2 instead of 130. So a
        # stopped command ends here, its output flushed, with the status it chose.
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_interrupted(command: str | None) -> None:
    """End a command stopped by Ctrl-C (or SIGTERM) before it took anything on: one line, and
    the exit status a stopped command of its kind has (a worker: 0, as a worker stopped at any
    other moment; any other command: 130)."""
    record_stop()
    print("interrupted", file=sys.stderr)
    raise SystemExit(0 if command == "worker" else 130)
