"""Coarse to fine: properties of narrowing over random spaces and trials, and worked examples."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hpo.narrow import MIN_TOP, NarrowError, NarrowResult, NarrowRule, NarrowTrial, narrow
from tests.test_space import spaces
from workers.space import PARAMETERS, Choice, FloatRange, IntRange, SearchSpace, default_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies ------------------------------------------------------------------------------

def value_in(spec, rnd):
    """A value inside ``spec``; a range's borders come up often on purpose."""
    if isinstance(spec, Choice):
        return rnd.choice(spec.choices)
    if rnd.random() < 0.2:
        return rnd.choice([spec.low, spec.high])
    if isinstance(spec, IntRange):
        return spec.low + spec.step * rnd.randint(0, (spec.high - spec.low) // spec.step)
    if spec.log:
        return min(max(10 ** rnd.uniform(math.log10(spec.low), math.log10(spec.high)), spec.low), spec.high)
    return rnd.uniform(spec.low, spec.high)


@st.composite
def stages(draw):
    """(space, trials): a finished stage with at least one usable trial. Every parameter applies
    to every trial here (a space stored before conditions existed); tests/test_conditional.py
    narrows conditional ones."""
    space = SearchSpace(dict(draw(spaces())), conditions={})
    # Trials come from a Random that hypothesis controls (and shrinks): drawing every value
    # as its own strategy was ~20x slower.
    rnd = draw(st.randoms(use_true_random=False))
    trials = []
    for number in range(draw(st.integers(1, 25))):
        params = {name: value_in(spec, rnd) for name, spec in space.items()}
        state = rnd.choice(["COMPLETE"] * 4 + ["PRUNED", "FAIL"])
        value = None if state == "FAIL" else rnd.choice([rnd.uniform(-5, 5), rnd.uniform(-5, 5), 0.5, math.nan])
        trials.append(NarrowTrial(number, params, value, state))
    assume(any(t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value) for t in trials))
    return space, trials


settings_strategy = st.fixed_dictionaries(
    {
        "top_k": st.one_of(st.none(), st.integers(1, 8)),
        "top_quantile": st.sampled_from([0.1, 0.25, 0.5, 1.0]),
        "margin": st.sampled_from([0.0, 0.1, 0.25, 1.0]),
        "direction": st.sampled_from(["maximize", "minimize"]),
    }
)


def room_below(name, spec) -> bool:
    """Whether the domain leaves room to widen ``spec`` below its low bound."""
    info = PARAMETERS[name].for_value(spec)
    if info.low is None or (spec.log and info.low <= 0) or info.low_open:
        return True
    step = spec.step if isinstance(spec, IntRange) else 0
    return spec.low - step >= info.low if step else spec.low > info.low


def room_above(name, spec) -> bool:
    info = PARAMETERS[name].for_value(spec)
    return info.high is None or info.high_open or spec.high < info.high


# -- properties -------------------------------------------------------------------------------

@PROPERTY
@given(stages(), settings_strategy)
def test_narrowed_spaces_are_valid_and_keep_the_top_trials(stage, kwargs):
    space, trials = stage
    result = narrow(space, trials, **kwargs)
    new = result.space
    assert list(new) == list(space)
    top = {t.number: t for t in trials}
    for name, old in space.items():
        spec = new[name]
        if isinstance(old, FloatRange):
            assert isinstance(spec, FloatRange) and spec.log == old.log
            assert math.isfinite(spec.low) and math.isfinite(spec.high) and spec.low < spec.high
            assert spec.low > 0 or not spec.log
            domain = PARAMETERS[name].for_value(spec)
            assert domain.in_domain(spec.low) and domain.in_domain(spec.high)
        elif isinstance(old, IntRange):
            if isinstance(spec, IntRange):
                assert type(spec.low) is int and type(spec.high) is int and spec.low < spec.high
                assert (spec.step, spec.log) == (old.step, old.log) and (spec.high - spec.low) % spec.step == 0
                assert PARAMETERS[name].in_domain(spec.low)
            else:
                assert isinstance(spec, Choice) and spec.is_fixed and type(spec.choices[0]) is int
        else:
            assert isinstance(spec, Choice) and spec.choices
            assert [c for c in old.choices if c in spec.choices] == list(spec.choices)  # a subset, in order
        change = result.change(name)
        assert change.old == old and change.new == spec and change.reason and "\n" not in change.reason
    # The best trial (and every top trial) lies inside the new space, so it can seed the next stage.
    assert new.contains(result.best_params)
    for number in result.source_trials:
        assert new.contains(top[number].params)
    assert result.best_trial == result.source_trials[0]
    assert result.best_params == {n: top[result.best_trial].params[n] for n in space}
    # What the campaign stores in the next stage's user attrs reads back the same.
    assert NarrowResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@PROPERTY
