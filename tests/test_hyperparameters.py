"""Bad hyper-parameters and bad losses raise errors that say what is wrong."""

import re

import keras
import numpy as np
import pytest
from keras import ops

import keras_rprop


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
    for value in ["adam", "rprop", "irprop", "", None, 3, ["rprop+"]]:
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
