"""Conditional parameters: a knob is sampled only where it means something.

momentum with the momentum and nesterov rules, leaky_slope with Leaky ReLU, elu_alpha with ELU,
maxout_k with Maxout, init_std with the small initializer, pca_components with PCA, PCA
whitening and ZCA; a TOML space may state a condition of its own (``when``). Checked as a user
would: the parameters a real campaign stored in its SQLite database, what `hpo trials`, `hpo
trial` and `hpo best` print, what narrowing derives, what a bad space file gets (one line, exit
2), and that a campaign stored before conditions existed still loads and resumes as planned.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
import warnings

import optuna
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hpo.campaign import CampaignSpec
from hpo.narrow import NOT_SEARCHED, NarrowResult, NarrowTrial, narrow
from storage import backend
from storage.optuna_tpe import CachedTPESampler
from tests.helpers import assert_one_sentence, page_captions, sql, worker_env
from tests.test_space import spaces
from workers import stageplan
from workers.data.preprocess import TAKES_COMPONENTS
from workers.knobs import KNOBS
from workers.nn.activations import ACTIVATIONS
from workers.nn.initializers import INITIALIZERS
from workers.nn.optimizers import OPTIMIZERS
from workers.space import (
    Choice,
    IntRange,
    SearchSpace,
    SpaceError,
    build_space,
    load_space_file,
)
from workers.strategy import check_sampler, make_sampler
from workers.train import TrainConfig
from workers.worker import suggest_all

MOMENTUM_SPACE = ["optimizer=adam,momentum,nesterov", "momentum=0.5..0.99", "activation=relu,leaky_relu,elu",
                  "leaky_slope=0.01..0.3", "elu_alpha=0.5..2.0"]


# -- each condition declared once, from the registries -----------------------------------------
def test_each_conditional_knob_applies_with_the_registry_entries_that_read_it():
    declared = {name: knob.applies_when.to_dict() for name, knob in KNOBS.items() if knob.applies_when}
    assert declared == {
        "leaky_slope": {"activation": ["leaky_relu"]},
        "elu_alpha": {"activation": ["elu"]},
        "maxout_k": {"activation": ["maxout"]},
        "init_std": {"initializer": ["small"]},
        "momentum": {"optimizer": ["momentum", "nesterov"]},
        "pca_components": {"preprocessing": ["pca", "pca_whiten", "zca"]},
    }
    # ... and each is what the registry entries say they read.
    assert declared["momentum"]["optimizer"] == [n for n, o in OPTIMIZERS.items() if "momentum" in o.config_fields]
    assert declared["init_std"]["initializer"] == [n for n, i in INITIALIZERS.items() if "init_std" in i.config_fields]
    for field_name in ("leaky_slope", "elu_alpha", "maxout_k"):
        assert declared[field_name]["activation"] == [n for n, a in ACTIVATIONS.items() if field_name in a.config_fields]
    assert set(declared["pca_components"]["preprocessing"]) == set(TAKES_COMPONENTS)


# -- sampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_trial_samples_a_conditional_knob_only_where_it_applies(sampler, caplog):
    space = build_space(None, None, MOMENTUM_SPACE)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, space, 3))
    with caplog.at_level(logging.WARNING, logger="optuna"):
        for _ in range(30):  # past TPE's 10 random startup trials
            trial = study.ask()
            suggest_all(trial, space)
            p = trial.params
            assert ("momentum" in p) == (p["optimizer"] in ("momentum", "nesterov")), p
            assert ("leaky_slope" in p) == (p["activation"] == "leaky_relu"), p
            assert ("elu_alpha" in p) == (p["activation"] == "elu"), p
            assert space.contains(p)
            study.tell(trial, p.get("momentum", 0.7) + (p["activation"] == "elu"))
    # Sampling a knob on its own from the trials that have it is what TPE is asked to do here.
    assert not [r for r in caplog.records if "independent" in r.getMessage()]


def test_cached_tpe_samples_a_conditional_space_as_optunas_tpe_does():
    space = build_space(None, None, MOMENTUM_SPACE)

    def run(sampler) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        seen = []
        for _ in range(25):
            trial = study.ask()
            suggest_all(trial, space)
            seen.append(trial.params)
            study.tell(trial, round(trial.params.get("momentum", 0.6) - abs(math.log10(trial.params["learning_rate"]) + 2) / 10, 3))
        return seen

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = run(optuna.samplers.TPESampler(seed=5, n_startup_trials=8))
        cached = run(CachedTPESampler(seed=5, n_startup_trials=8))
    assert cached == stock


def test_a_parameter_that_does_not_apply_trains_at_its_default_and_one_that_does_is_required():
    space = build_space(None, None, MOMENTUM_SPACE)
    adam = {"learning_rate": 1e-2, "activation": "relu", "initializer": "he", "batch_norm": True, "optimizer": "adam"}
    kwargs = space.to_train_kwargs(adam)
    assert "momentum" not in kwargs and "leaky_slope" not in kwargs
    assert TrainConfig(**kwargs).momentum == KNOBS["momentum"].default  # unused by adam
    with pytest.raises(SpaceError, match="missing: momentum"):
        space.to_train_kwargs({**adam, "optimizer": "nesterov"})
    assert space.to_train_kwargs({**adam, "optimizer": "nesterov", "momentum": 0.8})["momentum"] == 0.8


# -- a TOML space states conditions of its own -------------------------------------------------
def write(tmp_path, text: str):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def test_a_toml_condition_narrows_a_knobs_own_and_conditions_any_parameter(tmp_path):
    path = write(tmp_path, """
