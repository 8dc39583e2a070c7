"""The engine of `fit_full_batch` for data in memory keeps `fit`'s meaning.

The oracle is Keras's own `fit` on the same model: `enable_loss` and
`fit(batch_size=len(x), shuffle=False)`, the same training one batch per
epoch. The engine must train the same weights and give the same History
and the same callback calls, whether it runs one epoch per compiled call
(with callbacks that need every epoch) or many (with only the History).
"""

import csv
import os

import keras
import numpy as np
import pytest

import keras_rprop
from tests import helpers

EPOCHS = 12


def make_data(samples=40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 3)).astype("float32")
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    weights = rng.uniform(0.5, 1.5, size=(samples,)).astype("float32")
    return x, y, weights


def make_model(variant="irprop+", metrics=("mae",), **optimizer_kwargs):
    model = helpers.tanh_model(hidden=6)
    model.compile(
        optimizer=keras_rprop.Rprop(variant, **optimizer_kwargs),
        loss="mse",
        metrics=list(metrics),
    )
    return model


def keras_fit(model, x, y, **kwargs):
    """The oracle: Keras's `fit`, one full batch per epoch."""
    keras_rprop.enable_loss(model)
    return model.fit(
        x, y, batch_size=len(x), shuffle=False, verbose=0, **kwargs
    )


def assert_same_training(model, history, expected_model, expected_history):
    for got, want in zip(model.get_weights(), expected_model.get_weights()):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(
        model.optimizer.variables, expected_model.optimizer.variables
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want)
        )
    assert history.epoch == expected_history.epoch
    assert sorted(history.history) == sorted(expected_history.history)
    for key, values in expected_history.history.items():
        np.testing.assert_allclose(
            history.history[key], values, rtol=1e-6, err_msg=key
        )


