"""The engine of `fit_full_batch` for data in memory.

`model.fit` on one batch per epoch spends most of its time outside the
step: a new data iterator, the per-epoch bookkeeping and the callbacks,
every epoch. This engine converts the data to backend tensors once and
runs the epochs with compiled code of its own, built on the step of
`train_steps`:

- TensorFlow: one `tf.function` with a `tf.while_loop` over epochs.
- JAX: one `jax.jit` function with a `lax.while_loop` over epochs.
- PyTorch: one step recorded and replayed (`torch_replay`) per step.

Every epoch starts with fresh metrics, runs `steps_per_epoch` optimizer
steps (the last one feeds the metrics), and yields the epoch's logs. The
engine drives the callbacks through a `keras.callbacks.CallbackList` as
`fit` does: `on_train_begin`, then per epoch `on_epoch_begin`,
`on_train_batch_begin`, `on_train_batch_end`, validation, `on_epoch_end`,
and `on_train_end`.

When every callback only reads the epochs' logs (the `History`, the
progress display of `progress.py`, `LossGoal`), several epochs run in one
compiled call, and their callbacks are called afterwards with each epoch's
logs. `LossGoal` is checked inside that call, so training stops at the same
epoch as it would one epoch at a time. An epoch with validation ends a
call.
"""

import math

import keras
import numpy as np
from keras.src.trainers.data_adapters import array_slicing

from keras_rprop.training import distributed
from keras_rprop.training import train_steps
from keras_rprop.training.progress import LossGoal
from keras_rprop.training.progress import progress_callback

# Compiled epoch loops are kept on the model, past Keras's attribute
# tracking (they are no state of the model), and reused by the next call
# with the same step count and data structure.
_CACHE_ATTRIBUTE = "_keras_rprop_engines"

# Epochs per compiled call when a progress display is shown: the display is
# updated about this many times.
_PROGRESS_UPDATES = 100


def fit_in_memory(
    model,
    x,
    y,
    *,
    epochs,
    steps_per_epoch=1,
    callbacks=None,
    verbose="auto",
    validation_split=0.0,
    validation_data=None,
    validation_freq=1,
    validation_batch_size=None,
    sample_weight=None,
    initial_epoch=0,
):
    """Trains on arrays in memory (see `fit_full_batch`); returns History."""
    if validation_split and validation_data is None:
        # The last fraction of the samples, as `fit` splits it.
        (x, y, sample_weight), validation_data = (
            array_slicing.train_validation_split(
                (x, y, sample_weight), validation_split=validation_split
            )
        )
    data = _to_tensors((x, y, sample_weight))
    samples = train_steps.batch_size(data[0])
    _build(model, data)

    if verbose == "auto":
        verbose = 1
    user_callbacks = list(callbacks or [])
    progress = progress_callback(verbose, epochs)
    callback_list = keras.callbacks.CallbackList(
        user_callbacks + ([progress] if progress is not None else []),
        add_history=True,
        add_progbar=False,
        verbose=verbose,
        epochs=epochs,
        steps=1,
        model=model,
    )
    history = next(
        c
        for c in callback_list.callbacks
        if isinstance(c, keras.callbacks.History)
    )
    goals = [c.goal for c in user_callbacks if isinstance(c, LossGoal)]
    logs_only = all(_reads_logs_only(c) for c in user_callbacks)
    if progress is None:
        chunk = epochs
    else:
        chunk = max(1, math.ceil(epochs / _PROGRESS_UPDATES))

    runner = _runner(model, data, steps_per_epoch)
    model.stop_training = False
    callback_list.on_train_begin()
    initial_epoch = model._initial_epoch or initial_epoch
    epoch = initial_epoch
    training_logs = None
    while epoch < epochs and not model.stop_training:
        validate = validation_data is not None and model._should_eval(
            epoch, validation_freq
        )
        if logs_only and not validate:
            count = min(chunk, epochs - epoch)
            if validation_data is not None:
                count = min(
                    count,
                    _epochs_to_validation(
                        model, epoch, epochs, validation_freq
                    ),
                )
        else:
            count = 1
        if count == 1 or not logs_only:
            callback_list.on_epoch_begin(epoch)
            callback_list.on_train_batch_begin(0)
            logs = runner.run(1)[0]
            callback_list.on_train_batch_end(0, logs)
            logs_by_epoch = [logs]
        else:
            logs_by_epoch = runner.run(count, max(goals, default=None))
        for offset, logs in enumerate(logs_by_epoch):
            logs = dict(logs)
            if count > 1 and logs_only:
                callback_list.on_epoch_begin(epoch + offset)
            # A chunk of epochs ends at an epoch with validation.
            if validation_data is not None and model._should_eval(
                epoch + offset, validation_freq
            ):
                logs.update(
                    _validate(
                        model,
                        validation_data,
                        validation_batch_size or samples,
                        callback_list,
                    )
                )
            callback_list.on_epoch_end(epoch + offset, logs)
            training_logs = logs
        epoch += len(logs_by_epoch)

    if epochs > initial_epoch and isinstance(
        model.optimizer, keras.optimizers.Optimizer
    ):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=training_logs)
    return history