@given(stages(), settings_strategy)
def test_a_range_leaves_the_old_one_only_past_a_border_holding_the_best(stage, kwargs):
    space, trials = stage
    result = narrow(space, trials, **kwargs)
    best = result.best_params
    for name, old in space.items():
        spec = result.space[name]
        if isinstance(old, Choice) or isinstance(spec, Choice):
            continue
        if spec.low < old.low:
            assert "lower border" in result.change(name).reason
            assert best[name] - old.low <= 0.02 * (old.high - old.low) or old.log
        if spec.high > old.high:
            assert "upper border" in result.change(name).reason
            assert old.high - best[name] <= 0.02 * (old.high - old.low) or old.log


@PROPERTY
@given(stages(), st.data())
def test_a_best_value_on_the_border_widens_past_that_border(stage, data):
    space, trials = stage
    ranges = [n for n, s in space.items() if not isinstance(s, Choice)]
    assume(ranges)
    name = data.draw(st.sampled_from(ranges))
    old = space[name]
    upper = data.draw(st.booleans())
    # A new best trial sitting exactly on the chosen border.
    params = dict(trials[0].params, **{name: old.high if upper else old.low})
    trials = [*trials, NarrowTrial(999, params, 1e9, "COMPLETE")]
    result = narrow(space, trials)
    assert result.best_trial == 999
    spec = result.space[name]
    reason = result.change(name).reason
    if upper:
        assert "upper border" in reason
        if room_above(name, old):
            assert spec.high > old.high and "widened upward" in reason
        else:
            assert spec.high == old.high and "limit" in reason
    else:
        assert "lower border" in reason
        if room_below(name, old):
            assert spec.low < old.low and "widened downward" in reason
        else:
            assert spec.low == old.low and "limit" in reason
    # The other side is never cut into the top trials.
    for number in result.source_trials:
        value = next(t for t in trials if t.number == number).params[name]
        assert spec.low <= value <= spec.high


# -- worked examples ------------------------------------------------------------------------------

def lr_trials(lrs_and_values, **fixed):
    params = {"activation": "relu", "initializer": "he", "batch_norm": True, **fixed}
    return [NarrowTrial(i, {"learning_rate": lr, **params}, v) for i, (lr, v) in enumerate(lrs_and_values)]


