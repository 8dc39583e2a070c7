"""Bad input: each case raises an error that names it, or behaves as documented.

The matrix (input, behaviour, test) is in `docs/robustness.md`. No case may
change weights or optimizer state silently.
"""

import dataclasses
import inspect
import math
import re

import keras
import numpy as np
import pytest
from keras import ops

import keras_rprop

BACKEND = keras.backend.backend()


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def state(optimizer):
    """Every optimizer variable as a NumPy array, in checkpoint order."""
    return [(v.name, numpy(v).copy()) for v in optimizer.variables]


def scalar(optimizer, name):
    (variable,) = [v for v in optimizer.variables if v.name == name]
    return float(numpy(variable))


def assert_same_state(before, after):
    assert len(before) == len(after)
    for (name, value), (_, expected) in zip(after, before):
        np.testing.assert_array_equal(value, expected, err_msg=name)


# -- Non-finite gradients ----------------------------------------------------


@pytest.mark.parametrize("variant", keras_rprop.VARIANTS)
def test_nan_gradient_gives_nan_weight_and_keeps_step_size(variant):
    """Without a wrapper a NaN gradient shows, as with any Keras optimizer.

    The weight with the NaN gradient becomes NaN (on every backend, although
    `ops.sign(nan)` is 0 on PyTorch), its step size is unchanged and its
    stored sign is 0; the other weights take their normal step.
    """
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer = keras_rprop.Rprop(variant)
    grad = np.array([np.nan, 2.0, -3.0], "float32")
    optimizer.apply([ops.convert_to_tensor(grad)], [variable], loss=1.0)
    weights = numpy(variable)
    assert np.isnan(weights[0])
    np.testing.assert_allclose(weights[1:], [0.9, 1.1], rtol=1e-6)
    np.testing.assert_allclose(numpy(optimizer._steps[0]), [0.1, 0.1, 0.1])
    np.testing.assert_array_equal(numpy(optimizer._signs[0]), [0, 1, -1])


def test_infinite_gradient_counts_as_its_sign():
    """Rprop never uses the gradient's magnitude, so +-inf is a valid sign."""
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras_rprop.Rprop("rprop-")
    grad = ops.convert_to_tensor(np.array([np.inf, -np.inf], "float32"))
    optimizer.apply([grad], [variable])
    optimizer.apply([grad], [variable])
    # 1 - 0.1 - 0.12 and 1 + 0.1 + 0.12.
    np.testing.assert_allclose(numpy(variable), [0.78, 1.22], rtol=1e-6)


