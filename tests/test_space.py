"""Search spaces: every way to write one, every way to get one wrong, and what a worker gets."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from workers.data.preprocess import PREPROCESSING
from workers.nn.activations import ACTIVATIONS
from workers.nn.initializers import INITIALIZERS
from workers.nn.optimizers import OPTIMIZERS
from workers.space import (
    PARAMETERS,
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    SpaceError,
    build_space,
    default_space,
    grid_values,
    load_space_file,
    parse_param,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- hypothesis strategies (test_narrow.py uses them too) ------------------------------------

@st.composite
def log_ranges(draw, lo_exp=-8.0, hi_exp=2.0):
    a = draw(st.floats(lo_exp, hi_exp - 0.2))
    b = draw(st.floats(a + 0.1, hi_exp))
    return FloatRange(float(f"{10 ** a:.3g}"), float(f"{10 ** b:.3g}"), log=True)


@st.composite
def unit_ranges(draw, high_below_one=True):
    """A linear range inside [0, 1) (momentum, leaky_slope) or (0, 1] (lr_decay)."""
    a = draw(st.floats(0.01, 0.9))
    b = draw(st.floats(a + 0.01, 0.99 if high_below_one else 1.0))
    return FloatRange(a, b)


@st.composite
def int_ranges(draw, min_low=1):
    if draw(st.booleans()):
        low = draw(st.integers(min_low, 64))
        return IntRange(low, draw(st.integers(low + 1, 4096)), log=True)
    step = draw(st.sampled_from([1, 1, 2, 16]))
    low = draw(st.integers(min_low, 64))
    return IntRange(low, low + step * draw(st.integers(1, 40)), step=step)


def subsets(values):
    values = list(values)
    return st.lists(st.sampled_from(values), min_size=1, max_size=len(values), unique=True).map(
        lambda chosen: Choice(tuple(v for v in values if v in chosen))
    )


# Built once: constructing strategies inside every draw made the property tests 2x slower.
_ALWAYS = {
    "learning_rate": st.one_of(log_ranges(), st.just(FloatRange(1e-4, 0.5))),
    "activation": subsets(ACTIVATIONS),
    "batch_norm": subsets([True, False]),
}
_OPTIONAL = {
    "momentum": unit_ranges(),
    "lr_decay": unit_ranges(high_below_one=False),
    "weight_decay": st.one_of(log_ranges(-8, 0), st.just(FloatRange(0.0, 1e-2))),
    "batch_size": st.one_of(int_ranges(), subsets([16, 32, 64, 128])),
    "maxout_k": int_ranges(min_low=2),
    "hidden_sizes": subsets(["100", "100-100", "50-50-50"]),
    "optimizer": subsets(OPTIMIZERS),
    "pca_components": st.one_of(int_ranges(), unit_ranges(high_below_one=False), subsets([10, 0.9, 1.0])),
}
_OPTIONAL_NAMES = st.lists(st.sampled_from(sorted(_OPTIONAL)), unique=True)


@st.composite
def spaces(draw) -> SearchSpace:
    """A random valid space over every kind of spec and several domains."""
    specs = {name: draw(strategy) for name, strategy in _ALWAYS.items()}
    for name in draw(_OPTIONAL_NAMES):
        specs[name] = draw(_OPTIONAL[name])
    return SearchSpace(specs)


# -- the default space ---------------------------------------------------------------------

def test_default_space_follows_the_lecture_and_the_registries():
    space = default_space()
    assert list(space) == ["learning_rate", "activation", "initializer", "batch_norm"]
    assert space["learning_rate"] == FloatRange(1e-6, 10.0, log=True)  # 10 ** uniform(-6, 1)
    assert space["activation"].choices == tuple(ACTIVATIONS)
    assert space["initializer"].choices == tuple(INITIALIZERS)
    assert space["batch_norm"].choices == (True, False)
    assert str(space).splitlines()[0].split() == ["learning_rate", "log[1e-06,", "10]"]


def test_space_is_immutable_and_hashable():
    space = default_space()
    with pytest.raises(TypeError):
        space["learning_rate"] = FloatRange(1e-3, 1.0)  # type: ignore[index]
    with pytest.raises(AttributeError):
        space["learning_rate"].low = 0.5  # type: ignore[misc]
    assert hash(space) == hash(default_space()) and space == default_space()


# -- the shorthand -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, name, spec",
    [
        ("lr=log:1e-6..1e-1", "learning_rate", FloatRange(1e-6, 0.1, log=True)),
        ("learning_rate = log:1e-6..1e-1", "learning_rate", FloatRange(1e-6, 0.1, log=True)),
        ("wd=log:1e-6..1e-2", "weight_decay", FloatRange(1e-6, 1e-2, log=True)),
        ("momentum=0.5..0.99", "momentum", FloatRange(0.5, 0.99)),
        ("momentum=linear:0.5..0.99", "momentum", FloatRange(0.5, 0.99)),
        ("momentum=float:0.5..0.99", "momentum", FloatRange(0.5, 0.99)),
        ("batch_size=int:32..256", "batch_size", IntRange(32, 256)),
        ("batch_size=32..256", "batch_size", IntRange(32, 256)),
        ("batch_size=int:32..256:32", "batch_size", IntRange(32, 256, step=32)),
        ("batch_size=int-log:16..512", "batch_size", IntRange(16, 512, log=True)),
        ("bs=log:16..512", "batch_size", IntRange(16, 512, log=True)),
        ("batch_size=32,64,128", "batch_size", Choice((32, 64, 128))),
        ("activation=relu,tanh", "activation", Choice(("relu", "tanh"))),
        ("act=relu, tanh", "activation", Choice(("relu", "tanh"))),
        ("init=he", "initializer", Choice(("he",))),
        ("batch_norm=true,false", "batch_norm", Choice((True, False))),
        ("bn=False", "batch_norm", Choice((False,))),
        ("hidden_sizes=100-100,200-200", "hidden_sizes", Choice(("100-100", "200-200"))),
        ("hidden_sizes=200", "hidden_sizes", Choice(("200",))),
        ("optimizer=adam", "optimizer", Choice(("adam",))),
        ("opt=sgd,adam", "optimizer", Choice(("sgd", "adam"))),
        ("preprocessing=center,pca_whiten", "preprocessing", Choice(("center", "pca_whiten"))),
        ("lr=1e-3,1e-2", "learning_rate", Choice((1e-3, 1e-2))),
        ("wd=0,1e-4", "weight_decay", Choice((0.0, 1e-4))),
        ("dtype=float32", "dtype", Choice(("float32",))),
    ],
)
def test_parse_param_reads_every_form(text, name, spec):
    assert parse_param(text) == (name, spec)


def test_choices_are_typed_as_the_parameter():
    assert all(type(v) is int for v in parse_param("batch_size=32,64")[1].choices)
    assert all(type(v) is float for v in parse_param("lr=1,2")[1].choices)
    assert all(type(v) is bool for v in parse_param("bn=true,false")[1].choices)


@pytest.mark.parametrize(
    "text, words",
    [
        ("lr=log:1e-1..1e-6", ["learning_rate: low 0.1 must be below high 1e-06"]),
        ("momentum=0.9..0.9", ["must be below high", "single value"]),
        ("lr=log:0..1e-1", ["log range", "above 0"]),
        ("wd=log:-1..1", ["log range", "above 0"]),
        ("lr=-1..1", ["learning_rate must be > 0"]),
        ("lr=0", ["learning_rate must be > 0"]),
        ("wd=-1e-3,0", ["weight_decay must be >= 0"]),
        ("momentum=0.5..1", ["momentum must be in [0, 1)", "high 1"]),
        ("lr_decay=0..0.9", ["lr_decay must be in (0, 1]"]),
        ("bs=0..10", ["batch_size must be >= 1"]),
        ("maxout_k=1,2", ["maxout_k must be >= 2"]),
        ("lerning_rate=1..2", ["unknown parameter 'lerning_rate'", "did you mean learning_rate", "known: learning_rate"]),
        ("colour=red", ["unknown parameter 'colour'", "known:"]),
        ("activation=relu,swish", ["unknown activation 'swish'", "allowed: " + ", ".join(ACTIVATIONS)]),
        ("init=glorot", ["unknown initializer 'glorot'", "allowed: " + ", ".join(INITIALIZERS)]),
        ("optimizer=rmsprop", ["unknown optimizer 'rmsprop'", "allowed: " + ", ".join(OPTIMIZERS)]),
        ("preprocessing=whiten", ["unknown preprocessing 'whiten'", "allowed: " + ", ".join(PREPROCESSING)]),
        ("dtype=int8", ["unknown dtype 'int8'", "float32"]),
        ("activation=", ["no value given"]),
        ("activation=relu,,tanh", ["empty choice"]),
        ("activation=relu,relu", ["relu is given twice"]),
        ("lr=abc..1", ["'abc' is not a number"]),
        ("lr=1e-3..nan", ["not a finite number"]),
        ("lr", ["expected name=spec"]),
        ("=relu", ["no parameter name"]),
        ("batch_size=3.5", ["batch_size must be an integer", "3.5"]),
        ("batch_size=int:16..64.5", ["batch_size must be an integer", "64.5"]),
        ("batch_size=float:16..64", ["batch_size is an integer"]),
        ("lr=int:1..3", ["learning_rate is a real number"]),
        ("lr=1e-3..1e-1:2", ["step is only for integer ranges"]),
        ("bs=int-log:16..512:2", ["log-scaled integer range cannot have a step"]),
        ("bs=int:32..250:32", ["multiple of the step"]),
        ("lr=lgo:1..2", ["unknown range prefix 'lgo'"]),
        ("lr=log:1e-3", ["a range is written"]),
        ("lr=1..2..3", ["cannot read range"]),
        ("activation=relu..tanh", ["activation takes a list of choices"]),
        ("bn=maybe", ["batch_norm must be true or false"]),
        ("hidden_sizes=100-0", ["each layer width must be an integer >= 1"]),
        ("hidden_sizes=100x100", ["each layer width"]),
        ("epochs=1..10", ["epochs is not a search parameter", "per stage", "--epochs"]),
        ("seed=1,2", ["seed is not a search parameter"]),
    ],
)
def test_bad_shorthand_says_what_is_wrong_in_one_line(text, words):
    with pytest.raises(SpaceError) as info:
        parse_param(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--param {text!r}")  # the user sees which --param it was
    for word in words:
        assert word in message


def test_every_spec_prints_as_shorthand_that_parses_back():
    for text in ["lr=log:1e-6..0.1", "bs=int:32..256:32", "bs=int-log:16..512", "act=relu,tanh",
                 "bn=true,false", "hidden_sizes=100-100,200", "momentum=0.5..0.99", "lr=1e-3,0.01"]:
        name, spec = parse_param(text)
        assert parse_param(f"{name}={spec.shorthand()}") == (name, spec)


def test_describe_is_short_for_tables():
    assert FloatRange(1e-6, 10, log=True).describe() == "log[1e-06, 10]"
    assert FloatRange(0.5, 0.99).describe() == "[0.5, 0.99]"
    assert IntRange(32, 256, step=32).describe() == "int[32, 256] step 32"
    assert IntRange(16, 512, log=True).describe() == "int-log[16, 512]"
    assert Choice(("relu", "tanh")).describe() == "{relu, tanh}"
    assert str(Choice((True, False))) == "{true, false}"


# -- TOML files ----------------------------------------------------------------------------

TOML_SPACE = """
[params]
learning_rate = "log:1e-6..1e-1"
activation = ["relu", "tanh"]
batch_norm = [true, false]
hidden_sizes = ["100-100", [200]]
optimizer = "adam"
momentum = 0.9

