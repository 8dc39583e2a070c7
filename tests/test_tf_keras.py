"""The `tf_keras` optimizers against the reference and hand-computed steps.

`keras_rprop.tf_keras` runs on TensorFlow whatever backend Keras 3 uses in
the process, so these tests run in every pass of the suite. The children
(`tests/distributed/tf_keras_mirrored.py`, which needs logical devices
configured before TensorFlow starts) do not depend on the pass and run in the
TensorFlow pass only.
"""

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from reference import VARIANTS
from reference import ReferenceRprop
from reference import make_mlp_params
from reference import make_regression_data
from reference import mlp_loss_and_grads
from reference import train_reference
from test_rule_golden import EXAMPLE_GRADIENTS
from test_rule_golden import EXAMPLE_LOSSES
from test_rule_golden import EXAMPLE_LOSSES_FALLING
from test_rule_golden import EXAMPLE_MOVES
from test_rule_golden import EXAMPLE_MOVES_IRPROP_PLUS_FALLING
from test_rule_golden import TENSOR_CASES
from test_rule_golden import TENSOR_FINAL_SIGNS
from test_rule_golden import TENSOR_FINAL_STEPS
from test_rule_golden import TENSOR_GRADIENTS
from test_rule_golden import TENSOR_HYPERPARAMETERS
from test_rule_golden import TENSOR_LEARNING_RATES
from test_rule_golden import TENSOR_START

import keras_rprop
import keras_rprop.tf_keras as rprop_tf_keras

ROOT = Path(__file__).resolve().parent.parent
STEPS = 50
CLASSES = {
    "rprop+": rprop_tf_keras.RpropPlus,
    "rprop-": rprop_tf_keras.RpropMinus,
    "irprop+": rprop_tf_keras.IRpropPlus,
    "irprop-": rprop_tf_keras.IRpropMinus,
}


@pytest.fixture(autouse=True)
def _fresh_tf_keras_state():
    tf_keras.backend.clear_session()
    yield
    tf_keras.mixed_precision.set_global_policy("float32")


def _mlp(params, dtype="float64"):
    model = tf_keras.Sequential(
        [
            tf_keras.Input((3,), dtype=dtype),
            tf_keras.layers.Dense(6, activation="tanh", dtype=dtype),
            tf_keras.layers.Dense(1, dtype=dtype),
        ]
    )
    model.set_weights([np.asarray(p, dtype) for p in params])
    return model


def _weights(model):
    return [w.numpy().astype("float64") for w in model.weights]


def _assert_weights_close(got, expected, message, rtol=1e-9, atol=1e-12):
    for i, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(
            g, e, rtol=rtol, atol=atol, err_msg=f"{message} tensor {i}"
        )


def _train_step(model, optimizer, pass_loss=True):
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        pairs = zip(grads, model.trainable_variables)
        if pass_loss:
            optimizer.apply_gradients(pairs, loss=loss)
        else:
            optimizer.apply_gradients(pairs)
        return loss

    return step


class _WeightHistory(tf_keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(_weights(self.model))


# -- Packaging ---------------------------------------------------------------


def test_import_does_not_need_tf_keras_and_names_the_extra():
    code = "\n".join(
        [
            "import sys",
            "import keras_rprop",
            "assert 'tf_keras' not in sys.modules, 'tf_keras imported'",
            "sys.modules['tf_keras'] = None  # as if not installed",
            "try:",
            "    import keras_rprop.tf_keras",
            "except ImportError as error:",
            "    print(error)",
            "else:",
            "    raise SystemExit('no ImportError')",
        ]
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install keras-rprop[tf-keras]" in result.stdout


# -- The float64 reference ---------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_loop_matches_reference(variant):
    x, y = make_regression_data()
    params = make_mlp_params()
    expected, expected_losses, reference = train_reference(
        variant, params, x, y, STEPS
    )
    model = _mlp(params)
    optimizer = rprop_tf_keras.Rprop(variant)
    step = _train_step(model, optimizer)
    losses = []
    for i in range(STEPS):
        losses.append(float(step(x, y)))
        _assert_weights_close(
            _weights(model), expected[i], f"{variant} step {i + 1}"
        )
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-9)
    # Long enough to go through every branch of the rule.
    assert expected_losses[-1] < 0.01 * expected_losses[0]
    assert reference.sign_changes > 10
    if variant == "irprop+":
        assert reference.sign_change_steps_loss_rose > 0
        assert reference.sign_change_steps_loss_not_rose > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_fit_matches_reference(variant):
    """`fit` hands the loss over through `minimize`: iRprop+ needs no more."""
    x, y = make_regression_data()
    params = make_mlp_params()
    expected, expected_losses, _ = train_reference(variant, params, x, y, STEPS)
    model = _mlp(params)
    model.compile(optimizer=CLASSES[variant](), loss="mse")
    weights = _WeightHistory()
    history = model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=STEPS,
        shuffle=False,
        verbose=0,
        callbacks=[weights],
    )
    np.testing.assert_allclose(
        history.history["loss"], expected_losses, rtol=1e-6
    )
    for i in range(STEPS):
        _assert_weights_close(
            weights.history[i], expected[i], f"{variant} epoch {i + 1}"
        )


