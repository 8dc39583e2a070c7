"""How `keras-rprop compare` trains: Keras optimizers, L-BFGS and LM."""

import dataclasses

import keras
import numpy as np
import pytest
from scipy import optimize

from keras_rprop.compare import autodiff
from keras_rprop.compare import plot
from keras_rprop.compare import problems
from keras_rprop.compare import runner
from keras_rprop.compare import scipy_solvers
from keras_rprop.compare import trainers
from tests import reference

# Diabetes is the network of `tests/reference.py`: tanh hidden layer, linear
# output, mean squared error.
DIABETES = problems.PROBLEMS["diabetes"]


@pytest.fixture(scope="module")
def diabetes():
    data = DIABETES.load()
    x, y = data.x_train.astype("float64"), data.y_train.astype("float64")
    return data, x, y


def _initial(data, seed=0):
    model = DIABETES.build_model(data, seed)
    return model, model.get_weights()


# -- Keras optimizers, through fit_full_batch and model.fit --------------------


def test_full_batch_rprop_follows_the_reference(diabetes):
    """iRprop+ through `fit_full_batch` against the float64 NumPy oracle."""
    data, x, y = diabetes
    _, weights = _initial(data, seed=3)
    result = next(runner.run_seeds(DIABETES, "irprop+", [3], epochs=6))
    _, losses, _ = reference.train_reference(
        "irprop+", [w.astype("float64") for w in weights], x, y, steps=6
    )
    np.testing.assert_allclose(result.losses[:6], losses, rtol=1e-4)
    np.testing.assert_array_equal(
        result.gradient_evaluations, [1, 2, 3, 4, 5, 6, 6]
    )
    np.testing.assert_array_equal(result.loss_evaluations, np.arange(1, 8))
    assert np.all(np.diff(result.times) >= 0) and result.times[0] > 0


def test_seeds_share_a_trainer_without_sharing_state():
    """A reset trainer gives the same run as a fresh one."""
    shared = list(runner.run_seeds("encoder", "irprop+", [0, 1], epochs=6))
    fresh = list(runner.run_seeds("encoder", "irprop+", [1], epochs=6))
    np.testing.assert_allclose(shared[1].losses, fresh[0].losses, rtol=1e-6)
    assert not np.allclose(shared[0].losses, shared[1].losses)


def _torch_threads():
    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.get_num_threads()


def test_mini_batches_cover_the_training_set_every_epoch():
    problem = problems.PROBLEMS["wine"]
    data = problem.load()
    model = problem.build_model(data, seed=0)
    spec = runner.get_optimizer("adam-mb32")
    trainer = trainers.make_trainer(model, spec, problem, data)
    threads = _torch_threads()
    curve = trainer.run(model.get_weights(), epochs=2)
    # PyTorch trains on one thread, then gets its thread count back.
    assert _torch_threads() == threads
    # 124 samples: 3 batches of 32 and one of 28 per epoch.
    assert int(keras.ops.convert_to_numpy(trainer.optimizer.iterations)) == 8
    losses = curve.losses
    assert curve.gradient_evaluations == [0, 1, 2]
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]
    logits = keras.ops.convert_to_numpy(model(data.x_train)).astype("float64")
    log_probabilities = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(log_probabilities[np.arange(len(logits)), data.y_train])
    assert losses[-1] == pytest.approx(expected, rel=1e-4)


# -- Which optimizer applies where ---------------------------------------------


def test_lm_and_small_mini_batches_are_skipped_with_a_note():
    (lm,) = runner.run_seeds("encoder", "lm", [0, 1], epochs=3)
    assert lm.seed is None and lm.losses.size == 0
    assert "needs a squared-error loss" in lm.skipped
    assert "BinaryCrossentropy" in lm.skipped
    (mini,) = runner.run_seeds("encoder", "adam-mb32", [0], epochs=3)
    assert "10 training samples" in mini.skipped
    data = DIABETES.load()
    assert runner.get_optimizer("lm").skip_reason(DIABETES, data) is None
    # 309 residuals and 11 * 40 + 41 = 481 weights.
    wide = dataclasses.replace(DIABETES, hidden=(40,))
    assert "309" in runner.get_optimizer("lm").skip_reason(wide, data)
    assert "481" in runner.get_optimizer("lm").skip_reason(wide, data)


# -- SciPy: loss, gradient, residuals and Jacobian from the Keras model --


def test_loss_and_gradient_match_the_reference(diabetes):
    data, x, y = diabetes
    model, weights = _initial(data)
    function, flat = autodiff.loss_and_gradient_function(
        model, DIABETES.make_loss(), data.x_train, data.y_train
    )
    vector = flat.get()
    np.testing.assert_array_equal(vector, flat.flatten(weights))
    loss, gradient = function(vector)
    expected_loss, expected = reference.mlp_loss_and_grads(weights, x, y)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(
        gradient, flat.flatten(expected), rtol=1e-3, atol=1e-6
    )
    # The model's variables are untouched.
    np.testing.assert_array_equal(model.get_weights()[0], weights[0])


def test_jacobian_matches_finite_differences_of_the_reference(diabetes):
    data, x, y = diabetes
    model, weights = _initial(data)
    residuals, jacobian, flat = autodiff.residual_and_jacobian_functions(
        model, data.x_train, data.y_train
    )
    vector = flat.get()
    params = flat.unflatten(vector)
    sizes = flat.sizes

    def numpy_residuals(v):
        pieces = np.split(v, np.cumsum(sizes)[:-1])
        params = [p.reshape(w.shape) for p, w in zip(pieces, weights)]
        return (reference.mlp_forward(params, x)[0] - y).reshape(-1)

    assert len(params) == 4
    np.testing.assert_allclose(
        residuals(vector), numpy_residuals(vector), rtol=1e-5, atol=1e-6
    )
    step = 1e-6
    columns = [0, 7, 160, 170, 180, 192]
    expected = np.stack(
        [
            (
                numpy_residuals(vector + step * np.eye(flat.size)[j])
                - numpy_residuals(vector - step * np.eye(flat.size)[j])
            )
            / (2 * step)
            for j in columns
        ],
        axis=1,
    )
    matrix = jacobian(vector)
    assert matrix.shape == (len(x), flat.size)
    np.testing.assert_allclose(matrix[:, columns], expected, atol=1e-5)


