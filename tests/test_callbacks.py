"""`keras_rprop.StepSizeLogger` against hand-computed Rprop trajectories.

Model: `Dense(2, use_bias=False)` on the single input 1 with target 0, so
the loss is `(w1**2 + w2**2) / 2` and each weight's gradient is the weight
itself. From w = (0.25, 0.05) with step sizes 0.1, worked by hand:

irprop-: w = (0.15, -0.05) -> (0.03, -0.05) [w2 flips: no move, sign 0]
         -> (-0.114, 0.0) -> (-0.114, 0.0) [w1 flips; w2's gradient is 0,
         which also stores sign 0 but is no flip].
rprop-:  w = (0.15, -0.05) -> (0.03, 0.0) [w2 flips and moves back]
         -> (-0.114, 0.0) [w2's gradient is 0] -> (-0.042, 0.0) [w1 flips].

Step sizes after each epoch, both variants: (0.1, 0.1), (0.12, 0.05),
(0.144, 0.05), (0.072, 0.05).
"""

import keras
import numpy as np
import pytest

import keras_rprop

EXPECTED = {
    "step_size_min": [0.1, 0.05, 0.05, 0.05],
    "step_size_max": [0.1, 0.12, 0.144, 0.072],
    "step_size_median": [0.1, 0.085, 0.097, 0.061],
    "sign_flip_fraction": [0.0, 0.5, 0.0, 0.5],
}
FINAL_WEIGHTS = {"irprop-": [-0.114, 0.0], "rprop-": [-0.042, 0.0]}


def fit_two_weights(variant, callbacks, epochs=4):
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(2, use_bias=False)]
    )
    model.set_weights([np.array([[0.25, 0.05]], "float32")])
    model.compile(optimizer=keras_rprop.Rprop(variant), loss="mse")
    x = np.ones((1, 1), "float32")
    y = np.zeros((1, 2), "float32")
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=epochs, callbacks=callbacks, verbose=0
    )
    return model, history


@pytest.mark.parametrize("variant", ["irprop-", "rprop-"])
def test_logs_match_the_hand_computed_trajectory(variant):
    model, history = fit_two_weights(variant, [keras_rprop.StepSizeLogger()])
    np.testing.assert_allclose(
        model.get_weights()[0][0], FINAL_WEIGHTS[variant], atol=1e-6
    )
    for key, expected in EXPECTED.items():
        np.testing.assert_allclose(
            history.history[key], expected, rtol=1e-6, err_msg=key
        )


def test_prefix_and_later_callbacks_see_the_logs():
    seen = []
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(dict(logs))
    )
    _, history = fit_two_weights(
        "irprop-", [keras_rprop.StepSizeLogger(prefix="rprop/"), recorder]
    )
    assert [logs["rprop/sign_flip_fraction"] for logs in seen] == (
        EXPECTED["sign_flip_fraction"]
    )
    assert "rprop/step_size_max" in history.history


def test_rejects_other_optimizers_and_bad_prefix():
    with pytest.raises(ValueError, match="prefix"):
        keras_rprop.StepSizeLogger(prefix=3)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="Rprop"):
        model.fit(
            np.ones((2, 1)),
            np.ones((2, 1)),
            callbacks=[keras_rprop.StepSizeLogger()],
            verbose=0,
        )