def test_learning_rate_and_weight_decay_match_reference():
    """Backtracking reverts a move made at another learning rate."""
    x, y = make_regression_data()
    params = make_mlp_params()
    rates = [0.5 if i < 20 else 0.25 for i in range(30)]
    reference = ReferenceRprop("rprop+", [p.shape for p in params])
    expected = [np.array(p) for p in params]
    model = _mlp(params)
    optimizer = rprop_tf_keras.RpropPlus(learning_rate=0.5, weight_decay=0.01)
    step = _train_step(model, optimizer)
    for rate in rates:
        optimizer.learning_rate = rate
        loss, grads = mlp_loss_and_grads(expected, x, y)
        expected = reference.step(
            expected, grads, loss=loss, learning_rate=rate, weight_decay=0.01
        )
        step(x, y)
        # The decay's product is rounded in another order than the
        # reference's.
        _assert_weights_close(
            _weights(model), expected, f"rate {rate}", rtol=1e-6
        )
    assert reference.sign_changes > 0


@pytest.mark.parametrize("variant", ["rprop+", "irprop+"])
def test_eager_loop_equals_tf_function(variant):
    x, y = make_regression_data()
    params = make_mlp_params()
    runs = []
    for compiled in (False, True):
        model = _mlp(params, "float32")
        optimizer = rprop_tf_keras.Rprop(variant)
        step = _train_step(model, optimizer)
        if not compiled:
            step = step.python_function
        for _ in range(20):
            step(x.astype("float32"), y.astype("float32"))
        runs.append((_weights(model), [v.numpy() for v in optimizer.variables]))
    (eager_weights, eager_state), (weights, state) = runs
    for eager, compiled in zip(
        eager_weights + eager_state[4:], weights + state[4:]
    ):
        np.testing.assert_array_equal(eager, compiled)
    # The losses: a graph sums the mean's terms in another order.
    np.testing.assert_allclose(eager_state[1:4], state[1:4], rtol=1e-6)


# -- Hand-computed steps -----------------------------------------------------


def _moves(variant, start, gradients, losses, learning_rates, **kwargs):
    variable = tf.Variable(np.asarray(start, "float32"))
    optimizer = rprop_tf_keras.Rprop(variant, **kwargs)
    moves = []
    for i, gradient in enumerate(gradients):
        optimizer.learning_rate = learning_rates[i]
        before = variable.numpy().astype("float64")
        optimizer.apply_gradients(
            [(tf.constant(gradient, tf.float32), variable)],
            loss=None if losses is None else losses[i],
        )
        moves.append(variable.numpy().astype("float64") - before)
    return moves, optimizer


@pytest.mark.parametrize("variant", VARIANTS)
def test_worked_example(variant):
    gradients = [[g] for g in EXAMPLE_GRADIENTS]
    moves, _ = _moves(variant, [0.0], gradients, EXAMPLE_LOSSES, [1.0] * 5)
    np.testing.assert_allclose(
        np.concatenate(moves), EXAMPLE_MOVES[variant], atol=1e-7
    )
    if variant != "irprop+":
        # The loss is accepted and ignored.
        moves, _ = _moves(variant, [0.0], gradients, None, [1.0] * 5)
        np.testing.assert_allclose(
            np.concatenate(moves), EXAMPLE_MOVES[variant], atol=1e-7
        )


