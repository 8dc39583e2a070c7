"""`keras_rprop.enable_loss`: iRprop+ inside `model.fit`.

The reference is the float64 NumPy iRprop+ of `tests/reference.py`, on a
linear least-squares model whose gradient is written out by hand, with an L2
penalty so that the loss the optimizer must see includes a regularization
term.
"""

import keras
import numpy as np
import pytest

import keras_rprop
from tests.reference import ReferenceRprop

L2 = 0.3
STEPS = 20


def reference_irprop_plus(x, y, w, b, steps, reg_in_loss=True):
    """iRprop+ on `mean((x @ w + b - y) ** 2) + L2 * sum(w ** 2)`.

    Returns the final `[w, b]`, the `ReferenceRprop` (which counts the
    steps that reverted moves) and the loss of every step.
    """
    x, y = x.astype(np.float64), y.astype(np.float64)
    params = [w.astype(np.float64), b.astype(np.float64)]
    rprop = ReferenceRprop("irprop+", [p.shape for p in params])
    losses = []
    for _ in range(steps):
        w, b = params
        residual = x @ w + b - y
        penalty = L2 * np.sum(w**2)
        losses.append(np.mean(residual**2) + penalty)
        grads = [
            2.0 / len(x) * x.T @ residual + 2.0 * L2 * w,
            2.0 / len(x) * residual.sum(axis=0),
        ]
        loss = losses[-1] if reg_in_loss else losses[-1] - penalty
        params = rprop.step(params, grads, loss=loss)
    return params, rprop, losses


def make_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    y = (y + 0.1 * rng.normal(size=(16, 1))).astype("float32")
    w = (0.1 * rng.normal(size=(3, 1))).astype("float32")
    b = np.zeros(1, "float32")
    return x, y, w, b


class LinearModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(
            1, kernel_regularizer=keras.regularizers.L2(L2)
        )

    def call(self, inputs):
        return self.dense(inputs)


def make_model(kind):
    dense = keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L2(L2))
    if kind == "sequential":
        model = keras.Sequential([keras.Input((3,)), dense])
    elif kind == "functional":
        inputs = keras.Input((3,))
        model = keras.Model(inputs, dense(inputs))
    else:
        model = LinearModel()
        model(np.zeros((1, 3), "float32"))
    return model


def fit_irprop_plus(kind, optimizer=None, run_eagerly=False):
    x, y, w, b = make_data()
    model = make_model(kind)
    model.set_weights([w, b])
    model.compile(
        optimizer=optimizer or keras_rprop.Rprop("irprop+"),
        loss="mse",
        run_eagerly=run_eagerly,
    )
    assert keras_rprop.enable_loss(model) is model
    history = model.fit(
        x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0
    )
    return model, history


def test_reference_needs_the_regularization_loss():
    # Guards the test below: with the penalty left out of the loss, iRprop+
    # makes different decisions on this problem.
    x, y, w, b = make_data()
    with_penalty, rprop, _ = reference_irprop_plus(x, y, w, b, STEPS)
    without, _, _ = reference_irprop_plus(x, y, w, b, STEPS, reg_in_loss=False)
    assert rprop.sign_change_steps_loss_rose > 0
    assert np.abs(with_penalty[0] - without[0]).max() > 1e-3


@pytest.mark.parametrize(
    "kind, run_eagerly",
    [
        ("sequential", False),
        ("functional", False),
        ("subclassed", False),
        ("subclassed", True),
    ],
)
def test_fit_matches_reference(kind, run_eagerly):
    x, y, w, b = make_data()
    expected, _, losses = reference_irprop_plus(x, y, w, b, STEPS)
    model, history = fit_irprop_plus(kind, run_eagerly=run_eagerly)
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-5)


