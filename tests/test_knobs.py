"""The knob table (workers/knobs.py) is the one declaration of each training knob: the
training config, the search space and `hpo train` derive from it, and a parameter's short
alias is read wherever a parameter name is."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hpo.cli import cli
from tests.test_inspect import campaign_db, pg_test_url, sqlite_template  # noqa: F401 - the shared campaign fixture
from workers.knobs import ALIASES, KNOBS, KnobError, canonical_name
from workers.nn.activations import ACTIVATIONS
from workers.nn.model import NetworkSpec
from workers.nn.optimizers import OPTIMIZERS
from workers.space import PARAMETERS, SpaceError, build_space, load_space_file, parse_param, resolve_name
from workers.train import TrainConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
]


def hpo(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def the_error_line(result) -> str:
    """The one line of a refused command, without click's "Error: " prefix."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0].removeprefix("Error: ")


# -- the table drives the config ------------------------------------------------------------
def test_every_config_field_is_a_knob_and_takes_its_default():
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert set(fields) == set(KNOBS)
    assert fields == {name: knob.default for name, knob in KNOBS.items()}
    assert set(PARAMETERS) == {name for name, knob in KNOBS.items() if knob.searched} == set(KNOBS) - {"epochs", "seed"}


def test_kernel_defaults_are_the_registries_own():
    config = TrainConfig()
    assert config.leaky_slope == ACTIVATIONS["leaky_relu"].params["slope"]
    assert config.elu_alpha == ACTIVATIONS["elu"].params["alpha"]
    assert config.maxout_k == ACTIVATIONS["maxout"].params["k"]
    momentum = OPTIMIZERS["momentum"]([], learning_rate=1.0)
    assert config.momentum == momentum.momentum


@pytest.mark.parametrize("field_name, bad", [("maxout_k", 1), ("elu_alpha", -1.0), ("elu_alpha", 0.0),
                                             ("leaky_slope", 1.0), ("leaky_slope", -0.1)])
def test_a_kernel_parameter_has_one_rule_for_the_config_and_the_network(field_name, bad):
    """The registry's range is the rule: TrainConfig and the engine refuse alike, in one wording."""
    with pytest.raises(ValueError) as config_error:
        TrainConfig(**{field_name: bad})
    with pytest.raises(ValueError) as network_error:
        NetworkSpec(input_dim=4, hidden_sizes=(3,), num_classes=2, activation="relu", **{field_name: bad})
    assert str(config_error.value) == str(network_error.value)
    assert str(config_error.value).startswith(f"{field_name} must be ")


# name, value on the command line, value in a TOML space file
BAD_VALUES = [
    ("momentum", "1.5", "1.5"),
    ("maxout_k", "1", "1"),  # once >= 2 in two places and >= 1 in a third
    ("lr_decay", "1.5", "1.5"),  # once refused by the space only
    ("learning_rate", "0", "0.0"),
    ("weight_decay", "-0.001", "-0.001"),
    ("batch_size", "0", "0"),
    ("leaky_slope", "1", "1.0"),
    ("elu_alpha", "0", "0.0"),
    ("init_std", "-1", "-1.0"),
    ("pca_components", "0", "0"),
    ("pca_components", "1.5", "1.5"),
]


@pytest.mark.parametrize(("name", "cli_value", "toml_value"), BAD_VALUES)
def test_a_bad_value_gets_the_same_line_from_the_config_hpo_train_and_a_space_file(tmp_path, name, cli_value, toml_value):
    with pytest.raises(KnobError) as config_error:
        TrainConfig(**{name: KNOBS[name].parse(cli_value)})
    message = str(config_error.value)
    assert name in message and "\n" not in message

    assert the_error_line(hpo("train", f"--{name.replace('_', '-')}", cli_value, "--epochs", "1")) == message

    space = tmp_path / "space.toml"
    space.write_text(f"[params]\n{name} = {toml_value}\n")
    with pytest.raises(SpaceError) as space_error:
        load_space_file(space)
    assert str(space_error.value) == f"{space}: params.{name}: {message}"


def test_a_count_or_a_fraction_is_read_alike_by_hpo_train_and_a_space():
    """'1' is one PCA direction and '1.0' all the variance, on the command line as in a space."""
    knob = KNOBS["pca_components"]
    assert knob.parse("1") == 1 and type(knob.parse("1")) is int
    assert knob.parse("1.0") == 1.0 and type(knob.parse("1.0")) is float
    assert parse_param("pca_components=1,1.0")[1].choices == (1, 1.0)


