"""Every entry of `keras_rprop.compat` against the installed releases.

Each test is named after the entry it checks and fails when a release moves
or changes what the entry reaches for: the private attribute or function is
missing, takes other arguments, or no longer does what the entry says.
"""

import inspect

import keras
import numpy as np
import pytest

from keras_rprop import compat

BACKEND = keras.backend.backend()


def _parameters(function):
    return list(inspect.signature(function).parameters)


def _compiled_model(metrics=None):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", metrics=metrics)
    return model


def _data(samples=10):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 3)).astype("float32")
    y = rng.normal(size=(samples, 2)).astype("float32")
    return x, y


# -- Keras: the optimizer --------------------------------------------------


def test_base_optimizer_keyword_args():
    text = compat.BASE_OPTIMIZER_KEYWORD_ARGS
    for argument in ("clipnorm", "use_ema", "gradient_accumulation_steps"):
        assert f"{argument}:" in text, argument


def test_with_whole_step():
    assert _parameters(keras.optimizers.Optimizer._backend_update_step) == [
        "self",
        "grads",
        "trainable_variables",
        "learning_rate",
    ]
    calls = []

    @compat.with_whole_step
    class Recording(keras.optimizers.SGD):
        def whole_step(self, grads, variables, learning_rate, keras_step):
            calls.append(len(variables))
            keras_step(grads, variables, learning_rate)

    variables = [keras.Variable([1.0, 2.0]), keras.Variable([3.0])]
    optimizer = Recording(learning_rate=0.5)
    optimizer.apply([np.array([1.0, -1.0]), np.array([2.0])], variables)
    assert calls == [2]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(variables[0]), [0.5, 2.5]
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variables[1]), [2.0])


def test_apply_count():
    variable = keras.Variable([1.0])
    optimizer = keras.optimizers.SGD(gradient_accumulation_steps=3)
    for _ in range(4):
        optimizer.apply([keras.ops.convert_to_tensor([1.0])], [variable])
    assert int(keras.ops.convert_to_numpy(compat.apply_count(optimizer))) == 4
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 1


def test_variable_index_and_built_variables():
    variables = [keras.Variable([1.0]), keras.Variable([[2.0, 3.0]])]
    optimizer = keras.optimizers.SGD()
    assert not compat.built_variables(optimizer)
    optimizer.build(variables)
    assert [compat.variable_index(optimizer, v) for v in variables] == [0, 1]
    assert compat.built_variables(optimizer) == variables


def test_variable_layout():
    variable = keras.Variable(np.zeros((2, 3)))
    assert "_layout" in vars(variable)
    assert compat.variable_layout(variable) is None


def test_in_stateless_scope():
    assert not compat.in_stateless_scope()
    with keras.StatelessScope():
        assert compat.in_stateless_scope()
    assert not compat.in_stateless_scope()


def test_variable_values():
    variables = [keras.Variable(np.arange(3.0)), keras.Variable([[5.0]])]
    assert all("_value" in vars(v) for v in variables)
    values = compat.variable_values(variables)
    for value, variable in zip(values, variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(value),
            keras.ops.convert_to_numpy(variable.value),
        )
    from keras.src.backend.common.variables import AutocastScope

    with AutocastScope("float16"):
        value = compat.variable_values(variables)[0]
    assert keras.backend.standardize_dtype(value.dtype) == "float16"


def test_keras_jax_fit_model():
    seen = []

    class Probe(keras.optimizers.SGD):
        def build(self, variables):
            seen.append(compat.keras_jax_fit_model())
            super().build(variables)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=Probe(), loss="mse")
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0)
    assert seen == [model if BACKEND == "jax" else None]
    assert compat.keras_jax_fit_model() is None


def test_is_nnx_enabled():
    function = getattr(keras.config, "is_nnx_enabled", None)
    expected = bool(function()) if function else False
    assert compat.is_nnx_enabled() is expected


# -- Keras: the trainer ------------------------------------------------------


def test_loss_tracker_and_compile_metrics():
    model = _compiled_model(metrics=["mae"])
    x, y = _data()
    model.evaluate(x, y, verbose=0)
    tracker = compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss"
    metrics = compat.compile_metrics(model)
    assert model.metrics[:2] == [tracker, metrics]
    logs = model.get_metrics_result()
    assert set(logs) == {"loss", "mae"}