[params]
optimizer = ["sgd", "momentum", "nesterov", "adam"]
batch_norm = [true, false]

[params.momentum]
low = 0.5
high = 0.99
when = { optimizer = ["nesterov", "adam"], bn = false }   # adam is no case of momentum's own

[params.weight_decay]                 # a parameter with no condition of its own
low = 1e-6
high = 1e-2
log = true
when = { opt = "sgd" }
""")
    space = build_space(None, path)
    assert space.condition("momentum").to_dict() == {"optimizer": ["nesterov"], "batch_norm": [False]}
    assert space.condition("weight_decay").to_dict() == {"optimizer": ["sgd"]}
    assert space.condition("optimizer") is None
    line = next(line for line in str(space).splitlines() if line.startswith("momentum "))
    assert line.split(None, 1)[1] == "[0.5, 0.99]  when optimizer nesterov and batch_norm false"
    assert space.sampling_order().index("momentum") > space.sampling_order().index("optimizer")
    assert space.applies("momentum", {"optimizer": "nesterov", "batch_norm": False})
    assert not space.applies("momentum", {"optimizer": "nesterov", "batch_norm": True})
    # Stored with the stage and read back exactly (a resumed worker samples the same).
    stored = json.loads(json.dumps(space.to_dict()))
    assert stored["version"] == 2 and stored["params"]["weight_decay"]["when"] == {"optimizer": ["sgd"]}
    assert SearchSpace.from_dict(stored) == space
    assert SearchSpace.from_dict(stored).conditions == space.conditions


@pytest.mark.parametrize("table, message", [
    ('when = { optimiser = "nesterov" }', "a condition names unknown knob 'optimiser'; did you mean optimizer?"),
    ('when = { batch_size = [32] }', "a condition names a choice of names or true/false"),
    ('when = { optimizer = "adamw" }', "unknown optimizer 'adamw'; allowed: sgd, momentum, nesterov, adam"),
    ('when = { batch_norm = "no" }', "batch_norm must be true or false, got 'no'"),
    ("when = {}", "a condition names at least one knob and its values"),
    ("when = { optimizer = [] }", "a condition on optimizer lists no value"),
    ('when = "optimizer=nesterov"', "a condition names at least one knob and its values"),
    ('when = { optimizer = "adam" }', "when optimizer adam leaves no case where momentum applies: it applies only with optimizer momentum or nesterov"),
    ('when = { momentum = 0.9 }', "a condition names a choice of names or true/false"),
])
def test_a_bad_condition_is_one_line_naming_the_parameter(tmp_path, table, message):
    path = write(tmp_path, f"[params]\noptimizer = [\"sgd\", \"nesterov\"]\n[params.momentum]\nlow = 0.5\nhigh = 0.99\n{table}\n")
    with pytest.raises(SpaceError) as caught:
        load_space_file(path)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{path}: params.momentum: ") and message in text, text


def test_conditions_that_depend_on_each_other_or_never_hold_are_refused(tmp_path):
    loop = write(tmp_path, """
