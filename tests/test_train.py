"""train(): configuration, learning, divergence stop, reproducibility, diagnostics, dtypes."""

import json
import math
import pickle

import numpy as np
import pytest

from workers.nn.activations import ACTIVATIONS
from workers.nn.reference import forward
from workers.train import (
    EpochReport,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    accuracy,
    predict,
    train,
)


def blobs(n=600, d=20, c=4, seed=0, spread=2.0):
    """Gaussian blobs around random centres: separable enough to learn to ~100%."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)) * spread
    y = rng.integers(0, c, n)
    X = centres[y] + rng.standard_normal((n, d))
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    X, y = blobs(n=1000)
    return X[:800], y[:800], X[800:], y[800:]


SMALL = dict(hidden_sizes=(32, 32), epochs=3)


# --- config ---------------------------------------------------------------------------

def test_config_round_trips_through_json():
    config = TrainConfig(hidden_sizes=(50, 20), activation="maxout", maxout_k=3, pca_components=0.95,
                         optimizer="nesterov", lr_decay=0.9, dtype="float64")
    d = json.loads(json.dumps(config.to_dict()))
    assert d["hidden_sizes"] == [50, 20]
    assert TrainConfig.from_dict(d) == config


@pytest.mark.parametrize("field,value,message", [
    ("activation", "swish", "unknown activation 'swish'; allowed: sigmoid, tanh, relu, leaky_relu, elu, maxout"),
    ("initializer", "lecun", "unknown initializer 'lecun'; allowed: small, xavier, he"),
    ("optimizer", "rmsprop", "unknown optimizer 'rmsprop'; allowed: sgd, momentum, nesterov, adam"),
    ("dtype", "float16", "unknown dtype 'float16'; allowed: float32, float64"),
    ("hidden_sizes", [100, 0], "hidden_sizes [100, 0]: each layer width must be an integer >= 1"),
    ("epochs", 0, "epochs must be >= 1, got 0"),
    ("batch_size", -5, "batch_size must be >= 1, got -5"),
    ("learning_rate", 0.0, "learning_rate must be > 0, got 0"),
    ("learning_rate", -1e-3, "learning_rate must be > 0, got -0.001"),
    ("momentum", 1.5, "momentum must be in [0, 1), got 1.5"),
    ("momentum", "high", "momentum must be a real number, got 'high'"),
    ("pca_components", 0, "pca_components"),
])
def test_from_dict_rejects_bad_values_with_one_line(field, value, message):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({field: value})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown config field.*dropout"):
        TrainConfig.from_dict({"dropout": 0.5})


def test_every_registered_activation_is_a_valid_config():
    for name in ACTIVATIONS:
        assert TrainConfig(activation=name).activation == name


# --- learning and evaluation ----------------------------------------------------------

@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_learns_a_separable_problem(data, activation):
    X_train, y_train, X_val, y_val = data
    result = train(TrainConfig(activation=activation, **SMALL), X_train, y_train, X_val, y_val)
    assert result.val_accuracy > 0.95
    assert result.train_accuracy > 0.95
    assert result.history[-1].train_loss < result.history[0].train_loss


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_every_optimizer_learns(data, optimizer, batch_norm):
    X_train, y_train, X_val, y_val = data
    lr = 1e-2 if optimizer == "adam" else 0.05
    config = TrainConfig(optimizer=optimizer, learning_rate=lr, batch_norm=batch_norm, **SMALL)
    assert train(config, X_train, y_train, X_val, y_val).val_accuracy > 0.95


def test_result_fields_and_lr_decay(data):
    X_train, y_train, X_val, y_val = data
    seen = []
    config = TrainConfig(learning_rate=0.01, lr_decay=0.5, **SMALL)
    result = train(config, X_train, y_train, X_val, y_val, on_epoch=seen.append)
    assert isinstance(result, TrainResult)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert seen == result.history and all(isinstance(r, EpochReport) for r in seen)
    assert [r.lr for r in result.history] == pytest.approx([0.01, 0.005, 0.0025])
    assert result.epoch_seconds == [r.seconds for r in result.history]
    assert all(s > 0 for s in result.epoch_seconds)
    assert result.val_accuracy == result.history[-1].val_accuracy
    assert result.diagnostics == result.history[-1].diagnostics
    assert result.val_accuracy == accuracy(result, X_val, y_val)


def test_empty_validation_set_gives_none(data):
    X_train, y_train, _, _ = data
    result = train(TrainConfig(**SMALL), X_train, y_train, X_train[:0], y_train[:0])
    assert result.val_accuracy is None
    assert all(r.val_accuracy is None for r in result.history)
    assert result.train_accuracy > 0.95
    json.dumps(result.to_dict())


def test_num_classes_can_be_given(data):
    X_train, y_train, X_val, y_val = data
    result = train(TrainConfig(hidden_sizes=(8,), epochs=1), X_train, y_train, X_val, y_val, num_classes=7)
    assert result.params["W2"].shape == (8, 7)
    with pytest.raises(ValueError, match="out of range"):
        train(TrainConfig(hidden_sizes=(8,), epochs=1), X_train, y_train, X_val, y_val, num_classes=3)


def test_predict_uses_running_statistics(data):
    """Evaluation mode treats examples independently: one example alone gets the same
    label as in a batch (training-mode batch norm would normalize a batch of one to beta)."""
    X_train, y_train, X_val, y_val = data
    result = train(TrainConfig(**SMALL), X_train, y_train, X_val, y_val)
    labels = predict(result, X_val)
    assert labels.shape == (X_val.shape[0],)
    assert [int(predict(result, X_val[i:i + 1])[0]) for i in range(20)] == labels[:20].tolist()
    assert result.bn_state and set(result.bn_state) == {"mean1", "var1", "mean2", "var2"}
    assert not np.allclose(result.bn_state["mean1"], 0.0)  # running stats did move


@pytest.mark.parametrize("activation,batch_norm", [("maxout", True), ("elu", False)])
def test_predict_and_accuracy_are_the_reference_evaluation_forward(data, activation, batch_norm):
    X_train, y_train, X_val, y_val = data
    config = TrainConfig(activation=activation, batch_norm=batch_norm, dtype="float64", **SMALL)
    result = train(config, X_train, y_train, X_val, y_val)
    scores, _, _, _ = forward(result.spec, result.params, result.bn_state, X_val, training=False)
    np.testing.assert_array_equal(predict(result, X_val), scores.argmax(axis=1))
    assert result.val_accuracy == float(np.mean(scores.argmax(axis=1) == y_val))


def test_callback_exceptions_propagate_untouched(data):
    X_train, y_train, X_val, y_val = data

    class Pruned(Exception):
        pass

    raised = Pruned("stop at 2")
    calls = []

    def on_epoch(report):
        calls.append(report.epoch)
        if report.epoch == 2:
            raise raised

    with pytest.raises(Pruned) as info:
        train(TrainConfig(hidden_sizes=(8,), epochs=5), X_train, y_train, X_val, y_val, on_epoch=on_epoch)
    assert info.value is raised
    assert calls == [1, 2]


def test_last_batch_of_one_is_merged_with_batch_norm():
    X, y = blobs(n=129)
    result = train(TrainConfig(hidden_sizes=(8,), epochs=2, batch_size=64), X, y, X[:0], y[:0])
    assert all(math.isfinite(r.train_loss) for r in result.history)


# --- divergence -----------------------------------------------------------------------

def test_huge_learning_rate_raises_diverged_with_epoch_and_step(data):
    X_train, y_train, X_val, y_val = data
    config = TrainConfig(optimizer="sgd", learning_rate=1e4, batch_norm=False, **SMALL)
    with pytest.raises(TrainingDiverged) as info:
        train(config, X_train, y_train, X_val, y_val)
    e = info.value
    assert e.epoch == 1 and e.step >= 1
    assert str(e).startswith(f"diverged at epoch {e.epoch}, step {e.step}: ")
    if e.reason == "exceeded":
        assert e.loss > 3 * e.initial_loss
        assert f"> 3x initial {e.initial_loss:.2f}" in str(e)
    else:
        assert not math.isfinite(e.loss)


def test_nan_in_the_data_raises_diverged_loss_is_nan(data):
    X_train, y_train, X_val, y_val = data
    X_bad = X_train.copy()
    X_bad[500, 3] = np.nan
    with pytest.raises(TrainingDiverged, match=r"^diverged at epoch 1, step \d+: loss is nan$") as info:
        train(TrainConfig(**SMALL), X_bad, y_train, X_val, y_val)
    assert info.value.reason == "non-finite" and info.value.epoch == 1
    # without batch norm only that example's row goes bad: still caught
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(TrainConfig(batch_norm=False, **SMALL), X_bad, y_train, X_val, y_val)


def test_initial_loss_is_measured_on_the_probe_and_floored_at_ln_c(data):
    X_train, y_train, X_val, y_val = data
    tiny = train(TrainConfig(initializer="small", init_std=1e-4, hidden_sizes=(8,), epochs=1),
                 X_train, y_train, X_val, y_val)
    assert tiny.initial_loss == pytest.approx(math.log(4), rel=1e-3)
    big = train(TrainConfig(initializer="he", batch_norm=False, hidden_sizes=(8,), epochs=1),
                X_train, y_train, X_val, y_val)
    assert big.initial_loss > math.log(4)


def test_sensible_settings_never_trip_the_divergence_stop():
    """Ordinary minibatch noise: tiny batches, a high but sane learning rate, many steps."""
    X, y = blobs(n=400, c=10, spread=0.5)  # overlapping classes: noisy per-batch losses
    for seed in range(3):
        config = TrainConfig(hidden_sizes=(32,), batch_size=4, epochs=3, learning_rate=3e-3,
                             initializer="small", seed=seed)
        train(config, X, y, X[:0], y[:0])


def test_training_diverged_pickles():
    e = TrainingDiverged(3, 12, 7.2, 2.3, "exceeded")
    assert str(e) == "diverged at epoch 3, step 12: loss 7.2 > 3x initial 2.30"
    back = pickle.loads(pickle.dumps(e))
    assert (back.epoch, back.step, back.loss, back.initial_loss, back.reason) == (3, 12, 7.2, 2.3, "exceeded")
    assert str(back) == str(e)
    assert str(TrainingDiverged(1, 4, float("nan"), 2.3, "non-finite")) == "diverged at epoch 1, step 4: loss is nan"


# --- reproducibility ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_is_bit_identical_and_another_seed_differs(data, dtype):
    X_train, y_train, X_val, y_val = data
    config = TrainConfig(dtype=dtype, **SMALL)
    a = train(config, X_train, y_train, X_val, y_val)
    b = train(config, X_train, y_train, X_val, y_val)
    c = train(TrainConfig(dtype=dtype, seed=1, **SMALL), X_train, y_train, X_val, y_val)
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name])
    for name in a.bn_state:
        assert np.array_equal(a.bn_state[name], b.bn_state[name])
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert a.diagnostics == b.diagnostics and a.histograms == b.histograms
    assert not np.array_equal(a.params["W1"], c.params["W1"])
    assert [r.train_loss for r in a.history] != [r.train_loss for r in c.history]


# --- dtypes ---------------------------------------------------------------------------

def test_float32_stays_float32_even_from_float64_input(data):
    X_train, y_train, X_val, y_val = data
    result = train(TrainConfig(**SMALL), X_train.astype(np.float64), y_train, X_val.astype(np.float64), y_val)
    assert all(p.dtype == np.float32 for p in result.params.values())
    assert all(s.dtype == np.float32 for s in result.bn_state.values())


def test_float64_config_trains_in_float64(data):
    X_train, y_train, X_val, y_val = data
    result = train(TrainConfig(dtype="float64", **SMALL), X_train, y_train, X_val, y_val)
    assert all(p.dtype == np.float64 for p in result.params.values())


# --- diagnostics ----------------------------------------------------------------------

def _plain_json(value):
    """True if value is made of dicts, lists, str, bool, int, float and None only."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return value is None or type(value) in (str, bool, int, float)


