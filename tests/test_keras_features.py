"""The Keras optimizer features, each checked for what it means for Rprop.

Where a feature has an exact meaning (weight decay, EMA, clipping, gradient
accumulation, constraints, learning-rate changes, sparse gradients) the
result is compared with the float64 NumPy reference or with an equivalent
dense computation; mixed precision is checked for training that works and
agrees with float32 in sign terms.
"""

import math
import re

import keras
import numpy as np
import pytest
from keras import ops
from reference import ReferenceRprop
from reference import make_mlp_params
from reference import make_regression_data
from reference import mlp_loss_and_grads
from reference import train_reference

import keras_rprop
from tests.helpers import assert_weights_close
from tests.helpers import build_mlp
from tests.helpers import float64_precision
from tests.helpers import full_batch_steps

BACKEND = keras.backend.backend()


@pytest.fixture
def float64():
    with float64_precision():
        yield


def _data_and_params():
    x, y = make_regression_data()
    return x, y, make_mlp_params()


def _assert_history(history, expected, message=""):
    assert len(history) == len(expected)
    for step, (got, want) in enumerate(zip(history, expected)):
        assert_weights_close(got, want, message=f"{message} step {step + 1}")


def _differs(a, b):
    return any(
        not np.allclose(u, v, rtol=1e-5, atol=1e-9) for u, v in zip(a, b)
    )


# -- Decoupled weight decay ------------------------------------------------


@pytest.mark.parametrize("variant", ["rprop+", "irprop-"])
def test_weight_decay_matches_reference(float64, variant):
    # Exactly representable, so every backend applies the same decay.
    weight_decay, learning_rate = 2.0**-6, 0.5
    x, y, params = _data_and_params()
    expected, _, _ = train_reference(
        variant,
        params,
        x,
        y,
        20,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
    )
    optimizer = keras_rprop.Rprop(
        variant=variant, learning_rate=learning_rate, weight_decay=weight_decay
    )
    history, _ = full_batch_steps(build_mlp(params), optimizer, x, y, 20)
    _assert_history(history, expected, variant)
    undecayed, _, _ = train_reference(
        variant, params, x, y, 20, learning_rate=learning_rate
    )
    assert _differs(expected[-1], undecayed[-1])


# -- Exponential moving average of the weights -----------------------------


def test_use_ema_tracks_weights_and_finalizes(float64):
    momentum, steps = 0.75, 12
    x, y, params = _data_and_params()
    expected, _, _ = train_reference("irprop-", params, x, y, steps)
    model = build_mlp(params)
    optimizer = keras_rprop.Rprop(use_ema=True, ema_momentum=momentum)
    history, _ = full_batch_steps(model, optimizer, x, y, steps)
    # EMA does not change the training trajectory...
    _assert_history(history, expected, "ema")
    # ...and holds the moving average of the weights after each step (the
    # first step copies the weights).
    average = [np.array(w) for w in expected[0]]
    for weights in expected[1:]:
        average = [
            momentum * a + (1 - momentum) * w for a, w in zip(average, weights)
        ]
    optimizer.finalize_variable_values(model.trainable_variables)
    assert_weights_close(model.get_weights(), average, message="ema average")


# -- Gradient clipping -----------------------------------------------------


@pytest.mark.parametrize(
    "clipping",
    [dict(clipnorm=1e-3), dict(clipvalue=1e-4), dict(global_clipnorm=1e-3)],
    ids=["clipnorm", "clipvalue", "global_clipnorm"],
)
def test_clipping_keeps_signs_so_result_is_unchanged(float64, clipping):
    x, y, params = _data_and_params()
    expected, _, _ = train_reference("rprop+", params, x, y, 20)
    optimizer = keras_rprop.Rprop(variant="rprop+", **clipping)
    history, _ = full_batch_steps(build_mlp(params), optimizer, x, y, 20)
    _assert_history(history, expected, str(clipping))


# -- Gradient accumulation: a full batch from mini-batches ------------------


