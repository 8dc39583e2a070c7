"""Validation and deciding callbacks inside the engine's compiled loop.

The engine validates inside its compiled calls and tells Keras's deciding
callbacks (`EarlyStopping`, `ReduceLROnPlateau`, `TerminateOnNaN`) of
epochs it ran ahead, rolling back when one of them decided earlier. The
oracle is Keras's own `fit` on the same model, one full batch per epoch:
the same stop epoch, restored weights, optimizer state, learning rates and
History. Hyper-parameters changed between calls are checked against the
float64 reference of the papers.
"""

import importlib

import keras
import numpy as np
import pytest
from reference import ReferenceRprop
from reference import make_mlp_params
from reference import make_regression_data
from reference import mlp_loss_and_grads

import keras_rprop
from keras_rprop.training import runners
from tests import helpers
from tests.test_engine import assert_same_training
from tests.test_engine import keras_fit


def noisy_data():
    """Few noisy samples: a wide network overfits them within 100 epochs."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(24, 2)).astype("float32")
    y = (np.sin(3 * x[:, :1]) + rng.normal(0, 0.3, (24, 1))).astype("float32")
    x_val = rng.uniform(-1, 1, size=(30, 2)).astype("float32")
    y_val = np.sin(3 * x_val[:, :1]).astype("float32")
    w_val = rng.uniform(0.5, 1.5, size=(30,)).astype("float32")
    return x, y, (x_val, y_val, w_val)


def make_model(seed=0, layers=list):
    """A fresh model; `layers()` gives layers to add at its end."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(24, activation="tanh"),
            keras.layers.Dense(1),
            *layers(),
        ]
    )
    model.compile(
        optimizer=keras_rprop.Rprop("irprop+"), loss="mse", metrics=["mae"]
    )
    return model


def train_both(callbacks, epochs=150, model_kwargs=None, **kwargs):
    """Trains a model with `fit` and one with `fit_full_batch`."""
    x, y, validation = noisy_data()
    kwargs.setdefault("validation_data", validation)
    expected = make_model(**(model_kwargs or {}))
    expected_callbacks = callbacks()
    expected_history = keras_fit(
        expected, x, y, epochs=epochs, callbacks=expected_callbacks, **kwargs
    )
    model = make_model(**(model_kwargs or {}))
    got_callbacks = callbacks()
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=epochs, verbose=0, callbacks=got_callbacks, **kwargs
    )
    assert_same_training(model, history, expected, expected_history)
    return history, got_callbacks, expected_callbacks


def assert_same_attributes(got, expected, names):
    for name in names:
        want = getattr(expected, name)
        value = getattr(got, name)
        if isinstance(want, float):
            np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=name)
        else:
            assert value == want, name


@pytest.mark.parametrize(
    "settings",
    [
        dict(monitor="val_loss", patience=3, restore_best_weights=True),
        dict(
            monitor="val_loss",
            patience=4,
            min_delta=1e-3,
            baseline=0.2,
            restore_best_weights=True,
        ),
        dict(monitor="val_mae", patience=2, start_from_epoch=20),
        dict(monitor="loss", mode="max", patience=5, restore_best_weights=True),
    ],
)
def test_early_stopping_matches_fit(settings):
    history, got, expected = train_both(
        lambda: [keras.callbacks.EarlyStopping(**settings)],
        validation_freq=1 if settings["monitor"] != "val_mae" else 2,
    )
    assert len(history.epoch) < 150
    assert_same_attributes(
        got[0], expected[0], ["stopped_epoch", "best", "wait", "best_epoch"]
    )


def test_reduce_learning_rate_on_plateau_matches_fit():
    def callbacks():
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=0.5,
                patience=3,
                cooldown=2,
                min_delta=1e-4,
                min_lr=0.05,
            )
        ]

    history, got, expected = train_both(callbacks, epochs=120)
    rates = history.history["learning_rate"]
    assert len(set(rates)) > 2 and min(rates) == pytest.approx(0.05)
    assert_same_attributes(got[0], expected[0], ["wait", "cooldown_counter"])


def test_deciding_callbacks_together_match_fit():
    def callbacks():
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.7, patience=2
            ),
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=6, restore_best_weights=True
            ),
            keras_rprop.LossGoal(1e-9),
            keras.callbacks.TerminateOnNaN(),
        ]

    history, _, _ = train_both(callbacks, epochs=200, validation_freq=2)
    assert len(history.epoch) < 200


class NanAfter(keras.layers.Layer):
    """Adds NaN to its input once it has run `calls` training steps."""

    def __init__(self, calls, **kwargs):
        super().__init__(**kwargs)
        self.calls = calls

    def build(self, input_shape):
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )

    def call(self, x, training=False):
        if training:
            self.count.assign_add(1.0)
        return x + keras.ops.where(self.count > self.calls, np.nan, 0.0)