def test_learning_rate_narrows_to_the_top_trials_in_log_space():
    # The top 4 lie in 1e-3..1e-2; the rest are worse, spread over the lecture's log[1e-6, 10].
    good = [(1e-3, 0.90), (2e-3, 0.92), (5e-3, 0.91), (1e-2, 0.89)]
    bad = [(1e-6, 0.10), (1e-5, 0.20), (1e-4, 0.50), (1e-1, 0.60), (1.0, 0.10), (5.0, 0.10),
           (3e-6, 0.10), (3e-5, 0.30), (3e-4, 0.70), (3e-1, 0.20), (2.0, 0.10), (8.0, 0.10)]
    # 16 trials: the top quarter is 4. The earlier range rule: a margin of 25%, a tenth of the width kept.
    result = narrow(default_space(), lr_trials(good + bad), margin=0.25, min_width=0.1)
    lr = result.space["learning_rate"]
    # log10 span -3..-2, padded by 25% of it: about 10**-3.25 .. 10**-1.75
    assert lr.log and lr.low == pytest.approx(10**-3.25, rel=0.01) and lr.high == pytest.approx(10**-1.75, rel=0.01)
    assert result.change("learning_rate").reason == "narrowed to top 4 trials ± 25% (log)"
    assert result.source_trials == (1, 2, 0, 3) and result.best_params["learning_rate"] == 2e-3
    assert result.space.describe()["learning_rate"] == "log[0.000562, 0.0178]"  # short numbers


def test_by_default_a_range_keeps_half_its_width_around_the_top_trials():
    """The default rule keeps at least half of a range's width (in log units for the learning
    rate), centred on the top trials: the few trials a pruned stage completes place the optimum
    of longer training only roughly (docs/benchmarks.md measures it on MNIST-1D)."""
    good = [(1e-3, 0.90), (2e-3, 0.92), (5e-3, 0.91), (1e-2, 0.89)]
    bad = [(1e-6, 0.10), (1e-5, 0.20), (1e-4, 0.50), (1e-1, 0.60), (1.0, 0.10), (5.0, 0.10),
           (3e-6, 0.10), (3e-5, 0.30), (3e-4, 0.70), (3e-1, 0.20), (2.0, 0.10), (8.0, 0.10)]
    result = narrow(default_space(), lr_trials(good + bad))
    lr, old = result.space["learning_rate"], default_space()["learning_rate"]
    decades = math.log10(lr.high) - math.log10(lr.low)
    assert decades == pytest.approx((math.log10(old.high) - math.log10(old.low)) / 2, rel=0.01)
    assert math.log10(lr.low) + decades / 2 == pytest.approx(-2.5, abs=0.01)  # centred on the top 4: -3..-2
    assert result.change("learning_rate").reason == "narrowed to 50% of its width around the top 4 trials (log)"
    assert result.rule.margin == 0.5 and result.rule.min_width == 0.5


def test_best_learning_rate_at_the_top_of_the_range_widens_upward():
    trials = lr_trials([(10.0, 0.9), (5.0, 0.8), (1.0, 0.7), (1e-1, 0.5), (1e-3, 0.3), (1e-5, 0.1)])
    result = narrow(default_space(), trials)
    lr = result.space["learning_rate"]
    assert lr.high > 10 * 10**3  # moved out by half the old 7 decades
    assert lr.low <= 1.0  # the other side keeps the top trials (10, 5, 1)
    assert result.change("learning_rate").reason == "best 10 at upper border: widened upward"


def test_best_learning_rate_at_the_bottom_widens_downward_and_stays_positive():
    trials = lr_trials([(1e-6, 0.9), (1e-5, 0.8), (1e-4, 0.7), (1e-1, 0.1)])
    result = narrow(default_space(), trials)
    lr = result.space["learning_rate"]
    assert 0 < lr.low < 1e-6 * 10**-3 and lr.high >= 1e-4
    assert "lower border: widened downward" in result.change("learning_rate").reason


def test_momentum_at_its_border_approaches_one_but_never_reaches_it():
    space = SearchSpace({"learning_rate": FloatRange(1e-3, 1e-1, log=True), "optimizer": Choice(("nesterov",)),
                         "momentum": FloatRange(0.5, 0.99)})
    trials = [NarrowTrial(i, {"learning_rate": 1e-2, "optimizer": "nesterov", "momentum": m}, m)
              for i, m in enumerate([0.99, 0.9, 0.8, 0.6])]
    momentum = narrow(space, trials).space["momentum"]
    assert momentum.high == pytest.approx(0.995) and momentum.high < 1
    assert momentum.low <= 0.8


