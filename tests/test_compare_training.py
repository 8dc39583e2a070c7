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


def _numpy_jacobian(params, x, outputs):
    """The residuals' Jacobian of the tanh MLP, derived by hand.

    Row `i * outputs + j` holds the derivatives of output `j` of sample `i`
    with respect to `[W1, b1, W2, b2]`, flattened in that order.
    """
    w1, _, w2, _ = params
    _, hidden = reference.mlp_forward(params, x)
    slope = 1.0 - hidden**2
    rows = []
    for i in range(len(x)):
        for j in range(outputs):
            d_hidden = slope[i] * w2[:, j]
            unit = np.eye(outputs)[j]
            rows.append(
                np.concatenate(
                    [
                        np.outer(x[i], d_hidden).ravel(),
                        d_hidden,
                        np.outer(hidden[i], unit).ravel(),
                        unit,
                    ]
                )
            )
    return np.stack(rows)


def test_jacobian_of_several_outputs_matches_the_hand_derivation():
    """Rows ordered sample by sample, then output by output."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (7, 3)).astype("float32")
    y = rng.uniform(-1, 1, (7, 2)).astype("float32")
    data = problems.Dataset(x, y, x, y)
    problem = dataclasses.replace(DIABETES, name="two-outputs", hidden=(5,))
    model = problem.build_model(data, seed=1)
    residuals, jacobian, flat = autodiff.residual_and_jacobian_functions(
        model, x, y
    )
    params = [w.astype("float64") for w in model.get_weights()]
    vector = flat.get()
    expected = _numpy_jacobian(params, x.astype("float64"), outputs=2)
    matrix = jacobian(vector)
    assert matrix.shape == (14, flat.size) == expected.shape
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-6)
    prediction, _ = reference.mlp_forward(params, x.astype("float64"))
    np.testing.assert_allclose(
        residuals(vector), (prediction - y).reshape(-1), atol=1e-6
    )


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


# -- The curve fit, where Levenberg-Marquardt wins --

SINC = problems.PROBLEMS["sinc"]


def test_sinc_jacobian_matches_the_hand_derivation():
    data = SINC.load()
    model = SINC.build_model(data, seed=0)
    _, jacobian, flat = autodiff.residual_and_jacobian_functions(
        model, data.x_train, data.y_train
    )
    params = [w.astype("float64") for w in model.get_weights()]
    expected = _numpy_jacobian(params, data.x_train.astype("float64"), 1)
    assert flat.size == 61
    np.testing.assert_allclose(
        jacobian(flat.get()), expected, rtol=1e-5, atol=1e-6
    )


def test_lm_fits_the_curve_that_rprop_does_not_in_as_many_steps():
    """A short run: LM's first 60 residual evaluations against 60 epochs."""
    (lm,) = runner.run_seeds(SINC, "lm", [0], epochs=60)
    (rprop,) = runner.run_seeds(SINC, "irprop-", [0], epochs=60)
    data = SINC.load()
    # The curve's variance is what predicting its mean would leave.
    variance = float(np.var(data.y_train.astype("float64")))
    assert lm.losses[0] == pytest.approx(rprop.losses[0], rel=1e-5)
    assert lm.final_loss < 0.05 * variance
    assert lm.final_loss < 0.2 * rprop.final_loss
    # The test RMSE is that of the trained model on the points in between.
    assert lm.test_metric < 2 * np.sqrt(lm.final_loss)


def test_mini_batches_get_the_problems_own_budget():
    assert SINC.epoch_budget() == SINC.epochs
    assert SINC.epoch_budget(mini_batch=True) == SINC.mini_batch_epochs
    assert SINC.mini_batch_epochs < SINC.epochs
    assert DIABETES.epoch_budget(mini_batch=True) == DIABETES.epochs
    tiny = dataclasses.replace(
        SINC, name="tiny-sinc", epochs=3, mini_batch_epochs=1
    )
    results = runner.run_comparison(
        [tiny], ["adam-mb32", "sgd"], seeds=1, log=None
    )
    assert [r.epochs for r in results] == [1, 3]
    assert [len(r.losses) for r in results] == [2, 4]
    # A budget given for the whole run applies to every optimizer.
    results = runner.run_comparison(
        [tiny], ["adam-mb32", "sgd"], seeds=1, epochs=2, log=None
    )
    assert [r.epochs for r in results] == [2, 2]


# -- The figure --