def test_terminate_on_nan_stops_inside_a_chunk_like_fit():
    history, _, _ = train_both(
        lambda: [keras.callbacks.TerminateOnNaN()],
        epochs=40,
        model_kwargs=dict(layers=lambda: [NanAfter(17)]),
    )
    assert len(history.epoch) == 18
    assert np.isnan(history.history["loss"][-1])
    assert np.isfinite(history.history["loss"][-2])


def test_validation_batches_weights_and_frequency_match_fit():
    history, _, _ = train_both(
        lambda: [],
        epochs=20,
        validation_batch_size=7,
        validation_freq=[1, 2, 9, 20],
    )
    assert len(history.history["val_loss"]) == 4


class EvaluationWatcher(keras.callbacks.Callback):
    """Wants to be called while validation runs (like a progress bar)."""

    def __init__(self):
        super().__init__()
        self.test_batches = 0

    def on_test_batch_end(self, batch, logs=None):
        self.test_batches += 1


def test_callbacks_of_the_evaluation_see_it_run():
    history, got, expected = train_both(
        lambda: [EvaluationWatcher()], epochs=6, validation_batch_size=10
    )
    assert got[0].test_batches == expected[0].test_batches == 18


def test_validation_and_deciding_callbacks_do_not_end_compiled_calls(
    monkeypatch,
):
    x, y, validation = noisy_data()
    model = make_model()
    calls = []
    original = runners.runner

    def counting_runner(*args, **kwargs):
        found = original(*args, **kwargs)
        run = type(found).run

        def counted(self, epochs, **run_kwargs):
            calls.append(epochs)
            return run(self, epochs, **run_kwargs)

        monkeypatch.setattr(type(found), "run", counted)
        return found

    monkeypatch.setattr(runners, "runner", counting_runner)

    def no_evaluate(*args, **kwargs):
        raise AssertionError("evaluate called")

    monkeypatch.setattr(model, "evaluate", no_evaluate)
    history = keras_rprop.fit_full_batch(
        model,
        x,
        y,
        epochs=200,
        verbose=0,
        validation_data=validation,
        callbacks=[
            keras.callbacks.EarlyStopping(patience=1000),
            keras.callbacks.ReduceLROnPlateau(patience=1000),
        ],
    )
    assert len(history.history["val_loss"]) == 200
    # Chunks of epochs, not one call per epoch.
    assert sum(calls) == 200 and len(calls) <= 4


@pytest.fixture
def float64():
    with helpers.float64_precision():
        yield


@pytest.mark.parametrize("variant", ["irprop-", "rprop+"])
@pytest.mark.parametrize("steps_per_epoch", [1, 2])
def test_hyperparameters_changed_between_calls_take_effect(
    float64, variant, steps_per_epoch
):
    x, y = make_regression_data()
    params = make_mlp_params()
    reference = ReferenceRprop(variant, [p.shape for p in params])
    expected = [np.array(p) for p in params]
    for changes in ({}, {"eta_plus": 2.0, "eta_minus": 0.3}):
        for name, value in changes.items():
            setattr(reference, name, value)
        for _ in range(8):
            loss, grads = mlp_loss_and_grads(expected, x, y)
            expected = reference.step(expected, grads, loss=loss)

    model = helpers.build_mlp(params)
    model.compile(optimizer=keras_rprop.Rprop(variant), loss="mse")
    for changes in ({}, {"eta_plus": 2.0, "eta_minus": 0.3}):
        for name, value in changes.items():
            setattr(model.optimizer, name, value)
        keras_rprop.fit_full_batch(
            model,
            x,
            y,
            epochs=8 // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            verbose=0,
        )
    helpers.assert_weights_close(
        helpers.weights_of(model.trainable_variables), expected
    )


class Chunks(keras.utils.PyDataset):
    """The training data in chunks, for `fit`'s own loop over batches."""

    def __init__(self, x, y, size):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, i):
        part = slice(i * self.size, (i + 1) * self.size)
        return self.x[part], self.y[part]


def test_chunked_arrays_in_the_compiled_loop_match_fit_over_chunks():
    # The oracle: `fit` over a PyDataset of the same chunks, each adding its
    # gradient sums, one step per pass.
    x, y, validation = noisy_data()

    def callbacks():
        return [
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=3, restore_best_weights=True
            )
        ]

    expected = make_model()
    expected_history = keras_rprop.fit_full_batch(
        expected,
        Chunks(x, y, 10),
        epochs=100,
        verbose=0,
        validation_data=validation,
        validation_batch_size=10,
        callbacks=callbacks(),
    )
    model = make_model()
    history = keras_rprop.fit_full_batch(
        model,
        x,
        y,
        chunk_size=10,
        epochs=100,
        verbose=0,
        validation_data=validation,
        callbacks=callbacks(),
    )
    assert len(history.epoch) < 100
    assert history.epoch == expected_history.epoch
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for key, values in expected_history.history.items():
        np.testing.assert_allclose(
            history.history[key], values, rtol=1e-5, err_msg=key
        )


