"""Fifty full-batch steps of a real Keras model against the NumPy reference."""

import numpy as np
import pytest
from reference import VARIANTS
from reference import make_mlp_params
from reference import make_regression_data
from reference import mlp_loss_and_grads
from reference import train_reference

import keras_rprop
from tests.helpers import NAMED_CLASSES
from tests.helpers import assert_weights_close
from tests.helpers import build_mlp
from tests.helpers import float64_precision
from tests.helpers import full_batch_steps

STEPS = 50


@pytest.fixture
def float64():
    # Sign decisions of tiny gradients must agree with the float64 reference.
    with float64_precision():
        yield


def test_reference_backprop_matches_finite_differences():
    x, y = make_regression_data()
    params = make_mlp_params()
    _, grads = mlp_loss_and_grads(params, x, y)
    eps = 1e-6
    for p, g in zip(params, grads):
        flat, grad_flat = p.reshape(-1), g.reshape(-1)
        for j in range(0, flat.size, 3):
            saved = flat[j]
            flat[j] = saved + eps
            up, _ = mlp_loss_and_grads(params, x, y)
            flat[j] = saved - eps
            down, _ = mlp_loss_and_grads(params, x, y)
            flat[j] = saved
            np.testing.assert_allclose(
                grad_flat[j], (up - down) / (2 * eps), rtol=1e-6, atol=1e-10
            )


@pytest.mark.parametrize("variant", VARIANTS)
def test_hand_loop_matches_reference(float64, variant):
    x, y = make_regression_data()
    params = make_mlp_params()
    expected, expected_losses, rprop = train_reference(
        variant, params, x, y, STEPS
    )

    model = build_mlp(params)
    assert model.trainable_variables[0].dtype == "float64"
    optimizer = keras_rprop.Rprop(variant=variant)
    history, losses = full_batch_steps(model, optimizer, x, y, STEPS)

    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for step in range(STEPS):
        assert_weights_close(
            history[step], expected[step], message=f"{variant} step {step + 1}"
        )
    # The run is long enough to exercise every branch of the rule.
    assert expected_losses[-1] < 0.01 * expected_losses[0]
    assert rprop.sign_changes > 10
    if variant == "irprop+":
        assert rprop.sign_change_steps_loss_rose > 0
        assert rprop.sign_change_steps_loss_not_rose > 0


@pytest.mark.parametrize("variant", ["rprop+", "rprop-", "irprop-"])
def test_fit_matches_reference(float64, variant):
    x, y = make_regression_data()
    params = make_mlp_params()
    expected, _, _ = train_reference(variant, params, x, y, STEPS)

    model = build_mlp(params)
    model.compile(optimizer=keras_rprop.Rprop(variant=variant), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0)
    assert_weights_close(model.get_weights(), expected[-1], message=variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_named_class_matches_reference(float64, variant):
    hyperparameters = dict(
        initial_step=0.05,
        eta_minus=0.4,
        eta_plus=1.3,
        min_step=1e-3,
        max_step=0.2,
    )
    x, y = make_regression_data(seed=3)
    params = make_mlp_params(seed=4)
    expected, _, _ = train_reference(
        variant, params, x, y, 20, **hyperparameters
    )

    model = build_mlp(params)
    optimizer = NAMED_CLASSES[variant](**hyperparameters)
    history, _ = full_batch_steps(model, optimizer, x, y, 20)
    for step in range(20):
        assert_weights_close(
            history[step], expected[step], message=f"{variant} step {step + 1}"
        )