def test_a_border_at_an_inclusive_domain_limit_stays():
    space = SearchSpace({"lr_decay": FloatRange(0.9, 1.0), "batch_size": IntRange(1, 64)})
    trials = [NarrowTrial(i, {"lr_decay": d, "batch_size": b}, v)
              for i, (d, b, v) in enumerate([(1.0, 1, 0.9), (0.95, 8, 0.8), (0.92, 16, 0.7), (0.9, 64, 0.1)])]
    result = narrow(space, trials)
    assert result.space["lr_decay"].high == 1.0
    assert result.space["batch_size"].low == 1
    assert result.change("lr_decay").reason == "best 1 at upper border, the limit of lr_decay (in (0, 1]): kept"
    assert "limit of batch_size (>= 1)" in result.change("batch_size").reason


def test_integer_ranges_stay_integers_on_their_step():
    space = SearchSpace({"batch_size": IntRange(32, 512, step=32), "activation": Choice(("maxout",)), "maxout_k": IntRange(2, 8)})
    trials = [NarrowTrial(i, {"batch_size": b, "activation": "maxout", "maxout_k": k}, v)
              for i, (b, k, v) in enumerate([(512, 3, 0.9), (480, 3, 0.8), (448, 4, 0.7), (64, 8, 0.1), (32, 2, 0.1)])]
    result = narrow(space, trials)
    bs, k = result.space["batch_size"], result.space["maxout_k"]
    assert bs.step == 32 and bs.low <= 448 and bs.high > 512 and (bs.high - bs.low) % 32 == 0
    assert "widened upward" in result.change("batch_size").reason
    assert isinstance(k, IntRange) and k.low <= 3 <= 4 <= k.high and k.high < 8


def test_a_single_top_trial_still_leaves_a_real_range():
    trials = lr_trials([(1e-3, 0.9), (1e-1, 0.1), (1e-5, 0.1)])
    lr = narrow(default_space(), trials, top_k=1, min_width=0.1).space["learning_rate"]
    decades = math.log10(lr.high) - math.log10(lr.low)
    assert decades == pytest.approx(0.7, rel=0.01)  # 10% of the old 7 decades, around 1e-3
    assert lr.low < 1e-3 < lr.high


def test_choices_not_in_the_top_trials_are_dropped():
    acts = ["relu", "relu", "elu", "relu", "leaky_relu", "relu", "elu", "maxout"] + ["sigmoid", "tanh"] * 12
    trials = [
        NarrowTrial(i, {"learning_rate": 1e-3, "activation": a, "initializer": "he", "batch_norm": i % 2 == 0},
                    1.0 - i / 100)
        for i, a in enumerate(acts)
    ]
    space = default_space().updated({"initializer": Choice(("he",))})
    result = narrow(space, trials)  # 32 trials: the top quarter is the first 8
    assert result.space["activation"] == Choice(("relu", "leaky_relu", "elu", "maxout"))
    assert result.change("activation").reason == "dropped sigmoid, tanh: not in top 8 trials"
    assert result.change("initializer").reason == "unchanged: fixed"
    assert result.space["batch_norm"] == Choice((True, False))
    assert result.change("batch_norm").reason.startswith("unchanged")


def test_only_complete_trials_with_a_finite_value_count():
    trials = lr_trials([(1e-3, 0.5), (1e-2, 0.4), (1e-4, 0.3)]) + [
        NarrowTrial(10, lr_trials([(5.0, 0)])[0].params, 0.99, "PRUNED"),  # better, but pruned
        NarrowTrial(11, lr_trials([(5.0, 0)])[0].params, math.nan, "COMPLETE"),
        NarrowTrial(12, lr_trials([(5.0, 0)])[0].params, math.inf, "COMPLETE"),
        NarrowTrial(13, {}, None, "FAIL"),
        NarrowTrial(14, {**lr_trials([(1, 0)])[0].params, "learning_rate": 100.0}, 0.99, "COMPLETE"),  # outside
    ]
    result = narrow(default_space(), trials)
    assert result.n_ranked == 3 and result.source_trials == (0, 1, 2)


