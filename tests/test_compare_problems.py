"""The benchmark problems of `keras-rprop compare`: data, networks, metrics."""

import dataclasses
import itertools
import math

import keras
import numpy as np
import pytest

from keras_rprop.compare import problems
from keras_rprop.compare import runner

ALL = sorted(problems.PROBLEMS)


@pytest.fixture(scope="module")
def datasets():
    return {name: problems.PROBLEMS[name].load() for name in ALL}


def test_default_problems_are_registered():
    assert set(problems.DEFAULT_PROBLEMS) <= set(problems.PROBLEMS)
    assert {
        "encoder",
        "parity",
        "two-spirals",
        "breast-cancer",
        "wine",
        "digits",
        "diabetes",
        "sinc",
    } <= set(problems.PROBLEMS)
    assert "sinc" in problems.DEFAULT_PROBLEMS


def test_data_shapes_and_dtypes(datasets):
    for name in ALL:
        _check_data(problems.PROBLEMS[name], datasets[name])


def _check_data(problem, data):
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.ndim == 2 and x.dtype == np.float32
        assert len(x) == len(y) > 0
        assert np.all(np.isfinite(x))
        if problem.task == problems.MULTICLASS:
            assert y.ndim == 1 and y.dtype == np.int32
        else:
            assert y.ndim == 2 and y.dtype == np.float32
    assert data.x_train.shape[1] == data.x_test.shape[1]
    if problem.task == problems.BINARY:
        assert set(np.unique(data.y_train)) == {0.0, 1.0}
    assert problem.target_loss > 0 and problem.epochs > 0


def test_data_is_the_same_on_every_load(datasets):
    for name in ALL:
        again = problems.PROBLEMS[name].load()
        for field in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(
                getattr(again, field), getattr(datasets[name], field)
            )


def test_encoder_patterns_are_the_identity():
    data = problems.encoder_data(10)
    np.testing.assert_array_equal(data.x_train, np.eye(10))
    np.testing.assert_array_equal(data.y_train, np.eye(10))


def test_parity_targets():
    data = problems.parity_data(4)
    expected = {
        tuple(2 * np.array(bits) - 1): sum(bits) % 2
        for bits in itertools.product((0, 1), repeat=4)
    }
    assert len(data.x_train) == 16
    got = {
        tuple(x.astype(int)): int(y[0])
        for x, y in zip(data.x_train, data.y_train)
    }
    assert got == expected


def test_two_spirals_geometry():
    data = problems.two_spirals_data()
    assert data.x_train.shape == (194, 2) and data.x_test.shape == (192, 2)
    # Point 0 of the first spiral: angle 0, radius 6.5 (scaled to 1).
    np.testing.assert_allclose(data.x_train[0], [0.0, 1.0], atol=1e-7)
    assert data.y_train[0, 0] == 1.0
    # The second spiral is the first one rotated by 180 degrees.
    np.testing.assert_allclose(data.x_train[97:], -data.x_train[:97])
    assert data.y_train[:97].sum() == 97 and data.y_train[97:].sum() == 0
    # Radii shrink from 1 to 6.5 * 8 / 104 / 6.5.
    radius = np.linalg.norm(data.x_train[:97], axis=1)
    np.testing.assert_allclose(radius, (104 - np.arange(97)) / 104, rtol=1e-6)


def test_sinc_curve_by_hand():
    data = problems.PROBLEMS["sinc"].load()
    assert data.x_train.shape == data.y_train.shape == (1000, 1)
    assert data.x_test.shape == data.y_test.shape == (999, 1)
    x = data.x_train[:, 0].astype("float64")
    assert x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_allclose(np.diff(x), 2 / 999, rtol=1e-4)
    # The test points lie halfway between the training points.
    np.testing.assert_allclose(
        data.x_test[:, 0], (x[:-1] + x[1:]) / 2, atol=1e-7
    )
    for inputs, targets in (
        (data.x_train, data.y_train),
        (data.x_test, data.y_test),
    ):
        expected = [
            math.sin(10 * math.pi * v) / (10 * math.pi * v)
            for v in inputs[:, 0].astype("float64")
        ]
        np.testing.assert_allclose(targets[:, 0], expected, atol=1e-6)
    # Its zeros, at x = k / 10, and its peak at x = 0.
    small = problems.sinc_data(21)
    np.testing.assert_allclose(small.x_train[:, 0], np.arange(-10, 11) / 10)
    expected = np.zeros(21)
    expected[10] = 1.0
    np.testing.assert_allclose(small.y_train[:, 0], expected, atol=1e-6)
    model = problems.PROBLEMS["sinc"].build_model(data, seed=0)
    assert model.count_params() == 61


@pytest.mark.parametrize("points", [1, 2.5, True, "100"])
def test_sinc_data_rejects_bad_sizes(points):
    with pytest.raises(ValueError, match=f"`points`.*{points!r}"):
        problems.sinc_data(points)


