"""Shared CLI pieces: the storage option, ``--format table|json|csv``, error handling, and the
consoles everything is printed on.

Names, reasons, attribute values and error messages come from storage or the user and are
printed as they are: the consoles read no rich markup (``[red]`` in a reason stays ``[red]``) and
no emoji codes, and control characters are shown as escapes (``\\x1b``) so nothing printed can
clear the screen, move the cursor or recolour the terminal. JSON and CSV carry the exact data.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from storage.errors import StorageError
from storage.url import mask_text, resolve_url

# C0 and C1 control characters, DEL, line and paragraph separators, and the bidirectional
# overrides and isolates that can make a name read as another.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible(text: str, keep: str = "") -> str:
    """``text`` with its control characters written as escapes (``\\x1b``, ``\\n``, ``\\u202e``),
    except those in ``keep``."""
    return _CONTROL.sub(lambda m: m[0] if m[0] in keep else m[0].encode("unicode_escape").decode("ascii"), text)


def literal(text: str, style: str = "") -> Text:
    """``text`` as a rich Text: never read as markup, control characters escaped (newlines and
    tabs kept), optionally styled as a whole."""
    return Text(visible(text, keep="\n\t"), style=style)


class LiteralConsole(Console):
    """A rich Console that prints strings as they are (see the module docstring).

    Markup stays available to a caller that asks for it with ``markup=True``; whatever it
    interpolates must then go through ``rich.markup.escape``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(visible(text, keep="\n\t"), **kwargs)


# stdout carries results (tables, JSON, CSV); stderr carries progress and messages.
out = LiteralConsole(soft_wrap=True)
err = LiteralConsole(stderr=True)


class UsageError(click.ClickException):
    """Bad input: one line, exit status 2, nothing written."""

    exit_code = 2

    def show(self, file=None) -> None:  # one line, no "Usage:" block, nothing raw for the terminal
        click.echo(f"Error: {visible(self.format_message())}", err=True)


def storage_option(func: Callable) -> Callable:
    """``--storage URL`` (else HPO_STORAGE, else sqlite:///hpo.db), resolved to ``storage_url``."""

    @click.option(
        "--storage",
        "storage_flag",
        metavar="URL",
        help="Storage URL; default $HPO_STORAGE, else sqlite:///hpo.db. "
        "Put a PostgreSQL password in the file named by $HPO_DB_PASSWORD_FILE, not here.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, storage_flag: str | None, **kwargs: Any) -> Any:
        try:
            url = resolve_url(storage_flag)
        except StorageError as e:
            raise UsageError(str(e)) from None
        return func(*args, storage_url=url, **kwargs)

    return wrapper


def format_option(func: Callable) -> Callable:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json", "csv"]),
        default="table",
        show_default=True,
        help="Output format: a table for people, JSON or CSV for scripts.",
    )(func)


def jsonable(value: Any) -> Any:
    """Plain JSON values (NaN/inf become None, so the output is valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return jsonable(value.item())
    return value


def print_json(data: Any) -> None:
    click.echo(json.dumps(jsonable(data), indent=2, sort_keys=False))


def cell(value: Any) -> str:
    """A table cell: numbers rounded, lists and dicts as JSON, control characters escaped."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(jsonable(value))
    return visible(str(value))


def render_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, title: str | None = None) -> None:
    """Print ``rows`` (dicts) restricted to ``columns`` as a table, JSON or CSV on stdout."""
    if fmt == "json":
        print_json([{c: row.get(c) for c in columns} for row in rows])
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else (json.dumps(jsonable(row[c])) if isinstance(row[c], (dict, list)) else row[c]) for c in columns])
        sys.stdout.write(buffer.getvalue())
    else:
        table = Table(title=None if title is None else literal(title), title_justify="left")
        for c in columns:
            table.add_column(literal(c), overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell(row.get(c))) for c in columns))
        out.print(table)


def one_line(error: BaseException) -> str:
    text = mask_text(str(error)).strip()
    return (text.splitlines() or [type(error).__name__])[0]
