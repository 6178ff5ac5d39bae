"""hpo's tables (hpo.output.table_lines): drawn as rich draws its default table, without rich's
per-cell cost, and never losing or garbling a cell when the terminal is narrow."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from hpo.output import _RULE_MARK, ASCII_BOX, FOLD_FLOOR, render_rows, table_lines

words = st.text(alphabet="abcdefghij_.-0123456789", min_size=1, max_size=8)
cells = st.lists(words, min_size=0, max_size=3).map(" ".join)


def rich_table(headings, rows, width):
    console = Console(width=width, file=io.StringIO(), color_system=None, soft_wrap=True)
    table = Table()
    for h in headings:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return console.file.getvalue().rstrip("\n").split("\n")


@st.composite
def tables(draw):
    n = draw(st.integers(1, 6))
    headings = draw(st.lists(words, min_size=n, max_size=n))
    rows = draw(st.lists(st.lists(cells, min_size=n, max_size=n), max_size=6))
    return headings, rows


@settings(max_examples=200, deadline=None)
@given(tables())
def test_a_table_that_fits_is_drawn_exactly_as_rich_draws_it(table):
    headings, rows = table
    ours = [line for line in table_lines(headings, rows, [1] * len(headings), 500) if line is not _RULE_MARK]
    assert ours == rich_table(headings, rows, 500)


@settings(max_examples=300, deadline=None)
@given(tables(), st.integers(10, 80), st.data())
def test_a_narrow_table_keeps_every_cell_whole_minimum_and_lines_even(table, width, data):
    headings, rows = table
    minimum = [data.draw(st.integers(1, 6)) for _ in headings]
    lines = [line for line in table_lines(headings, rows, minimum, width) if line is not _RULE_MARK]
    assert len({cell_len(line) for line in lines}) == 1  # a rectangle
    bounds = [i for i, char in enumerate(lines[0]) if char in "┏┳┓"]
    widths = [b - a - 3 for a, b in zip(bounds, bounds[1:])]
    assert all(w >= m for w, m in zip(widths, minimum))
    if sum(max(m, FOLD_FLOOR) + 3 for m in minimum) + 1 <= width:
        assert cell_len(lines[0]) <= width  # it fits wherever the minimum widths allow
    assert all(w >= min(FOLD_FLOOR, max([len(headings[i])] + [len(r[i]) for r in rows])) for i, w in enumerate(widths))
    # Each cell's text is all there, in order: its lines joined give it back (spaces aside).
    header = [line for line in lines if line.startswith("┃")]
    for i, heading in enumerate(headings):
        assert "".join(line.split("┃")[i + 1].strip() for line in header).replace(" ", "") == heading.replace(" ", "")
    body = [line for line in lines if line.startswith("│")]
    flat = ["".join(line.split("│")[i + 1].strip() for line in body).replace(" ", "") for i in range(len(headings))]
    for i in range(len(headings)):
        assert flat[i] == "".join(row[i] for row in rows).replace(" ", "")


def test_an_output_that_cannot_encode_box_characters_gets_an_ascii_table():
    """rich drew an ASCII frame where stdout's encoding has no box characters (LANG=C,
    PYTHONIOENCODING=latin-1); so does hpo."""
    lines = [line for line in table_lines(["a", "bb"], [["1", "2"]], [1, 1], 80, box=ASCII_BOX) if line is not _RULE_MARK]
    assert lines == ["+---+----+", "| a | bb |", "|---+----|", "| 1 | 2  |", "+---+----+"]
    script = ("from hpo.output import render_rows\n"
              "render_rows([{'a': 1, 'b': 'x'}], ['a', 'b'], 'table', title='t')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env={**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("latin-1").splitlines()[1] == "+---+---+"


def test_a_table_without_columns_prints_nothing(capsys):
    render_rows([{"a": 1}], [], "table", title="t")
    assert capsys.readouterr().out == ""