def _apply(optimizer, grads, variables):
    """`optimizer.apply`, through `stateless_apply` on JAX.

    On JAX the `LossScaleOptimizer` only skips steps statelessly (its
    stateful `apply` puts assignments inside a traced `cond`), which is how
    the JAX trainer calls it.
    """
    grads = [ops.convert_to_tensor(g) for g in grads]
    if BACKEND != "jax":
        optimizer.apply(grads, variables)
        return
    if not optimizer.built:
        optimizer.build(variables)
    new_variables, new_optimizer_variables = optimizer.stateless_apply(
        [v.value for v in optimizer.variables],
        grads,
        [v.value for v in variables],
    )
    for variable, value in zip(variables, new_variables):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, new_optimizer_variables):
        variable.assign(value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_loss_scale_optimizer_skips_non_finite_step(bad):
    """The mixed-precision wrapper skips the step and leaves all state as is.

    Wrapping any Rprop in `keras.optimizers.LossScaleOptimizer` is also the
    documented way to skip non-finite steps in float32 training: the loss
    scale it adjusts never changes a gradient's sign.
    """
    variable = keras.Variable(np.array([1.0, 2.0, 3.0], "float32"))
    reference_variable = keras.Variable(np.array([1.0, 2.0, 3.0], "float32"))
    optimizer = keras.optimizers.LossScaleOptimizer(keras_rprop.Rprop("rprop+"))
    reference = keras_rprop.Rprop("rprop+")
    good = [
        np.array([1.0, -1.0, 1.0], "float32"),
        np.array([1.0, 1.0, -1.0], "float32"),
    ]
    _apply(optimizer, [good[0]], [variable])
    reference.apply([ops.convert_to_tensor(good[0])], [reference_variable])
    before = state(optimizer.inner_optimizer)
    weights_before = numpy(variable).copy()
    _apply(optimizer, [np.array([bad, 1.0, 1.0], "float32")], [variable])
    assert_same_state(before, state(optimizer.inner_optimizer))
    np.testing.assert_array_equal(numpy(variable), weights_before)
    # The next finite step continues as if the bad one never came.
    _apply(optimizer, [good[1]], [variable])
    reference.apply([ops.convert_to_tensor(good[1])], [reference_variable])
    np.testing.assert_allclose(
        numpy(variable), numpy(reference_variable), rtol=1e-6
    )
    assert int(numpy(optimizer.iterations)) == 2


def _regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    return x, y


# Full batches one after the other, one step per batch: not mini-batches.
@pytest.mark.filterwarnings("ignore::keras_rprop.MiniBatchWarning")
@pytest.mark.parametrize(
    "variant, policy",
    [
        ("irprop+", "float32"),
        ("rprop+", "float32"),
        ("irprop+", "mixed_float16"),
    ],
)
def test_fit_skips_nan_batches_with_loss_scale_optimizer(variant, policy):
    """Through `fit`, a batch whose loss and gradients are NaN is skipped.

    The result equals training on the good batches only: iRprop+'s loss
    record is untouched by the skipped step too. In float32 the wrapper is
    explicit; under the `mixed_float16` policy `compile` adds it.
    """
    keras.mixed_precision.set_global_policy(policy)
    x, y = _regression_data()
    bad = x.copy()
    bad[0, 0] = np.nan
    # Full batches: good, good, bad, good, good.
    batches = [x, x, bad, x, x]
    kernel = np.array([[0.3], [0.2], [-0.1]], "float32")

    def train(batch_list):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.set_weights([kernel, np.zeros(1, "float32")])
        optimizer = keras_rprop.Rprop(variant)
        if policy == "float32":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        keras_rprop.enable_loss(model)
        model.fit(
            np.concatenate(batch_list),
            np.concatenate([y] * len(batch_list)),
            batch_size=len(x),
            shuffle=False,
            verbose=0,
        )
        return model, model.optimizer.inner_optimizer

    model, inner = train(batches)
    expected_model, expected_inner = train([x, x, x, x])
    for got, expected in zip(model.get_weights(), expected_model.get_weights()):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert_same_state(state(expected_inner), state(inner))


# -- The loss given to iRprop+ -------------------------------------------------


def test_nan_loss_counts_as_infinite_loss():
    """A NaN loss is a rise after a finite loss; a finite one after it is not.

    Weight 0's gradient flips sign at steps 2 and 3 (whose stored sign is
    set again by step 2's zero-reset), so each flip tests one comparison.
    """
    variable = keras.Variable(np.zeros(1, "float32"))
    optimizer = keras_rprop.Rprop("irprop+")

    def apply(grad, loss):
        optimizer.apply(
            [ops.convert_to_tensor(np.array([grad], "float32"))],
            [variable],
            loss=loss,
        )
        return float(numpy(variable)[0])

    assert apply(1.0, 1.0) == pytest.approx(-0.1)
    # Flip with a NaN loss: counts as a rise, the move -0.1 is reverted.
    assert apply(-1.0, float("nan")) == pytest.approx(0.0, abs=1e-7)
    assert scalar(optimizer, "previous_loss") == math.inf
    # Sign stored 0, so this is a plain step of the shrunk size 0.05 ...
    assert apply(-1.0, 5.0) == pytest.approx(0.05)
    # ... and a flip with a finite loss below the last one: no revert.
    assert apply(1.0, 4.0) == pytest.approx(0.05)
    assert np.isfinite(numpy(variable)).all()


# One test per case, looping over the inputs: each test pays for a fresh
# Keras session, which costs more than the checks themselves.
NOT_SCALAR_LOSSES = [
    (np.ones(2, "float32"), "shape"),
    (np.ones((1, 1), "float32"), "shape"),
    ("0.5", "scalar"),
    (True, "scalar"),
    ([0.5], "shape"),
]


def test_loss_that_is_not_a_scalar_is_rejected():
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras_rprop.Rprop("irprop+")
    optimizer.build([variable])
    before = state(optimizer)
    for loss, message in NOT_SCALAR_LOSSES:
        with pytest.raises(ValueError, match=f"`loss`.*{message}"):
            optimizer.apply([ops.ones((2,))], [variable], loss=loss)
    assert_same_state(before, state(optimizer))
    np.testing.assert_array_equal(numpy(variable), [1.0, 1.0])


def test_irprop_plus_without_loss_names_the_fix():
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras_rprop.Rprop("irprop+")
    with pytest.raises(ValueError, match="enable_loss"):
        optimizer.apply([ops.ones((2,))], [variable])
    np.testing.assert_array_equal(numpy(variable), [1.0, 1.0])


# -- Variables and gradients ---------------------------------------------------


def test_zero_size_variable_is_trained_with_the_others():
    empty = keras.Variable(np.zeros((0, 3), "float32"))
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras_rprop.Rprop("rprop+")
    for _ in range(3):
        optimizer.apply(
            [ops.zeros((0, 3)), ops.convert_to_tensor([1.0, -1.0])],
            [empty, variable],
        )
    assert tuple(numpy(empty).shape) == (0, 3)
    # 1 -/+ (0.1 + 0.12 + 0.144).
    np.testing.assert_allclose(numpy(variable), [0.636, 1.364], rtol=1e-6)


def test_integer_and_boolean_variables_are_rejected():
    for dtype in ["int32", "int8", "bool"]:
        variables = [
            keras.Variable(np.ones(2, "float32"), name="kernel"),
            keras.Variable(
                np.ones(2, dtype), dtype=dtype, trainable=False, name="counter"
            ),
        ]
        optimizer = keras_rprop.Rprop()
        with pytest.raises(ValueError, match=f"counter.*{dtype}"):
            optimizer.build(variables)


def test_gradient_of_the_wrong_shape_is_rejected():
    """Even a gradient that would broadcast (shape (1,) for (3,))."""
    cases = [((4,), (3,)), ((1,), (3,)), ((3,), (3, 1)), ((2, 3), (3, 2))]
    for grad_shape, variable_shape in cases:
        variable = keras.Variable(np.ones(variable_shape, "float32"), name="w")
        optimizer = keras_rprop.Rprop()
        optimizer.build([variable])
        before = state(optimizer)
        with pytest.raises(
            ValueError, match=r"gradient of shape .* variable 'w'"
        ):
            optimizer.apply([ops.ones(grad_shape)], [variable])
        assert_same_state(before, state(optimizer))
        np.testing.assert_array_equal(numpy(variable), np.ones(variable_shape))


def test_gradients_and_variables_may_be_generators():
    """The shape check must not use up a one-shot iterable."""
    variable = keras.Variable(np.ones(2, "float32"))
    optimizer = keras_rprop.Rprop()
    optimizer.apply(
        (g for g in [ops.convert_to_tensor([1.0, -1.0])]),
        (v for v in [variable]),
    )
    np.testing.assert_allclose(numpy(variable), [0.9, 1.1], rtol=1e-6)


@pytest.mark.skipif(
    BACKEND != "jax", reason="stateless_apply is the JAX training path"
)
def test_stateless_apply_rejects_gradient_of_the_wrong_shape():
    variable = keras.Variable(np.ones(3, "float32"), name="w")
    optimizer = keras_rprop.Rprop()
    optimizer.build([variable])
    with pytest.raises(ValueError, match="shape"):
        optimizer.stateless_apply(
            [v.value for v in optimizer.variables],
            [ops.ones((1,))],
            [variable.value],
        )


# -- Hyper-parameters ----------------------------------------------------------


def _raises(match, **kwargs):
    with pytest.raises(ValueError, match=match):
        keras_rprop.Rprop(**kwargs)


# Grouped in loops rather than parametrized: each case is a constructor call,
# cheaper than a test's set-up.


def test_eta_minus_outside_open_unit_interval():
    for value in [0.0, 1.0, -0.5, 1.5]:
        _raises(rf"`eta_minus`.*Received: eta_minus={value}", eta_minus=value)


def test_eta_plus_not_above_one():
    for value in [1.0, 0.9, 0.0, -2.0]:
        _raises(rf"`eta_plus`.*Received: eta_plus={value}", eta_plus=value)


def test_negative_or_inverted_step_bounds():
    _raises(r"`min_step`.*Received: min_step=-0.001", min_step=-1e-3)
    for value in [0.0, -1.0]:
        _raises(rf"`max_step`.*Received: max_step={value}", max_step=value)
    _raises(
        r"`min_step`.*`max_step`.*min_step=2.0, max_step=1.0",
        min_step=2.0,
        max_step=1.0,
        initial_step=1.5,
    )


def test_initial_step_outside_bounds():
    for value in [100.0, 1e-8, 0.0, -0.1]:
        _raises(
            rf"`initial_step`.*Received: initial_step={re.escape(str(value))}",
            initial_step=value,
        )
    # The bounds themselves are allowed.
    assert keras_rprop.Rprop(initial_step=50.0).initial_step == 50.0
    assert keras_rprop.Rprop(initial_step=0.5, min_step=0.5).initial_step == 0.5


def test_unknown_variant():
    for value in [
        "adam",
        "rprop",
        "irprop",
        "irprop+ ",
        "",
        None,
        3,
        ["rprop+"],
    ]:
        _raises(
            rf"`variant`.*Received: variant={re.escape(repr(value))}",
            variant=value,
        )
    for cls in (keras_rprop.RpropPlus, keras_rprop.IRpropMinus):
        with pytest.raises(ValueError, match="variant='adam'"):
            cls(variant="adam")


def test_variant_is_case_insensitive():
    for value in ["RPROP+", "iRprop-", "IRPROP+", "Rprop-"]:
        assert keras_rprop.Rprop(variant=value).variant == value.lower()


@pytest.mark.parametrize(
    "name", ["initial_step", "eta_minus", "eta_plus", "min_step", "max_step"]
)
def test_wrong_types_and_non_finite_values(name):
    for value in ["0.5", None, [0.5], True, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match=rf"`{name}`.*Received: {name}="):
            keras_rprop.Rprop(**{name: value})


def test_integer_hyperparameters_are_accepted():
    optimizer = keras_rprop.Rprop(
        initial_step=1, eta_plus=2, max_step=10, learning_rate=1
    )
    assert optimizer.initial_step == 1.0 and optimizer.eta_plus == 2.0
    assert float(ops.convert_to_numpy(optimizer.learning_rate)) == 1.0


def test_bad_gradient_accumulation_steps():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        keras_rprop.Rprop(gradient_accumulation_steps=1)


def test_non_scalar_loss():
    variable = keras.Variable(np.zeros(2, "float32"))
    for variant in ("irprop+", "irprop-"):
        optimizer = keras_rprop.Rprop(variant=variant)
        for loss in [[1.0, 2.0], np.ones((2,)), np.ones((1, 1)), "1.0", True]:
            with pytest.raises(ValueError, match="`loss`"):
                optimizer.apply([ops.ones((2,))], [variable], loss=loss)
    np.testing.assert_array_equal(ops.convert_to_numpy(variable), [0.0, 0.0])


def test_scalar_losses_are_accepted():
    for loss in [
        2.5,
        np.float32(2.5),
        np.array(2.5),
        3,
        ops.convert_to_tensor(2.5),
    ]:
        variable = keras.Variable(np.zeros(2, "float32"))
        optimizer = keras_rprop.Rprop(variant="irprop+")
        optimizer.apply([ops.ones((2,))], [variable], loss=loss)
        np.testing.assert_allclose(ops.convert_to_numpy(variable), [-0.1, -0.1])


def test_irprop_plus_without_loss_is_a_clear_error():
    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = keras_rprop.IRpropPlus()
    with pytest.raises(ValueError, match=r"irprop\+.*no loss was given"):
        optimizer.apply([ops.ones((2,))], [variable])
    with pytest.raises(ValueError, match=r"irprop\+.*no loss was given"):
        optimizer.apply_gradients([(ops.ones((2,)), variable)])
    # The first step with a loss is a normal first step: nothing happened.
    optimizer.apply([ops.ones((2,))], [variable], loss=1.0)
    np.testing.assert_allclose(ops.convert_to_numpy(variable), [-0.1, -0.1])
    assert int(ops.convert_to_numpy(optimizer.iterations)) == 1


@pytest.mark.parametrize("fused", ["yes", 1, 0.0])
def test_fused_must_be_a_bool_or_none(fused):
    with pytest.raises(ValueError, match=r"Argument `fused`.*Received: fused="):
        keras_rprop.Rprop(fused=fused)


@pytest.mark.parametrize("fused", [None, True, False])
def test_fused_round_trips_through_the_config(fused):
    optimizer = keras_rprop.Rprop(fused=fused)
    assert optimizer.get_config()["fused"] is fused
    restored = keras_rprop.Rprop.from_config(optimizer.get_config())
    assert restored.fused is fused


def test_learning_rate_of_the_wrong_type_is_rejected():
    for value in ["1.0", None, [1.0]]:
        with pytest.raises(ValueError, match="`learning_rate`"):
            keras_rprop.Rprop(learning_rate=value)


# -- Checkpoints from another configuration ------------------------------------


def _trained_model(optimizer, steps=6):
    x, y = _regression_data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    if isinstance(optimizer, keras_rprop.Rprop):
        keras_rprop.enable_loss(model)
    model.fit(x, y, batch_size=len(x), epochs=steps, verbose=0)
    return model


def _steps_of(optimizer):
    return [numpy(v) for v in optimizer.variables if v.name.endswith("_step")]


def test_checkpoint_of_another_variant_carries_the_state_over(tmp_path):
    """Step sizes and signs mean the same in every variant: the state loads.

    A `.keras` file restores its own variant with its config; loading only
    the weights into a model compiled with another variant continues from
    the saved state with that variant.
    """
    path = str(tmp_path / "model.weights.h5")
    saved = _trained_model(keras_rprop.Rprop("rprop+"))
    saved.save_weights(path)
    model = _trained_model(keras_rprop.Rprop("irprop-"), steps=1)
    model.load_weights(path)
    for got, expected in zip(
        model.optimizer.variables, saved.optimizer.variables
    ):
        np.testing.assert_array_equal(numpy(got), numpy(expected))
    assert model.optimizer.variant == "irprop-"

    keras_path = str(tmp_path / "model.keras")
    saved.save(keras_path)
    loaded = keras.models.load_model(keras_path)
    assert loaded.optimizer.variant == "rprop+"


def test_checkpoint_with_larger_steps_is_clipped_to_the_new_bounds(tmp_path):
    path = str(tmp_path / "model.weights.h5")
    saved = _trained_model(keras_rprop.Rprop("rprop-"))
    steps = [v for v in saved.optimizer.variables if v.name.endswith("_step")]
    for variable, value in zip(steps, ([[0.5], [3.0], [20.0]], [0.01])):
        variable.assign(np.array(value, "float32"))
    saved_steps = np.array([0.5, 3.0, 20.0, 0.01], "float32")
    saved.save_weights(path)
    model = _trained_model(
        keras_rprop.Rprop(
            "rprop-", initial_step=0.5, min_step=0.1, max_step=1.0
        ),
        steps=1,
    )
    model.load_weights(path)
    loaded_steps = np.concatenate(
        [s.ravel() for s in _steps_of(model.optimizer)]
    )
    np.testing.assert_allclose(loaded_steps, [0.5, 1.0, 1.0, 0.1])
    np.testing.assert_allclose(loaded_steps, np.clip(saved_steps, 0.1, 1.0))


def test_checkpoint_of_another_optimizer_is_not_loaded(tmp_path):
    """Another number of variables: Keras warns and keeps the fresh state."""
    path = str(tmp_path / "model.weights.h5")
    _trained_model(keras.optimizers.Adam()).save_weights(path)
    model = _trained_model(keras_rprop.Rprop("irprop-"), steps=1)
    before = state(model.optimizer)
    with pytest.warns(UserWarning, match="Skipping variable loading"):
        model.load_weights(path)
    assert_same_state(before, state(model.optimizer))


def test_signature_defaults_are_the_configs():
    # The optimizer spells its hyper-parameters out for `help()`; the
    # checked config is where their defaults are defined.
    defaults = keras_rprop.RpropConfig()
    parameters = inspect.signature(keras_rprop.Rprop).parameters
    for field in dataclasses.fields(defaults):
        assert parameters[field.name].default == getattr(defaults, field.name)