[params.weight_decay]
low = 1e-6
high = 1e-2
log = true

[params.batch_size]
low = 32
high = 256
step = 32

[params.initializer]
choices = ["xavier", "he"]
"""

SAME_AS_PARAMS = [
    "lr=log:1e-6..1e-1", "activation=relu,tanh", "bn=true,false", "hidden_sizes=100-100,200",
    "optimizer=adam", "momentum=0.9", "wd=log:1e-6..1e-2", "batch_size=int:32..256:32", "init=xavier,he",
]


def test_toml_file_and_shorthand_give_the_same_space(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(TOML_SPACE)
    from_file = load_space_file(path)
    from_cli = SearchSpace(dict(parse_param(p) for p in SAME_AS_PARAMS))
    assert from_file == from_cli
    assert from_file["hidden_sizes"] == Choice(("100-100", "200"))
    assert from_file["momentum"] == Choice((0.9,))


def test_toml_accepts_the_stored_table_form_and_aliases(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(
        '[params.lr]\ntype = "float"\nlow = 1e-5\nhigh = 1\nlog = true\n'
        '[params.act]\ntype = "choice"\nchoices = ["relu"]\n'
        "[params]\nbs = [32, 64]\n"
    )
    assert load_space_file(path) == SearchSpace(
        {"learning_rate": FloatRange(1e-5, 1.0, log=True), "activation": Choice(("relu",)),
         "batch_size": Choice((32, 64))}
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("[params\nlr = 1", ["not valid TOML"]),
        ("lr = 1", ["unknown top-level key 'lr'", "[params]"]),
        ("", ["no [params] table"]),
        ("[params]\nlr = [1e-3, 'x']", ["params.lr", "learning_rate must be a real number"]),
        ("[params]\nbatch_size = 3.5", ["params.batch_size", "batch_size must be an integer, got 3.5"]),
        ("[params]\nbatch_size = [true]", ["batch_size must be an integer"]),
        ("[params]\nactivation = []", ["the list of choices is empty"]),
        ("[params]\nactivation = ['relu', 'gelu']", ["unknown activation 'gelu'"]),
        ("[params.lr]\nlow = 1\n", ["missing high"]),
        ("[params.lr]\nlow = 1\nhigh = 0.1\nlog = true", ["low 1 must be below high 0.1"]),
        ("[params.lr]\nlow = 1e-3\nhigh = 0.1\nlog = 'yes'", ["log must be true or false"]),
        ("[params.lr]\nlow = 1e-3\nhigh = 0.1\nscale = 'log'", ["unknown key 'scale'"]),
        ("[params.lr]\nlow = 1e-3\nhigh = 0.1\nchoices = [1]", ["either low/high or choices"]),
        ("[params.bs]\ntype = 'float'\nlow = 16\nhigh = 64", ["batch_size is an integer"]),
        ("[params.bs]\nlow = 16\nhigh = 64.5", ["must be an integer"]),
        ("[params.activation]\nlow = 1\nhigh = 2", ["activation takes a list of choices"]),
        ("[params.activation]\ntype = 'float'\nlow = 1\nhigh = 2", ["activation takes a list of choices"]),
        ("[params]\nepochs = 5", ["epochs is not a search parameter"]),
        ("[params]\nlr = 'log:1..2'\nlearning_rate = 'log:1..3'", ["learning_rate is given twice"]),
    ],
)
def test_bad_toml_names_the_file_and_the_problem(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space_file(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for word in words:
        assert word in message


def test_missing_file_is_a_space_error(tmp_path):
    with pytest.raises(SpaceError, match="no such space file"):
        load_space_file(tmp_path / "nope.toml")


# -- building a stage's space ----------------------------------------------------------------

def test_build_space_overlays_base_then_file_then_params(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('[params]\nlearning_rate = "log:1e-5..1"\noptimizer = "nesterov"\nmomentum = "0.5..0.9"\n')
    space = build_space(None, path, ["momentum=0.8..0.99", "lr=log:1e-4..1e-2", "momentum=0.9"])
    assert space["learning_rate"] == FloatRange(1e-4, 1e-2, log=True)  # the later --param wins
    assert space["momentum"] == Choice((0.9,))
    assert space["activation"] == default_space()["activation"]
    assert list(space)[:4] == list(default_space())  # replaced in place, new names last


def test_build_space_always_holds_the_always_searched_parameters():
    base = SearchSpace({"learning_rate": FloatRange(1e-3, 1e-1, log=True)})
    space = build_space(base, None, [])
    assert space["learning_rate"] == FloatRange(1e-3, 1e-1, log=True)
    assert set(default_space()) <= set(space)


def test_build_space_stops_at_the_first_bad_param():
    with pytest.raises(SpaceError, match="unknown activation 'gelu'"):
        build_space(None, None, ["lr=log:1e-5..1", "act=gelu"])


def test_searchspace_validates_specs_given_in_code():
    assert SearchSpace({"lr": Choice((1,))})["learning_rate"] == Choice((1.0,))  # typed as float
    with pytest.raises(SpaceError, match="batch_size is an integer"):
        SearchSpace({"batch_size": FloatRange(16, 64)})
    with pytest.raises(SpaceError, match="momentum must be in"):
        SearchSpace({"momentum": FloatRange(0.5, 1.5)})
    with pytest.raises(SpaceError, match="learning_rate is given twice"):
        SearchSpace([("lr", FloatRange(1, 2)), ("learning_rate", FloatRange(1, 2))])
    with pytest.raises(SpaceError, match="expected FloatRange"):
        SearchSpace({"learning_rate": (1e-3, 1e-1)})


# -- storage ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(spaces())
def test_to_dict_round_trips_exactly_through_json(space):
    data = json.loads(json.dumps(space.to_dict()))
    back = SearchSpace.from_dict(data)
    assert back == space
    assert list(back) == list(space)
    for name in space:  # exact types too: True is not 1, 32 is not 32.0
        if isinstance(space[name], Choice):
            assert [type(c) for c in back[name].choices] == [type(c) for c in space[name].choices]


def test_from_dict_rejects_what_to_dict_never_writes():
    with pytest.raises(SpaceError, match="'params' dict"):
        SearchSpace.from_dict({"learning_rate": 1})
    with pytest.raises(SpaceError, match="version"):
        SearchSpace.from_dict({"version": 3, "params": {}})
    with pytest.raises(SpaceError, match="params.learning_rate: expected a table"):
        SearchSpace.from_dict({"params": {"learning_rate": "log:1e-3..1"}})


# -- what a worker gets ------------------------------------------------------------------------

def test_to_distributions_matches_the_specs():
    space = build_space(None, None, ["bs=int:32..256:32", "hidden_sizes=100,100-100", "opt=momentum", "momentum=0.5..0.99"])
    dists = space.to_distributions()
    assert list(dists) == list(space)
    assert dists["learning_rate"] == FloatDistribution(1e-6, 10.0, log=True)
    assert dists["batch_size"] == IntDistribution(32, 256, step=32)
    assert dists["momentum"] == FloatDistribution(0.5, 0.99)
    assert dists["activation"] == CategoricalDistribution(tuple(ACTIVATIONS))
    assert dists["hidden_sizes"] == CategoricalDistribution(("100", "100-100"))


def test_one_ask_samples_every_parameter_inside_the_space():
    space = build_space(None, None, ["bs=int-log:16..512", "hidden_sizes=100,100-100", "wd=log:1e-6..1e-2"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask(fixed_distributions=space.to_distributions())
        assert set(trial.params) == set(space) and space.contains(trial.params)
        study.tell(trial, 0.5)


def test_to_train_kwargs_converts_to_config_types():
    space = build_space(None, None, ["hidden_sizes=100-50,200", "bs=32,64", "opt=momentum", "momentum=0.5..0.99"])
    params = {"learning_rate": np.float64(1e-3), "activation": "relu", "initializer": "he",
              "batch_norm": np.bool_(True), "hidden_sizes": "100-50", "batch_size": np.int64(64),
              "optimizer": "momentum", "momentum": 0.9}
    kwargs = space.to_train_kwargs(params)
    assert kwargs == {"learning_rate": 1e-3, "activation": "relu", "initializer": "he", "batch_norm": True,
                      "hidden_sizes": (100, 50), "batch_size": 64, "optimizer": "momentum", "momentum": 0.9}
    assert type(kwargs["batch_size"]) is int and type(kwargs["batch_norm"]) is bool
    assert type(kwargs["learning_rate"]) is float
    json.dumps(kwargs)


def test_to_train_kwargs_rejects_params_of_another_space():
    space = default_space()
    params = {"learning_rate": 1e-3, "activation": "relu", "initializer": "he", "batch_norm": True}
    with pytest.raises(SpaceError, match="missing: batch_norm"):
        space.to_train_kwargs({k: v for k, v in params.items() if k != "batch_norm"})
    with pytest.raises(SpaceError, match="not in the space: momentum"):
        space.to_train_kwargs({**params, "momentum": 0.9})
    with pytest.raises(SpaceError, match="learning_rate must be > 0"):
        space.to_train_kwargs({**params, "learning_rate": -1.0})
    with pytest.raises(SpaceError, match="unknown activation"):
        space.to_train_kwargs({**params, "activation": "gelu"})


def test_to_train_kwargs_builds_a_train_config():
    train = pytest.importorskip("workers.train", reason="workers.train is not written yet")
    space = build_space(None, None, [
        "hidden_sizes=64-32", "bs=int:16..64:16", "opt=momentum", "momentum=0.5..0.99", "wd=log:1e-6..1e-2",
        "lr_decay=0.9..1", "preprocessing=center",
    ])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask(fixed_distributions=space.to_distributions())
        config = train.TrainConfig(**space.to_train_kwargs(trial.params), epochs=1, seed=0)
        assert config.hidden_sizes == (64, 32) and config.learning_rate == trial.params["learning_rate"]
        study.tell(trial, 0.5)


def test_every_searchable_parameter_is_a_train_config_field():
    train = pytest.importorskip("workers.train", reason="workers.train is not written yet")
    import dataclasses

    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    assert set(PARAMETERS) <= fields
    assert fields - set(PARAMETERS) <= {"epochs", "seed"}  # the two fixed by the campaign
    assert PARAMETERS["dtype"].allowed() == list(train.DTYPES)


@pytest.mark.parametrize(
    "text, spec",
    [
        ("pca_components=10..50", IntRange(10, 50)),
        ("pca_components=0.9..0.99", FloatRange(0.9, 0.99)),
        ("pca_components=float:0.5..1", FloatRange(0.5, 1.0)),
        ("pca_components=10,0.95,1.0", Choice((10, 0.95, 1.0))),
        ("pca_components=1.0", Choice((1.0,))),
    ],
)
def test_pca_components_is_a_count_or_a_variance_fraction(text, spec):
    name, parsed = parse_param(text)
    assert parsed == spec and [type(c) for c in getattr(parsed, "choices", ())] == [type(c) for c in getattr(spec, "choices", ())]


def test_pca_components_domains_and_types_survive_storage(tmp_path):
    with pytest.raises(SpaceError, match=r"pca_components must be in \(0, 1\], got high 1.5"):
        parse_param("pca_components=0.5..1.5")
    with pytest.raises(SpaceError, match="pca_components must be >= 1, got low 0"):
        parse_param("pca_components=0..5")
    path = tmp_path / "space.toml"
    path.write_text('[params]\npreprocessing = "pca"\npca_components = [1, 1.0]\n')  # one direction, all the variance
    space = load_space_file(path)
    assert [type(c) for c in space["pca_components"].choices] == [int, float]
    assert str(space["pca_components"]) == "{1, 1.0}"
    back = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert [type(c) for c in back["pca_components"].choices] == [int, float]
    full = build_space(space, None, [])
    params = {"learning_rate": 1e-3, "activation": "relu", "initializer": "he", "batch_norm": True,
              "preprocessing": "pca", "pca_components": 1.0}
    assert type(full.to_train_kwargs(params)["pca_components"]) is float


# -- grids -------------------------------------------------------------------------------------

def test_grid_values_spaces_ranges_and_keeps_choices():
    space = build_space(None, None, ["lr=log:1e-4..1e-2", "opt=momentum", "momentum=0.5..0.9", "bs=int-log:16..256",
                                     "act=relu,tanh", "init=he", "bn=true"])
    grid = grid_values(space, points_per_range=3)
    assert grid["learning_rate"] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert grid["learning_rate"][0] == 1e-4 and grid["learning_rate"][-1] == 1e-2
    assert grid["momentum"] == pytest.approx([0.5, 0.7, 0.9])
    assert grid["batch_size"] == [16, 64, 256] and all(type(v) is int for v in grid["batch_size"])
    assert grid["activation"] == ["relu", "tanh"]
    assert grid["batch_norm"] == [True]


def test_grid_values_of_a_stepped_range_stay_on_the_step():
    grid = grid_values(SearchSpace({"batch_size": IntRange(32, 256, step=32)}), points_per_range=4)
    assert grid["batch_size"] == [32, 96, 192, 256]
    with pytest.raises(SpaceError, match="points_per_range"):
        grid_values(default_space(), points_per_range=1)


def test_grid_sampler_walks_the_grid():
    space = build_space(None, None, ["lr=log:1e-3..1e-1", "act=relu,tanh", "init=he", "bn=true"])
    grid = grid_values(space, points_per_range=2)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    seen = set()
    for i in range(4):
        trial = study.ask(fixed_distributions=space.to_distributions())
        seen.add((trial.params["learning_rate"], trial.params["activation"]))
        if i < 3:  # telling the last grid point stops the study, which ask-and-tell cannot do
            study.tell(trial, 0.0)
    assert seen == {(lr, a) for lr in (1e-3, 1e-1) for a in ("relu", "tanh")}