def test_optuna_state_spellings_are_understood():
    trials = lr_trials([(1e-3, 0.5)])
    for state in ("COMPLETE", "complete", "TrialState.COMPLETE", optuna.trial.TrialState.COMPLETE):
        assert narrow(default_space(), [NarrowTrial(0, trials[0].params, 0.5, state)]).best_trial == 0


def test_nothing_to_narrow_is_a_clear_error():
    params = lr_trials([(1e-3, 0)])[0].params
    with pytest.raises(NarrowError, match=r"no COMPLETE trial with a finite value inside the space \(1 FAIL, 2 PRUNED\)"):
        narrow(default_space(), [NarrowTrial(0, params, None, "FAIL"), NarrowTrial(1, params, 0.3, "PRUNED"),
                                 NarrowTrial(2, params, None, "PRUNED")])
    with pytest.raises(NarrowError, match="no trials at all"):
        narrow(default_space(), [])
    with pytest.raises(NarrowError, match=r"\(1 COMPLETE; 1 of the complete ones lie outside the space\)"):
        narrow(default_space(), [NarrowTrial(0, {"learning_rate": 1e-3}, 0.5)])


def test_minimize_ranks_the_lowest_value_first():
    trials = lr_trials([(1e-3, 0.1), (1e-1, 2.0), (1e-5, 3.0)])
    assert narrow(default_space(), trials, direction="minimize").best_trial == 0
    assert narrow(default_space(), trials, direction=optuna.study.StudyDirection.MAXIMIZE).best_trial == 2


def test_how_many_trials_are_on_top():
    trials = lr_trials([(10 ** (-5 + i / 10), i) for i in range(40)])
    assert len(narrow(default_space(), trials).source_trials) == 10  # a quarter of 40
    assert len(narrow(default_space(), trials[:5]).source_trials) == MIN_TOP  # at least a few
    assert len(narrow(default_space(), trials[:2]).source_trials) == 2  # all there is
    assert len(narrow(default_space(), trials, top_k=2).source_trials) == 2
    assert narrow(default_space(), trials, top_k=2).source_trials == (39, 38)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_quantile": 0}, "top_quantile must be in (0, 1]"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"margin": math.nan}, "margin must be >= 0"),
        ({"direction": "up"}, "direction must be 'maximize' or 'minimize'"),
        ({"min_width": 0}, "min_width must be in (0, 1]"),
    ],
)
def test_bad_settings_are_narrow_errors(kwargs, words):
    with pytest.raises(NarrowError) as info:
        narrow(default_space(), lr_trials([(1e-3, 0.5)]), **kwargs)
    assert words in str(info.value)


def test_the_best_params_seed_the_next_stage():
    trials = lr_trials([(1e-3, 0.9), (2e-3, 0.8), (1e-1, 0.1), (10.0, 0.05)])
    result = narrow(default_space(), trials)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(dict(result.best_params))
    trial = study.ask(fixed_distributions=result.space.to_distributions())
    assert trial.params == result.best_params
    assert [dict(p) for p in result.top_params][:2] == [trials[0].params, trials[1].params]


# -- careful narrowing: the evidence a choice needs -------------------------------------------------

def choice_trials(rows, state="COMPLETE"):
    """Trials (activation, value) at one learning rate, numbered in order."""
    return [NarrowTrial(i, {"learning_rate": 1e-3, "activation": a, "initializer": "he", "batch_norm": True}, v, state)
            for i, (a, v) in enumerate(rows)]


ONE_INIT = default_space().updated({"initializer": Choice(("he",)), "batch_norm": Choice((True,))})


