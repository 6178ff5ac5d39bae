"""optuna-dashboard on the hpo storage, its password read from a file, never from a command line.

``optuna-dashboard URL`` takes the storage URL, password included, as an argument, where anyone
who can list processes reads it. This entry resolves the URL as every ``hpo`` command does
(``HPO_STORAGE``, the password from the file named by ``HPO_DB_PASSWORD_FILE``) and hands
optuna-dashboard a storage object instead.

    python docker/dashboard.py --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import sys

from hpo.extras import missing_extra
from storage.backend import open_storage
from storage.errors import StorageError
from storage.url import mask_url, resolve_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    args = parser.parse_args(argv)
    try:
        url = resolve_url()
        storage = open_storage(url, heartbeat=False)
        from optuna_dashboard import run_server
    except StorageError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # the database driver or optuna-dashboard is not installed
        if (missing := missing_extra(e)) is None:
            raise
        print(f"Error: {missing}", file=sys.stderr)
        return 2

    print(f"optuna-dashboard on {mask_url(url)}, listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    run_server(storage, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
