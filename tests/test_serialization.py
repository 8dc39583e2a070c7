"""Config round trips, Keras (de)serialization and `.keras` save/load."""

import json

import keras
import numpy as np
import pytest
from keras import ops
from reference import VARIANTS
from reference import make_mlp_params
from reference import make_regression_data

import keras_rprop
from tests.helpers import NAMED_CLASSES
from tests.helpers import build_mlp
from tests.helpers import full_batch_steps

HYPERPARAMETERS = dict(
    initial_step=0.02, eta_minus=0.4, eta_plus=1.3, min_step=1e-4, max_step=2.0
)
RPROP_KEYS = ("variant",) + tuple(HYPERPARAMETERS)


def _make(variant, **kwargs):
    return keras_rprop.Rprop(variant=variant, **HYPERPARAMETERS, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_round_trip(variant):
    optimizer = _make(
        variant,
        learning_rate=0.5,
        weight_decay=0.01,
        clipnorm=2.0,
        use_ema=True,
        ema_momentum=0.9,
        gradient_accumulation_steps=3,
        name="my_rprop",
    )
    config = optimizer.get_config()
    assert config["variant"] == variant
    for key, value in HYPERPARAMETERS.items():
        assert config[key] == value
    restored = keras_rprop.Rprop.from_config(config)
    assert type(restored) is keras_rprop.Rprop
    assert restored.get_config() == config
    assert restored.variant == variant
    assert restored.gradient_accumulation_steps == 3
    assert restored.name == "my_rprop"


def test_config_round_trip_with_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(1.0, 10, 0.5)
    optimizer = _make("irprop-", learning_rate=schedule)
    restored = keras_rprop.Rprop.from_config(optimizer.get_config())
    assert isinstance(
        restored._learning_rate, keras.optimizers.schedules.ExponentialDecay
    )
    assert restored._learning_rate.get_config() == schedule.get_config()


@pytest.mark.parametrize("variant", VARIANTS)
def test_named_classes_round_trip(variant):
    cls = NAMED_CLASSES[variant]
    optimizer = cls(**HYPERPARAMETERS)
    assert optimizer.variant == variant
    config = optimizer.get_config()
    assert config["variant"] == variant
    restored = cls.from_config(config)
    assert type(restored) is cls
    assert restored.get_config() == config
    # Named and generic classes serialize under the package name.
    serialized = keras.saving.serialize_keras_object(optimizer)
    assert serialized["registered_name"] == f"keras_rprop>{cls.__name__}"
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is cls
    assert again.get_config() == config


@pytest.mark.parametrize("variant", VARIANTS)
def test_keras_optimizers_serialize_deserialize(variant):
    optimizer = _make(variant, learning_rate=0.5)
    serialized = keras.optimizers.serialize(optimizer)
    assert serialized["registered_name"] == "keras_rprop>Rprop"
    restored = keras.optimizers.deserialize(serialized)
    assert type(restored) is keras_rprop.Rprop
    for key in RPROP_KEYS:
        assert getattr(restored, key) == getattr(optimizer, key)
    assert float(ops.convert_to_numpy(restored.learning_rate)) == 0.5


def test_named_class_rejects_another_variant():
    with pytest.raises(ValueError, match="variant='rprop-'"):
        keras_rprop.RpropPlus(variant="rprop-")
    assert keras_rprop.RpropPlus(variant="rprop+").variant == "rprop+"


def test_compile_resolves_registered_name():
    model = build_mlp(make_mlp_params())
    model.compile(optimizer="keras_rprop>IRpropMinus", loss="mse")
    assert type(model.optimizer) is keras_rprop.IRpropMinus


def _optimizer_state(optimizer):
    return {
        v.path if hasattr(v, "path") else v.name: ops.convert_to_numpy(v)
        for v in optimizer.variables
    }


@pytest.mark.parametrize("variant", ["rprop+", "rprop-", "irprop-"])
def test_save_load_continue_with_fit(tmp_path, variant):
    x, y = make_regression_data()
    x, y = x.astype("float32"), y.astype("float32")
    params = make_mlp_params()
    fit = dict(batch_size=len(x), shuffle=False, verbose=0)

    uninterrupted = build_mlp(params)
    uninterrupted.compile(
        optimizer=_make(variant, learning_rate=0.5), loss="mse"
    )
    uninterrupted.fit(x, y, epochs=12, **fit)

    model = build_mlp(params)
    model.compile(optimizer=_make(variant, learning_rate=0.5), loss="mse")
    model.fit(x, y, epochs=6, **fit)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert type(loaded.optimizer) is keras_rprop.Rprop
    for key in RPROP_KEYS:
        assert getattr(loaded.optimizer, key) == getattr(model.optimizer, key)
    assert float(ops.convert_to_numpy(loaded.optimizer.learning_rate)) == 0.5
    saved_state = _optimizer_state(model.optimizer)
    loaded_state = _optimizer_state(loaded.optimizer)
    assert len(loaded_state) == len(saved_state)
    for (name, saved), loaded_value in zip(
        saved_state.items(), loaded_state.values()
    ):
        np.testing.assert_array_equal(loaded_value, saved, err_msg=name)
    # The state is not trivial: steps were adapted, signs were stored.
    assert (
        int(saved_state[next(k for k in saved_state if "iteration" in k)]) == 6
    )

    loaded.fit(x, y, epochs=6, **fit)
    for got, want in zip(loaded.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if variant == "rprop+":
        # Training that forgot the optimizer state would not match (shown
        # once: the state layout is the same for every variant).
        fresh = build_mlp(model.get_weights())
        fresh.compile(optimizer=_make(variant, learning_rate=0.5), loss="mse")
        fresh.fit(x, y, epochs=6, **fit)
        assert not all(
            np.allclose(a, b, rtol=1e-6, atol=1e-7)
            for a, b in zip(fresh.get_weights(), uninterrupted.get_weights())
        )


def test_save_load_continue_irprop_plus_with_loss(tmp_path):
    x, y = make_regression_data()
    x, y = x.astype("float32"), y.astype("float32")
    params = make_mlp_params()

    uninterrupted = build_mlp(params)
    optimizer = keras_rprop.IRpropPlus(**HYPERPARAMETERS)
    reference_history, _ = full_batch_steps(uninterrupted, optimizer, x, y, 16)

    model = build_mlp(params)
    model.compile(
        optimizer=keras_rprop.IRpropPlus(**HYPERPARAMETERS), loss="mse"
    )
    full_batch_steps(model, model.optimizer, x, y, 8)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is keras_rprop.IRpropPlus
    assert loaded.optimizer.variant == "irprop+"
    for saved, loaded_value in zip(
        _optimizer_state(model.optimizer).values(),
        _optimizer_state(loaded.optimizer).values(),
    ):
        np.testing.assert_array_equal(loaded_value, saved)

    history, _ = full_batch_steps(loaded, loaded.optimizer, x, y, 8)
    for got, want in zip(history[-1], reference_history[-1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_config_round_trip_with_initializer():
    initializer = keras.initializers.RandomUniform(0.005, 0.02, seed=2)
    optimizer = keras_rprop.Rprop("rprop+", initial_step=initializer)
    config = optimizer.get_config()
    assert json.loads(json.dumps(config)) == config
    restored = keras_rprop.Rprop.from_config(config)
    assert isinstance(restored.initial_step, keras.initializers.RandomUniform)
    assert restored.initial_step.get_config() == initializer.get_config()
    assert restored.get_config() == config
    serialized = keras.optimizers.serialize(optimizer)
    again = keras.optimizers.deserialize(serialized)
    assert again.initial_step.get_config() == initializer.get_config()


def test_save_load_with_initializer_and_changed_hyperparameters(tmp_path):
    x, y = make_regression_data()
    x, y = x.astype("float32"), y.astype("float32")
    params = make_mlp_params()
    fit = dict(batch_size=len(x), shuffle=False, verbose=0)

    def make():
        return keras_rprop.Rprop(
            "rprop+",
            initial_step=keras.initializers.RandomUniform(0.005, 0.02, seed=5),
        )

    uninterrupted = build_mlp(params)
    uninterrupted.compile(optimizer=make(), loss="mse")
    uninterrupted.fit(x, y, epochs=4, **fit)
    uninterrupted.optimizer.eta_plus = 1.5
    uninterrupted.fit(x, y, epochs=4, **fit)

    model = build_mlp(params)
    model.compile(optimizer=make(), loss="mse")
    model.fit(x, y, epochs=4, **fit)
    model.optimizer.eta_plus = 1.5
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.eta_plus == 1.5
    assert isinstance(
        loaded.optimizer.initial_step, keras.initializers.RandomUniform
    )
    for saved, restored in zip(model.optimizer._steps, loaded.optimizer._steps):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(restored), ops.convert_to_numpy(saved)
        )
    loaded.fit(x, y, epochs=4, **fit)
    for got, want in zip(loaded.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