def _programs(model):
    return [r.program for r in model.__dict__["_keras_rprop_engines"].values()]


def test_fresh_models_of_one_structure_reuse_compiled_code_exactly():
    x, y, validation = noisy_data()
    programs = []
    configurations = [
        (1, {}),
        (2, {}),
        (2, {"eta_plus": 1.5}),
    ]
    for seed, optimizer_kwargs in configurations:
        models = []
        for _ in range(2):
            model = make_model(seed)
            model.compile(
                optimizer=keras_rprop.Rprop("irprop+", **optimizer_kwargs),
                loss="mse",
                metrics=["mae"],
            )
            models.append(model)
        expected, model = models
        expected_history = keras_fit(
            expected, x, y, epochs=30, validation_data=validation
        )
        history = keras_rprop.fit_full_batch(
            model, x, y, epochs=30, verbose=0, validation_data=validation
        )
        assert_same_training(model, history, expected, expected_history)
        if keras.backend.backend() in ("jax", "tensorflow"):
            programs.append(_programs(model)[0])
        if keras.backend.backend() == "torch":
            from keras_rprop.training import torch_replay

            programs.append(
                [entry[2] for entry in torch_replay._traces[model].values()]
            )
    if programs:
        # Seeds share one program; another configuration gets its own.
        assert programs[0] == programs[1]
        assert programs[2] != programs[1]


def test_fresh_models_sharing_a_traced_function_train_as_alone():
    """TensorFlow: a model trained with another model's trace (its
    variables passed as arguments) trains as with a trace of its own, and
    leaves the other model untouched."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's traced function")
    from keras_rprop.training.runners import tensorflow as tf_runner

    x, y, validation = noisy_data()

    def train(seed):
        model = make_model(seed)
        history = keras_rprop.fit_full_batch(
            model,
            x,
            y,
            epochs=40,
            verbose=0,
            validation_data=validation,
            callbacks=[
                keras.callbacks.EarlyStopping(
                    "val_loss", patience=5, restore_best_weights=True
                )
            ],
        )
        return model, history

    tf_runner._PROGRAMS.clear()
    alone, alone_history = train(2)
    tf_runner._PROGRAMS.clear()
    first, _ = train(1)
    first_weights = first.get_weights()
    traces = _programs(first)[0].function.experimental_get_tracing_count()
    shared, shared_history = train(2)
    assert _programs(shared)[0] is _programs(first)[0]
    # No trace of its own: the function traced for the first model.
    assert (
        _programs(first)[0].function.experimental_get_tracing_count() == traces
    )
    assert_same_training(shared, shared_history, alone, alone_history)
    for got, want in zip(first.get_weights(), first_weights):
        np.testing.assert_array_equal(got, want)


_SCALE = {}


def _train_scaled(scale):
    """A model whose `Lambda` reads a variable outside it, trained."""
    x, y, _ = noisy_data()
    _SCALE["value"] = keras.Variable(scale)
    model = make_model(
        layers=lambda: [keras.layers.Lambda(lambda t: t * _SCALE["value"])]
    )
    history = keras_rprop.fit_full_batch(model, x, y, epochs=20, verbose=0)
    return model, history


def test_a_layer_reading_state_outside_the_model_is_not_shared():
    """A `Lambda` reading a variable outside the model: its computation is
    not what its configuration says, so another model of the same
    structure must not reuse the first one's compiled program or record.
    """
    _forget_shared_programs()
    alone, alone_history = _train_scaled(0.5)
    _forget_shared_programs()
    _train_scaled(3.0)
    model, history = _train_scaled(0.5)
    assert_same_training(model, history, alone, alone_history)


def _forget_shared_programs():
    """Empties the caches of programs and records shared by structure."""
    backend = keras.backend.backend()
    if backend == "torch":
        from keras_rprop.training import torch_replay

        torch_replay._shared.clear()
    else:
        module = importlib.import_module(
            f"keras_rprop.training.runners.{backend}"
        )
        module._PROGRAMS.clear()


def test_a_trace_that_captures_state_is_not_shared(monkeypatch):
    """TensorFlow: should a shared trace capture state (here a `Lambda`
    reading a global, let through the structure key for the test), another
    model of the same structure traces its own function rather than reuse
    it."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's traced function")
    from keras_rprop.training.runners import common
    from keras_rprop.training.runners import tensorflow as tf_runner

    monkeypatch.setattr(
        common, "_shared_layer", lambda layer: True, raising=True
    )
    tf_runner._PROGRAMS.clear()
    alone, alone_history = _train_scaled(3.0)
    tf_runner._PROGRAMS.clear()
    first, _ = _train_scaled(0.5)
    model, history = _train_scaled(3.0)
    assert_same_training(model, history, alone, alone_history)
    assert _programs(model)[0] is not _programs(first)[0]
    assert _programs(first)[0].owner() is first