def test_worked_example_irprop_plus_loss_not_rising():
    gradients = [[g] for g in EXAMPLE_GRADIENTS]
    for losses in (EXAMPLE_LOSSES_FALLING, [4.0, 3.0, 2.0, 2.0, 1.0]):
        moves, _ = _moves("irprop+", [0.0], gradients, losses, [1.0] * 5)
        np.testing.assert_allclose(
            np.concatenate(moves), EXAMPLE_MOVES_IRPROP_PLUS_FALLING, atol=1e-7
        )


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_golden_tensor_steps(case):
    variant = case.split()[0]
    losses, expected = TENSOR_CASES[case]
    moves, optimizer = _moves(
        variant,
        TENSOR_START,
        TENSOR_GRADIENTS,
        losses,
        TENSOR_LEARNING_RATES,
        **TENSOR_HYPERPARAMETERS,
    )
    for i, (got, want) in enumerate(zip(moves, expected)):
        np.testing.assert_allclose(
            got, want, atol=1e-6, err_msg=f"{case} step {i + 1}"
        )
    step, sign = optimizer._steps[0], optimizer._signs[0]
    np.testing.assert_allclose(step.numpy(), TENSOR_FINAL_STEPS, rtol=1e-6)
    np.testing.assert_array_equal(sign.numpy(), TENSOR_FINAL_SIGNS[case])
    assert sign.dtype == tf.int8 and step.dtype == tf.float32


def test_the_threads_bugs_are_not_repeated():
    """What the Keras 2 code of the question and its answers got wrong.

    Each weight decides on its own sign (the question's Python `if` on a
    whole tensor); a zero product keeps the step size (the first answer
    shrinks it); a step shrinks down to `min_step`, not up to `max_step`
    (the question's swapped bound).
    """
    variable = tf.Variable([0.0, 0.0, 0.0])
    optimizer = rprop_tf_keras.Rprop("rprop-", min_step=0.03)
    for gradient in ([1.0, 1.0, 1.0], [1.0, 0.0, -1.0], [1.0, 1.0, 1.0]):
        optimizer.apply_gradients([(tf.constant(gradient), variable)])
    # Grow twice; kept at a zero gradient and after it; shrink to 0.05,
    # then clamp at 0.03 (Rprop- moves by the shrunk step).
    np.testing.assert_allclose(
        optimizer._steps[0].numpy(), [0.144, 0.1, 0.03], rtol=1e-6
    )
    np.testing.assert_allclose(
        variable.numpy(), [-0.364, -0.2, -0.08], rtol=1e-6
    )


def test_nan_gradient_moves_to_nan_and_keeps_the_step():
    variable = tf.Variable([1.0, 1.0])
    optimizer = rprop_tf_keras.Rprop("irprop-")
    optimizer.apply_gradients([(tf.constant([np.nan, 1.0]), variable)])
    assert np.isnan(variable.numpy()[0]) and variable.numpy()[1] == 0.9
    np.testing.assert_array_equal(optimizer._signs[0].numpy(), [0, 1])
    np.testing.assert_allclose(optimizer._steps[0].numpy(), [0.1, 0.1])


def test_sparse_gradient_is_applied_as_dense():
    embedding = tf_keras.layers.Embedding(4, 2)
    embedding.build((None,))
    start = embedding.embeddings.numpy().copy()
    optimizer = rprop_tf_keras.Rprop("irprop-")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(embedding(tf.constant([1, 1, 3])))
    grad = tape.gradient(loss, embedding.embeddings)
    assert isinstance(grad, tf.IndexedSlices)
    optimizer.apply_gradients([(grad, embedding.embeddings)])
    moved = embedding.embeddings.numpy() - start
    np.testing.assert_allclose(moved[[1, 3]], -0.1, rtol=1e-6)
    np.testing.assert_array_equal(moved[[0, 2]], 0.0)


# -- Configuration -----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_named_classes(variant):
    cls = CLASSES[variant]
    optimizer = cls(0.2)
    assert optimizer.variant == variant and optimizer.initial_step == 0.2
    keras3 = getattr(keras_rprop, cls.__name__)()
    assert optimizer.name == keras3.name
    assert cls(variant=variant.upper()).variant == variant
    other = next(v for v in VARIANTS if v != variant)
    with pytest.raises(ValueError, match=re.escape(f"variant='{other}'")):
        cls(variant=other)