def test_compiled_loss_and_compute_loss():
    model = _compiled_model()
    x, y = _data()
    assert compat.compiled_loss(model) is not None
    y_pred = model(x)
    loss = compat.compute_loss(model, x, y, y_pred, None, training=True)
    expected = np.mean((keras.ops.convert_to_numpy(y_pred) - y) ** 2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss), expected, rtol=1e-6
    )


def test_call_has_training_arg():
    class WithoutTraining(keras.Model):
        def call(self, inputs):
            return inputs

    class WithTraining(keras.Model):
        def call(self, inputs, training=None):
            return inputs

    assert compat.call_has_training_arg(WithTraining()) is True
    assert compat.call_has_training_arg(WithoutTraining()) is False


def test_symbolic_build():
    model = keras.Sequential([keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    x, y = _data()
    assert not model.built
    compat.symbolic_build(model, (x, y))
    assert model.built and model.optimizer.built
    assert compat.compile_metrics(model).built


def test_initial_epoch():
    model = _compiled_model()
    assert "_initial_epoch" in vars(model)
    assert compat.initial_epoch(model, 3) == 3
    source = inspect.getsource(keras.callbacks.BackupAndRestore)
    assert "model._initial_epoch" in source
    model._initial_epoch = 5
    assert compat.initial_epoch(model, 3) == 5


def test_should_evaluate():
    model = _compiled_model()
    assert [compat.should_evaluate(model, e, 2) for e in range(4)] == [
        False,
        True,
        False,
        True,
    ]
    assert [compat.should_evaluate(model, e, [1, 3]) for e in range(4)] == [
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="validation_freq"):
        compat.should_evaluate(model, 0, "often")


def test_tracked_metric():
    model = _compiled_model()
    x, y = _data()
    model.evaluate(x, y, verbose=0)
    metric = keras.metrics.Sum(name="extra")
    with compat.tracked_metric(model, metric):
        assert metric in model.metrics
    assert metric not in model.metrics


def test_train_validation_split():
    x = np.arange(10.0).reshape(10, 1)
    y = np.arange(10)
    (train_x, train_y), (val_x, val_y) = compat.train_validation_split(
        (x, y), 0.2
    )
    np.testing.assert_array_equal(train_x[:, 0], np.arange(8.0))
    np.testing.assert_array_equal(val_y, [8, 9])
    with pytest.raises(ValueError, match="validation_split"):
        compat.train_validation_split((iter([1, 2]),), 0.5)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's arrays and sharding")
def test_jax_distribute_data_input():
    import jax

    distribution = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices("cpu")[:1]
    )
    array = np.arange(8.0, dtype="float32").reshape(4, 2)
    layout = distribution.get_data_layout(array.shape)
    assert isinstance(layout.backend_layout, jax.sharding.Sharding)
    result = compat.jax_distribute_data_input(array, layout)
    assert isinstance(result, jax.Array)
    np.testing.assert_array_equal(np.asarray(result), array)


# -- TensorFlow --------------------------------------------------------------


def test_tf_in_xla_context():
    tf = pytest.importorskip("tensorflow")
    seen = []

    def probe(x):
        seen.append(compat.tf_in_xla_context())
        return x + 1

    tf.function(probe, jit_compile=True)(tf.constant(1.0))
    tf.function(probe)(tf.constant(1.0))
    assert seen == [True, False]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's variables")
def test_tf_variable_and_tf_variables_bound():
    import tensorflow as tf

    variable = keras.Variable(1.0)
    assert isinstance(compat.tf_variable(variable), tf.Variable)
    own = compat.tf_variable(variable)

    @tf.function(autograph=False)
    def add(variables, value):
        with compat.tf_variables_bound([variable], variables):
            variable.assign_add(value)
            return variable.value + 0.0

    other = tf.Variable(5.0)
    # The trace reads and writes its argument and captures nothing.
    assert float(add([other], tf.constant(2.0))) == 7.0
    assert float(add([own], tf.constant(2.0))) == 3.0
    assert float(other) == 7.0
    assert compat.tf_variable(variable) is own
    assert float(variable.value) == 3.0
    assert add.experimental_get_tracing_count() == 1
    assert not add.get_concrete_function(
        [other], tf.constant(2.0)
    ).captured_inputs


def test_tf_num_workers():
    tf = pytest.importorskip("tensorflow")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert compat.tf_num_workers(strategy) == 1


# -- tf_keras ----------------------------------------------------------------


def test_tf_keras_entries():
    tf = pytest.importorskip("tensorflow")
    tf_keras = pytest.importorskip("tf_keras")

    class Bare(tf_keras.optimizers.Optimizer):
        def __init__(self, learning_rate):
            super().__init__(name="bare")
            compat.tf_keras_learning_rate(self, learning_rate)

        def build(self, var_list):
            super().build(var_list)
            if compat.tf_keras_is_built(self):
                return
            compat.tf_keras_set_built(self)

        def update_step(self, gradient, variable):
            variable.assign_sub(gradient * self.learning_rate)

    optimizer = Bare(0.25)
    assert compat.tf_keras_serialized_learning_rate(optimizer) == 0.25
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(1.0, 10, 0.5)
    serialized = compat.tf_keras_serialized_learning_rate(Bare(schedule))
    assert serialized["class_name"] == "ExponentialDecay"

    variables = [tf.Variable([1.0]), tf.Variable([2.0, 3.0])]
    assert not compat.tf_keras_is_built(optimizer)
    optimizer.build(variables)
    assert compat.tf_keras_is_built(optimizer)
    assert [
        compat.tf_keras_variable_index(optimizer, v) for v in variables
    ] == [0, 1]
    extra = tf.Variable(7.0)
    count = len(optimizer.variables)
    compat.tf_keras_track_variable(optimizer, extra)
    assert len(optimizer.variables) == count + 1
    assert optimizer.variables[-1] is extra


# -- PyTorch -----------------------------------------------------------------


def test_torch_foreach():
    torch = pytest.importorskip("torch")
    tensors = [torch.zeros(2), torch.ones(3)]
    compat.torch_foreach_add_(tensors, [torch.ones(2), torch.ones(3)])
    assert tensors[0].tolist() == [1.0, 1.0]
    assert tensors[1].tolist() == [2.0, 2.0, 2.0]
    compat.torch_foreach_copy_(tensors, [torch.full((2,), 5.0), torch.ones(3)])
    assert tensors[0].tolist() == [5.0, 5.0]


def test_torch_compile_options():
    pytest.importorskip("torch")
    from torch._inductor import config

    for name, value in compat.TORCH_COMPILE_OPTIONS.items():
        section, option = name.split(".")
        assert isinstance(
            getattr(getattr(config, section), option), type(value)
        ), name


def test_torch_is_tracing_and_value_reads():
    torch = pytest.importorskip("torch")
    from torch.fx.experimental import proxy_tensor

    seen = []

    def step(x):
        seen.append(compat.torch_is_tracing())
        return x * 2

    assert not compat.torch_is_tracing()
    with (
        compat.torch_one_fake_mode(),
        compat.torch_record_without_fake_values(),
    ):
        record = proxy_tensor.make_fx(step)(torch.ones(2))
    assert seen == [True]
    assert record(torch.ones(2)).tolist() == [2.0, 2.0]

    def reads(x):
        return x * x.sum().item()

    record = proxy_tensor.make_fx(reads, tracing_mode="fake")(torch.ones(2))
    targets = {n.target for n in record.graph.nodes if n.op == "call_function"}
    assert targets & compat.torch_value_reads()


def test_torch_record_internals():
    pytest.importorskip("torch")
    from torch import _guards
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental import proxy_tensor

    assert _parameters(proxy_tensor.set_meta) == ["proxy", "val"]
    assert _parameters(_guards.TracingContext) == ["fake_mode"]
    assert "allow_fallback_kernels" in _parameters(FakeTensorMode)
    original = proxy_tensor.set_meta
    with compat.torch_record_without_fake_values():
        assert proxy_tensor.set_meta is not original
    assert proxy_tensor.set_meta is original


# -- The package's own structure ----------------------------------------------


def test_the_optimizer_imports_no_training_code():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, keras_rprop.optimizers.rprop\n"
        "loaded = [m for m in sys.modules if m.startswith('keras_rprop.')]\n"
        "print(' '.join(loaded))\n"
        "assert not any(m.startswith('keras_rprop.training') for m in loaded)"
    )
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "keras_rprop.optimizers.rprop" in result.stdout