@pytest.mark.parametrize("activation", ["relu", "tanh", "maxout"])
def test_diagnostics_are_present_and_plain_json(data, activation):
    X_train, y_train, X_val, y_val = data
    result = train(TrainConfig(activation=activation, **SMALL), X_train, y_train, X_val, y_val)
    for report in result.history:
        d = report.diagnostics
        assert _plain_json(d)
        assert d["probe_size"] == 256
        assert [layer["layer"] for layer in d["layers"]] == [1, 2]
        for layer in d["layers"]:
            assert layer["units"] == 32
            assert layer["activation_std"] > 0
            assert layer["grad_norm"] > 0
            assert 0 < layer["update_ratio"] < 1
            if activation == "tanh":
                assert layer["dead_fraction"] is None and 0 <= layer["saturation_fraction"] <= 1
            else:
                assert layer["saturation_fraction"] is None and 0 <= layer["dead_fraction"] <= 1
        assert d["output_layer"]["grad_norm"] > 0
    assert _plain_json(result.histograms)
    for index, histogram in enumerate(result.histograms, start=1):
        assert histogram["layer"] == index
        assert len(histogram["edges"]) == 21 and len(histogram["counts"]) == 20
        assert sum(histogram["counts"]) == 256 * 32
    text = json.dumps(result.to_dict())
    assert "params" not in json.loads(text)


