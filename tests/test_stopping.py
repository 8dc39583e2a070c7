"""Prechelt's stopping criteria against their formulas.

Trained runs: a small tanh network overfits 16 noisy samples of a sine
while its error on 24 others falls and then rises. The stop epoch and the
restored weights are compared with a NumPy computation of each criterion
over the History's logged errors, and with the weights a recording
callback saw at the best epoch. Hand-made logs check the decisions, worked
by hand, without training.
"""

import contextlib
import warnings

import keras
import numpy as np
import pytest

import keras_rprop

EPOCHS = 150


def overfitting_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(40, 1)).astype("float32")
    y = (np.sin(2 * x) + 0.3 * rng.normal(size=x.shape)).astype("float32")
    return (x[:16], y[:16]), (x[16:], y[16:])


def overfitting_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(24, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras_rprop.Rprop(), loss="mse")
    return model


class WeightsRecorder(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = self.model.get_weights()


def train(criterion, how, recorder=True, **fit_kwargs):
    (x, y), validation_data = overfitting_data()
    model = overfitting_model()
    callbacks = [criterion] + ([WeightsRecorder()] if recorder else [])
    arguments = dict(
        epochs=EPOCHS,
        validation_data=validation_data,
        callbacks=callbacks,
        verbose=0,
    )
    arguments.update(fit_kwargs)
    if how == "fit":
        history = model.fit(x, y, batch_size=len(x), shuffle=False, **arguments)
    else:
        history = keras_rprop.fit_full_batch(model, x, y, **arguments)
    return model, history, callbacks[-1] if recorder else None


@contextlib.contextmanager
def warnings_about(name):
    """The list of the warnings raised inside that mention `name`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mentioning = []
        yield mentioning
    mentioning.extend(w for w in caught if name in str(w.message))


# -- Independent NumPy computations of the criteria ---------------------------


def first(indices):
    return int(indices[0]) if len(indices) else None


def generalization_losses(val):
    val = np.asarray(val, np.float64)
    return 100.0 * (val / np.minimum.accumulate(val) - 1.0)


def strip_ends_and_progress(train_errors, k):
    """The strip ends k-1, 2k-1, ... and `P_k` at each, as arrays."""
    errors = np.asarray(train_errors, np.float64)
    ends = np.arange(k - 1, len(errors), k)
    strips = errors[ends[:, None] - np.arange(k)]
    return ends, 1000.0 * (strips.sum(axis=1) / (k * strips.min(axis=1)) - 1)


def gl_stop(val, alpha, start=0):
    gl = generalization_losses(val[start:])
    hit = first(np.flatnonzero(gl > alpha))
    return None if hit is None else start + hit


def pq_stop(train_errors, val, alpha, k=5):
    ends, progress = strip_ends_and_progress(train_errors, k)
    quotient = generalization_losses(val)[ends] / progress
    return first(ends[quotient > alpha])


def up_stop(val, strips, k=5):
    val = np.asarray(val, np.float64)
    ends = np.arange(k - 1, len(val), k)
    rose = val[ends][1:] > val[ends][:-1]
    runs = np.convolve(rose, np.ones(strips, int), mode="valid")
    hit = first(np.flatnonzero(runs == strips))
    return None if hit is None else int(ends[hit + strips])


CASES = {
    "gl": (
        lambda: keras_rprop.StopOnGeneralizationLoss(
            alpha=5.0, start_from_epoch=10
        ),
        lambda h: gl_stop(h["val_loss"], 5.0, start=10),
        10,
    ),
    "pq": (
        lambda: keras_rprop.StopOnProgressQuotient(alpha=2.0),
        lambda h: pq_stop(h["loss"], h["val_loss"], 2.0),
        0,
    ),
    "up": (
        lambda: keras_rprop.StopOnValidationIncreases(strips=3),
        lambda h: up_stop(h["val_loss"], 3),
        0,
    ),
}


@pytest.mark.parametrize("how", ["fit", "fit_full_batch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_stops_where_the_formula_fires_and_restores_the_best(name, how):
    make, reference, start = CASES[name]
    criterion = make()
    model, history, recorder = train(criterion, how)
    logged = history.history

    stop = reference(logged)
    assert stop is not None, "the criterion should fire within the run"
    assert stop < EPOCHS - 1
    assert history.epoch[-1] == stop
    assert criterion.stopped_epoch == stop
    assert model.stop_training

    val = np.asarray(logged["val_loss"], np.float64)
    best_epoch = start + int(np.argmin(val[start:]))
    assert criterion.best_epoch == best_epoch
    assert criterion.best == pytest.approx(val[best_epoch], rel=1e-12)
    assert best_epoch < stop
    for restored, expected in zip(
        model.get_weights(), recorder.weights[best_epoch]
    ):
        np.testing.assert_array_equal(restored, expected)
    # The run did move past the best epoch: restoring changed something.
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(recorder.weights[best_epoch], recorder.weights[stop])
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_engine_alone_gives_the_same_result(name):
    # Without a callback that needs each epoch as it ends, the engine runs
    # epochs ahead and tells the criterion of them afterwards.
    make, _, _ = CASES[name]
    model, history, recorder = train(make(), "fit_full_batch")
    alone, alone_history, _ = train(make(), "fit_full_batch", recorder=False)
    assert alone_history.epoch == history.epoch
    np.testing.assert_allclose(
        alone_history.history["val_loss"], history.history["val_loss"]
    )
    for a, b in zip(alone.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b)


def rose_in_a_row(val, strips):
    """Whether `val` rose at each of the `strips` entries up to each one."""
    rose = np.diff(np.asarray(val, np.float64)) > 0
    runs = np.convolve(rose, np.ones(strips, int), mode="full")[: len(rose)]
    return np.concatenate([[False], runs == strips])


# The docstrings' examples: validation every 5 epochs, at most 3000.
EVERY_FIVE_EPOCHS = {
    "gl, PROBEN1's rule": (
        lambda: keras_rprop.StopOnGeneralizationLoss(
            alpha=5.0, min_progress=0.1
        ),
        lambda gl, progress, val: (gl > 5.0) | (progress < 0.1),
    ),
    "pq": (
        lambda: keras_rprop.StopOnProgressQuotient(alpha=0.5),
        lambda gl, progress, val: gl / progress > 0.5,
    ),
    "up": (
        lambda: keras_rprop.StopOnValidationIncreases(strips=3),
        lambda gl, progress, val: rose_in_a_row(val, 3),
    ),
}


@pytest.mark.parametrize("name", sorted(EVERY_FIVE_EPOCHS))
def test_validation_every_five_epochs(name):
    make, fires = EVERY_FIVE_EPOCHS[name]
    criterion = make()
    with warnings_about("val_loss") as caught:
        model, history, recorder = train(
            criterion, "fit_full_batch", epochs=3000, validation_freq=5
        )
    assert not caught  # Epochs without validation are expected.
    logged = history.history
    ends, progress = strip_ends_and_progress(logged["loss"], 5)
    val = np.asarray(logged["val_loss"], np.float64)
    # Validated at the strip ends only, and stopped at one.
    assert len(val) == len(ends) and history.epoch[-1] == ends[-1]
    hits = np.flatnonzero(fires(generalization_losses(val), progress, val))
    assert len(hits), "the criterion should fire within the run"
    assert history.epoch[-1] == criterion.stopped_epoch == ends[hits[0]]
    best_epoch = int(ends[np.argmin(val)])
    assert criterion.best_epoch == best_epoch < criterion.stopped_epoch
    for restored, recorded in zip(
        model.get_weights(), recorder.weights[best_epoch]
    ):
        np.testing.assert_array_equal(restored, recorded)


def test_restore_best_weights_false_keeps_the_last_weights():
    criterion = keras_rprop.StopOnValidationIncreases(
        strips=3, restore_best_weights=False
    )
    model, history, recorder = train(criterion, "fit_full_batch")
    assert criterion.best_weights is None
    for kept, last in zip(
        model.get_weights(), recorder.weights[history.epoch[-1]]
    ):
        np.testing.assert_array_equal(kept, last)


def test_a_metric_keras_maximizes_is_refused():
    (x, y), validation_data = overfitting_data()
    model = overfitting_model()
    model.compile(
        optimizer=keras_rprop.Rprop(),
        loss="mse",
        metrics=[keras.metrics.R2Score()],
    )
    criterion = keras_rprop.StopOnGeneralizationLoss(monitor="val_r2_score")
    with pytest.raises(ValueError, match="maximizes `val_r2_score`"):
        keras_rprop.fit_full_batch(
            model,
            x,
            y,
            epochs=3,
            validation_data=validation_data,
            callbacks=[criterion],
            verbose=0,
        )


# -- Hand-made logs -----------------------------------------------------------


def drive(criterion, logs_by_epoch):
    """Feeds the logs to `criterion`, as `fit` would, until it stops.

    Before each epoch, the model's two weights are set to the epoch's
    number, so the restored weights tell which epoch they came from.
    Returns the epoch whose weights the model holds after training.
    """
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    criterion.set_model(model)
    model.stop_training = False
    criterion.on_train_begin()
    for epoch, logs in enumerate(logs_by_epoch):
        model.set_weights(
            [np.full((1, 1), epoch, "float32"), np.full((1,), epoch, "float32")]
        )
        criterion.on_epoch_end(epoch, dict(logs))
        if model.stop_training:
            break
    criterion.on_train_end()
    kernel, bias = model.get_weights()
    assert kernel[0, 0] == bias[0]
    return int(kernel[0, 0])


def val_logs(values, training=None):
    training = training or [1.0] * len(values)
    return [
        {"loss": t, "val_loss": v}
        for t, v in zip(training, values, strict=True)
    ]


def test_generalization_loss_by_hand():
    # E_opt = 1, 0.8, 0.8, 0.8, 0.8: GL = 0, 0, 2.5, 3.75, 6.25 > 5.
    criterion = keras_rprop.StopOnGeneralizationLoss(alpha=5.0)
    held = drive(criterion, val_logs([1.0, 0.8, 0.82, 0.83, 0.85, 0.79]))
    assert criterion.stopped_epoch == 4
    assert (criterion.best_epoch, criterion.best) == (1, 0.8)
    assert held == 1


def test_verbose_says_why_and_what_it_restores(capsys):
    criterion = keras_rprop.StopOnGeneralizationLoss(alpha=5.0, verbose=1)
    drive(criterion, val_logs([1.0, 0.8, 0.82, 0.83, 0.85, 0.79]))
    assert capsys.readouterr().out.splitlines() == [
        "Epoch 5: early stopping: generalization loss GL = 6.25 > 5.",
        "Restoring model weights from the end of the best epoch: 2.",
    ]


def test_generalization_loss_from_start_from_epoch():
    # Epochs 0-1 ignored: E_opt = 0.8 from epoch 2; GL(5) = 6.25 > 5.
    criterion = keras_rprop.StopOnGeneralizationLoss(
        alpha=5.0, start_from_epoch=2
    )
    held = drive(criterion, val_logs([0.1, 0.1, 0.8, 0.82, 0.83, 0.85]))
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (5, 2, 2)


def test_progress_quotient_by_hand():
    # k = 2, strip ends at epochs 1, 3, 5:
    # t=1: P = 1000 * (1.5 / 1.0 - 1) = 500, GL = 0: PQ = 0.
    # t=3: P = 1000 * (0.79 / 0.78 - 1) = 12.82, GL = 5: PQ = 0.39.
    # t=5: P = 1000 * (0.769 / 0.768 - 1) = 1.302, GL = 8.33: PQ = 6.4 > 1.
    # At epoch 4, no strip end, GL / P over epochs 3-4 = 6.67 / 6.49 would
    # have been above 1 too.
    criterion = keras_rprop.StopOnProgressQuotient(alpha=1.0, strip_length=2)
    held = drive(
        criterion,
        val_logs(
            [1.0, 0.6, 0.62, 0.63, 0.64, 0.65, 0.66],
            training=[1.0, 0.5, 0.4, 0.39, 0.385, 0.384, 0.3839],
        ),
    )
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (5, 1, 1)


def test_progress_quotient_skips_a_strip_it_did_not_see_whole():
    # k = 3, start_from_epoch=1: the strip of epochs 0-2 is not judged,
    # although its epochs 1-2 alone (P = 0, GL(2) = 25) would stop. The
    # strip of epochs 3-5: P = 1000 * (1.5 / (3 * 0.5) - 1) = 0 with
    # GL(5) = 25: PQ is infinite.
    criterion = keras_rprop.StopOnProgressQuotient(
        alpha=100.0, strip_length=3, start_from_epoch=1
    )
    held = drive(
        criterion,
        val_logs(
            [0.1, 0.8, 1.0, 1.0, 1.0, 1.0],
            training=[9.0, 0.5, 0.5, 0.5, 0.5, 0.5],
        ),
    )
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (5, 1, 1)


def test_successive_increases_by_hand():
    # k = 2, E_va at strip ends 1, 3, 5, 7, 9: 0.5, 0.6 (rise 1), 0.55
    # (fall), 0.7 (rise 1), 0.9 (rise 2): stop after epoch 9. The lowest
    # error, 0.4, is at epoch 4, no strip end.
    criterion = keras_rprop.StopOnValidationIncreases(strips=2, strip_length=2)
    held = drive(
        criterion,
        val_logs([1.0, 0.5, 0.45, 0.6, 0.4, 0.55, 0.5, 0.7, 0.8, 0.9, 1.0]),
    )
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (9, 4, 4)


def test_min_progress_by_hand():
    # k = 2: P(1) = 1000 * (1.5 / 1.0 - 1) = 500, P(3) = 1000 * (0.85 /
    # 0.8 - 1) = 62.5 < 100. The validation error only falls.
    criterion = keras_rprop.StopOnGeneralizationLoss(
        min_progress=100.0, strip_length=2
    )
    held = drive(
        criterion,
        val_logs(
            [0.9, 0.8, 0.7, 0.6, 0.5], training=[1.0, 0.5, 0.45, 0.4, 0.35]
        ),
    )
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (3, 3, 3)


def test_epochs_without_validation_are_skipped_quietly():
    # Validation at epochs 1 and 3 only: GL(3) = 100 * (0.9 / 0.8 - 1).
    logs = [{"loss": 1.0}, {"loss": 1.0, "val_loss": 0.8}] * 2
    logs[3] = {"loss": 1.0, "val_loss": 0.9}
    criterion = keras_rprop.StopOnGeneralizationLoss(alpha=12.0)
    with warnings_about("val_loss") as caught:
        held = drive(criterion, logs)
    assert not caught
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (3, 1, 1)


def test_a_strip_end_without_validation_warns_and_breaks_the_run():
    # k = 2, validation at epochs 1, 2, 3 and 6 only: the run of rises
    # starts again after the strip end at epoch 5.
    values = [None, 0.5, 0.4, 0.6, None, None, 0.7, 0.8]
    logs = [
        {"loss": 1.0} if v is None else {"loss": 1.0, "val_loss": v}
        for v in values
    ]
    criterion = keras_rprop.StopOnValidationIncreases(strips=1, strip_length=2)
    with warnings_about("val_loss") as caught:
        held = drive(criterion, logs)
    assert not caught  # Stopped before that strip end.
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (3, 2, 2)
    criterion = keras_rprop.StopOnValidationIncreases(strips=2, strip_length=2)
    with pytest.warns(UserWarning, match="epoch 6 had no `val_loss`"):
        held = drive(criterion, logs)
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (0, 2, 2)


def test_missing_monitor_warns_as_keras_does():
    criterion = keras_rprop.StopOnGeneralizationLoss(monitor="val_error")
    with pytest.warns(UserWarning) as record:
        drive(criterion, val_logs([1.0, 2.0]))
    messages = [str(w.message) for w in record]
    assert (
        messages.count(
            "Early stopping conditioned on metric `val_error` which is not "
            "available. Available metrics are: loss,val_loss"
        )
        == 2
    )
    assert any("`val_error`, which no epoch's logs held" in m for m in messages)
    assert criterion.best is None
    criterion = keras_rprop.StopOnGeneralizationLoss()
    with pytest.warns(UserWarning, match="no epoch's logs held"):
        held = drive(criterion, [{"loss": 1.0}] * 3)
    assert (criterion.stopped_epoch, held) == (0, 2)


def test_a_non_finite_error_stops_and_restores_the_best():
    criterion = keras_rprop.StopOnValidationIncreases(strips=1)
    held = drive(criterion, val_logs([1.0, 0.5, float("nan"), 0.1]))
    assert (criterion.stopped_epoch, criterion.best_epoch, held) == (2, 1, 1)


def test_a_negative_error_is_refused():
    criterion = keras_rprop.StopOnGeneralizationLoss()
    with pytest.raises(ValueError, match="`val_loss` was -0.5 at epoch 2"):
        drive(criterion, val_logs([1.0, -0.5]))


def test_instances_can_be_reused():
    criterion = keras_rprop.StopOnGeneralizationLoss(alpha=5.0)
    drive(criterion, val_logs([1.0, 0.8, 0.85]))
    held = drive(criterion, val_logs([2.0, 1.0, 1.02]))
    assert (criterion.stopped_epoch, criterion.best, held) == (0, 1.0, 1)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: keras_rprop.StopOnGeneralizationLoss(alpha=-1),
            "Argument `alpha` must be a positive number. Received: alpha=-1",
        ),
        (
            lambda: keras_rprop.StopOnGeneralizationLoss(alpha=float("inf")),
            "Received: alpha=inf",
        ),
        (
            lambda: keras_rprop.StopOnProgressQuotient(alpha="1"),
            "Argument `alpha` must be a positive number. Received: alpha='1'",
        ),
        (
            lambda: keras_rprop.StopOnProgressQuotient(alpha=1, min_progress=0),
            "Argument `min_progress` must be a positive number. "
            "Received: min_progress=0",
        ),
        (
            lambda: keras_rprop.StopOnValidationIncreases(strips=0),
            "Argument `strips` must be a positive integer. Received: strips=0",
        ),
        (
            lambda: keras_rprop.StopOnValidationIncreases(strips=2.0),
            "Received: strips=2.0",
        ),
        (
            lambda: keras_rprop.StopOnProgressQuotient(1, strip_length=True),
            "Argument `strip_length` must be a positive integer. "
            "Received: strip_length=True",
        ),
        (
            lambda: keras_rprop.StopOnGeneralizationLoss(start_from_epoch=-1),
            "Argument `start_from_epoch` must be an integer >= 0. "
            "Received: start_from_epoch=-1",
        ),
        (
            lambda: keras_rprop.StopOnGeneralizationLoss(monitor=None),
            "Argument `monitor` must be the name of a log entry",
        ),
        (
            lambda: keras_rprop.StopOnProgressQuotient(1, training_monitor=""),
            "Received: training_monitor=''",
        ),
        (
            lambda: keras_rprop.StopOnValidationIncreases(
                2, restore_best_weights="yes"
            ),
            "Argument `restore_best_weights` must be True or False",
        ),
        (
            lambda: keras_rprop.StopOnGeneralizationLoss(verbose=2),
            "Argument `verbose` must be 0 .* Received: verbose=2",
        ),
    ],
)
def test_bad_hyper_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()
