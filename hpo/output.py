"""Shared CLI pieces: the storage option, ``--format table|json|csv``, error handling, the
consoles everything is printed on, and the small charts drawn in tables (sparklines, bars).

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
import logging
import math
import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import click
from rich.cells import cell_len
from rich.console import Console
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


class LiteralFormatter(logging.Formatter):
    """A log formatter whose lines show control characters as escapes, as the consoles do (a
    trial's reason or parameter value is the user's or the data's text); newlines and tabs of
    tracebacks are kept."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), keep="\n\t")


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


# How a table shows a parameter a trial did not sample because its condition did not hold
# (momentum for a trial of adam); JSON has null there, CSV an empty field.
NOT_APPLICABLE_CELL = "n/a"


def cell(value: Any) -> str:
    """A table cell: numbers rounded, lists and dicts as JSON, control characters escaped."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(jsonable(value))
    return visible(str(value))


HEADING_FOLD = 6  # a heading over narrow values folds onto lines of this many cells ("comple", "te")


def render_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, title: str | None = None,
                unbroken: Collection[str] = (), name_column: str | None = None) -> None:
    """Print ``rows`` (dicts) restricted to ``columns`` as a table, JSON or CSV on stdout.

    ``unbroken``: table columns whose values are never folded across lines (numbers, bars): on a
    narrow terminal their headings fold and the other columns give way, and a table that still
    does not fit is printed wider than the terminal rather than "0.1" above "2".

    ``name_column``: the column that names each row (a study), never folded either. When the
    table with its names and ``unbroken`` values whole does not fit the terminal (80 columns, or
    $COLUMNS, in a pipe), its headings folded to no fewer than HEADING_FOLD cells, the rows are
    printed as records instead (:func:`render_records`)."""
    if fmt == "json":
        print_json([{c: row.get(c) for c in columns} for row in rows])
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else (json.dumps(jsonable(row[c])) if isinstance(row[c], (dict, list)) else row[c]) for c in columns])
        sys.stdout.write(buffer.getvalue())
    elif not columns:  # nothing to draw (JSON and CSV above still say so in their format)
        return
    elif name_column is not None and _table_width(rows, columns) > out.width:
        render_records(rows, columns, name_column, title)
    else:
        minimum = {c: _column_width(rows, c) if name_column is not None
                   else max((cell_len(cell(row.get(c))) for row in rows), default=0) if c in unbroken else 1
                   for c in columns}
        box = UNICODE_BOX if (out.encoding or "").lower().replace("-", "").startswith("utf") else ASCII_BOX
        lines = table_lines([visible(c) for c in columns], [[cell(row.get(c)) for c in columns] for row in rows],
                            [minimum[c] for c in columns], out.width, box=box)
        rule = lines.index(_RULE_MARK)
        if title is not None:
            out.print(literal(title))
        out.print(Text("\n".join(lines[:rule]), style="bold"))  # bold headings on a terminal
        # The rest as it is: rich would split and measure each of its lines once more.
        out.file.write("\n".join(lines[rule + 1:]) + "\n")
        out.file.flush()


# A table as rich draws one by default (box.HEAVY_HEAD, a space of padding on each side of a cell),
# drawn here directly: rich measures and wraps every cell as an object, about 2 ms a row, so a
# study of 1,000 trials took over a second to print.
_RULE_MARK = "\0"  # where the header ends in table_lines' result
FOLD_FLOOR = 3  # a column folds to no fewer cells than this ("num" / "ber"), unless it is narrower


class Box(NamedTuple):
    """The characters of a table's frame: top, header, rule under the header, rows, bottom."""

    top: str  # left, between columns, right, line
    head: str  # the vertical line of the header
    rule: str  # left, between columns, right, line
    body: str  # the vertical line of the rows
    bottom: str  # left, between columns, right, line


UNICODE_BOX = Box("┏┳┓━", "┃", "┡╇┩━", "│", "└┴┘─")  # rich's default, box.HEAVY_HEAD
ASCII_BOX = Box("+++-", "|", "|+|-", "|", "+++-")  # for an output that cannot encode the above


def table_lines(headings: Sequence[str], rows: Sequence[Sequence[str]], minimum: Sequence[int],
                width: int, box: Box = UNICODE_BOX) -> list[str]:
    """The lines of a table of ``rows`` under ``headings``, at most ``width`` cells wide where the
    columns' ``minimum`` widths allow (else as narrow as they allow, and wider than ``width``).
    Columns start at their widest cell; while the table is too wide, the widest column that can
    give way loses a cell, down to its ``minimum`` but not below FOLD_FLOOR. A cell wraps at
    spaces and folds a longer word; headings sit at the bottom of the header, values at the top
    of their row. The header's last line is followed by ``_RULE_MARK``."""
    lengths = [[cell_len(text) for text in row] for row in rows]
    widths = [max([cell_len(h), *(r[i] for r in lengths)]) for i, h in enumerate(headings)]
    floors = [max(m, min(w, FOLD_FLOOR), 1) for w, m in zip(widths, minimum)]
    widths = [max(w, f) for w, f in zip(widths, floors)]
    excess = sum(widths) + 3 * len(widths) + 1 - width
    while excess > 0:
        shrinkable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not shrinkable:
            break
        widest = max(widths[i] for i in shrinkable)
        at_widest = [i for i in shrinkable if widths[i] == widest]
        floor = max([widths[i] for i in shrinkable if widths[i] < widest] + [floors[i] for i in at_widest])
        step = max(1, min(widest - floor, excess // len(at_widest)))
        for i in at_widest:
            if excess <= 0:
                break
            widths[i] -= step
            excess -= step

    def block(cells: Sequence[str], edge: str, bottom: bool, cell_lengths: Sequence[int] | None = None) -> list[str]:
        if cell_lengths is not None and all(n <= w for n, w in zip(cell_lengths, widths)):  # one line, the common case
            return [edge + edge.join(f" {text}{' ' * (w - n)} " for text, n, w in zip(cells, cell_lengths, widths)) + edge]
        wrapped = [_wrap(text, w) for text, w in zip(cells, widths)]
        height = max(len(w) for w in wrapped)
        padded = [([""] * (height - len(w)) + w) if bottom else (w + [""] * (height - len(w))) for w in wrapped]
        return [edge + edge.join(f" {_pad(p[k], w)} " for p, w in zip(padded, widths)) + edge for k in range(height)]

    def frame(chars: str) -> str:
        left, between, right, line = chars
        return left + between.join(line * (w + 2) for w in widths) + right

    lines = [frame(box.top)]
    lines += block(headings, box.head, bottom=True)
    lines += [_RULE_MARK, frame(box.rule)]
    for row, row_lengths in zip(rows, lengths):
        lines += block(row, box.body, bottom=False, cell_lengths=row_lengths)
    lines.append(frame(box.bottom))
    return lines


def _pad(text: str, width: int) -> str:
    return text + " " * (width - cell_len(text))


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` cells: broken at spaces, a longer word folded."""
    if cell_len(text) <= width:
        return [text]
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        if line and cell_len(line) + 1 + cell_len(word) <= width:
            line += " " + word
            continue
        if line:
            lines.append(line)
        line = ""
        while cell_len(word) > width:  # fold: as many characters as fit
            taken = ""
            for char in word:
                if cell_len(taken + char) > width:
                    break
                taken += char
            taken = taken or word[0]
            lines.append(taken)
            word = word[len(taken):]
        line = word
    if line or not lines:
        lines.append(line)
    return lines


def _column_width(rows: Sequence[dict[str, Any]], column: str) -> int:
    """Cells of ``column`` with every value whole and its heading folded to HEADING_FOLD at most."""
    widest = max((cell_len(cell(row.get(column))) for row in rows), default=0)
    return max(widest, min(cell_len(visible(column)), HEADING_FOLD))


def _table_width(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> int:
    """The width of rich's default table with :func:`_column_width` columns: a space of padding on
    each side of every column, and a rule before, between and after them."""
    return sum(_column_width(rows, c) + 2 for c in columns) + len(columns) + 1


def render_records(rows: Sequence[dict[str, Any]], columns: Sequence[str], name_column: str,
                   title: str | None = None) -> None:
    """Each row as a record, for a terminal too narrow for its table: the row's name whole on a
    line of its own, then its other columns as ``column value`` pairs, indented and wrapped
    between pairs at the terminal's width; columns without a value are left out. As psql's
    expanded display, each heading is printed beside its value, so no heading has to fold::

        demo/stage-1
          stage 1/3   status done   budget 60   epochs 2   complete 30   pruned 19
          diverged 11   fail 0   running 0   waiting 0   best 0.9721
    """
    indent, gap = "  ", "   "
    lines = [] if title is None else [visible(title)]
    for row in rows:
        lines.append(cell(row.get(name_column)))
        pairs = [f"{visible(c)} {cell(row.get(c))}" for c in columns if c != name_column and cell(row.get(c)) != ""]
        line = ""
        for pair in pairs:
            if line and cell_len(indent + line + gap + pair) > out.width:
                lines.append(indent + line)
                line = ""
            line = f"{line}{gap}{pair}" if line else pair
        if line:
            lines.append(indent + line)
    out.print(Text("\n".join(lines)))


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``count`` and ``noun``, the noun singular for exactly one: "1 stage", "3 stages", "0 trials".
    ``plural_noun`` when adding an "s" is not the plural ("1 directory", "2 directories")."""
    return f"{count} {noun if count == 1 else (plural_noun or noun + 's')}"


def one_line(error: BaseException) -> str:
    text = mask_text(str(error)).strip()
    return (text.splitlines() or [type(error).__name__])[0]


# -- charts drawn with characters ----------------------------------------------------------------
# Plain characters, no colour: they read the same piped, in a log file and under NO_COLOR.
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"  # the eight heights of a sparkline cell, lowest first
BAR_EIGHTHS = "▏▎▍▌▋▊▉"  # a bar's last, partial cell: 1/8 to 7/8 of a cell
FULL_BLOCK = "█"
LEVEL = SPARK_BLOCKS[3]  # a flat series (or one value): half height, a level line
GAP = " "  # a missing or non-finite value in a sparkline
SPARK_WIDTH = 60  # cells at most: a longer series is averaged down to this many
BAR_WIDTH = 10  # cells of a fraction bar: 80 steps of 1/8 cell between 0 and 1


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def downsample(values: Sequence[Any], width: int) -> list[float | None]:
    """``values`` in at most ``width`` cells: cell ``i`` is the mean of the finite values among
    ``values[i*n//width : (i+1)*n//width]`` (each cell covers n//width or n//width + 1 values),
    None when it covers none. Series no longer than ``width`` come back as they are (non-finite
    values as None)."""
    if width < 1:
        raise ValueError(f"width must be at least 1, not {width}")
    finite = [_finite(v) for v in values]
    n = len(finite)
    if n <= width:
        return finite
    cells: list[float | None] = []
    for i in range(width):
        covered = [v for v in finite[i * n // width:(i + 1) * n // width] if v is not None]
        cells.append(math.fsum(v / len(covered) for v in covered) if covered else None)  # no overflow near 1e308
    return cells


def sparkline(values: Sequence[Any], width: int = SPARK_WIDTH) -> str:
    """One character per value, its height scaled to the series' finite min..max.

    The range is cut into eight equal bins, ``▁`` (the min) to ``█`` (the max). None, NaN and
    inf are drawn as ``GAP`` (a space). A flat series, or a single value, is a row of ``▄``: a
    level line, since it has no range to scale. A series longer than ``width`` is first averaged
    down to ``width`` cells (:func:`downsample`), still scaled to the min..max of all its values.
    """
    finite = [v for v in (_finite(v) for v in values) if v is not None]
    if not finite:
        return GAP * min(len(values), width)
    low, high = min(finite), max(finite)
    cells = downsample(values, width)
    if high == low:
        return "".join(GAP if v is None else LEVEL for v in cells)
    # Halved, the span of two finite floats is finite (-1e308..1e308 would overflow).
    half_span = high / 2 - low / 2
    levels = len(SPARK_BLOCKS)
    return "".join(GAP if v is None else SPARK_BLOCKS[min(int((v / 2 - low / 2) / half_span * levels), levels - 1)]
                   for v in cells)


def bar(fraction: Any, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of ``fraction`` (0..1, clipped) of ``width`` cells, in steps of 1/8 cell,
    padded with spaces to exactly ``width`` characters; all spaces when ``fraction`` is not a
    finite number.

    Rounded to the nearest eighth, except that a fraction above 0 shows at least ``▏`` and one
    below 1 is never drawn full: "a few" and "all" stay distinguishable from "none" and "nearly
    all".
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, not {width}")
    value = _finite(fraction)
    if value is None:
        return " " * width
    value = min(max(value, 0.0), 1.0)
    steps = width * 8
    eighths = math.floor(value * steps + 0.5)
    if value > 0:
        eighths = max(eighths, 1)
    if value < 1:
        eighths = min(eighths, steps - 1)
    full, part = divmod(eighths, 8)
    drawn = FULL_BLOCK * full + (BAR_EIGHTHS[part - 1] if part else "")
    return drawn.ljust(width)


def sparkline_lines(series: Mapping[str, Sequence[Any]], width: int = SPARK_WIDTH, unit: str = "epochs") -> list[str]:
    """A labelled sparkline per series with finite values (``name  ▁▃▆█  min 0.7  max 0.91``),
    names and charts aligned, and a last line saying so when a series was averaged down to
    ``width`` cells. Series without a finite value are left out."""
    drawn = {name: list(values) for name, values in series.items() if any(_finite(v) is not None for v in values)}
    if not drawn:
        return []
    labels = {name: visible(name) for name in drawn}
    label_width = max(len(label) for label in labels.values())
    charts = {name: sparkline(values, width) for name, values in drawn.items()}
    chart_width = max(len(chart) for chart in charts.values())
    lines = []
    for name, values in drawn.items():
        finite = [v for v in (_finite(v) for v in values) if v is not None]
        lines.append(f"{labels[name].ljust(label_width)}  {charts[name].ljust(chart_width)}  "
                     f"min {cell(min(finite))}  max {cell(max(finite))}")
    longest = max(len(values) for values in drawn.values())
    if longest > width:
        low, high = longest // width, -(-longest // width)
        each = str(low) if low == high else f"{low} or {high}"
        lines.append(f"({longest} {unit} drawn in {width} cells, each the mean of {each} {unit})")
    return lines


def with_bars(rows: Sequence[dict[str, Any]], columns: Sequence[str], bars: Mapping[str, str],
              width: int = BAR_WIDTH) -> tuple[list[dict[str, Any]], list[str]]:
    """``rows`` and ``columns`` with a bar column after each fraction column named in ``bars``
    (fraction column -> heading of its bar), for a table. A fraction column no row has a
    value in gets no bar."""
    shown = list(columns)
    added = {}
    for column, heading in bars.items():
        if column in shown and any(_finite(row.get(column)) is not None for row in rows):
            shown.insert(shown.index(column) + 1, heading)
            added[heading] = column
    drawn = [{**row, **{heading: bar(row.get(column), width) for heading, column in added.items()}} for row in rows]
    return drawn, shown