def test_lbfgs_records_scipys_counts_and_follows_scipy_on_numpy(diabetes):
    data, x, y = diabetes
    model, weights = _initial(data)
    function, flat = autodiff.loss_and_gradient_function(
        model, DIABETES.make_loss(), data.x_train, data.y_train
    )
    x0 = flat.get()
    result, curve = scipy_solvers.minimize_lbfgs(function, x0, 8)
    assert curve.loss_evaluations[-1] == result.nfev == result.njev
    assert curve.gradient_evaluations == curve.loss_evaluations
    assert len(curve.losses) == result.nit + 1
    assert curve.losses[-1] == pytest.approx(result.fun)
    assert curve.loss_evaluations[0] == 1

    # SciPy on the float64 NumPy network from the same start.
    def numpy_function(v):
        pieces = np.split(v, np.cumsum(flat.sizes)[:-1])
        params = [p.reshape(w.shape) for p, w in zip(pieces, weights)]
        loss, grads = reference.mlp_loss_and_grads(params, x, y)
        return loss, flat.flatten(grads)

    losses = [numpy_function(x0)[0]]
    optimize.minimize(
        numpy_function,
        x0,
        jac=True,
        method="L-BFGS-B",
        callback=lambda intermediate_result: losses.append(
            intermediate_result.fun
        ),
        options={"maxiter": 4},
    )
    # float32 against float64: the first iterations agree.
    np.testing.assert_allclose(curve.losses[:4], losses[:4], rtol=1e-3)


def test_lm_records_scipys_counts_and_its_iterates(diabetes):
    data, _, _ = diabetes
    model, _ = _initial(data)
    residuals, jacobian, flat = autodiff.residual_and_jacobian_functions(
        model, data.x_train, data.y_train
    )
    calls = {"fun": 0, "jac": 0}

    def counted(name, fn):
        def wrapped(v):
            calls[name] += 1
            return fn(v)

        return wrapped

    result, curve = scipy_solvers.least_squares_lm(
        counted("fun", residuals), counted("jac", jacobian), flat.get(), 12
    )
    assert curve.loss_evaluations[-1] == calls["fun"] == result.nfev
    # SciPy evaluates the Jacobian once more at the solution it returns.
    assert curve.gradient_evaluations[-1] == calls["jac"] == result.njev + 1
    # Levenberg-Marquardt only accepts steps that lower the loss.
    assert np.all(np.diff(curve.losses) < 0)
    assert curve.losses[0] == pytest.approx(np.mean(residuals(flat.get()) ** 2))
    assert curve.losses[-1] == pytest.approx(np.mean(result.fun**2))
    # The model holds the trained weights only when a trainer sets them.
    trainer = trainers.LevenbergMarquardtTrainer(model, data)
    curve = trainer.run(model.get_weights(), epochs=5)
    predictions = keras.ops.convert_to_numpy(model(data.x_train))
    assert curve.losses[-1] == pytest.approx(
        np.mean((predictions - data.y_train) ** 2), rel=1e-4
    )


# -- The figure --


def _fake_result(optimizer, losses, seed=0):
    losses = np.asarray(losses, "float64")
    steps = np.arange(1, len(losses) + 1, dtype="float64")
    return runner.RunResult(
        problem="encoder",
        optimizer=optimizer,
        seed=seed,
        backend="test",
        epochs=len(losses) - 1,
        batch_size=None,
        losses=losses,
        loss_evaluations=steps,
        gradient_evaluations=2 * steps,
        times=0.1 * steps,
        epochs_to_target=None,
        evaluations_to_target=None,
        seconds_to_target=None,
        final_loss=float(losses[-1]),
        test_metric=1.0,
        wall_time=1.0,
    )


@pytest.mark.parametrize("x_axis", plot.X_AXES)
def test_plot_shows_the_lowest_loss_and_tells_lines_apart(x_axis):
    results = [
        _fake_result("irprop+", np.geomspace(0.7, 5e-9, 300)),
        _fake_result("irprop-", np.geomspace(0.7, 5e-9, 300)),
        _fake_result("lbfgs", [0.7, 0.1, 1e-3]),
    ]
    figure = plot.loss_curves_figure(results, x_axis=x_axis)
    axes = figure.axes[0]
    assert axes.get_ylim()[0] <= 5e-9
    names = ("irprop+", "irprop-", "lbfgs")
    lines = [line for line in axes.get_lines() if line.get_label() in names]
    styles = {
        (line.get_color(), line.get_linestyle(), line.get_marker())
        for line in lines
    }
    assert len(lines) == len(styles) == 3
    # The shorter curve keeps its last loss to the end of the axis.
    lbfgs = next(line for line in lines if line.get_label() == "lbfgs")
    assert lbfgs.get_ydata()[-1] == pytest.approx(1e-3)


def test_step_values():
    grid = np.array([0.0, 0.5, 1.0, 2.5, 9.0])
    values = plot.step_values(np.array([0.5, 1.0, 2.0]), [3.0, 2.0, 1.0], grid)
    np.testing.assert_array_equal(values, [np.nan, 3.0, 2.0, 1.0, 1.0])