def test_defaults_are_those_of_keras3():
    ours = rprop_tf_keras.Rprop().get_config()
    theirs = keras_rprop.Rprop().get_config()
    for name in (
        "variant",
        "initial_step",
        "eta_minus",
        "eta_plus",
        "min_step",
        "max_step",
        "learning_rate",
        "name",
    ):
        assert ours[name] == theirs[name], name


@pytest.mark.parametrize(
    "arguments",
    [
        {"variant": "rprop"},
        {"variant": 3},
        {"eta_minus": 1.0},
        {"eta_plus": 1.0},
        {"min_step": -1.0},
        {"max_step": 0.0},
        {"min_step": 2.0, "max_step": 1.0, "initial_step": 1.0},
        {"initial_step": 100.0},
        {"initial_step": math.nan},
        {"eta_plus": "1.2"},
        {"eta_plus": True},
    ],
    ids=str,
)
def test_bad_hyperparameters_give_the_keras3_message(arguments):
    with pytest.raises(ValueError) as keras3:
        keras_rprop.Rprop(**arguments)
    with pytest.raises(ValueError) as ours:
        rprop_tf_keras.Rprop(**arguments)
    assert str(ours.value) == str(keras3.value)
    assert "Received:" in str(ours.value)


def test_unknown_argument_is_refused():
    with pytest.raises(TypeError, match="fused"):
        rprop_tf_keras.Rprop(fused=True)


def test_get_config_from_config_and_serialization():
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(1.0, 10, 0.5)
    optimizer = rprop_tf_keras.IRpropPlus(
        initial_step=0.05, eta_plus=1.3, max_step=2.0, learning_rate=schedule
    )
    config = optimizer.get_config()
    assert config["variant"] == "irprop+" and config["max_step"] == 2.0
    json.dumps(config)
    restored = rprop_tf_keras.IRpropPlus.from_config(copy.deepcopy(config))
    assert restored.get_config() == config
    serialized = tf_keras.optimizers.serialize(optimizer)
    assert serialized["registered_name"] == "keras_rprop>IRpropPlus"
    again = tf_keras.optimizers.deserialize(
        serialized, use_legacy_optimizer=False
    )
    assert type(again) is rprop_tf_keras.IRpropPlus
    assert again.get_config() == config


# -- Bad input and the loss channel ------------------------------------------


def test_irprop_plus_without_loss_raises_and_nothing_moves():
    variable = tf.Variable([0.0, 0.0])
    optimizer = rprop_tf_keras.IRpropPlus()
    with pytest.raises(ValueError, match="enable_loss.*Received: loss=None"):
        optimizer.apply_gradients([(tf.ones(2), variable)])
    np.testing.assert_array_equal(variable.numpy(), [0.0, 0.0])
    assert int(optimizer.iterations) == 0


@pytest.mark.parametrize(
    "loss, message",
    [
        ("high", "Received: loss='high'"),
        (True, "Received: loss=True"),
        (np.ones(2), r"shape \(2,\)"),
        (tf.constant("x"), "must be a scalar number"),
    ],
    ids=["str", "bool", "vector", "string-tensor"],
)
def test_bad_loss(loss, message):
    variable = tf.Variable([0.0])
    optimizer = rprop_tf_keras.IRpropPlus()
    with pytest.raises(ValueError, match=message):
        optimizer.apply_gradients([(tf.ones(1), variable)], loss=loss)
    assert variable.numpy()[0] == 0.0


def test_gradient_of_another_shape_is_refused():
    variable = tf.Variable([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"gradient of shape \(1,\)"):
        rprop_tf_keras.Rprop().apply_gradients([(tf.ones(1), variable)])


def test_integer_variable_is_refused():
    variable = tf.Variable([1, 2])
    with pytest.raises(ValueError, match="floating-point.*int32"):
        rprop_tf_keras.Rprop().apply_gradients(
            [(tf.constant([1, 1]), variable)]
        )


def test_enable_loss_bad_input():
    with pytest.raises(ValueError, match="tf_keras.Model"):
        rprop_tf_keras.enable_loss(keras.Sequential())
    model = _mlp(make_mlp_params())
    with pytest.raises(ValueError, match="not compiled"):
        rprop_tf_keras.enable_loss(model)
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="Received: optimizer="):
        rprop_tf_keras.enable_loss(model)
    model.compile(optimizer=rprop_tf_keras.IRpropPlus(), loss="mse")
    assert rprop_tf_keras.enable_loss(model) is model


