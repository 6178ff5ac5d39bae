"""Where the record lives: the storage URL, its password, and how it is shown.

The URL comes from ``--storage``, else ``HPO_STORAGE``, else ``sqlite:///hpo.db`` in the
current folder. A password may come from the file named by ``HPO_DB_PASSWORD_FILE`` (a
container secret), so it never has to appear on a command line. Every URL that is printed
or logged goes through :func:`mask_url` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import StorageError

DEFAULT_URL = "sqlite:///hpo.db"
URL_ENV = "HPO_STORAGE"
PASSWORD_FILE_ENV = "HPO_DB_PASSWORD_FILE"


def parse_url(url: str) -> URL:
    """Parse ``url`` into a SQLAlchemy URL, or raise StorageError naming the problem."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"not a database URL: {mask_text(url)!r}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StorageError(
            f"unsupported storage {backend!r} in {mask_url(url)}: use sqlite:///FILE or "
            "postgresql://USER@HOST/DB"
        )
    return parsed


def resolve_url(flag: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The storage URL to use, with the password from the secret file filled in.

    PostgreSQL URLs are pinned to the psycopg (version 3) driver.
    """
    environ = os.environ if environ is None else environ
    url = flag or environ.get(URL_ENV) or DEFAULT_URL
    parsed = parse_url(url)
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        password_file = environ.get(PASSWORD_FILE_ENV)
        if password_file and parsed.password is None:
            parsed = parsed.set(password=_read_secret(password_file))
    return parsed.render_as_string(hide_password=False)


def _read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip("\r\n")
    except OSError as e:
        raise StorageError(f"cannot read the password file named by {PASSWORD_FILE_ENV}: {e.strerror}") from None
    if not secret:
        raise StorageError(f"the password file named by {PASSWORD_FILE_ENV} is empty")
    return secret


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print or log)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return mask_text(url)


def mask_text(text: str) -> str:
    """Mask anything shaped like ``scheme://user:password@`` inside free text (error messages)."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL, or None for an in-memory database."""
    database = make_url(url).database
    return None if database in (None, "", ":memory:") else database