@pytest.mark.parametrize("variant", ["rprop+", "irprop-"])
def test_gradient_accumulation_with_fit_equals_full_batch(float64, variant):
    epochs, batches = 10, 4
    x, y, params = _data_and_params()
    expected, _, _ = train_reference(variant, params, x, y, epochs)
    model = build_mlp(params)
    optimizer = keras_rprop.Rprop(
        variant=variant, gradient_accumulation_steps=batches
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(
        x,
        y,
        batch_size=len(x) // batches,
        epochs=epochs,
        shuffle=False,
        verbose=0,
    )
    # `iterations` counts the applied updates: one per epoch.
    assert int(ops.convert_to_numpy(optimizer.iterations)) == epochs
    assert_weights_close(model.get_weights(), expected[-1], message=variant)


def test_gradient_accumulation_irprop_plus_sees_mean_loss(float64):
    # The mean of the mini-batch losses is the full-batch loss, so iRprop+
    # with accumulation follows the full-batch reference, whose run has
    # sign changes both after a rise of the loss and after a fall.
    steps, batches = 30, 4
    x, y, params = _data_and_params()
    expected, _, rprop = train_reference("irprop+", params, x, y, steps)
    assert rprop.sign_change_steps_loss_rose > 0
    assert rprop.sign_change_steps_loss_not_rose > 0
    optimizer = keras_rprop.Rprop(
        variant="irprop+", gradient_accumulation_steps=batches
    )
    history, _ = full_batch_steps(
        build_mlp(params), optimizer, x, y, steps, batches=batches
    )
    _assert_history(history, expected, "irprop+ accumulated")


# -- Variable constraints --------------------------------------------------


def test_constraint_is_applied_after_the_step(float64):
    x, y, params = _data_and_params()
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                6,
                activation="tanh",
                kernel_constraint=keras.constraints.NonNeg(),
            ),
            keras.layers.Dense(1),
        ]
    )
    model.set_weights(params)
    history, _ = full_batch_steps(model, keras_rprop.Rprop(), x, y, 15)

    rprop = ReferenceRprop("irprop-", [p.shape for p in params])
    weights = [np.array(p) for p in params]
    for step in range(15):
        _, grads = mlp_loss_and_grads(weights, x, y)
        weights = rprop.step(weights, grads)
        weights[0] = np.maximum(weights[0], 0.0)
        assert_weights_close(history[step], weights, message=f"step {step + 1}")
    assert np.all(history[-1][0] >= 0.0)
    assert np.any(params[0] < 0.0) and np.any(history[-1][0] == 0.0)


# -- Learning rate: schedules and ReduceLROnPlateau -------------------------


def _reference_with_learning_rates(variant, params, x, y, learning_rates):
    rprop = ReferenceRprop(variant, [p.shape for p in params])
    weights = [np.array(p) for p in params]
    history = []
    for learning_rate in learning_rates:
        loss, grads = mlp_loss_and_grads(weights, x, y)
        weights = rprop.step(
            weights, grads, loss=loss, learning_rate=learning_rate
        )
        history.append(weights)
    return history


@pytest.mark.parametrize("variant", ["rprop+", "irprop+"])
def test_learning_rate_schedule_scales_the_moves(float64, variant):
    steps = 15
    x, y, params = _data_and_params()
    schedule = keras.optimizers.schedules.ExponentialDecay(
        1.0, decay_steps=1, decay_rate=0.8
    )
    optimizer = keras_rprop.Rprop(variant=variant, learning_rate=schedule)
    history, _ = full_batch_steps(build_mlp(params), optimizer, x, y, steps)
    expected = _reference_with_learning_rates(
        variant, params, x, y, [0.8**t for t in range(steps)]
    )
    # Keras computes the schedule in float32: moves of about 0.1 carry an
    # error of about 1e-8 each, visible relative to weights near zero.
    for step, (got, want) in enumerate(zip(history, expected)):
        assert_weights_close(got, want, atol=1e-7, message=f"step {step + 1}")
    constant, _, _ = train_reference(variant, params, x, y, steps)
    assert _differs(history[-1], constant[-1])


