"""iRprop- against `torch.optim.Rprop`, step for step, in float64.

`torch.optim.Rprop` implements iRprop- (no move and a forgotten gradient on a
sign change), with `lr` as the initial step size. It runs here on every Keras
backend as an independent implementation; the Keras side runs on the active
backend.
"""

import keras
import numpy as np
import pytest
import torch
from keras import ops
from reference import make_mlp_params
from reference import make_regression_data

import keras_rprop
from tests.helpers import assert_weights_close
from tests.helpers import build_mlp
from tests.helpers import float64_precision
from tests.helpers import full_batch_steps

HYPERPARAMETERS = dict(
    initial_step=0.05, eta_minus=0.5, eta_plus=1.2, min_step=1e-6, max_step=50.0
)


def _torch_rprop(params, **hp):
    return torch.optim.Rprop(
        params,
        lr=hp["initial_step"],
        etas=(hp["eta_minus"], hp["eta_plus"]),
        step_sizes=(hp["min_step"], hp["max_step"]),
        foreach=False,
    )


@pytest.fixture
def float64():
    # Sign decisions of tiny gradients must agree with the float64 reference.
    with float64_precision():
        yield


def _torch_mlp_history(params, x, y, steps, **hp):
    """The same MLP written in plain torch, trained by torch.optim.Rprop."""
    weights = [
        torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params
    ]
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.float64)
    optimizer = _torch_rprop(weights, **hp)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        w1, b1, w2, b2 = weights
        prediction = torch.tanh(x @ w1 + b1) @ w2 + b2
        loss = torch.mean((prediction - y) ** 2)
        loss.backward()
        optimizer.step()
        history.append([w.detach().numpy().copy() for w in weights])
    return history


def test_mlp_matches_torch_rprop_step_for_step(float64):
    steps = 50
    x, y = make_regression_data(seed=5)
    params = make_mlp_params(seed=6)
    expected = _torch_mlp_history(params, x, y, steps, **HYPERPARAMETERS)

    model = build_mlp(params)
    optimizer = keras_rprop.IRpropMinus(**HYPERPARAMETERS)
    history, _ = full_batch_steps(
        model, optimizer, x, y, steps, pass_loss=False
    )
    for step in range(steps):
        assert_weights_close(
            history[step], expected[step], message=f"step {step + 1}"
        )


def test_gradient_sequence_matches_torch_rprop(float64):
    """Random gradients with many sign changes, zeros and both step bounds."""
    rng = np.random.default_rng(7)
    hp = dict(
        initial_step=0.01,
        eta_minus=0.3,
        eta_plus=1.5,
        min_step=1e-3,
        max_step=0.05,
    )
    start = rng.normal(size=(4, 5))
    torch_weight = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    torch_optimizer = _torch_rprop([torch_weight], **hp)
    variable = keras.Variable(start, dtype="float64")
    optimizer = keras_rprop.Rprop(variant="irprop-", **hp)
    for step in range(40):
        # Mostly consistent signs (the steps grow to max_step) with random
        # flips (they shrink to min_step) and exact zeros.
        gradient = rng.normal(size=start.shape) + (
            0.8 if step % 10 < 7 else -0.8
        )
        gradient[rng.random(start.shape) < 0.1] = 0.0
        torch_weight.grad = torch.tensor(gradient, dtype=torch.float64)
        torch_optimizer.step()
        optimizer.apply([ops.convert_to_tensor(gradient)], [variable])
        np.testing.assert_allclose(
            ops.convert_to_numpy(variable),
            torch_weight.detach().numpy(),
            rtol=1e-12,
            atol=1e-12,
            err_msg=f"step {step + 1}",
        )
    steps = torch_optimizer.state[torch_weight]["step_size"].numpy()
    assert np.any(steps == hp["max_step"]) and np.any(steps == hp["min_step"])
