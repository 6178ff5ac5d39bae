"""Where the record lives: the storage URL, its password, and how it is shown.

The URL comes from ``--storage``, else ``HPO_STORAGE``, else ``sqlite:///hpo.db`` in the
current folder. A password may come from the file named by ``HPO_DB_PASSWORD_FILE`` (a
container secret), so it never has to appear on a command line. Every URL that is printed
or logged goes through :func:`mask_url` first, and every free text that may hold one (a
driver's error message) through :func:`mask_text`.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Mapping

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import StorageError

DEFAULT_URL = "sqlite:///hpo.db"
# The driver each backend is pinned to, whichever the URL names (None: SQLAlchemy's own).
# A password may come from the secret file for the network databases only.
DRIVERS = {"sqlite": None, "postgresql": "psycopg", "mysql": "pymysql"}
URL_ENV = "HPO_STORAGE"
PASSWORD_FILE_ENV = "HPO_DB_PASSWORD_FILE"

# ``scheme://user:`` and everything up to the last ``@`` of the line. A password may hold any
# character, ``@ : / # ?`` and spaces included, so nothing but the last ``@`` can say where it
# ends: masking too much of a line is the price of never showing a piece of one.
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^\n]*@")

_warned_files: set[str] = set()  # password files warned about in this process


def parse_url(url: str) -> URL:
    """Parse ``url`` into a SQLAlchemy URL, or raise StorageError naming the problem."""
    _refuse_unescaped_at(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StorageError(f"not a database URL: {mask_text(url)!r}") from None
    backend = parsed.get_backend_name()
    if backend not in DRIVERS:
        raise StorageError(
            f"unsupported storage {backend!r} in {mask_url(url)}: use sqlite:///FILE, "
            "postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
        )
    return parsed


def _refuse_unescaped_at(url: str) -> None:
    """A password holding a raw ``@`` is refused rather than guessed at.

    SQLAlchemy ends the password at its first ``@`` and reads the rest of it as the host (or the
    port, database or query): the connection would go to a host named after part of the
    password, and the driver's error would print that part.
    """
    _, scheme_sep, rest = url.partition("://")
    first_at = rest.find("@")
    if scheme_sep and first_at >= 0 and ":" in rest[:first_at] and "@" in rest[first_at + 1:]:
        raise StorageError(
            "the storage URL has more than one '@' after its user and password: write an '@' of the "
            f"password as %40, or put the password in the file named by {PASSWORD_FILE_ENV}"
        )


def resolve_url(flag: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The storage URL to use, with the password from the secret file filled in.

    PostgreSQL URLs are pinned to the psycopg (version 3) driver, MySQL and MariaDB URLs to
    PyMySQL (:data:`DRIVERS`).
    """
    environ = os.environ if environ is None else environ
    url = flag or environ.get(URL_ENV) or DEFAULT_URL
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if DRIVERS[backend] is not None:
        parsed = parsed.set(drivername=f"{backend}+{DRIVERS[backend]}")
        password_file = environ.get(PASSWORD_FILE_ENV)
        if password_file and parsed.password is None:
            parsed = parsed.set(password=_read_secret(password_file))
    return parsed.render_as_string(hide_password=False)


def url_for_children(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The URL to hand to a child process that inherits ``environ``: without its password when
    that password is the one in the file named by ``HPO_DB_PASSWORD_FILE``.

    The child reads the file itself, so the password stays out of its environment
    (``/proc/PID/environ``). A password that did not come from the file stays in the URL: the
    child would have no other way to get it.
    """
    environ = os.environ if environ is None else environ
    password_file = environ.get(PASSWORD_FILE_ENV)
    parsed = make_url(url)
    if not password_file or parsed.password is None:
        return url
    try:
        secret = _read_secret(password_file, warn=False)
    except StorageError:
        return url
    if parsed.password != secret:
        return url
    return parsed._replace(password=None).render_as_string(hide_password=False)  # set() reads None as "keep it"


def _read_secret(path: str, *, warn: bool = True) -> str:
    try:
        with open(path, "rb") as f:
            status = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise StorageError(f"cannot read the password file named by {PASSWORD_FILE_ENV}: {e.strerror}") from None
    try:
        secret = data.decode("utf-8").strip("\r\n")
    except UnicodeDecodeError:
        raise StorageError(f"the password file named by {PASSWORD_FILE_ENV} is not UTF-8 text") from None
    if not secret:
        raise StorageError(f"the password file named by {PASSWORD_FILE_ENV} is empty")
    if warn:
        _warn_if_readable_by_others(path, status)
    return secret


def _warn_if_readable_by_others(path: str, status: os.stat_result) -> None:
    """One line on stderr, once per process, when others may read the password file.

    As ssh does for a private key: only a file of the user running this is judged, since a
    secret mounted into a container belongs to someone else and is readable by design.
    """
    if status.st_uid != os.geteuid() or not status.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or path in _warned_files:
        return
    _warned_files.add(path)
    print(
        f"warning: the password file named by {PASSWORD_FILE_ENV} is open to group or others "
        f"(mode {stat.S_IMODE(status.st_mode):04o}); make it readable by its owner only (chmod 600)",
        file=sys.stderr,
        flush=True,
    )


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print or log)."""
    masked = mask_text(url)
    try:
        return make_url(masked).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return masked


def mask_text(text: str) -> str:
    """Mask anything shaped like ``scheme://user:password@`` inside free text (error messages).

    Everything from the password to the last ``@`` of its line is masked: a password may hold
    ``@``, ``/``, ``#``, ``?`` or spaces, unescaped.
    """
    return _USERINFO.sub(r"\1***@", text)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_mysql(url: str) -> bool:
    """MySQL or MariaDB (one SQLAlchemy backend, one driver: PyMySQL)."""
    return make_url(url).get_backend_name() == "mysql"


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL, or None for an in-memory database."""
    database = make_url(url).database
    return None if database in (None, "", ":memory:") else database