def test_reduce_lr_on_plateau_scales_the_moves(float64):
    epochs = 8
    x, y, params = _data_and_params()
    model = build_mlp(params)
    model.compile(optimizer=keras_rprop.Rprop(variant="rprop+"), loss="mse")
    learning_rates = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: learning_rates.append(
            float(ops.convert_to_numpy(model.optimizer.learning_rate))
        )
    )
    # min_delta larger than any improvement: a plateau after every epoch.
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=1, min_delta=10.0, verbose=0
    )
    model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[record, plateau],
    )
    assert learning_rates[0] == 1.0 and learning_rates[-1] <= 2.0**-5
    expected = _reference_with_learning_rates(
        "rprop+", params, x, y, learning_rates
    )
    assert_weights_close(model.get_weights(), expected[-1], message="plateau")
    constant, _, _ = train_reference("rprop+", params, x, y, epochs)
    assert _differs(expected[-1], constant[-1])


# -- Mixed precision -------------------------------------------------------


def _linear_problem():
    rng = np.random.default_rng(11)
    x = rng.uniform(-1.0, 1.0, size=(64, 3)).astype("float32")
    w_true = np.array([[0.5], [-1.0], [0.25]], "float32")
    return x, x @ w_true + 0.3, w_true


def _fit_linear(epochs=40):
    x, y, _ = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.set_weights([np.full((3, 1), 0.1, "float32"), np.zeros(1, "float32")])
    model.compile(optimizer=keras_rprop.Rprop(initial_step=0.05), loss="mse")
    losses = model.fit(
        x, y, batch_size=len(x), epochs=epochs, shuffle=False, verbose=0
    ).history["loss"]
    # The loss of each full-batch epoch is the loss before its step.
    return model, losses[0], losses[-1]


def test_mixed_float16_with_loss_scale_optimizer():
    float32_model, _, _ = _fit_linear()
    keras.utils.clear_session(free_memory=False)
    keras.mixed_precision.set_global_policy("mixed_float16")
    model, first, last = _fit_linear()
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, keras_rprop.Rprop)
    assert model.layers[-1].compute_dtype == "float16"
    assert last < 1e-2 * first
    # Same decisions as in float32: every weight moved the same way and both
    # runs reached the solution.
    _, _, w_true = _linear_problem()
    kernel = model.get_weights()[0]
    reference_kernel = float32_model.get_weights()[0]
    np.testing.assert_array_equal(
        np.sign(kernel - 0.1), np.sign(reference_kernel - 0.1)
    )
    np.testing.assert_allclose(kernel, w_true, atol=0.02)
    np.testing.assert_allclose(reference_kernel, w_true, atol=0.02)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_bfloat16_policies_train(policy):
    keras.mixed_precision.set_global_policy(policy)
    model, first, last = _fit_linear()
    variable_dtype = "bfloat16" if policy == "bfloat16" else "float32"
    assert model.layers[-1].kernel.dtype == variable_dtype
    assert last < 2e-2 * first
    steps = [v for v in model.optimizer.variables if v.name.endswith("_step")]
    signs = [v for v in model.optimizer.variables if v.name.endswith("_sign")]
    assert steps and all(v.dtype == "float32" for v in steps)
    assert signs and all(v.dtype == "int8" for v in signs)


def test_bfloat16_variable_keeps_float32_step_sizes():
    # In bfloat16, 0.1 * 1.2 * 1.2 would round to 0.1436; float32 steps keep
    # the growth exact enough to follow the papers.
    variable = keras.Variable(np.zeros(4), dtype="bfloat16")
    optimizer = keras_rprop.Rprop()
    for _ in range(3):
        optimizer.apply([ops.ones((4,), dtype="bfloat16")], [variable])
    step = next(v for v in optimizer.variables if v.name.endswith("_step"))
    assert step.dtype == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(step), 0.144, rtol=1e-6)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(variable, "float32")),
        -(0.1 + 0.12 + 0.144),
        rtol=1e-2,
    )