[params.activation]
choices = ["relu", "tanh"]
when = { optimizer = "adam" }
[params.optimizer]
choices = ["adam", "sgd"]
when = { activation = "relu" }
""")
    with pytest.raises(SpaceError, match="the conditions of activation, optimizer depend on each other in a loop"):
        load_space_file(loop)
    with pytest.raises(SpaceError, match="optimizer cannot depend on itself"):
        load_space_file(write(tmp_path, '[params.optimizer]\nchoices = ["adam"]\nwhen = { optimizer = "adam" }\n'))
    # A knob searched where it never applies is refused, with what to do about it.
    with pytest.raises(SpaceError, match=r"^momentum never applies: it applies only with optimizer momentum or nesterov, "
                                         r"and the space leaves optimizer at adam; let optimizer take one of those"):
        build_space(None, None, ["momentum=0.5..0.99"])
    with pytest.raises(SpaceError, match=r"and optimizer is searched over \{sgd, adam\}.*--param optimizer=sgd,adam,momentum,nesterov"):
        build_space(None, None, ["optimizer=sgd,adam", "momentum=0.5..0.99"])
    with pytest.raises(SpaceError, match="pca_components never applies"):
        build_space(None, None, ["preprocessing=none,standardize", "pca_components=10..20"])


def test_a_parameter_the_base_space_holds_is_left_out_once_it_can_no_longer_apply():
    """`hpo narrow --param optimizer=adam` over a narrowed space that searched momentum: the
    user did not ask for momentum, and it can no longer apply."""
    base = build_space(None, None, MOMENTUM_SPACE)
    space = build_space(base, None, ["optimizer=adam"])
    assert "momentum" not in space and "leaky_slope" in space
    assert space.conditions == {n: c for n, c in base.conditions.items() if n != "momentum"}


def run_hpo(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpo", *args], capture_output=True, text=True, timeout=120,
                          env=worker_env("sqlite:///unused.db"), cwd=cwd, stdin=subprocess.DEVNULL)


def test_hpo_search_refuses_a_bad_condition_in_one_line_and_writes_nothing(tmp_path):
    db = tmp_path / "x.db"
    bad = write(tmp_path, '[params]\noptimizer = ["sgd", "nesterov"]\n[params.momentum]\nlow = 0.5\nhigh = 0.99\n'
                          'when = { optimizer = ["adamw"] }\n')
    cases = {
        "--space": (["--space", str(bad)], "unknown optimizer 'adamw'"),
        "never applies": (["--param", "momentum=0.5..0.99"], "momentum never applies"),
        "grid": (["--sampler", "grid", "--param", "optimizer=adam,nesterov", "--param", "momentum=0.5..0.9"],
                 "the grid sampler cannot search conditional parameters (momentum applies only with optimizer "
                 "momentum or nesterov): use --sampler tpe or random, or fix optimizer"),
    }
    for what, (args, message) in cases.items():
        result = run_hpo("search", "--name", "x", "--workers", "1", "--stages", "1", "--trials", "2", "--epochs", "1",
                         "--storage", f"sqlite:///{db}", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (what, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and not db.exists(), what


def test_a_grid_searches_a_knob_whose_condition_the_space_fixes():
    check_sampler("grid", build_space(None, None, ["optimizer=nesterov", "momentum=0.5..0.9"]))  # always applies
    with pytest.raises(SpaceError, match="grid sampler"):
        check_sampler("grid", build_space(None, None, ["optimizer=adam,nesterov", "momentum=0.5..0.9"]))
    check_sampler("tpe", build_space(None, None, ["optimizer=adam,nesterov", "momentum=0.5..0.9"]))


# -- spaces stored before conditions existed ---------------------------------------------------
OLD_SPACE = {"version": 1, "params": {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    "activation": {"type": "choice", "choices": ["relu"]},
    "initializer": {"type": "choice", "choices": ["he"]},
    "batch_norm": {"type": "choice", "choices": [True]},
    "hidden_sizes": {"type": "choice", "choices": ["16"]},
    "optimizer": {"type": "choice", "choices": ["adam", "momentum"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "log": False},
}}


def test_a_space_stored_without_conditions_reads_back_without_any():
    space = SearchSpace.from_dict(OLD_SPACE)
    assert space.conditions == {} and space.applies("momentum", {"optimizer": "adam"})
    assert space.to_dict() == OLD_SPACE  # written back as it was: the stored plan does not change
    assert build_space(space, None, []).conditions == {}  # narrowing's overlay keeps it as planned
    # The same --param given again on a resume is the stored space, not a conflicting one.
    asked = build_space(None, None, ["lr=log:1e-3..1e-1", "act=relu", "init=he", "bn=true", "hidden_sizes=16",
                                     "optimizer=adam,momentum", "momentum=0.5..0.99"])
    assert asked.conditions and SearchSpace(dict(asked), conditions={}) == space


# -- narrowing ---------------------------------------------------------------------------------
def momentum_stage() -> tuple[SearchSpace, list[NarrowTrial]]:
    """Adam and the momentum rules mixed on top; the best momentum trials near 0.9."""
    space = build_space(None, None, ["optimizer=adam,momentum,nesterov", "momentum=0.5..0.99", "act=relu", "init=he", "bn=true"])
    base = {"activation": "relu", "initializer": "he", "batch_norm": True}
    trials = [NarrowTrial(i, {**base, "learning_rate": 10 ** (-3 + i / 10), "optimizer": "adam"}, 0.95 - i / 20)
              for i in range(8)]  # 0.95, 0.90, ...
    for i, (m, value) in enumerate([(0.9, 0.94), (0.92, 0.93), (0.88, 0.91), (0.6, 0.3), (0.55, 0.2), (0.99, 0.1),
                                    (0.5, 0.1), (0.7, 0.1)]):
        optimizer = "momentum" if i % 2 else "nesterov"
        trials.append(NarrowTrial(8 + i, {**base, "learning_rate": 1e-2, "optimizer": optimizer, "momentum": m}, value))
    return space, trials


def test_a_conditional_knob_is_narrowed_only_from_the_trials_it_applied_to():
    space, trials = momentum_stage()
    result = narrow(space, trials, margin=0.25, min_width=0.1)  # the top 4 of 16: adam 0.95, then momentum 0.9, 0.92, 0.88
    assert result.space["optimizer"] == Choice(("adam", "momentum", "nesterov"))
    # From the best 3 of the 8 trials that had a momentum (adam's trials have none), padded
    # by 25% of their span: 0.87 .. 0.93.
    momentum = result.space["momentum"]
    assert momentum.low == pytest.approx(0.87) and momentum.high == pytest.approx(0.93)
    assert result.change("momentum").reason == "narrowed to top 3 trials ± 25% (linear), among the 8 trials it applied to"
    assert result.space.condition("momentum") == space.condition("momentum")
    assert result.best_params == trials[0].params  # adam's best: no momentum to keep inside
    assert all(result.space.contains(p) for p in result.top_params)


def test_a_conditional_knob_whose_choices_are_narrowed_away_is_not_searched_on():
    space, trials = momentum_stage()
    result = narrow(space, trials, top_k=1, min_choice_trials=1, keep_choices=1)  # adam alone
    assert result.space["optimizer"] == Choice(("adam",))
    # No top trial tried momentum or nesterov: the next stage holds no momentum to sample.
    assert "momentum" not in result.space
    change = result.change("momentum")
    assert change.new is None and change.new_text == NOT_SEARCHED
    assert change.reason == "dropped: it applies only with optimizer momentum or nesterov, which the next stage does not try"
    assert NarrowResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert build_space(result.space, None, []) == result.space  # what `hpo narrow` then overlays


def trials_of_space(space: SearchSpace, rnd, n: int) -> list[NarrowTrial]:
    """Trials as a worker samples them: each parameter only where it applies."""
    trials = []
    for number in range(n):
        params: dict = {}
        for name in space.sampling_order():
            if not space.applies(name, params):
                continue
            spec = space[name]
            if isinstance(spec, Choice):
                params[name] = rnd.choice(spec.choices)
            elif isinstance(spec, IntRange):
                params[name] = spec.low + spec.step * rnd.randint(0, (spec.high - spec.low) // spec.step)
            else:
                params[name] = rnd.choice([spec.low, spec.high, (spec.low + spec.high) / 2])
        trials.append(NarrowTrial(number, params, rnd.choice([rnd.uniform(0, 1), 0.5])))
    return trials


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces(), st.randoms(use_true_random=False), st.integers(1, 30), st.sampled_from([None, 1, 3]))
def test_narrowing_a_conditional_space_keeps_its_conditions_and_every_top_trial(space, rnd, n, top_k):
    # Every knob with a condition gets a parent that can take a value where it applies.
    parents = {p: Choice(tuple(KNOBS[p].allowed())) for c in space.conditions.values() for p in c.parents}
    space = space.updated({p: spec for p, spec in parents.items() if p not in space})
    assume(space.conditions)
    trials = trials_of_space(space, rnd, n)
    result = narrow(space, trials, top_k=top_k)
    new = result.space
    for name in space:
        if name in new:
            assert new.condition(name) == space.condition(name) and new.can_apply(name)
        else:  # dropped only when a parent can no longer take a value its condition needs
            assert result.change(name).new is None
            assert any(not any(v in values for v in new.parent_values(parent))
                       for parent, values in space.condition(name).requires)
    numbers = {t.number: t for t in trials}
    for number in result.source_trials:  # every top trial can seed the next stage
        assert new.contains(numbers[number].params)
    assert result.best_params == numbers[result.best_trial].params
    assert NarrowResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


# -- a real campaign ---------------------------------------------------------------------------
def stored_params(url: str, study: str) -> dict[int, dict]:
    """Each trial's parameters as Optuna stored them (categorical values decoded)."""
    rows = sql(url, "SELECT t.number, p.param_name, p.param_value, p.distribution_json FROM trial_params p "
                    "JOIN trials t ON t.trial_id = p.trial_id JOIN studies s ON s.study_id = t.study_id "
                    "WHERE s.study_name = :name", name=study)
    params: dict[int, dict] = {}
    for number, name, value, distribution in rows:
        d = json.loads(distribution)
        if d["name"] == "CategoricalDistribution":
            value = d["attributes"]["choices"][int(value)]
        params.setdefault(number, {})[name] = value
    return params