def test_too_large_learning_rate_kills_relus(data):
    X_train, y_train, X_val, y_val = data
    def dead(lr):
        config = TrainConfig(hidden_sizes=(100, 100), batch_norm=False, learning_rate=lr, epochs=3)
        layers = train(config, X_train, y_train, X_val, y_val).diagnostics["layers"]
        return max(layer["dead_fraction"] for layer in layers)
    sensible, too_large = dead(1e-3), dead(5e-2)
    assert too_large > 0.1
    assert too_large > 5 * sensible


def test_tiny_init_makes_deep_tanh_activations_vanish(data):
    X_train, y_train, X_val, y_val = data
    def stds(initializer):
        config = TrainConfig(hidden_sizes=(100,) * 6, activation="tanh", batch_norm=False,
                             initializer=initializer, init_std=0.01, optimizer="sgd",
                             learning_rate=1e-4, epochs=1)
        return [layer["activation_std"] for layer in train(config, X_train, y_train, X_val, y_val).diagnostics["layers"]]
    tiny, xavier = stds("small"), stds("xavier")
    assert tiny[-1] < 1e-4                         # each layer shrinks the signal ~10x
    assert tiny[-1] < 1e-2 * tiny[0]
    assert xavier[-1] > 0.1


def test_large_init_saturates_tanh(data):
    X_train, y_train, X_val, y_val = data
    config = TrainConfig(hidden_sizes=(100, 100), activation="tanh", batch_norm=False,
                         initializer="small", init_std=1.0, optimizer="sgd", learning_rate=1e-4, epochs=1)
    saturated = train(config, X_train, y_train, X_val, y_val).diagnostics["layers"]
    healthy = train(TrainConfig(hidden_sizes=(100, 100), activation="tanh", epochs=1),
                    X_train, y_train, X_val, y_val).diagnostics["layers"]
    assert min(layer["saturation_fraction"] for layer in saturated) > 0.5
    assert max(layer["saturation_fraction"] for layer in healthy) < 0.2