def test_fit_irprop_plus_under_mixed_precision():
    """The loss-scale wrapper hands the loss over after `enable_loss`."""
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    x, y = make_regression_data()
    params = [p.astype("float32") for p in make_mlp_params()]
    model = _mlp(params, dtype=None)
    model.compile(optimizer=rprop_tf_keras.IRpropPlus(), loss="mse")
    assert model.optimizer.inner_optimizer.variant == "irprop+"
    with pytest.raises(ValueError, match="enable_loss"):
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    model = _mlp(params, dtype=None)
    model.compile(optimizer=rprop_tf_keras.IRpropPlus(), loss="mse")
    rprop_tf_keras.enable_loss(model)
    history = model.fit(x, y, batch_size=len(x), epochs=30, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.2 * losses[0]
    inner = model.optimizer.inner_optimizer
    # The optimizer compared the unscaled loss of each applied step.
    np.testing.assert_allclose(
        float(inner._previous_loss.numpy()), losses[-1], rtol=1e-3
    )


# -- Saving and loading ------------------------------------------------------


def _fit(model, x, y, epochs):
    model.fit(x, y, batch_size=len(x), epochs=epochs, shuffle=False, verbose=0)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5")
@pytest.mark.parametrize("file_format", ["keras", "h5", "savedmodel"])
def test_continued_training_after_loading_equals_uninterrupted(
    tmp_path, file_format
):
    x, y = make_regression_data()
    params = make_mlp_params()
    uninterrupted = _mlp(params)
    uninterrupted.compile(optimizer=rprop_tf_keras.IRpropPlus(), loss="mse")
    _fit(uninterrupted, x, y, 20)

    model = _mlp(params)
    model.compile(optimizer=rprop_tf_keras.IRpropPlus(), loss="mse")
    _fit(model, x, y, 10)
    path = tmp_path / "model"
    if file_format == "keras":
        path = tmp_path / "model.keras"
    elif file_format == "h5":
        path = tmp_path / "model.h5"
    model.save(str(path))
    loaded = tf_keras.models.load_model(str(path))
    assert type(loaded.optimizer) is rprop_tf_keras.IRpropPlus
    if file_format == "savedmodel":
        # `load_model` leaves the optimizer's state in the SavedModel's
        # checkpoint; it is read back once the optimizer is built.
        loaded.optimizer.build(loaded.trainable_variables)
        tf.train.Checkpoint(root=loaded).restore(
            str(path / "variables" / "variables")
        ).expect_partial()
    for saved, restored in zip(
        model.optimizer.variables, loaded.optimizer.variables
    ):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
    assert float(loaded.optimizer._previous_loss.numpy()) < math.inf
    _fit(loaded, x, y, 10)
    _assert_weights_close(
        _weights(loaded), _weights(uninterrupted), file_format, rtol=0, atol=0
    )


def test_loading_clips_the_step_sizes_to_the_new_bounds():
    variable = tf.Variable([0.0, 0.0])
    optimizer = rprop_tf_keras.Rprop(max_step=5.0, initial_step=4.0)
    optimizer.apply_gradients([(tf.constant([1.0, 1.0]), variable)])
    state = [v.numpy() for v in optimizer.variables]
    other = rprop_tf_keras.Rprop(max_step=1.0, initial_step=0.5)
    other.build([variable])
    other.set_weights(state)
    np.testing.assert_allclose(other._steps[0].numpy(), [1.0, 1.0])


# -- MirroredStrategy ----------------------------------------------------------


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the child does not depend on the pass: TensorFlow pass only",
)
def test_mirrored_strategy_matches_one_device(tmp_path):
    output = tmp_path / "results.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    child = ROOT / "tests" / "distributed" / "tf_keras_mirrored.py"
    process = subprocess.Popen(
        [sys.executable, str(child), str(output)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, log[-5000:]
    results = json.loads(output.read_text())
    assert results["replicas"] == 2
    # Each replica of the custom loop took half of the batch.
    assert results["loop_batch_sizes"] == [16]
    runs = results["runs"]
    for variant in VARIANTS:
        for kind in ("fit", "loop"):
            single = runs[f"{variant} {kind} single"]
            mirrored = runs[f"{variant} {kind} mirrored"]
            assert "MirroredVariable" in mirrored["variable_types"]
            assert "MirroredVariable" not in single["variable_types"]
            for got, want in zip(mirrored["weights"], single["weights"]):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            for run in (single, mirrored):
                # The loss iRprop+ compares is that of all the data, not
                # one replica's share.
                np.testing.assert_allclose(
                    run["previous_loss"],
                    run["loss_before_last_update"],
                    rtol=2e-5,
                    err_msg=f"{variant} {kind}",
                )
                assert (
                    run["loss_before_last_update"]
                    < 0.2 * results["initial_loss"]
                )


# -- Per-weight initial steps and changed hyper-parameters -------------------


@pytest.mark.parametrize("variant", ["rprop+", "irprop+"])
def test_initializer_initial_steps_match_reference(variant):
    x, y = make_regression_data()
    params = make_mlp_params()
    model = _mlp(params)
    optimizer = rprop_tf_keras.Rprop(
        variant,
        initial_step=tf_keras.initializers.RandomUniform(0.005, 0.02, seed=3),
    )
    optimizer.build(model.trainable_variables)
    initial = [s.numpy() for s in optimizer._steps]
    values = np.concatenate([s.ravel() for s in initial])
    assert values.min() >= 0.005 and values.max() <= 0.02
    assert all(len(np.unique(s)) == s.size for s in initial)
    expected, _, _ = train_reference(
        variant, params, x, y, 20, initial_step=initial
    )
    step = _train_step(model, optimizer)
    for i in range(20):
        step(x, y)
        _assert_weights_close(
            _weights(model), expected[i], f"{variant} step {i + 1}"
        )


def test_initializer_is_checked_and_serialized():
    variable = tf.Variable(tf.zeros((10, 2)), name="kernel")
    optimizer = rprop_tf_keras.Rprop(initial_step="random_uniform")
    with pytest.raises(ValueError, match="initial_step.*'kernel"):
        optimizer.build([variable])
    config = {
        "class_name": "RandomUniform",
        "config": {"minval": 0.01, "maxval": 0.03, "seed": 1},
    }
    optimizer = rprop_tf_keras.Rprop(initial_step=config)
    assert isinstance(
        optimizer.initial_step, tf_keras.initializers.RandomUniform
    )
    saved = optimizer.get_config()
    restored = rprop_tf_keras.Rprop.from_config(copy.deepcopy(saved))
    assert restored.get_config() == saved
    restored.build([variable])
    values = restored._steps[0].numpy()
    assert 0.01 <= values.min() and values.max() <= 0.03


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("how", ["eager", "tf.function", "fit"])
def test_changed_hyperparameters_take_effect(how, jit_compile):
    """`optimizer.eta_plus = 2.0` mid-training, compiled or not."""
    x, y = make_regression_data()
    params = make_mlp_params()
    changes = {"eta_plus": 2.0, "eta_minus": 0.25, "max_step": 0.05}
    reference = ReferenceRprop("rprop+", [p.shape for p in params])
    expected = [np.array(p) for p in params]
    model = _mlp(params)
    optimizer = rprop_tf_keras.Rprop("rprop+", jit_compile=jit_compile)
    if how == "fit":
        model.compile(optimizer=optimizer, loss="mse")
    step = _train_step(model, optimizer)
    if how == "eager":
        step = step.python_function
    for i in range(10):
        if i == 5:
            for name, value in changes.items():
                setattr(optimizer, name, value)
                setattr(reference, name, value)
        _, grads = mlp_loss_and_grads(expected, x, y)
        expected = reference.step(expected, grads)
        if how == "fit":
            model.fit(x, y, batch_size=len(x), shuffle=False, verbose=0)
        else:
            step(x, y)
        _assert_weights_close(_weights(model), expected, f"step {i + 1}")
    assert max(float(d.max()) for d in reference.delta) == 0.05
    if how == "eager":
        # Nothing was compiled for one variant.
        optimizer.variant = "irprop-"
        return
    with pytest.raises(ValueError, match="variant.*compiled"):
        optimizer.variant = "irprop-"