# -- the table drives hpo train's options ---------------------------------------------------
def test_hpo_train_help_lists_every_knob_with_the_tables_help_and_default():
    result = hpo("train", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # click folds long help over lines
    for name, knob in KNOBS.items():
        flag = f"--{name.replace('_', '-')}"
        assert flag in text, flag
        assert " ".join(knob.help.split()) in text, knob.help
        for alias in knob.aliases:
            assert f"--{alias.replace('_', '-')}" in text
    assert "--lr FLOAT Learning rate (step size). Allowed: > 0. [default: 0.01]" in text
    assert "--maxout-k INTEGER Pieces per Maxout unit. Allowed: >= 2. [default: 2]" in text
    assert "--hidden W1-W2-... Hidden layer widths. [default: 100-100]" in text


def test_hpo_train_takes_each_option_under_its_name_and_its_alias():
    long = hpo("train", "--learning-rate", "0.05", "--batch-size", "32", "--no-batch-norm", "--hidden-sizes", "16",
               "--epochs", "1", "--json")
    short = hpo("train", "--lr", "0.05", "--bs", "32", "--no-bn", "--hidden", "16", "--epochs", "1", "--json")
    assert long.exit_code == 0 and short.exit_code == 0, long.output + short.output
    config = json.loads(long.stdout)["config"]
    assert config == json.loads(short.stdout)["config"]
    assert (config["learning_rate"], config["batch_size"], config["batch_norm"], config["hidden_sizes"]) == (0.05, 32, False, [16])


# -- one alias rule, everywhere a parameter is named ----------------------------------------
def test_every_alias_names_its_knob_in_the_space():
    for alias, name in ALIASES.items():
        assert canonical_name(alias) == name == resolve_name(alias)
        assert canonical_name(f" {alias} ") == name
    assert canonical_name("LR") is None and canonical_name("learning-rate") is None


def test_a_space_file_and_a_param_take_the_alias(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('[params]\nlr = "log:1e-4..1e-1"\nbs = [32, 64]\nhidden = "16-16"\n')
    from_file = build_space(file=space)
    from_params = build_space(params=["lr=log:1e-4..1e-1", "bs=32,64", "hidden=16-16"])
    assert from_file == from_params
    assert {"learning_rate", "batch_size", "hidden_sizes"} <= set(from_file)


def test_trials_where_sort_and_columns_take_the_alias(campaign_db):
    """On the shared two-stage campaign (SQLite and PostgreSQL): the alias selects, orders
    and shows the same rows as the full name."""
    def rows(*args):
        result = hpo("trials", campaign_db.name, *args, "--format", "json", "--storage", campaign_db.url)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    short = rows("--where", "lr>0.001", "--sort", "-lr", "--columns", "number,lr,act")
    full = rows("--where", "learning_rate>0.001", "--sort", "-learning_rate", "--columns", "number,learning_rate,activation")
    assert short == full and short
    assert list(short[0]) == ["number", "learning_rate", "activation"]
    values = [r["learning_rate"] for r in short]
    assert values == sorted(values, reverse=True) and min(values) > 0.001


def test_an_unknown_column_is_still_refused(campaign_db):
    result = hpo("trials", campaign_db.name, "--sort", "lrr", "--storage", campaign_db.url)
    assert the_error_line(result).startswith("unknown column 'lrr'")


@pytest.mark.slow
def test_trials_take_the_alias_on_a_campaign_searched_for_real(tmp_path):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    search = subprocess.run(
        [sys.executable, "-m", "hpo", "search", "--name", "k", "--stages", "1", "--trials", "6", "--epochs", "1",
         "--workers", "1", "--storage", url, "--param", "hidden=16", "--param", "lr=log:3e-3..1e-1", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert search.returncode == 0, search.stderr
    result = hpo("trials", "k", "--where", "lr>0.01", "--sort", "lr", "--columns", "lr", "--format", "csv", "--storage", url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "learning_rate"
    values = [float(v) for v in lines[1:]]
    assert values and values == sorted(values) and all(v > 0.01 for v in values)
    everything = hpo("trials", "k", "--columns", "learning_rate", "--format", "csv", "--storage", url).stdout.splitlines()[1:]
    assert len(values) == sum(float(v) > 0.01 for v in everything)


def test_a_knob_error_names_the_knob_and_what_it_takes():
    with pytest.raises(KnobError, match=re.escape("maxout_k must be >= 2, got 1")):
        TrainConfig(maxout_k=1)
    with pytest.raises(KnobError, match=re.escape("unknown dtype 'float16'; allowed: float32, float64")):
        TrainConfig(dtype="float16")


def test_hpo_train_reads_layer_widths_as_a_space_file_does():
    """'50-50' as in a space file; '50,50' as hpo train always took it; a bad one in one line."""
    configs = [json.loads(hpo("train", "--hidden", text, "--epochs", "1", "--json").output)["config"]["hidden_sizes"]
               for text in ("50-50", "50,50")]
    assert configs == [[50, 50], [50, 50]]
    bad = hpo("train", "--hidden", "50-0", "--epochs", "1")
    assert bad.exit_code == 2 and "each layer width must be an integer >= 1" in bad.output