# -- Sparse gradients ------------------------------------------------------


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="IndexedSlices gradients exist only on TF"
)
def test_sparse_embedding_gradient_equals_dense():
    import tensorflow as tf

    ids = np.array([[1, 3], [3, 4], [1, 1], [7, 3]], "int32")
    target = np.array([[0.5], [-1.0], [0.2], [1.5]], "float32")

    def make_model():
        keras.utils.set_random_seed(3)
        return keras.Sequential(
            [
                keras.Input((2,), dtype="int32"),
                keras.layers.Embedding(10, 4),
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )

    sparse_model, dense_model = make_model(), make_model()
    sparse_optimizer = keras_rprop.Rprop(variant="rprop+")
    dense_optimizer = keras_rprop.Rprop(variant="rprop+")
    for _ in range(6):
        for model, optimizer, densify in (
            (sparse_model, sparse_optimizer, False),
            (dense_model, dense_optimizer, True),
        ):
            with tf.GradientTape() as tape:
                loss = ops.mean(ops.square(model(ids) - target))
            grads = tape.gradient(loss, model.trainable_variables)
            assert isinstance(grads[0], tf.IndexedSlices)
            if densify:
                grads = [tf.convert_to_tensor(g) for g in grads]
            optimizer.apply(grads, model.trainable_variables)
    for got, want in zip(sparse_model.get_weights(), dense_model.get_weights()):
        np.testing.assert_array_equal(got, want)
    # Rows never looked up have a zero gradient: they never moved.
    before = make_model().get_weights()[0]
    embedding = sparse_model.get_weights()[0]
    np.testing.assert_array_equal(
        embedding[[0, 2, 5, 6, 8, 9]], before[[0, 2, 5, 6, 8, 9]]
    )
    assert not np.array_equal(embedding[[1, 3, 4, 7]], before[[1, 3, 4, 7]])


# -- State size ------------------------------------------------------------


def _slot_bytes_per_parameter(optimizer, model):
    parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    slots = [
        v
        for v in optimizer.variables
        if v.name.endswith(("_step", "_sign", "_momentum", "_velocity"))
    ]
    total = sum(
        np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        * int(np.prod(v.shape))
        for v in slots
    )
    return total / parameters


@pytest.mark.parametrize("variant", ["rprop+", "rprop-", "irprop+", "irprop-"])
def test_state_is_five_bytes_per_float32_parameter(variant):
    model = build_mlp(make_mlp_params(hidden=64), hidden=64)
    optimizer = keras_rprop.Rprop(variant=variant)
    optimizer.build(model.trainable_variables)
    slots = [
        v for v in optimizer.variables if v.name.endswith(("_step", "_sign"))
    ]
    assert len(slots) == 2 * len(model.trainable_variables)
    assert {v.dtype for v in slots} == {"float32", "int8"}
    assert _slot_bytes_per_parameter(optimizer, model) == 5.0
    # Besides the slots, only a few scalars (iterations, learning rate,
    # losses, previous learning rate) and the rule's four hyper-parameters,
    # independent of the model size.
    slot_ids = {id(v) for v in slots}
    others = [v for v in optimizer.variables if id(v) not in slot_ids]
    assert sum(math.prod(v.shape) for v in others) <= 10

    adam = keras.optimizers.Adam()
    adam.build(model.trainable_variables)
    assert _slot_bytes_per_parameter(adam, model) == 8.0


def test_state_bytes_for_16_and_64_bit_weights():
    keras.mixed_precision.set_global_policy("bfloat16")
    model = build_mlp(make_mlp_params(hidden=64), hidden=64)
    optimizer = keras_rprop.Rprop()
    optimizer.build(model.trainable_variables)
    # float32 step sizes + int8 signs, whatever the 16-bit weight dtype.
    assert _slot_bytes_per_parameter(optimizer, model) == 5.0
    with float64_precision():
        model = build_mlp(make_mlp_params(hidden=64), hidden=64)
        optimizer = keras_rprop.Rprop()
        optimizer.build(model.trainable_variables)
        assert _slot_bytes_per_parameter(optimizer, model) == 9.0


@pytest.mark.skipif(
    BACKEND != "jax", reason="BCOO sparse arrays exist only on JAX"
)
@pytest.mark.parametrize("variant", keras_rprop.VARIANTS)
def test_sparse_bcoo_gradient_equals_dense(variant):
    # A JAX BCOO gradient (rows a lookup did not touch are zeros that reset
    # the stored sign) is applied as its dense equivalent, as TensorFlow's
    # IndexedSlices are.
    from jax.experimental import sparse

    rng = np.random.default_rng(5)
    gradients = []
    for _ in range(4):
        gradient = np.zeros((6, 3), "float32")
        rows = rng.choice(6, size=2, replace=False)
        gradient[rows] = rng.standard_normal((2, 3))
        gradients.append(gradient)
    start = rng.standard_normal((6, 3)).astype("float32")
    results = []
    for as_sparse in (True, False):
        variable = keras.Variable(start)
        optimizer = keras_rprop.Rprop(variant=variant)
        for gradient in gradients:
            gradient = ops.convert_to_tensor(gradient)
            if as_sparse:
                gradient = sparse.BCOO.fromdense(gradient)
            optimizer.apply([gradient], [variable], loss=1.0)
        results.append(ops.convert_to_numpy(variable))
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], start)


