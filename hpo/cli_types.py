"""Click parameter types the commands share."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN: NaN fails every comparison, so a plain
    range lets it through (``--top nan``) to fail later with a traceback."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


TOP_FRACTION = FiniteFloatRange(0, 1, min_open=True)
"""A fraction of a stage's trials, in (0, 1]."""