def test_a_choice_tried_fewer_than_the_minimum_is_kept_for_lack_of_evidence():
    # relu fills the top 4 of 16; sigmoid and tanh were tried 5 times each, maxout twice, elu
    # and leaky_relu never.
    rows = [("relu", 0.9 - i / 100) for i in range(4)] + [("sigmoid", 0.5)] * 5 + [("tanh", 0.4)] * 5 + [("maxout", 0.3)] * 2
    result = narrow(ONE_INIT, choice_trials(rows))
    assert result.space["activation"] == Choice(("relu", "leaky_relu", "elu", "maxout"))
    assert result.change("activation").reason == (
        "dropped sigmoid, tanh: not in top 4 trials; "
        "leaky_relu, elu, maxout kept for lack of evidence (tried 0, 0, 2 times, fewer than 3)")
    # Today's rule before this one: every choice outside the top is dropped once anything tried it.
    old_rule = narrow(ONE_INIT, choice_trials(rows), min_choice_trials=1)
    assert old_rule.space["activation"] == Choice(("relu", "leaky_relu", "elu"))
    assert "leaky_relu, elu kept for lack of evidence (tried 0, 0 times, fewer than 1)" in old_rule.change("activation").reason
    assert narrow(ONE_INIT, choice_trials(rows), min_choice_trials=6).space["activation"] == Choice(tuple(default_space()["activation"].choices))


def test_pruned_trials_count_as_tries_but_not_for_best_and_median():
    rows = [("relu", 0.9), ("relu", 0.8), ("relu", 0.7)]
    pruned = [NarrowTrial(10 + i, t.params, 0.2, "PRUNED") for i, t in enumerate(choice_trials([("tanh", 0)] * 3))]
    result = narrow(ONE_INIT.updated({"activation": Choice(("relu", "tanh"))}), choice_trials(rows) + pruned, keep_choices=1)
    assert result.space["activation"] == Choice(("relu",))  # tanh ran three times, each stopped early
    relu, tanh = result.change("activation").choices
    assert (relu.choice, relu.trials, relu.complete, relu.best, relu.median, relu.kept) == ("relu", 3, 3, 0.9, 0.8, True)
    assert (tanh.choice, tanh.trials, tanh.complete, tanh.best, tanh.median, tanh.kept) == ("tanh", 3, 0, None, None, False)


def test_keep_choices_keeps_the_n_best_choices():
    # Every choice tried 3 times; relu alone in the top 3 of 18. Best values after relu's:
    # elu 0.8, tanh 0.7 (median 0.6), maxout 0.7 (median 0.5), then sigmoid and leaky_relu.
    values = {"relu": (0.95, 0.94, 0.93), "elu": (0.8, 0.3, 0.2), "tanh": (0.7, 0.6, 0.1),
              "maxout": (0.7, 0.5, 0.4), "sigmoid": (0.6, 0.6, 0.6), "leaky_relu": (0.2, 0.2, 0.2)}
    rows = [(a, v) for a, vs in values.items() for v in vs]
    trials = choice_trials(rows)
    assert narrow(ONE_INIT, trials, top_k=3, keep_choices=1).space["activation"] == Choice(("relu",))
    assert narrow(ONE_INIT, trials, top_k=3).space["activation"] == Choice(("relu", "elu"))  # the default keeps 2
    result = narrow(ONE_INIT, trials, top_k=3, keep_choices=3)
    assert result.space["activation"] == Choice(("tanh", "relu", "elu"))  # the old order; tanh beats maxout on median
    assert result.change("activation").reason == (
        "dropped sigmoid, leaky_relu, maxout: not in top 3 trials; tanh, elu kept: at least 3 choices stay")
    assert [c.kept for c in result.change("activation").choices] == [False, True, True, False, True, False]
    assert narrow(ONE_INIT, trials, top_k=3, keep_choices=6).space["activation"] == default_space()["activation"]
    # Minimizing, the lowest values are best: leaky_relu is the best of the rest, then elu.
    flipped = narrow(ONE_INIT, trials, top_k=1, keep_choices=3, direction="minimize")
    assert set(flipped.space["activation"].choices) == {"tanh", "leaky_relu", "elu"}
    # A choice in the top never counts against KEEP: with two in the top, keep_choices=2 adds nothing.
    two_on_top = narrow(ONE_INIT, trials, top_k=4, keep_choices=2)
    assert two_on_top.space["activation"] == Choice(("relu", "elu"))