def test_loss_scale_optimizer_passes_the_unscaled_loss():
    x, y, w, b = make_data()
    expected, _, losses = reference_irprop_plus(x, y, w, b, STEPS)
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras_rprop.Rprop("irprop+"), initial_scale=2.0**10
    )
    model, _ = fit_irprop_plus("functional", optimizer=optimizer)
    np.testing.assert_allclose(
        model.get_weights()[0], expected[0], rtol=1e-5, atol=1e-6
    )
    inner = model.optimizer.inner_optimizer
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(inner._current_loss), losses[-1], rtol=1e-5
    )
    # The loss is handed over only for the duration of a step.
    assert "apply" not in inner.__dict__


def test_mixed_float16_reaches_the_inner_optimizer():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model, history = fit_irprop_plus("sequential")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    current = keras.ops.convert_to_numpy(
        model.optimizer.inner_optimizer._current_loss
    )
    # The last step's loss, not the loss times the scale (2 ** 15).
    np.testing.assert_allclose(current, history.history["loss"][-1], rtol=1e-2)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_irprop_plus_without_enable_loss_says_how_to_fix_it():
    x, y, _, _ = make_data()
    model = make_model("sequential")
    model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    with pytest.raises(ValueError, match="enable_loss"):
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)


@pytest.mark.parametrize("kind", ["sequential", "subclassed"])
def test_fit_after_the_missing_loss_error_trains_as_if_it_never_happened(
    kind,
):
    # The error comes before the first step, so the model keeps its weights
    # and, once `enable_loss` is called, trains as a fresh one.
    x, y, w, b = make_data()
    model = make_model(kind)
    model.set_weights([w, b])
    model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    with pytest.raises(ValueError, match="enable_loss"):
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], w)
    keras_rprop.enable_loss(model)
    history = model.fit(
        x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0
    )
    expected, expected_history = fit_irprop_plus(kind)
    for got, want in zip(
        model.get_weights(), expected.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        history.history["loss"], expected_history.history["loss"]
    )


def test_other_variants_train_the_same_with_and_without_enable_loss():
    x, y, w, b = make_data()
    weights = []
    for enable in (False, True):
        model = make_model("sequential")
        model.set_weights([w, b])
        model.compile(optimizer=keras_rprop.Rprop("rprop+"), loss="mse")
        if enable:
            keras_rprop.enable_loss(model)
        model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0)
        weights.append(model.get_weights()[0])
    np.testing.assert_array_equal(weights[0], weights[1])


class OwnTrainStep(keras.Model):
    def train_step(self, *args):
        raise NotImplementedError


def test_enable_loss_rejects_what_it_cannot_serve():
    with pytest.raises(ValueError, match="model"):
        keras_rprop.enable_loss("not a model")
    model = make_model("sequential")
    with pytest.raises(ValueError, match="compiled"):
        keras_rprop.enable_loss(model)
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="optimizer"):
        keras_rprop.enable_loss(model)
    inputs = keras.Input((3,))
    own = OwnTrainStep(inputs, keras.layers.Dense(1)(inputs))
    own.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    with pytest.raises(
        ValueError, match="`OwnTrainStep` overrides `train_step`"
    ):
        keras_rprop.enable_loss(own)


def test_enabled_model_still_saves_and_loads(tmp_path):
    model, _ = fit_irprop_plus("functional")
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, keras_rprop.Rprop)
    np.testing.assert_array_equal(
        restored.get_weights()[0], model.get_weights()[0]
    )


def test_eager_apply_then_fit_continues_training():
    """An eager `apply` before `fit` leaves no state buffers shared.

    On JAX an eager assign of one variable's value to another makes both hold
    one array, and the trainer, which donates the optimizer state to its
    compiled step, then fails with "donate the same buffer twice".
    """
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    keras_rprop.enable_loss(model)
    ones = [keras.ops.ones(v.shape) for v in model.trainable_variables]
    model.optimizer.apply(ones, model.trainable_variables, loss=1.0)
    history = model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
    assert len(history.history["loss"]) == 3
    assert int(model.optimizer.iterations) == 4
    kernel = keras.ops.convert_to_numpy(model.trainable_variables[0])
    assert np.all(np.isfinite(kernel))