def cells(table: str) -> dict[str, list[str]]:
    """A printed table's rows, by their first cell."""
    rows = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in table.splitlines() if line[:1] in "│┃"]
    return {row[0]: row for row in rows if row and row[0]}


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "hpo", *args, "--storage", url], capture_output=True, text=True,
                            timeout=300, env={**worker_env(url), "COLUMNS": "250"}, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_campaign_stores_a_conditional_knob_only_in_the_trials_it_applies_to(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    params = ["optimizer=adam,momentum,nesterov", "momentum=0.5..0.99", "activation=relu,leaky_relu",
              "leaky_slope=0.01..0.3", "hidden_sizes=16", "batch_size=128"]
    search = cli(url, "search", "--name", "c", "--stages", "2", "--trials", "12,6", "--epochs", "1,1", "--workers", "1",
                 "--no-report", "--json", *[f"--param={p}" for p in params])
    summary = json.loads(search.stdout)
    for stage in ("c/stage-1", "c/stage-2"):
        stored = stored_params(url, stage)
        assert stored, stage
        for number, p in stored.items():
            if "optimizer" in p:  # the stage may have narrowed optimizer to a single value
                assert ("momentum" in p) == (p["optimizer"] in ("momentum", "nesterov")), (stage, number, p)
            assert ("leaky_slope" in p) == (p["activation"] == "leaky_relu"), (stage, number, p)
    stage1 = stored_params(url, "c/stage-1")
    assert any("momentum" in p for p in stage1.values()) and any("momentum" not in p for p in stage1.values())

    # hpo trials: n/a in the table, null in JSON, left out by a filter on the knob.
    rows = json.loads(cli(url, "trials", "c/stage-1", "--format", "json").stdout)
    adam = [r for r in rows if r["optimizer"] == "adam"]
    assert adam and all(r["momentum"] is None for r in adam)
    table = cells(cli(url, "trials", "c/stage-1", "--columns", "number,optimizer,momentum").stdout)
    assert all(table[str(r["number"])] == [str(r["number"]), "adam", "n/a"] for r in adam), table
    filtered = json.loads(cli(url, "trials", "c/stage-1", "--where", "momentum>0", "--format", "json").stdout)
    assert {r["number"] for r in filtered} == {n for n, p in stage1.items() if "momentum" in p}

    # hpo trial: the knob is there, as not applicable.
    number = adam[0]["number"]
    shown = cells(cli(url, "trial", "c/stage-1", str(number)).stdout)
    assert shown["momentum"] == ["momentum", "n/a"], shown
    record = json.loads(cli(url, "trial", "c/stage-1", str(number), "--format", "json").stdout)
    assert "momentum" not in record["params"]  # as stored: never sampled
    best_table = cells(cli(url, "best", "c/stage-1", "--top", "20").stdout)  # every complete trial
    header = best_table.pop("rank")
    by_number = {row[1]: row for row in best_table.values()}
    complete_adam = [r for r in adam if r["state"] == "COMPLETE"]
    assert complete_adam
    for row in complete_adam:
        assert by_number[str(row["number"])][header.index("momentum")] == "n/a", best_table

    # The final configuration claims only what was searched for it.
    best = summary["best"]
    if best["params"]["optimizer"] == "adam":
        assert "momentum" not in best["params"]
    else:
        assert 0.5 <= best["params"]["momentum"] <= 0.99
    assert ("leaky_slope" in best["params"]) == (best["params"]["activation"] == "leaky_relu")
    final = stored_params(url, best["study"])[best["trial"]]
    assert best["params"] == final

    # The report draws a conditional knob from the trials that have it and says so.
    from hpo.report import write_report

    storage = backend.open_storage(url, heartbeat=False)
    try:
        path = write_report(storage, url, "c", tmp_path / "c.html")
    finally:
        storage.engine.dispose()
    page = path.read_text()
    assert "momentum is sampled only with optimizer momentum or nesterov, so only the" in page
    for caption in page_captions(page):  # the note is part of its caption's one sentence
        assert_one_sentence(caption)


@pytest.mark.slow
def test_a_campaign_stored_before_conditions_existed_loads_and_resumes_as_planned(tmp_path):
    """Its space is version 1: every parameter in every trial, momentum with adam too."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    backend.ensure_schema(url)
    storage = backend.open_storage(url)
    try:
        space = SearchSpace.from_dict(OLD_SPACE)
        spec = CampaignSpec(name="old", space=space, stages=1, trials=[6], epochs=[1])
        assert spec.to_dict()["space"] == OLD_SPACE  # what the earlier version wrote, byte for byte
        stageplan.ensure_stage(storage, spec.plan(1, space), attrs={"hpo_campaign": spec.to_dict()})
    finally:
        storage.engine.dispose()
    # Resumed as stored, and with the command line it was started with.
    again = ["--param=lr=log:1e-3..1e-1", "--param=act=relu", "--param=init=he", "--param=bn=true",
             "--param=hidden_sizes=16", "--param=optimizer=adam,momentum", "--param=momentum=0.5..0.99"]
    done = json.loads(cli(url, "search", "--name", "old", "--workers", "1", "--no-report", "--json", *again).stdout)
    assert done["best"]["test_accuracy"] is not None
    stored = stored_params(url, "old/stage-1")
    assert len(stored) == 6 and all("momentum" in p for p in stored.values())
    assert any(p["optimizer"] == "adam" for p in stored.values())  # momentum sampled with adam, as planned
    storage = backend.open_storage(url, heartbeat=False)
    try:
        assert stageplan.campaign_stages(storage, "old")[0].space == OLD_SPACE  # the stored plan is unchanged
    finally:
        storage.engine.dispose()