def test_the_table_rows_carry_each_choices_trials_best_and_median():
    from hpo.progress import narrowing_rows, narrowing_table_rows

    rows = [("relu", 0.9), ("relu", 0.7), ("relu", 0.8), ("relu", 0.6), ("tanh", 0.5), ("tanh", 0.2),
            ("tanh", 0.3), ("tanh", 0.4), ("sigmoid", 0.1)]
    space = ONE_INIT.updated({"activation": Choice(("relu", "tanh", "sigmoid"))})
    result = narrow(space, choice_trials(rows))
    param_rows = narrowing_rows(result, None)
    (activation,) = [r for r in param_rows if r["param"] == "activation"]
    assert activation["new"] == "{relu, sigmoid}"
    assert [(c["choice"], c["trials"], c["complete"], c["kept"]) for c in activation["choices"]] == [
        ("relu", 4, 4, True), ("tanh", 4, 4, False), ("sigmoid", 1, 1, True)]
    medians = [np.median(np.array(v, dtype=np.float64)) for v in ([0.9, 0.7, 0.8, 0.6], [0.5, 0.2, 0.3, 0.4], [0.1])]
    assert [c["best"] for c in activation["choices"]] == [0.9, 0.5, 0.1]
    assert [c["median"] for c in activation["choices"]] == pytest.approx(medians, abs=0, rel=1e-15)
    table = narrowing_table_rows(param_rows)
    at = next(i for i, r in enumerate(table) if r["param"] == "activation")
    assert table[at + 1: at + 4] == [
        {"param": "  relu", "old": "4 tried", "new": "kept", "reason": "best 0.9, median 0.75"},
        {"param": "  tanh", "old": "4 tried", "new": "dropped", "reason": "best 0.5, median 0.35"},
        {"param": "  sigmoid", "old": "1 tried", "new": "kept", "reason": "best 0.1, median 0.1"},
    ]
    assert table[at + 4]["param"] == "initializer"  # a fixed parameter has no rows per choice
    assert "sigmoid kept for lack of evidence (tried 1 time, fewer than 3)" in table[at]["reason"]


