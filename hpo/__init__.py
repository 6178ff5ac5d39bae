"""hpo: coarse-to-fine hyperparameter search for NumPy networks, on Optuna studies."""


def main() -> None:
    """The `hpo` command. The CLI is imported in here, so that a Ctrl-C while its modules load
    (a second or so) ends the command quietly with status 130 instead of a traceback."""
    try:
        from hpo.cli import main as cli_main
    except KeyboardInterrupt:
        import sys

        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    cli_main()