class EveryEpoch(keras.callbacks.Callback):
    """Notes every call; needs each epoch as it ends (the per-epoch path)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, round(logs["loss"], 5)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(
            ("epoch_end", epoch, tuple(sorted(logs)), round(logs["loss"], 5))
        )

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", tuple(sorted(logs or {}))))


@pytest.mark.parametrize("variant", keras_rprop.VARIANTS)
@pytest.mark.parametrize("per_epoch", [False, True])
def test_trains_the_weights_of_keras_fit(variant, per_epoch):
    x, y, _ = make_data()
    expected = make_model(variant)
    expected_history = keras_fit(expected, x, y, epochs=EPOCHS)
    model = make_model(variant)
    callbacks = [EveryEpoch()] if per_epoch else []
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=EPOCHS, verbose=0, callbacks=callbacks
    )
    assert_same_training(model, history, expected, expected_history)
    # The model's own training step and train function are untouched.
    assert "train_step" not in model.__dict__
    assert model.history is history


def test_sample_weights_validation_and_initial_epoch():
    x, y, weights = make_data()
    x_val, y_val = x[:10] + 0.1, y[:10]
    kwargs = dict(
        epochs=EPOCHS,
        sample_weight=weights,
        validation_data=(x_val, y_val),
        validation_freq=[2, 5, 6, 12],
        initial_epoch=1,
    )
    expected = make_model()
    expected_history = keras_fit(expected, x, y, **kwargs)
    for callbacks in ([], [EveryEpoch()]):
        model = make_model()
        history = keras_rprop.fit_full_batch(
            model, x, y, verbose=0, callbacks=callbacks, **kwargs
        )
        assert_same_training(model, history, expected, expected_history)
        assert "val_loss" in history.history


def test_validation_split():
    x, y, _ = make_data()
    expected = make_model()
    expected_history = keras_fit(
        expected, x, y, epochs=EPOCHS, validation_split=0.25
    )
    model = make_model()
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=EPOCHS, validation_split=0.25, verbose=0
    )
    assert_same_training(model, history, expected, expected_history)
    assert len(history.history["val_mae"]) == EPOCHS


def test_callbacks_are_called_as_fit_calls_them():
    x, y, _ = make_data()
    expected = EveryEpoch()
    keras_fit(make_model(), x, y, epochs=4, callbacks=[expected])
    got = EveryEpoch()
    keras_rprop.fit_full_batch(
        make_model(), x, y, epochs=4, verbose=0, callbacks=[got]
    )
    assert got.calls == expected.calls


@pytest.mark.parametrize("variant", ["rprop+", "irprop+"])
def test_steps_per_epoch_is_epochs_of_several_steps(variant):
    x, y, _ = make_data()
    expected = make_model(variant)
    expected_history = keras_fit(expected, x, y, epochs=EPOCHS)
    model = make_model(variant)
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=EPOCHS // 3, steps_per_epoch=3, verbose=0
    )
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(got, want)
    # Each epoch logs its last step.
    np.testing.assert_allclose(
        history.history["loss"],
        expected_history.history["loss"][2::3],
        rtol=1e-6,
    )


def _standard_callbacks(tmp_path):
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="loss", factor=0.5, patience=1, min_delta=10.0
        ),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: None),
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "best.weights.h5"),
            monitor="loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras_rprop.StepSizeLogger(),
        keras.callbacks.EarlyStopping(
            monitor="loss",
            patience=2,
            min_delta=0.05,
            restore_best_weights=True,
        ),
    ]


def test_built_in_callbacks_keep_their_meaning(tmp_path):
    x, y, _ = make_data()
    (tmp_path / "fit").mkdir()
    (tmp_path / "engine").mkdir()
    expected = make_model()
    expected_history = keras_fit(
        expected,
        x,
        y,
        epochs=40,
        callbacks=_standard_callbacks(tmp_path / "fit"),
    )
    model = make_model()
    history = keras_rprop.fit_full_batch(
        model,
        x,
        y,
        epochs=40,
        verbose=0,
        callbacks=_standard_callbacks(tmp_path / "engine"),
    )
    assert_same_training(model, history, expected, expected_history)
    # EarlyStopping stopped before the end and restored the best weights.
    assert len(history.epoch) < 40
    assert "learning_rate" in history.history
    assert "step_size_median" in history.history
    with open(tmp_path / "engine" / "log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [float(r["loss"]) for r in rows] == pytest.approx(
        history.history["loss"], rel=1e-6
    )
    assert os.path.exists(tmp_path / "engine" / "best.weights.h5")


def test_terminate_on_nan_stops_at_the_first_nan():
    x, y, _ = make_data()
    y = y.copy()
    y[3] = np.nan
    expected = make_model()
    expected_history = keras_fit(
        expected, x, y, epochs=5, callbacks=[keras.callbacks.TerminateOnNaN()]
    )
    model = make_model()
    history = keras_rprop.fit_full_batch(
        model,
        x,
        y,
        epochs=5,
        verbose=0,
        callbacks=[keras.callbacks.TerminateOnNaN()],
        check_finite=False,
    )
    assert history.epoch == expected_history.epoch == [0]
    assert np.isnan(history.history["loss"][0])


def test_tensorboard_logs_the_epoch_losses(tmp_path):
    # Keras's TensorBoard callback writes through `tf.summary`, which needs
    # the `tensorboard` package (in the test extra) on every backend.
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    x, y, _ = make_data()
    model = make_model()
    history = keras_rprop.fit_full_batch(
        model,
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[keras.callbacks.TensorBoard(str(tmp_path))],
    )
    events = event_accumulator.EventAccumulator(
        str(tmp_path / "train"), size_guidance={"tensors": 0}
    ).Reload()
    logged = [
        (event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
        for event in events.Tensors("epoch_loss")
    ]
    assert [step for step, _ in logged] == history.epoch
    np.testing.assert_allclose(
        [loss for _, loss in logged], history.history["loss"], rtol=1e-6
    )


def test_loss_goal_stops_at_the_same_epoch_on_every_path():
    x, y, _ = make_data()
    reference = make_model()
    full = keras_rprop.fit_full_batch(reference, x, y, epochs=60, verbose=0)
    goal = full.history["loss"][29]
    expected = make_model()
    expected_history = keras_fit(
        expected, x, y, epochs=60, callbacks=[keras_rprop.LossGoal(goal)]
    )
    assert len(expected_history.epoch) == 30
    for callbacks in ([], [EveryEpoch()]):
        model = make_model()
        history = keras_rprop.fit_full_batch(
            model,
            x,
            y,
            epochs=60,
            verbose=0,
            callbacks=[keras_rprop.LossGoal(goal), *callbacks],
        )
        assert_same_training(model, history, expected, expected_history)


def test_loss_goal_rejects_bad_goals():
    for goal in (None, "1e-3", float("nan"), True):
        with pytest.raises(ValueError, match="goal"):
            keras_rprop.LossGoal(goal)


def test_progress_over_epochs(capsys):
    x, y, _ = make_data()
    model = make_model()
    keras_rprop.fit_full_batch(model, x, y, epochs=7, verbose=2)
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.strip()
    ]
    assert len(lines) == 7
    assert lines[0].startswith("Epoch 1/7")
    assert lines[-1].startswith("Epoch 7/7") and "loss:" in lines[-1]

    keras_rprop.fit_full_batch(model, x, y, epochs=300, verbose=1)
    out = capsys.readouterr().out
    assert "300/300" in out
    # One bar over the epochs, not one per one-batch epoch.
    assert "1/1" not in out
    assert "Epoch 2/" not in out

    keras_rprop.fit_full_batch(model, x, y, epochs=5, verbose=0)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="verbose"):
        keras_rprop.fit_full_batch(model, x, y, epochs=5, verbose=3)


def test_calls_continue_training_and_reuse_the_compiled_loop():
    x, y, _ = make_data()
    expected = make_model()
    expected_history = keras_fit(expected, x, y, epochs=EPOCHS)
    model = make_model()
    first = keras_rprop.fit_full_batch(model, x, y, epochs=5, verbose=0)
    engines = dict(model.__dict__["_keras_rprop_engines"])
    second = keras_rprop.fit_full_batch(
        model, x, y, epochs=EPOCHS - 5, verbose=0
    )
    assert model.__dict__["_keras_rprop_engines"] == engines
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
        first.history["loss"] + second.history["loss"],
        expected_history.history["loss"],
        rtol=1e-6,
    )


@pytest.mark.parametrize("steps", [1, 3])
def test_loss_only_model(steps):
    # Without other metrics the engine reads the History from the loss
    # tracker's sums after the epochs (PyTorch).
    x, y, _ = make_data()
    expected = make_model(metrics=())
    expected_history = keras_fit(expected, x, y, epochs=EPOCHS)
    model = make_model(metrics=())
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=EPOCHS // steps, steps_per_epoch=steps, verbose=0
    )
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
        history.history["loss"],
        expected_history.history["loss"][steps - 1 :: steps],
        rtol=1e-6,
    )