@pytest.mark.parametrize(
    "name, n_train, n_test, n_features",
    [
        ("breast-cancer", 398, 171, 30),
        ("wine", 124, 54, 13),
        ("digits", 1257, 540, 64),
        ("diabetes", 309, 133, 10),
    ],
)
def test_sklearn_sets_split_and_standardized(
    name, n_train, n_test, n_features, datasets
):
    data = datasets[name]
    assert data.x_train.shape == (n_train, n_features)
    assert data.x_test.shape == (n_test, n_features)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    std = data.x_train.std(axis=0)
    # Digits has pixels that are always 0 in training; they stay at 0.
    np.testing.assert_allclose(std[std > 0], 1, rtol=1e-4)


def test_diabetes_target_scale():
    from sklearn.datasets import load_diabetes

    data = problems.PROBLEMS["diabetes"].load()
    _, y = load_diabetes(return_X_y=True)
    np.testing.assert_allclose(data.y_train.mean(), 0, atol=1e-6)
    np.testing.assert_allclose(data.y_train.std(), 1, rtol=1e-5)
    # The scale is the deviation of the training targets in original units.
    assert 0.8 * y.std() < data.y_scale < 1.2 * y.std()


def test_model_shapes(datasets):
    units = {"wine": 3, "digits": 10, "encoder": 10}
    for name in ALL:
        problem, data = problems.PROBLEMS[name], datasets[name]
        model = problem.build_model(data, seed=0)
        assert model.output_shape == (None, units.get(name, 1)), name
        hidden = [layer.units for layer in model.layers[:-1]]
        assert hidden == list(problem.hidden), name


def test_initial_weights_depend_only_on_the_seed(datasets):
    problem = problems.PROBLEMS["two-spirals"]
    data = datasets["two-spirals"]
    first = problem.build_model(data, seed=3).get_weights()
    second = problem.build_model(data, seed=3).get_weights()
    other = problem.build_model(data, seed=4).get_weights()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    for weight in first:
        assert weight.dtype == np.float32
        if weight.ndim == 1:
            np.testing.assert_array_equal(weight, 0)
        else:
            limit = math.sqrt(6 / sum(weight.shape))
            assert np.abs(weight).max() <= limit
            # Uniform on [-limit, limit]: the spread is not degenerate.
            assert np.abs(weight).max() > 0.5 * limit


def test_test_metrics_by_hand():
    binary = problems.PROBLEMS["encoder"]
    data = problems.Dataset(
        None, None, None, np.array([[1.0, 0.0], [1.0, 1.0]])
    )
    # The encoder's outputs are logits: positive means 1.
    assert binary.test_metric(data, [[2.0, 0.4], [-1.0, 3.0]]) == 0.5
    multiclass = problems.PROBLEMS["wine"]
    data = problems.Dataset(None, None, None, np.array([2, 0, 1]))
    predictions = [[0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]]
    assert multiclass.test_metric(data, predictions) == pytest.approx(2 / 3)
    regression = problems.PROBLEMS["diabetes"]
    data = problems.Dataset(None, None, None, np.array([[0.0], [1.0]]), 10.0)
    # Errors 3 and 1 on the standardized scale: RMSE sqrt(5), times 10.
    assert regression.test_metric(data, [[3.0], [0.0]]) == pytest.approx(
        10 * math.sqrt(5)
    )


def test_epochs_to_target():
    losses = [1.0, 0.5, 0.2, 0.1, 0.3, 0.05]
    assert runner.epochs_to_target(losses, 0.1) == 3
    assert runner.epochs_to_target(losses, 0.01) is None
    assert runner.epochs_to_target([float("nan"), 0.1], 0.2) == 1


def test_bad_names_raise():
    with pytest.raises(ValueError, match="`problems`.*'nope'"):
        problems.get_problem("nope")
    with pytest.raises(ValueError, match="`optimizers`.*'adamw'"):
        runner.get_optimizer("adamw")
    with pytest.raises(ValueError, match="learning rate.*'adam:-1'"):
        runner.get_optimizer("adam:-1")
    with pytest.raises(ValueError, match="`seeds`"):
        runner.resolve(None, None, 0, None)
    with pytest.raises(ValueError, match="`epochs`.*2.5"):
        runner.resolve(None, None, 1, 2.5)
    with pytest.raises(ValueError, match="`mini_batch_epochs`.*0"):
        problems.register(
            dataclasses.replace(
                problems.PROBLEMS["sinc"], name="x", mini_batch_epochs=0
            )
        )
    assert "x" not in problems.PROBLEMS
    with pytest.raises(ValueError, match="`task`"):
        problems.register(
            problems.Problem(
                "x",
                "",
                lambda: None,
                (1,),
                "tanh",
                "linear",
                "mse",
                0.1,
                1,
                "ranking",
            )
        )


def test_optimizer_learning_rate_override():
    spec = runner.get_optimizer("sgd:0.5")
    assert spec.label == "sgd:0.5"
    assert float(
        keras.ops.convert_to_numpy(spec.make().learning_rate)
    ) == pytest.approx(0.5)
    assert float(
        keras.ops.convert_to_numpy(
            runner.get_optimizer("adam").make().learning_rate
        )
    ) == (pytest.approx(keras.optimizers.Adam().learning_rate))
    assert runner.get_optimizer("irprop+").make().variant == "irprop+"
