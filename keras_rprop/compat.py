"""Every use of a private Keras, TensorFlow, tf_keras or PyTorch API.

The package reaches past the public API of its frameworks only here. Each
entry is a small function or constant whose docstring names what it reaches
for and why no public API serves; `tests/test_compat.py` checks every entry
against the installed releases, so that a release that moves or changes
one of them fails there, by name, rather than somewhere in training.

Entries import their framework when called, so that importing this module
needs Keras alone.
"""

import contextlib
import os
import sys

import keras

# -- Keras: the optimizer --------------------------------------------------


def _base_optimizer_keyword_args():
    try:
        from keras.src.optimizers import optimizer
    except ImportError:
        return ""
    return getattr(optimizer, "base_optimizer_keyword_args", "")


# The documentation of the arguments every Keras optimizer takes
# (`keras.src.optimizers.optimizer.base_optimizer_keyword_args`), which
# Keras's own optimizers insert into their docstrings in place of
# `{{base_optimizer_keyword_args}}`. No public copy exists; without it the
# docstring only lacks those arguments.
BASE_OPTIMIZER_KEYWORD_ARGS = _base_optimizer_keyword_args()


def with_whole_step(optimizer_class):
    """Makes `optimizer_class.whole_step` run each step of all variables.

    Reaches for `Optimizer._backend_update_step(grads, trainable_variables,
    learning_rate)`, the one method of Keras's `apply` that sees every
    variable of a step at once, between the gradient transformations
    (clipping, weight decay, accumulation) and the moving average. The
    public `update_step` sees one variable at a time, which a multi-tensor
    or compiled update cannot work from.

    The class defines `whole_step(grads, trainable_variables, learning_rate,
    keras_step)`; `keras_step` is Keras's own method, which runs
    `update_step` for every variable (and under `tf.distribute` first
    all-reduces the gradients).
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        keras_step = super(optimizer_class, self)._backend_update_step
        self.whole_step(grads, trainable_variables, learning_rate, keras_step)

    optimizer_class._backend_update_step = _backend_update_step
    return optimizer_class


def variable_index(optimizer, variable):
    """The index of `variable` among those `optimizer` was built with.

    Reaches for `Optimizer._get_variable_index`, which Keras's optimizers
    use to find a variable's slots. Its key is backend-specific (on
    TensorFlow a distributed variable's container), so a mapping of the
    optimizer's own would not find the variables `update_step` is given
    under `tf.distribute`.
    """
    return optimizer._get_variable_index(variable)


def apply_count(optimizer):
    """How many times `optimizer.apply` ran, every accumulated batch counted.

    Reaches for `Optimizer._iterations`: with `gradient_accumulation_steps`
    the public `iterations` counts the updates only, and which of the
    accumulated batches a call applies follows from this count.
    """
    return optimizer._iterations


def built_variables(optimizer):
    """The trainable variables `optimizer` was built with, or None.

    Reaches for `Optimizer._trainable_variables`, which `build` records; no
    public attribute holds them.
    """
    return getattr(optimizer, "_trainable_variables", None)


def variable_layout(variable):
    """The sharding layout of a Keras variable, or None.

    Reaches for `Variable._layout`, which Keras's own
    `add_variable_from_reference` reads to lay out a slot like its weight.
    That public method takes no dtype, and Rprop's slots have their own
    (float32 step sizes for 16-bit weights, int8 signs).
    """
    return getattr(variable, "_layout", None)


def in_stateless_scope():
    """Whether the code runs inside a `keras.StatelessScope`.

    Reaches for `keras.src.backend.common.stateless_scope.in_stateless_scope`.
    Inside such a scope (JAX's `stateless_apply`) variables must be
    assigned through Keras, never written in place; `keras.StatelessScope`
    is public but the test for being in one is not.
    """
    from keras.src.backend.common import stateless_scope

    return stateless_scope.in_stateless_scope()


def variable_values(variables):
    """The current tensors of Keras variables, read cheaply.

    Reaches for `Variable._value` and
    `keras.src.backend.common.variables.get_autocast_scope`. The public
    `value` property costs about as much as the whole update of a small
    variable on PyTorch; outside an autocast scope it returns `_value`,
    which is read directly there.
    """
    from keras.src.backend.common.variables import get_autocast_scope

    if get_autocast_scope() is not None:
        return [variable.value for variable in variables]
    values = []
    for variable in variables:
        value = getattr(variable, "_value", None)
        values.append(variable.value if value is None else value)
    return values


def keras_jax_fit_model():
    """The model whose Keras JAX `fit` is on the call stack, else None.

    Reaches for Keras's source layout: the `fit` method defined in
    `keras/src/backend/jax/trainer.py`, and its `self`. That `fit` builds
    the optimizer before it takes the weights out of the model for its
    compiled steps, so an error raised by the first step would leave the
    model without its weights; no public hook runs before that step.
    """
    trainer_file = os.path.join("backend", "jax", "trainer.py")
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "fit" and code.co_filename.endswith(trainer_file):
            model = frame.f_locals.get("self")
            return model if isinstance(model, keras.Model) else None
        frame = frame.f_back
    return None


def is_nnx_enabled():
    """Whether Keras runs JAX models as Flax NNX modules.

    `keras.config.is_nnx_enabled` is public from Keras 3.11; before it NNX
    mode does not exist.
    """
    function = getattr(keras.config, "is_nnx_enabled", None)
    return bool(function and function())


# -- Keras: the trainer ------------------------------------------------------


def loss_tracker(model):
    """The `keras.metrics.Mean` that logs a compiled model's `loss`.

    Reaches for `Trainer._loss_tracker`. The public `model.metrics` lists it
    first, but only once the model is compiled and built, and a training
    step must update it itself to log the loss as `fit` does.
    """
    return model._loss_tracker


def compile_metrics(model):
    """The metrics given to `compile`, as one metric object, or None.

    Reaches for `Trainer._compile_metrics`. The public
    `model.compute_metrics` updates them too but also reads every metric's
    result, which costs a transfer from the device per call.
    """
    return model._compile_metrics


def compiled_loss(model):
    """The loss object `compile` made, or None.

    Reaches for `Trainer._compile_loss`; no public attribute holds it.
    """
    return getattr(model, "_compile_loss", None)


def compute_loss(model, x, y, y_pred, sample_weight, training=True):
    """`model.compute_loss`, with `training` where the method takes it.

    Reaches for `Trainer._compute_loss`, Keras's wrapper for models whose
    `compute_loss` override predates its `training` argument; it decides
    from the method's signature once, where a public replacement would
    inspect it at every step.
    """
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def call_has_training_arg(model):
    """Whether `model.call` takes a `training` argument.

    Reaches for `Layer._call_has_training_arg`, which Keras computes from
    the signature once; the trainers pass `training=True` only then.
    """
    return model._call_has_training_arg


def symbolic_build(model, data_batch):
    """Builds a compiled model, its loss, metrics and optimizer from a batch.

    Reaches for `Trainer._symbolic_build(data_batch=...)`, which `fit` runs
    before its first step; the public `model.build` builds neither the
    compiled loss and metrics nor the optimizer.
    """
    model._symbolic_build(data_batch=data_batch)


def initial_epoch(model, initial_epoch):
    """The epoch to start from: the one a `BackupAndRestore` resumes, else
    `initial_epoch`.

    Reaches for `Trainer._initial_epoch`, which
    `keras.callbacks.BackupAndRestore` sets in `on_train_begin` and every
    trainer's `fit` reads; no public attribute holds it.
    """
    return model._initial_epoch or initial_epoch


def should_evaluate(model, epoch, validation_freq):
    """Whether `fit` validates after the 0-based `epoch`.

    Reaches for `Trainer._should_eval(epoch, validation_freq)`, so that
    `validation_freq` (an int, or a list of 1-based epochs) means exactly
    what it means to `fit`, errors included.
    """
    return model._should_eval(epoch, validation_freq)


@contextlib.contextmanager
def tracked_metric(model, metric):
    """Makes `metric` one of `model.metrics` for the duration of the block.

    Reaches for `Layer._metrics`, the list `model.metrics` gathers a
    model's own metrics from; a metric set as an attribute is tracked for
    good, and Keras offers no way to untrack it.
    """
    model._metrics.append(metric)
    try:
        yield
    finally:
        model._metrics.remove(metric)


def train_validation_split(arrays, validation_split):
    """Splits arrays as `fit(validation_split=...)` does: the last part
    validates.

    Reaches for
    `keras.src.trainers.data_adapters.array_slicing.train_validation_split`,
    so that the split, and its errors for data it cannot split, are those
    of `fit`.
    """
    from keras.src.trainers.data_adapters import array_slicing

    return array_slicing.train_validation_split(
        arrays, validation_split=validation_split
    )


def jax_distribute_data_input(array, layout):
    """Makes a global JAX array of this process's part of a batch.

    Does what Keras's private
    `keras.src.backend.jax.distribution_lib.distribute_data_input` does,
    with JAX's public `jax.make_array_from_process_local_data`; it reaches
    for `keras.distribution.TensorLayout.backend_layout`, the JAX sharding
    of a layout, which Keras does not document.

    Args:
        array: This process's part of the batch.
        layout: A `keras.distribution.TensorLayout` (as the distribution's
            `get_data_layout` gives), or a `jax.sharding.Sharding`.
    """
    import jax

    if isinstance(layout, keras.distribution.TensorLayout):
        layout = layout.backend_layout
    return jax.make_array_from_process_local_data(layout, array)


# -- TensorFlow --------------------------------------------------------------


def tf_in_xla_context():
    """Whether the TensorFlow graph being built is compiled by XLA.

    Reaches for
    `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext`:
    no public function tells whether an enclosing `tf.function` has
    `jit_compile=True`. A TensorFlow that moved it gives False, which
    costs the XLA ordering its speed only.
    """
    import tensorflow as tf

    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


def tf_variable(variable):
    """The `tf.Variable` that a Keras variable holds its value in.

    Reaches for `Variable._value`: the public `value` is the same object
    only outside an autocast or stateless scope, and the engine passes the
    `tf.Variable` itself to a `tf.function` (`tf_variables_bound`).
    """
    return variable._value


@contextlib.contextmanager
def tf_variables_bound(variables, tf_variables):
    """Makes Keras variables read and write other `tf.Variable`s, for a while.

    Reaches for `Variable._value` (see `tf_variable`). A `tf.function` that
    takes `tf.Variable`s as arguments gets stand-ins for them while it
    traces; code that reaches the variables through Keras (layers, losses,
    metrics, optimizers) would capture the real ones instead. Bound to the
    stand-ins for the duration of the trace, the Keras variables make the
    trace read and write its arguments, so that TensorFlow reuses it for
    other variables of the same shapes and dtypes. No public API rebinds a
    Keras variable (`StatelessScope` replaces reads by tensors and defers
    writes, which TensorFlow's gradient tape and optimizers do not follow).
    """
    variables = list(variables)
    originals = [variable._value for variable in variables]
    try:
        for variable, tf_variable in zip(variables, tf_variables):
            variable._value = tf_variable
        yield
    finally:
        for variable, original in zip(variables, originals):
            variable._value = original


def tf_num_workers(strategy):
    """The number of workers of a `MultiWorkerMirroredStrategy`.

    Reaches for `strategy.extended._num_workers`, which the strategy counts
    from its cluster (chief included) and which its own collectives use;
    the public cluster resolver needs the cluster's own counting rules.
    """
    return strategy.extended._num_workers


def tf_untracked(trackable, value):
    """`value`, marked so that setting it as an attribute of `trackable`
    adds no dependency to its TensorFlow checkpoints.

    Reaches for `Trackable._no_dependency`: TensorFlow tracks every
    variable, list and dict set as an attribute of a trackable object (a
    `tf_keras` optimizer), and a variable saved nowhere else, or a plain
    list, must stay out of its checkpoints.
    """
    return trackable._no_dependency(value)


# -- tf_keras (Keras 2) ------------------------------------------------------


def tf_keras_variable_index(optimizer, variable):
    """The index of `variable` among those a `tf_keras` optimizer was built
    with.

    Reaches for `Optimizer._index_dict` and `Optimizer._var_key`, which
    `tf_keras`'s own optimizers use to find a variable's slots (the key of
    a distributed variable is its container's).
    """
    return optimizer._index_dict[optimizer._var_key(variable)]


def tf_keras_track_variable(optimizer, variable):
    """Makes `variable` part of a `tf_keras` optimizer's saved state.

    Reaches for `Optimizer._variables`, the list `variables`, saving and
    loading read. The public `add_variable` takes no aggregation, which the
    optimizer's loss under a distribution strategy needs.
    """
    optimizer._variables.append(variable)
    return variable


def tf_keras_is_built(optimizer):
    """Whether a `tf_keras` optimizer made its slots.

    Reaches for `Optimizer._built`, the flag `tf_keras`'s optimizers set in
    `build` and its base class reads (no public `built` exists there).
    """
    return getattr(optimizer, "_built", False)


def tf_keras_set_built(optimizer):
    """Sets the flag `tf_keras_is_built` reads (`Optimizer._built`)."""
    optimizer._built = True


def tf_keras_learning_rate(optimizer, learning_rate):
    """Sets a `tf_keras` optimizer's learning rate from the constructor's
    argument.

    Reaches for `Optimizer._build_learning_rate` and `_learning_rate`:
    `tf_keras`'s optimizers make the variable (or the schedule's current
    rate) that way in `__init__`; the public setter only assigns to one
    that exists.
    """
    optimizer._learning_rate = optimizer._build_learning_rate(learning_rate)


def tf_keras_serialized_learning_rate(optimizer):
    """A `tf_keras` optimizer's learning rate as `get_config` writes it.

    Reaches for `Optimizer._serialize_hyperparameter(_learning_rate)`: a
    schedule serialized, a variable's value, a callable's result.
    """
    return optimizer._serialize_hyperparameter(optimizer._learning_rate)


# -- PyTorch -----------------------------------------------------------------


def torch_foreach_add_(tensors, others):
    """Adds `others` to `tensors` in place, one dispatch for all of them.

    Reaches for `torch._foreach_add_`, which `torch.optim` uses; no public
    multi-tensor operation exists.
    """
    import torch

    torch._foreach_add_(tensors, others)


def torch_foreach_copy_(tensors, sources):
    """Copies `sources` into `tensors`, one dispatch for all of them.

    Reaches for `torch._foreach_copy_` (see `torch_foreach_add_`).
    """
    import torch

    torch._foreach_copy_(tensors, sources)


# Options of `torch.compile` for the fused update: Inductor's C++ loops
# always parallel, with the number of threads chosen per call. Reaches for
# `torch._inductor.config.cpp.dynamic_threads`: Inductor otherwise decides
# from the first call's size, and with `dynamic=True` that kernel serves
# every later size, large ones on one core.
TORCH_COMPILE_OPTIONS = {"cpp.dynamic_threads": True}


def torch_is_tracing():
    """Whether PyTorch is recording the running code (Dynamo or `make_fx`).

    Reaches for `torch.fx.experimental.proxy_tensor.get_proxy_mode` (from
    torch 2.5): `torch.compiler.is_compiling` is public but says nothing
    of a `make_fx` record.
    """
    import torch
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return torch.compiler.is_compiling() or get_proxy_mode() is not None


def torch_value_reads():
    """The ATen operations that read a tensor's value into Python.

    Reaches for `aten._local_scalar_dense` (what `.item()` and `if tensor:`
    dispatch) by its private name: a record containing it froze a value.
    """
    import torch

    return {
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.item.default,
    }


def torch_one_fake_mode():
    """A context in which `make_fx` describes every tensor with one mode.

    Reaches for `torch._guards.TracingContext`, `torch._guards.tracing` and
    `torch._subclasses.fake_tensor.FakeTensorMode`. Without a fake mode in
    the tracing context, `make_fx` creates one (and captures a Python
    stack) per tensor, most of the cost of a record; the record is the
    same. A PyTorch that moved them gets a context that does nothing.
    """
    try:
        from torch import _guards
        from torch._subclasses.fake_tensor import FakeTensorMode

        context = _guards.TracingContext(
            FakeTensorMode(allow_fallback_kernels=True)
        )
        return _guards.tracing(context)
    except (ImportError, AttributeError, TypeError):
        return contextlib.nullcontext()


@contextlib.contextmanager
def torch_record_without_fake_values():
    """A context in which this thread's `make_fx` records store no fake
    value per operation.

    Reaches for `torch.fx.experimental.proxy_tensor.set_meta`, the
    module-level function that stores a fake copy of each result in the
    record for compiler passes; a record that is only replayed reads none,
    and making them is most of the cost of a record. The function is
    replaced for the duration of the block; other threads' calls go
    through. A PyTorch without it records as usual.
    """
    import threading

    from torch.fx.experimental import proxy_tensor

    original = getattr(proxy_tensor, "set_meta", None)
    if original is None:
        yield
        return
    thread = threading.get_ident()

    def set_meta(proxy, value):
        if threading.get_ident() == thread:
            return proxy
        return original(proxy, value)

    proxy_tensor.set_meta = set_meta
    try:
        yield
    finally:
        proxy_tensor.set_meta = original