def test_trials_on_the_same_data_share_one_fit_of_the_preprocessing(monkeypatch):
    """A worker fits a stage's preprocessing once per dataset and kind, not once per trial, and
    a trial scores exactly what it scores with a fit of its own."""
    import workers.run as run
    from workers.data.datasets import load_dataset

    dataset = load_dataset("digits", seed=3)
    fits = []
    real_fit = run.fit_preprocessor
    monkeypatch.setattr(run, "fit_preprocessor", lambda *a, **k: fits.append(a[0]) or real_fit(*a, **k))
    run._preprocessed_holdout.cache_clear()
    configs = [TrainConfig(epochs=2, seed=s, preprocessing="pca_whiten", pca_components=0.99) for s in (0, 1)]
    scores = [run.fit_and_score(c, dataset).value for c in configs]
    assert fits == ["pca_whiten"]  # the second trial reused the first one's fit
    run.fit_and_score(TrainConfig(epochs=2, preprocessing="center"), dataset)
    assert fits == ["pca_whiten", "center"]

    X_train, X_val = run._preprocessed_holdout(dataset, "pca_whiten", 0.99, "float32")
    assert not X_train.flags.writeable and not X_val.flags.writeable
    for config, score in zip(configs, scores):  # as if each trial had fitted its own
        own_train, own_val = run.preprocess(config, dataset.X_train, dataset.X_val)
        result = train(config, own_train, dataset.y_train, own_val, dataset.y_val)
        assert result.val_accuracy == score
    run._preprocessed_holdout.cache_clear()


def test_folds_trained_side_by_side_are_the_folds_trained_alone(data):
    """Cross-validation trains its folds epoch by epoch together, so that the pruner sees the
    mean over the folds at each epoch; each fold ends bit-identical to a run of its own."""
    from workers.train import fold_mean, train_folds

    X, y = np.concatenate([data[0], data[2]]), np.concatenate([data[1], data[3]])
    folds = [(X[:600], y[:600], X[600:], y[600:]), (X[400:], y[400:], X[:400], y[:400]),
             (X[::2], y[::2], X[1::2], y[1::2])]
    config = TrainConfig(hidden_sizes=(32,), epochs=3, batch_norm=True, lr_decay=0.9, seed=4)
    seen = []
    together = train_folds(config, folds, on_epoch=seen.append)
    alone = [train(config, *fold) for fold in folds]
    for a, b in zip(together, alone):
        assert all(np.array_equal(a.params[k], b.params[k]) for k in b.params)
        assert all(np.array_equal(a.bn_state[k], b.bn_state[k]) for k in b.bn_state)
        assert [r.val_accuracy for r in a.history] == [r.val_accuracy for r in b.history]
        assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    assert [[r.epoch for r in reports] for reports in seen] == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]
    for e, reports in enumerate(seen):
        mean = fold_mean(reports)
        expected = np.mean([np.float64(b.history[e].val_accuracy) for b in alone])
        assert mean.epoch == e + 1 and mean.val_accuracy == pytest.approx(expected, abs=1e-15)
        assert mean.train_loss == pytest.approx(np.mean([b.history[e].train_loss for b in alone]), abs=1e-12)


def test_a_stop_at_an_epoch_stops_every_fold(data):
    from workers.train import train_folds

    folds = [data, (data[2], data[3], data[0], data[1])]
    epochs = []

    def prune_at_two(reports):
        epochs.append([r.epoch for r in reports])
        if reports[0].epoch == 2:
            raise RuntimeError("pruned at step 2")

    with pytest.raises(RuntimeError, match="pruned at step 2"):
        train_folds(TrainConfig(**SMALL), folds, on_epoch=prune_at_two)
    assert epochs == [[1, 1], [2, 2]]