# -- Per-weight initial step sizes -----------------------------------------


def _initial_steps(optimizer):
    return [
        np.array(ops.convert_to_numpy(s), np.float64) for s in optimizer._steps
    ]


@pytest.mark.parametrize("variant", keras_rprop.VARIANTS)
def test_initializer_initial_steps_match_reference(float64, variant):
    # PROBEN1's rule: every weight starts from its own step size, drawn
    # uniformly from [0.005, 0.02].
    x, y, params = _data_and_params()
    optimizer = keras_rprop.Rprop(
        variant, initial_step=keras.initializers.RandomUniform(0.005, 0.02)
    )
    model = build_mlp(params)
    optimizer.build(model.trainable_variables)
    initial = _initial_steps(optimizer)
    values = np.concatenate([s.ravel() for s in initial])
    assert values.min() >= 0.005 and values.max() <= 0.02
    assert all(len(np.unique(s)) == s.size for s in initial)
    expected, _, _ = train_reference(
        variant, params, x, y, 20, initial_step=initial
    )
    history, _ = full_batch_steps(model, optimizer, x, y, 20)
    _assert_history(history, expected, variant)
    uniform, _, _ = train_reference(variant, params, x, y, 20)
    assert _differs(expected[-1], uniform[-1])


def test_initializer_by_name_and_config():
    variables = [keras.Variable(np.zeros((50, 4))), keras.Variable([0.0])]
    config = {
        "class_name": "RandomUniform",
        "config": {"minval": 0.01, "maxval": 0.03, "seed": 1},
    }
    optimizer = keras_rprop.Rprop(initial_step=config)
    assert isinstance(optimizer.initial_step, keras.initializers.RandomUniform)
    optimizer.build(variables)
    values = np.concatenate([s.ravel() for s in _initial_steps(optimizer)])
    assert 0.01 <= values.min() and values.max() <= 0.03
    optimizer = keras_rprop.Rprop(initial_step="ones")
    optimizer.build(variables)
    assert all(np.all(s == 1.0) for s in _initial_steps(optimizer))


@pytest.mark.parametrize(
    "initializer, received",
    [
        ("random_uniform", r"values in \[-0\.0\d+, 0\.0\d+\]"),
        ("zeros", "initial_step=0.0"),
        (keras.initializers.Constant(100.0), "initial_step=100.0"),
        (keras.initializers.Constant(float("nan")), "nan"),
    ],
)
def test_initializer_values_outside_the_bounds_are_refused(
    initializer, received
):
    optimizer = keras_rprop.Rprop(initial_step=initializer)
    variable = keras.Variable(np.zeros((20, 3)), name="kernel")
    with pytest.raises(ValueError) as error:
        optimizer.build([variable])
    message = str(error.value)
    assert "Argument `initial_step` must be > 0 and within" in message
    assert re.search(received, message), message
    assert "'kernel'" in message


def test_bad_initial_step_argument():
    with pytest.raises(ValueError, match="initial_step.*initializer"):
        keras_rprop.Rprop(initial_step="no_such_initializer")
    with pytest.raises(ValueError, match="initial_step.*real number"):
        keras_rprop.Rprop(initial_step=[0.1])