def _reads_logs_only(callback):
    """Whether a callback may be told of an epoch after later ones ran."""
    return isinstance(callback, (keras.callbacks.History, LossGoal))


def _epochs_to_validation(model, epoch, epochs, frequency):
    count = 1
    while epoch + count < epochs and not model._should_eval(
        epoch + count - 1, frequency
    ):
        count += 1
    return count


def _validate(model, validation_data, batch_size, callback_list):
    val_x, val_y, val_sample_weight = keras.utils.unpack_x_y_sample_weight(
        validation_data
    )
    logs = model.evaluate(
        x=val_x,
        y=val_y,
        sample_weight=val_sample_weight,
        batch_size=batch_size,
        callbacks=callback_list,
        return_dict=True,
    )
    variables = distributed.summed_metric_variables(model.metrics)
    if variables:
        # Across processes: the metrics of every process's validation data
        # (`evaluate` reset them first).
        distributed.add_metric_updates(variables)
        logs = _floats(model.get_metrics_result())
    return {f"val_{name}": value for name, value in logs.items()}


def _to_tensors(data):
    def convert(value):
        if value is None:
            return None
        return keras.ops.convert_to_tensor(value)

    return keras.tree.map_structure(convert, data)


def _build(model, data):
    """Builds the model, its compiled loss and metrics, and the optimizer."""
    model._symbolic_build(data_batch=data)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _runner(model, data, steps):
    backend = keras.backend.backend()
    key = (
        backend,
        steps,
        str(keras.tree.map_structure(_spec, data)),
        id(model.optimizer),
        id(model._loss_tracker),
        model.jit_compile,
    )
    cache = model.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = {}
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)
    runner = cache.get(key)
    if runner is None:
        runner = (distributed.runner_class(model) or _RUNNERS[backend])(
            model, steps
        )
        cache.clear()
        cache[key] = runner
    runner.data = data
    return runner


def _spec(value):
    if value is None:
        return None
    return (tuple(value.shape), str(value.dtype))


def _log_keys(model):
    model.reset_metrics()
    if keras.backend.backend() == "jax":
        import jax

        # The names alone: computed eagerly, each metric's `result` would
        # compile small programs on a first call.
        return list(jax.eval_shape(model.get_metrics_result))
    return list(model.get_metrics_result())


def _floats(logs):
    return {key: float(value) for key, value in logs.items()}


class _TensorFlowRunner:
    """Epochs in one `tf.function`: a `tf.while_loop` over epochs."""

    def __init__(self, model, steps):
        import tensorflow as tf

        self.model = model
        self.steps = steps
        self.keys = _log_keys(model)
        self.data = None
        # Keras compiles its own steps without AutoGraph too: the step has
        # no Python control flow on tensors to convert.
        self.function = tf.function(
            self._epochs,
            autograph=False,
            jit_compile=bool(model.jit_compile),
            reduce_retracing=True,
        )

    def _epochs(self, data, epochs, goal):
        import tensorflow as tf

        model = self.model
        x, y, sample_weight = data

        def body(epoch, stop, values):
            for metric in model.metrics:
                metric.reset_state()
            if self.steps > 1:
                tf.while_loop(
                    lambda i: i < self.steps - 1,
                    lambda i: _untracked(model, data, i),
                    (tf.constant(0),),
                    parallel_iterations=1,
                )
            y_pred = train_steps.update(model, x, y, sample_weight)
            logs = model.compute_metrics(x, y, y_pred, sample_weight)
            values = [
                array.write(epoch, tf.cast(logs[key], "float32"))
                for array, key in zip(values, self.keys)
            ]
            stop = tf.cast(logs["loss"], "float32") <= goal
            return epoch + 1, stop, values

        values = [tf.TensorArray("float32", size=epochs) for _ in self.keys]
        count, _, values = tf.while_loop(
            lambda epoch, stop, values: tf.logical_and(
                epoch < epochs, tf.logical_not(stop)
            ),
            body,
            (tf.constant(0), tf.constant(False), values),
            parallel_iterations=1,
        )
        return count, [array.stack() for array in values]

    def run(self, epochs, goal=None):
        import tensorflow as tf

        count, values = self.function(
            self.data,
            tf.constant(epochs),
            tf.constant(-np.inf if goal is None else goal, "float32"),
        )
        count = int(count)
        values = [np.asarray(v)[:count] for v in values]
        return [
            {key: float(v[i]) for key, v in zip(self.keys, values)}
            for i in range(count)
        ]


