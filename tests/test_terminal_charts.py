"""The small charts of `hpo trial`'s tables: sparklines of the learning curve and bars of the
per-layer fractions. The drawing functions with exact strings, then the command on a trial a
real worker trained into a SQLite file, piped and without colour, its JSON left as it was."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

import hpo.cli_inspect  # noqa: F401 - registers the commands on the group
from hpo import inspect, output
from hpo.cli import cli
from hpo.output import BAR_EIGHTHS, bar, downsample, plural, sparkline, sparkline_lines, with_bars
from storage import backend
from tests.helpers import make_stage, worker_env
from tests.test_inspect import add_trial, db, pg_test_url, sqlite_template, trial_attrs  # noqa: F401 - fixtures
from tests.test_inspect import make_stage as make_inspect_stage
from workers.worker import Worker, WorkerOptions

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]

BLOCKS = "▁▂▃▄▅▆▇█"
NAN, INF = float("nan"), float("inf")


# -- sparkline ---------------------------------------------------------------------------------
def test_a_sparkline_scales_each_series_to_its_own_min_and_max():
    assert sparkline(range(8)) == BLOCKS
    assert sparkline([0.5, 0.7, 0.9, 0.8]) == "▁▄█▇"
    assert sparkline([1.9, 0.8, 0.45]) == "█▂▁"
    assert sparkline([1000.0, 1000.5, 1001.0]) == sparkline([0, 1, 2]) == "▁▅█"  # only the shape counts


def test_a_sparkline_of_nothing_one_value_or_a_flat_series_is_a_level_line():
    assert sparkline([]) == ""
    assert sparkline([0.42]) == "▄"
    assert sparkline([3, 3, 3]) == "▄▄▄"
    assert sparkline([7, None, 7]) == "▄ ▄"


def test_missing_and_non_finite_values_are_gaps_and_do_not_stretch_the_scale():
    assert sparkline([1, None, 3, NAN, 2, INF, -INF]) == "▁ █ ▅  "
    assert sparkline([None, NAN]) == "  "
    assert sparkline([True, 1, 2]) == " ▁█"  # a boolean is not a number


def test_a_sparkline_of_the_largest_floats_does_not_overflow():
    assert sparkline([-1.7e308, 0.0, 1.7e308]) == "▁▅█"
    assert sparkline([1.7e308] * 120 + [-1.7e308] * 120, width=2) == "█▁"


def test_a_long_series_is_averaged_down_to_the_width_in_cells_of_nearly_equal_size():
    # 7 values in 3 cells: cells of 2, 2 and 3 values; a cell of missing values is a gap.
    assert downsample([0, 0, 8, 8, 4, 4, 4], 3) == [0.0, 8.0, 4.0]
    assert sparkline([0, 0, 8, 8, 4, 4, 4], width=3) == "▁█▅"
    assert downsample([None, None, 1, 2, 3, 4], 3) == [None, 1.5, 3.5]
    assert sparkline([None, None, 1, 2, 3, 4], width=3) == " ▂▇"
    rising = sparkline(range(300))
    assert len(rising) == 60 and rising[0] == "▁" and rising[-1] == "█"
    assert list(rising) == sorted(rising, key=BLOCKS.index)
    assert all(55 <= rising.count(block) * 8 <= 65 for block in BLOCKS)  # eight equal bins, ~7.5 cells each
    assert sparkline(range(60)) == sparkline(range(60), width=60) and len(sparkline(range(61))) == 60
    with pytest.raises(ValueError, match="width must be at least 1"):
        sparkline([1, 2], width=0)


def test_sparkline_lines_label_each_series_with_its_min_and_max_and_say_when_a_curve_was_sampled():
    lines = sparkline_lines({"val_accuracy": [0.71, 0.86, 0.91], "train_loss": [1.9, 0.8, 0.45]})
    assert lines == [
        "val_accuracy  ▁▆█  min 0.71  max 0.91",
        "train_loss    █▂▁  min 0.45  max 1.9",
    ]
    # Series of unequal length stay aligned; a series without a finite value is left out.
    assert sparkline_lines({"a": [1, 2], "bb": [2, 1, 3], "c": [None, NAN]}) == [
        "a   ▁█   min 1  max 2",
        "bb  ▅▁█  min 1  max 3",
    ]
    assert sparkline_lines({}) == [] and sparkline_lines({"a": []}) == []
    long = sparkline_lines({"val_accuracy": [i / 300 for i in range(300)]})
    assert long[-1] == "(300 epochs drawn in 60 cells, each the mean of 5 epochs)"
    assert len(long[0].split("  ")[1]) == 60
    assert sparkline_lines({"x": range(130)})[-1] == "(130 epochs drawn in 60 cells, each the mean of 2 or 3 epochs)"


# -- bar -------------------------------------------------------------------------------------
def test_a_bar_is_the_fraction_in_eighths_of_a_cell_padded_to_its_width():
    assert bar(0) == " " * 10
    assert bar(0.5) == "█████     "
    assert bar(0.12) == "█▎        "  # 9.6 eighths, rounded to 10
    assert bar(0.25) == "██▌       "
    assert bar(1) == "██████████"
    assert bar(0.3, width=4) == "█▎  "
    assert [bar(k / 80) for k in range(1, 8)] == [c + " " * 9 for c in BAR_EIGHTHS]
    assert all(len(bar(k / 97)) == 10 for k in range(98))


def test_a_bar_clips_what_is_outside_zero_to_one_and_draws_nothing_for_what_is_not_a_number():
    assert bar(1.7) == bar(1) and bar(INF) == " " * 10
    assert bar(-0.3) == bar(0) == " " * 10
    for nothing in (None, NAN, "0.5", True):
        assert bar(nothing) == " " * 10
    with pytest.raises(ValueError, match="width must be at least 1"):
        bar(0.5, width=0)


def test_a_few_is_never_drawn_as_none_and_nearly_all_never_as_all():
    assert bar(0.001) == "▏" + " " * 9
    assert bar(0.999) == "█" * 9 + "▉"


def test_bar_columns_follow_the_fractions_that_have_a_value():
    rows = [{"layer": 1, "dead_fraction": 0.5, "saturation_fraction": None}, {"layer": 2, "dead_fraction": None}]
    shown, columns = with_bars(rows, ["layer", "dead_fraction", "saturation_fraction"], inspect.LAYER_FRACTION_BARS)
    assert columns == ["layer", "dead_fraction", "dead", "saturation_fraction"]
    assert [r["dead"] for r in shown] == ["█████     ", " " * 10]
    assert rows[0] == {"layer": 1, "dead_fraction": 0.5, "saturation_fraction": None}  # not changed


# -- hpo trial on a real trial -----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A SQLite file with one trial a real worker trained for 12 epochs (relu: dead fractions, no
    saturation). (url, study)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('charts') / 'hpo.db'}"
    storage, plan = make_stage(url, "charts", trials=1, epochs=12,
                               params=["hidden_sizes=32-16", "batch_size=64", "lr=0.002", "activation=relu"])
    storage.engine.dispose()
    options = WorkerOptions(storage_url=url, study=plan.study_name, worker_id="w-charts", wait_for_campaign_seconds=10)
    assert Worker(options).run().trials == {"COMPLETE": 1}
    return url, plan.study_name


def hpo(url: str, *args: str):
    return CliRunner().invoke(cli, [*args, "--storage", url], catch_exceptions=False)


def chart_of(text: str, name: str) -> str:
    """The sparkline printed on the line that starts with ``name`` (gaps included): after the
    names, padded to the longest ("val_accuracy"), and two spaces; before "  min"."""
    (line,) = [li for li in text.splitlines() if li.startswith(name + " ")]
    return line[len("val_accuracy  "):line.rindex("  min ")]


def layer_table(text: str) -> list[str]:
    """The lines of the per-layer table, from its title on."""
    lines = text.splitlines()
    return lines[lines.index("Per hidden layer, last epoch"):]


def stored_record(url: str, study: str, number: int = 0) -> dict:
    storage = backend.open_storage(url)
    try:
        return inspect.trial_record(storage, study, number)
    finally:
        storage.engine.dispose()


def test_the_sparklines_of_a_trained_trial_follow_its_curve(trained, monkeypatch):
    url, study = trained
    monkeypatch.setattr(output.out, "width", 250)
    result = hpo(url, "trial", study, "0")
    assert result.exit_code == 0, result.output
    curve = stored_record(url, study)["user_attrs"]["curve"]
    for name, values in (("val_accuracy", curve["val_accuracy"]), ("train_loss", curve["train_loss"])):
        assert len(values) == 12 and all(math.isfinite(v) for v in values)
        chart = chart_of(result.stdout, name)
        assert len(chart) == 12 and set(chart) <= set(BLOCKS)
        levels = [BLOCKS.index(c) for c in chart]
        best, worst = max(values), min(values)
        assert {i for i, v in enumerate(values) if v == best} <= {i for i, c in enumerate(chart) if c == "█"}
        assert {i for i, v in enumerate(values) if v == worst} <= {i for i, c in enumerate(chart) if c == "▁"}
        # Higher on the curve is never lower in the chart.
        assert all(levels[i] <= levels[j] for i in range(12) for j in range(12) if values[i] < values[j])
        line = next(li for li in result.stdout.splitlines() if li.startswith(name + " "))
        assert line.endswith(f"min {output.cell(worst)}  max {output.cell(best)}")
    assert chart_of(result.stdout, "train_loss")[0] == "█"  # the loss starts at its highest


def test_the_layer_table_of_a_trained_trial_draws_its_dead_fractions(trained, monkeypatch):
    url, study = trained
    monkeypatch.setattr(output.out, "width", 250)
    text = hpo(url, "trial", study, "0").stdout
    layers = stored_record(url, study)["user_attrs"]["diagnostics"]["layers"]
    assert [layer["saturation_fraction"] for layer in layers] == [None, None]
    header = next(li for li in layer_table(text) if "dead_fraction" in li)
    assert " dead " in header and "saturated" not in header  # relu does not saturate: no bar for it
    for layer in layers:
        row = next(li for li in layer_table(text) if li.startswith(f"│ {layer['layer']} "))
        assert f"│ {output.cell(layer['dead_fraction'])} " in row and f"│ {bar(layer['dead_fraction'])} │" in row


def test_trial_json_is_the_stored_record_without_any_chart(trained):
    url, study = trained
    result = hpo(url, "trial", study, "0", "--format", "json")
    assert result.exit_code == 0
    assert result.stdout == json.dumps(output.jsonable(stored_record(url, study)), indent=2) + "\n"
    assert not set(result.stdout) & set(BLOCKS + BAR_EIGHTHS)


@pytest.mark.parametrize("env", [{}, {"NO_COLOR": "1", "FORCE_COLOR": "1"}], ids=["piped", "no-color-terminal"])
def test_charts_are_plain_characters_piped_and_without_colour(trained, env):
    url, study = trained
    result = subprocess.run([sys.executable, "-m", "hpo", "trial", study, "0"], env={**worker_env(url), **env},
                            capture_output=True, text=True, encoding="utf-8", timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    curve = stored_record(url, study)["user_attrs"]["curve"]
    assert f"val_accuracy  {sparkline(curve['val_accuracy'])}  min " in result.stdout
    assert f"train_loss    {sparkline(curve['train_loss'])}  min " in result.stdout
    assert "\x1b[3" not in result.stdout and "\x1b[4" not in result.stdout  # no foreground or background colour
    if env:  # a terminal all the same: bold headings, nothing else
        assert "\x1b[1m" in result.stdout


# -- hpo trial on stored records ----------------------------------------------------------------
@pytest.fixture
def stored(db):  # noqa: F811 - test_inspect's fixture, imported above
    """An empty storage on a SQLite file and on PostgreSQL (test_inspect's ``db``)."""
    return db


def test_known_fractions_are_drawn_as_known_bars(stored, monkeypatch):
    monkeypatch.setattr(output.out, "width", 250)
    study = make_inspect_stage(stored.storage, stored.name, 1)
    attrs = trial_attrs(0, "w1", {"learning_rate": 0.01, "activation": "tanh"}, 0.9)
    attrs["diagnostics"]["layers"] = [
        {"layer": 1, "units": 100, "dead_fraction": None, "saturation_fraction": 0.25},
        {"layer": 2, "units": 100, "dead_fraction": None, "saturation_fraction": 1.5},  # out of range: clipped
    ]
    add_trial(study, {"learning_rate": 0.01, "activation": "tanh"}, TrialState.COMPLETE, 0.9, attrs)
    text = hpo(stored.url, "trial", study.study_name, "0").stdout
    header = next(li for li in layer_table(text) if "saturation_fraction" in li)
    assert " saturated " in header and " dead " not in header
    rows = [li for li in layer_table(text) if li.startswith(("│ 1 ", "│ 2 "))]
    assert "│ 0.25 " in rows[0] and "│ ██▌        │" in rows[0]
    assert "│ 1.5 " in rows[1] and "│ ██████████ │" in rows[1]


def test_a_long_curve_with_gaps_is_sampled_to_sixty_cells_and_says_so(stored, monkeypatch):
    monkeypatch.setattr(output.out, "width", 250)
    study = make_inspect_stage(stored.storage, stored.name, 1)
    accuracy = [None if 100 <= e < 110 else 0.5 + 0.4 * e / 299 for e in range(300)]
    attrs = trial_attrs(0, "w1", {"learning_rate": 0.01, "activation": "relu"}, 0.9)
    attrs["curve"] = {"epoch": list(range(1, 301)), "val_accuracy": accuracy, "train_loss": [2.0 / (e + 1) for e in range(300)]}
    add_trial(study, {"learning_rate": 0.01, "activation": "relu"}, TrialState.COMPLETE, 0.9, attrs)
    text = hpo(stored.url, "trial", study.study_name, "0").stdout
    chart = chart_of(text, "val_accuracy")
    assert chart == sparkline(accuracy) and len(sparkline(accuracy)) == 60
    assert sparkline(accuracy)[20:22] == "  "  # epochs 101-110 missing: cells 20 and 21
    assert "(300 epochs drawn in 60 cells, each the mean of 5 epochs)" in text
    assert "min 0.5  max 0.9" in text


def test_no_chart_on_a_trial_without_a_curve_or_layers(stored):
    study = make_inspect_stage(stored.storage, stored.name, 1)
    add_trial(study, {"learning_rate": 0.01, "activation": "relu"}, TrialState.FAIL, None, {"reason": "ValueError: bad"})
    result = hpo(stored.url, "trial", study.study_name, "0")
    assert result.exit_code == 0 and "ValueError: bad" in result.stdout
    assert not set(result.stdout) & set(BLOCKS + BAR_EIGHTHS) and "min " not in result.stdout



# -- counts in words -----------------------------------------------------------------------------
def test_a_count_of_one_takes_the_singular():
    assert [plural(n, "stage") for n in (0, 1, 2)] == ["0 stages", "1 stage", "2 stages"]
    assert plural(1, "local worker") == "1 local worker" and plural(3, "directory", "directories") == "3 directories"