@pytest.mark.parametrize("name", ["min_choice_trials", "keep_choices"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_bad_choice_evidence_settings_are_narrow_errors(name, bad):
    with pytest.raises(NarrowError, match=f"{name} must be an integer >= 1, got"):
        narrow(default_space(), lr_trials([(1e-3, 0.5)]), **{name: bad})


def test_the_rule_is_stored_with_the_result_and_reads_back():
    result = narrow(default_space(), lr_trials([(1e-3, 0.5), (1e-2, 0.4)]), min_choice_trials=4, keep_choices=2)
    assert result.rule == NarrowRule(min_choice_trials=4, keep_choices=2)
    stored = json.loads(json.dumps(result.to_dict()))
    assert stored["rule"]["min_choice_trials"] == 4 and stored["rule"]["keep_choices"] == 2
    assert NarrowResult.from_dict(stored) == result
    # A lineage written before choices needed evidence: the rule it was narrowed by then.
    del stored["rule"]["min_choice_trials"], stored["rule"]["keep_choices"]
    for change in stored["changes"]:
        del change["choices"]
    old = NarrowResult.from_dict(stored)
    assert (old.rule.min_choice_trials, old.rule.keep_choices) == (1, 1) and old.change("activation").choices == ()


def test_a_resume_narrows_by_the_rule_stored_with_the_campaign(tmp_path):
    """The campaign's plan holds its narrowing rule: a resume (the plan read back from storage)
    narrows stage 1 by it, and the child's lineage says so."""
    from hpo import campaign as campaign_mod
    from storage import backend, records

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    backend.ensure_schema(url)
    storage = backend.open_storage(url, heartbeat=False)
    space = ONE_INIT.updated({"learning_rate": FloatRange(1e-4, 1e-1, log=True)})
    spec = campaign_mod.CampaignSpec(name="careful", space=space, stages=2, trials=[12, 4], epochs=[1, 2],
                                     min_choice_trials=5, keep_choices=2)
    (plan,), _ = campaign_mod.open_campaign(url, storage, spec)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    for i, activation in enumerate(["relu"] * 6 + ["tanh"] * 4 + ["sigmoid"] * 2):
        study.enqueue_trial({"learning_rate": 1e-3, "activation": activation, "initializer": "he", "batch_norm": True})
        trial = study.ask(space.to_distributions())
        study.tell(trial, {"relu": 0.9, "tanh": 0.5, "sigmoid": 0.6}[activation] - i / 1000)

    resumed, plans = campaign_mod.load_campaign(url, "careful")
    assert (resumed.min_choice_trials, resumed.keep_choices) == (5, 2) and resumed == spec
    child, result = campaign_mod.open_next_stage(url, storage, resumed, plans[0])
    # relu fills the top 3; tanh (4 tries) and sigmoid (2) are under 5 tries: both kept.
    assert SearchSpace.from_dict(child.space)["activation"] == Choice(("sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout"))
    assert child.lineage["rule"]["min_choice_trials"] == 5 and child.lineage["rule"]["keep_choices"] == 2
    assert result.rule == NarrowRule(top_quantile=spec.top_quantile, min_choice_trials=5, keep_choices=2)
    # A resume asking for another rule is refused unless --replan, naming what differs.
    with pytest.raises(campaign_mod.CampaignError, match=r"--keep-choices 1 \(stored: 2\).*--replan"):
        campaign_mod.reconcile(resumed, {"keep_choices": 1}, 1, replan=False)
    assert campaign_mod.reconcile(resumed, {"keep_choices": 1}, 1, replan=True).keep_choices == 1
    # A plan stored before these options goes on narrowing as it did then.
    legacy = {k: v for k, v in records.study_attrs(storage, plan.study_name)[records.CAMPAIGN_ATTR].items()
              if k not in ("min_choice_trials", "keep_choices")}
    assert campaign_mod.CampaignSpec.from_dict(legacy).narrow_rule().min_choice_trials == 1
    # ... and one stored before ranges kept half their width narrows ranges as it did then.
    legacy = {k: v for k, v in legacy.items() if k not in ("margin", "min_width")}
    rule = campaign_mod.CampaignSpec.from_dict(legacy).narrow_rule()
    assert (rule.margin, rule.min_width) == (0.25, 0.1)
    assert (resumed.narrow_rule().margin, resumed.narrow_rule().min_width) == (0.5, 0.5)
    storage.engine.dispose()


@pytest.mark.parametrize("command", [["search", "--name", "c"], ["narrow", "c/stage-1"]])
@pytest.mark.parametrize("option", ["--min-choice-trials", "--keep-choices"])
@pytest.mark.parametrize("bad", ["0", "-1", "2.5", "two"])
def test_a_bad_choice_evidence_option_is_one_line_and_exit_2(tmp_path, command, option, bad):
    from click.testing import CliRunner

    from hpo.cli import cli

    db = tmp_path / "hpo.db"
    result = CliRunner().invoke(cli, [*command, option, bad, "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and option in lines[0], lines
    assert not db.exists()  # refused before anything was written