def _untracked(model, data, i):
    train_steps.untracked_update(model, *data)
    return (i + 1,)


class _JaxRunner:
    """Epochs in one `jax.jit` function: a `lax.while_loop` over epochs."""

    def __init__(self, model, steps):
        import jax

        self.model = model
        self.steps = steps
        self.keys = _log_keys(model)
        self.data = None
        self.function = jax.jit(self._epochs, static_argnames=("size",))

    def _epochs(self, state, data, epochs, goal, size):
        import jax
        import jax.numpy as jnp

        model = self.model
        x, y, sample_weight = data
        fresh_metrics = state[3]

        def body(carry):
            epoch, _, state, values = carry
            state = (*state[:3], fresh_metrics)
            if self.steps > 1:
                state = train_steps.jax_repeat(
                    model, state, x, y, sample_weight, self.steps - 1
                )
            state, loss, y_pred = train_steps.jax_update(
                model, state, x, y, sample_weight
            )
            logs, metrics = train_steps.jax_update_metrics(
                model, state[3], loss, x, y, y_pred, sample_weight
            )
            values = [
                array.at[epoch].set(jnp.asarray(logs[key], "float32"))
                for array, key in zip(values, self.keys)
            ]
            stop = jnp.asarray(logs["loss"], "float32") <= goal
            return epoch + 1, stop, (*state[:3], metrics), values

        values = [jnp.zeros((size,), "float32") for _ in self.keys]
        count, _, state, values = jax.lax.while_loop(
            lambda carry: (carry[0] < epochs) & ~carry[1],
            body,
            (jnp.asarray(0), jnp.asarray(False), tuple(state), values),
        )
        return count, state, values

    def run(self, epochs, goal=None):
        model = self.model
        groups = (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
        model.reset_metrics()
        state = tuple([v.value for v in group] for group in groups)
        # One compiled size per power of two of epochs, so that calls with
        # other epoch counts reuse it.
        size = 1 << max(0, epochs - 1).bit_length()
        count, state, values = self.function(
            state,
            self.data,
            epochs,
            -np.inf if goal is None else goal,
            size=size,
        )
        for group, new_values in zip(groups, state):
            for variable, value in zip(group, new_values):
                variable.assign(value)
        count = int(count)
        values = [np.asarray(v)[:count] for v in values]
        return [
            {key: float(v[i]) for key, v in zip(self.keys, values)}
            for i in range(count)
        ]


class _TorchRunner:
    """Epochs in Python; each step replays one recorded step."""

    def __init__(self, model, steps):
        self.model = model
        self.steps = steps
        self.data = None

    def run(self, epochs, goal=None):
        import torch

        from keras_rprop.training import torch_replay

        model = self.model
        untracked = None
        if self.steps > 1:
            untracked = torch_replay.stepper(
                model, train_steps.untracked_update, self.data
            )
        tracked = torch_replay.stepper(model, _tracked_update, self.data)
        # With the loss as the only metric, an epoch's log is its loss
        # tracker's sum and count, read once after the epochs.
        loss_only = list(model.metrics) == [model._loss_tracker]
        tracker = model._loss_tracker
        logs_by_epoch = []
        sums = []
        for _ in range(epochs):
            for _ in range(self.steps - 1):
                untracked()
            tracked()
            if loss_only and goal is None:
                sums.append(
                    (tracker.total.value.clone(), tracker.count.value.clone())
                )
                continue
            logs = _floats(model.get_metrics_result())
            logs_by_epoch.append(logs)
            if goal is not None and logs["loss"] <= goal:
                break
        if sums:
            totals, counts = (torch.stack(v) for v in zip(*sums))
            losses = keras.ops.divide_no_nan(totals, counts)
            logs_by_epoch = [{"loss": loss} for loss in losses.tolist()]
        return logs_by_epoch


def _tracked_update(model, x, y, sample_weight):
    """An optimizer step that feeds fresh metrics (PyTorch)."""
    import torch

    for metric in model.metrics:
        metric.reset_state()
    with distributed.global_metrics(model.metrics):
        y_pred = train_steps.update(model, x, y, sample_weight)
        with torch.no_grad():
            if model._compile_metrics is not None:
                model._compile_metrics.update_state(y, y_pred, sample_weight)


_RUNNERS = {
    "tensorflow": _TensorFlowRunner,
    "jax": _JaxRunner,
    "torch": _TorchRunner,
}