def _fake_result(optimizer, losses, seed=0, problem="encoder"):
    losses = np.asarray(losses, "float64")
    steps = np.arange(1, len(losses) + 1, dtype="float64")
    return runner.RunResult(
        problem=problem,
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


def _lines(axes):
    return {
        line.get_label(): line
        for line in axes.get_lines()
        if not line.get_label().startswith("_")
    }


@pytest.mark.parametrize("x_axis", plot.X_AXES)
def test_plot_reaches_down_to_every_run_and_ends_stopped_solvers(x_axis):
    results = [
        _fake_result("irprop+", np.geomspace(0.7, 5e-9, 300)),
        _fake_result("irprop-", np.geomspace(0.7, 1e-3, 300), seed=0),
        # Out of the band and the median, but the axis still reaches it.
        _fake_result("irprop-", np.geomspace(0.7, 2e-11, 300), seed=1),
        _fake_result("irprop-", np.geomspace(0.7, 1e-4, 300), seed=2),
        _fake_result("sgd", np.geomspace(0.7, 1e-2, 300)),
        _fake_result("lbfgs", [0.7, 0.1, 1e-3]),
    ]
    figure = plot.loss_curves_figure(results, x_axis=x_axis, bands=())
    (axes,) = figure.axes
    lines = _lines(axes)
    drawn = np.concatenate([line.get_ydata() for line in lines.values()])
    assert axes.get_ylim()[0] <= 2e-11 < np.nanmin(drawn)
    assert axes.get_yscale() == "log"
    # The L-BFGS line ends at its last iteration, with its last loss.
    lbfgs = lines["lbfgs"]
    assert lbfgs.get_xdata()[-1] == pytest.approx(
        plot.curve_x(results[-1], x_axis)[-1]
    )
    assert lbfgs.get_ydata()[-1] == pytest.approx(1e-3)
    assert axes.get_xlim()[1] > 10 * lbfgs.get_xdata()[-1]
    # The median of three seeds: the middle one's final loss.
    assert lines["irprop-"].get_ydata()[-1] == pytest.approx(1e-4)
    assert (axes.get_xscale() == "log") == (x_axis == "seconds")


def test_plot_median_line_ends_at_the_median_runs_end():
    results = [
        _fake_result("lm", np.geomspace(1.0, 1e-6, length), seed=seed)
        for seed, length in enumerate([5, 9, 20])
    ]
    figure = plot.loss_curves_figure(results, x_axis="epochs", bands=("lm",))
    (axes,) = figure.axes
    line = _lines(axes)["lm"]
    assert line.get_xdata()[-1] == 8
    assert len(axes.collections) == 1
    band = axes.collections[0].get_paths()[0].vertices
    # The band reaches the longest run's end.
    assert band[:, 0].max() == pytest.approx(19)
    assert band[:, 1].min() == pytest.approx(1e-6)


def test_plot_styles_tell_every_variant_apart_in_color_families():
    names = list(runner.OPTIMIZERS)
    results = [_fake_result(name, [0.7, 0.5, 0.4]) for name in names]
    figure = plot.loss_curves_figure(results, x_axis="evaluations")
    lines = _lines(figure.axes[0])
    assert list(lines) == names
    styles = {
        (line.get_color(), line.get_linestyle(), line.get_marker())
        for line in lines.values()
    }
    assert len(styles) == len({line.get_marker() for line in lines.values()})
    assert len(styles) == len(names)
    variants = ["rprop+", "rprop-", "irprop+", "irprop-"]
    # Lines of the Rprop variants often coincide: each has its own line
    # style as well as its own marker.
    assert len({lines[name].get_linestyle() for name in variants}) == 4
    from matplotlib.colors import to_rgb

    def family(name):
        red, green, blue = to_rgb(lines[name].get_color())
        return max((blue, "blue"), (red, "red"), (green, "green"))[1]

    assert {family(name) for name in variants} == {"blue"}
    assert {family(name) for name in ("adam", "sgd", "adam-mb32")} == {"red"}
    assert {family(name) for name in ("lbfgs", "lm")} == {"green"}


def test_plot_rows_per_x_axis_say_what_they_count():
    results = [
        _fake_result(name, [0.7, 0.5, 0.4], problem=problem)
        for problem in ("encoder", "diabetes")
        for name in ("irprop-", "adam-mb32", "lm")
    ]
    figure = plot.loss_curves_figure(results, x_axis=["evaluations", "seconds"])
    axes = [a for a in figure.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["encoder", "diabetes"] * 2
    evaluations, seconds = axes[0].get_xlabel(), axes[2].get_xlabel()
    assert evaluations.startswith("gradient evaluations on the training set")
    assert "adam-mb32: passes" in evaluations
    assert "lm: Jacobian evaluations" in evaluations
    assert seconds.startswith("seconds")
    assert "iterations" in plot.x_label("epochs", ["irprop-", "lbfgs"])
    assert plot.x_label("evaluations", ["irprop-"]) == (
        "gradient evaluations on the training set"
    )
    with pytest.raises(ValueError, match="`x_axis`.*'steps'"):
        plot.loss_curves_figure(results, x_axis=["seconds", "steps"])


def test_results_json_round_trip(tmp_path):
    from keras_rprop.compare import report

    results = [
        _fake_result("irprop-", [0.7, 0.1, float("nan")]),
        _fake_result("lbfgs", [0.7, 0.1]),
    ]
    path = str(tmp_path / "results.json")
    report.write_json(results, path)
    again = report.read_json(path)
    assert [r.optimizer for r in again] == ["irprop-", "lbfgs"]
    np.testing.assert_array_equal(again[0].losses, results[0].losses)
    np.testing.assert_array_equal(again[1].times, results[1].times)
    assert report.format_report(again) == report.format_report(results)


def test_step_values():
    grid = np.array([0.0, 0.5, 1.0, 2.5, 9.0])
    values = plot.step_values(np.array([0.5, 1.0, 2.0]), [3.0, 2.0, 1.0], grid)
    np.testing.assert_array_equal(values, [np.nan, 3.0, 2.0, 1.0, 1.0])
