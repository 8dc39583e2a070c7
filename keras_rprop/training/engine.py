"""The engine of `fit_full_batch` for data in memory.

`model.fit` on one batch per epoch spends most of its time outside the
step: a new data iterator, the per-epoch bookkeeping, `evaluate` for the
validation data and the callbacks, every epoch. This engine converts the
data to backend tensors once and runs the epochs, their validation
included, with compiled code of its own, built on the step of
`train_steps`:

- TensorFlow: one `tf.function` with a `tf.while_loop` over epochs.
- JAX: one `jax.jit` function with a `lax.while_loop` over epochs.
- PyTorch: one step recorded and replayed (`torch_replay`) per step, and
  the validation likewise.

Every epoch starts with fresh metrics, runs `steps_per_epoch` optimizer
steps (the last one feeds the metrics), validates when `validation_freq`
says so (Keras's own `test_step` over the validation batches), and yields
the epoch's logs. The engine drives the callbacks through a
`keras.callbacks.CallbackList` as `fit` does: `on_train_begin`, then per
epoch `on_epoch_begin`, `on_train_batch_begin`, `on_train_batch_end`,
`on_epoch_end`, and `on_train_end`. The batch calls are left out when no
callback defines them: Keras's `CallbackList` hands each one to a thread
on JAX and PyTorch, a round trip that can cost more than a small model's
epoch.

Several epochs run in one compiled call when every callback is one whose
meaning the engine keeps when it is told of the epochs afterwards:

- callbacks that only read the logs (the `History`, the progress display
  of `progress.py`, `LossGoal`);
- Keras's deciding callbacks (`EarlyStopping`, `ReduceLROnPlateau`,
  `TerminateOnNaN`, the classes themselves, not subclasses) and the
  stopping criteria of `stopping.py`. They read the logs, the weights
  (through `model.get_weights`) and the learning rate, and they stop the
  training or change the learning rate. The engine runs a chunk of epochs
  ahead, keeping the weights of every epoch when one of them reads them,
  then calls them epoch by epoch, with `model.get_weights` answering the
  weights of that epoch. When one of them stops or changes the learning
  rate before the chunk's last epoch, the training ran too far: the state
  from before the chunk is restored and the epochs up to that one are run
  again (the same computation, so the same weights), with the learning
  rate of that time. A loss goal and `TerminateOnNaN` end the chunk inside
  the compiled loop, so they never run ahead.

With any other callback, each epoch is one compiled call, told to the
callbacks as it ends.
"""

import math

import keras
import numpy as np

from keras_rprop import compat
from keras_rprop.training import distributed
from keras_rprop.training import runners
from keras_rprop.training import stopping
from keras_rprop.training import train_steps
from keras_rprop.training.progress import EpochProgress
from keras_rprop.training.progress import LossGoal
from keras_rprop.training.progress import progress_callback
from keras_rprop.training.runners import common

# Epochs per compiled call when a progress display is shown: the display is
# updated about this many times.
_PROGRESS_UPDATES = 100

# Epochs per compiled call when a deciding callback is told of them
# afterwards: a stop before the chunk's end runs up to this many epochs
# again.
_DECIDING_CHUNK = 64

# The weights of every epoch of a chunk, kept for deciding callbacks that
# read them, take at most about this many bytes.
_SNAPSHOT_BYTES = 64 * 2**20

# More validation batches than this are evaluated by `model.evaluate`
# rather than unrolled into the compiled loop.
_MAX_VALIDATION_BATCHES = 16

# Arrays in at most this many chunks have their chunks unrolled into the
# compiled step; more go through `model.fit` chunk by chunk.
MAX_CHUNKS = 32


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
    chunk_size=None,
):
    """Trains on arrays in memory (see `fit_full_batch`); returns History.

    With `chunk_size`, each step sums the gradients of the chunks of the
    data (in one compiled step, at most `MAX_CHUNKS` of them).
    """
    if validation_split and validation_data is None:
        # The last fraction of the samples, as `fit` splits it.
        (x, y, sample_weight), validation_data = compat.train_validation_split(
            (x, y, sample_weight), validation_split
        )
    data = _to_tensors((x, y, sample_weight))
    samples = int(train_steps.batch_size(data[0]))
    _build(model, data)
    batch_size = chunk_size or samples

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
    runner = runners.runner(
        model, _batches(data, samples, batch_size), steps_per_epoch
    )
    validation = None
    if validation_data is not None:
        validation = _Validation(
            model,
            validation_data,
            validation_batch_size or batch_size,
            in_loop=runner.validates
            and not any(_reads_evaluation(c) for c in user_callbacks),
        )
    plan = _Plan(model, callback_list.callbacks, epochs, progress, validation)
    batch_hooks = any(_has_batch_hooks(c) for c in callback_list.callbacks)

    model.stop_training = False
    callback_list.on_train_begin()
    initial_epoch = compat.initial_epoch(model, initial_epoch)
    epoch = initial_epoch
    training_logs = None
    while epoch < epochs and not model.stop_training:
        count = plan.chunk(epoch)
        validate = None
        if validation is not None:
            validate = [
                compat.should_evaluate(model, e, validation_freq)
                for e in range(epoch, epoch + count)
            ]
        if count == 1 and not plan.told_afterwards:
            # Callbacks that need each epoch as it happens.
            callback_list.on_epoch_begin(epoch)
            if batch_hooks:
                callback_list.on_train_batch_begin(0)
            result = runner.run(1, validation=validation, validate=validate)
            logs = dict(result.logs[0])
            if batch_hooks:
                callback_list.on_train_batch_end(0, _training_only(logs))
            logs.update(
                _late_validation(validation, validate, 0, callback_list)
            )
            callback_list.on_epoch_end(epoch, logs)
            training_logs = logs
            epoch += 1
            continue

        saved = _State(model) if plan.decides else None
        learning_rate = _learning_rate(model) if plan.changes_rate else None
        options = dict(
            goal=plan.goal,
            stop_on_nan=plan.stop_on_nan,
            snapshots=plan.snapshots,
            validation=validation,
        )
        result = runner.run(count, validate=validate, **options)
        ran = len(result.logs)
        for offset, logs in enumerate(result.logs):
            logs = dict(logs)
            callback_list.on_epoch_begin(epoch + offset)
            if batch_hooks:
                callback_list.on_train_batch_begin(0)
                callback_list.on_train_batch_end(0, _training_only(logs))
            logs.update(
                _late_validation(validation, validate, offset, callback_list)
            )
            with (
                _weights_of_epoch(model, result.weights, offset),
                _comparisons_on_the_host(callback_list.callbacks),
            ):
                callback_list.on_epoch_end(epoch + offset, logs)
            training_logs = logs
            new_learning_rate = (
                _learning_rate(model) if plan.changes_rate else None
            )
            if offset + 1 < ran and (
                model.stop_training or new_learning_rate != learning_rate
            ):
                # Decided before the chunk's last epoch: train again up to
                # this epoch, as it would have run.
                # The same compiled call, so the same computation.
                saved.restore()
                runner.run(offset + 1, validate=validate, **options)
                _set_learning_rate(model, new_learning_rate)
                ran = offset + 1
                break
        epoch += ran

    if epochs > initial_epoch and isinstance(
        model.optimizer, keras.optimizers.Optimizer
    ):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=training_logs)
    return history


# -- Which callbacks may be told of epochs afterwards -------------------------


def _deciding_classes():
    return (
        keras.callbacks.EarlyStopping,
        keras.callbacks.ReduceLROnPlateau,
        keras.callbacks.TerminateOnNaN,
        *stopping.STOPPING_CRITERIA,
    )


def _reads_logs_only(callback):
    return type(callback) in (keras.callbacks.History, EpochProgress) or (
        isinstance(callback, LossGoal)
    )


def _reads_weights(callback):
    return bool(getattr(callback, "restore_best_weights", False))


def _has_batch_hooks(callback):
    """Whether a callback defines a training batch's begin or end."""
    return _overrides(
        callback,
        "on_batch_begin",
        "on_batch_end",
        "on_train_batch_begin",
        "on_train_batch_end",
    )


def _reads_evaluation(callback):
    """Whether a callback wants to be called while validation runs."""
    return _overrides(
        callback,
        "on_test_begin",
        "on_test_end",
        "on_test_batch_begin",
        "on_test_batch_end",
    )


def _overrides(callback, *methods):
    """Whether `callback`'s class defines any of `methods` itself."""
    return any(
        getattr(type(callback), name)
        is not getattr(keras.callbacks.Callback, name)
        for name in methods
    )


class _Plan:
    """How many epochs each compiled call runs, and what it watches."""

    def __init__(self, model, callbacks, epochs, progress, validation):
        deciding = _deciding_classes()
        self.decides = any(type(c) in deciding for c in callbacks)
        self.told_afterwards = all(
            _reads_logs_only(c) or type(c) in deciding for c in callbacks
        )
        goals = [c.goal for c in callbacks if isinstance(c, LossGoal)]
        self.goal = max(goals, default=None)
        self.stop_on_nan = any(
            type(c) is keras.callbacks.TerminateOnNaN for c in callbacks
        )
        self.snapshots = any(
            type(c) in deciding and _reads_weights(c) for c in callbacks
        )
        self.changes_rate = any(
            type(c) is keras.callbacks.ReduceLROnPlateau for c in callbacks
        )
        if not self.told_afterwards:
            self.size = 1
        elif progress is not None:
            self.size = max(1, math.ceil(epochs / _PROGRESS_UPDATES))
        else:
            self.size = epochs
        if self.decides:
            self.size = min(self.size, _DECIDING_CHUNK)
        if self.snapshots:
            weight_bytes = sum(
                math.prod(w.shape) * np.dtype(w.dtype).itemsize
                for w in model.weights
            )
            self.size = min(
                self.size, max(1, _SNAPSHOT_BYTES // max(1, weight_bytes))
            )
        self.epochs = epochs

    def chunk(self, epoch):
        return min(self.size, self.epochs - epoch)


def _training_only(logs):
    return {k: v for k, v in logs.items() if not k.startswith("val_")}


class _State:
    """The values of the model's and optimizer's variables, to restore."""

    def __init__(self, model):
        self.variables = list(model.variables) + list(model.optimizer.variables)
        # Copies on the device: most chunks are never rolled back.
        self.values = [keras.ops.copy(v.value) for v in self.variables]

    def restore(self):
        for variable, value in zip(self.variables, self.values):
            variable.assign(value)


def _learning_rate(model):
    """The learning rate held in a variable (not a schedule), or `None`."""
    learning_rate = model.optimizer.learning_rate
    if not isinstance(learning_rate, keras.Variable):
        return None
    return float(keras.ops.convert_to_numpy(learning_rate))


def _set_learning_rate(model, value):
    if value is not None:
        model.optimizer.learning_rate = value


class _weights_of_epoch:
    """`model.get_weights` answers the weights of one epoch of a chunk."""

    def __init__(self, model, weights, offset):
        self.model = model
        self.weights = None if weights is None else weights[offset]

    def __enter__(self):
        if self.weights is not None:
            weights = self.weights
            object.__setattr__(
                self.model,
                "get_weights",
                lambda: [np.array(w) for w in weights],
            )

    def __exit__(self, *exc_info):
        if self.weights is not None:
            del self.model.__dict__["get_weights"]


class _comparisons_on_the_host:
    """Keras's monitoring callbacks compare with NumPy while told of epochs.

    `EarlyStopping` and `ReduceLROnPlateau` compare each epoch's value with
    `keras.ops.less` or `greater`, which on TensorFlow runs an eager
    operation per epoch (most of the time of telling them of an epoch).
    NumPy makes the same comparison of the same values in the same dtype
    (`floatx`, into which the backend converts the Python floats).
    """

    def __init__(self, callbacks):
        self.callbacks = [
            c
            for c in callbacks
            if type(c)
            in (
                keras.callbacks.EarlyStopping,
                keras.callbacks.ReduceLROnPlateau,
            )
        ]

    def __enter__(self):
        dtype = np.dtype(keras.config.floatx()).type
        replacements = {
            keras.ops.less: lambda a, b: np.less(dtype(a), dtype(b)),
            keras.ops.greater: lambda a, b: np.greater(dtype(a), dtype(b)),
        }
        self.originals = []
        for callback in self.callbacks:
            operation = callback.monitor_op
            if operation in replacements:
                self.originals.append((callback, operation))
                callback.monitor_op = replacements[operation]

    def __exit__(self, *exc_info):
        for callback, operation in self.originals:
            callback.monitor_op = operation


# -- Validation ---------------------------------------------------------------


class _Validation:
    """The validation data in batches, evaluated in the loop or afterwards.

    In the compiled loop, an epoch with validation resets the metrics and
    runs the model's own `test_step` over the batches, as `evaluate` does.
    When a callback wants to be called during evaluation, or the batches
    are too many to unroll, `model.evaluate` runs after the epoch instead.
    """

    def __init__(self, model, validation_data, batch_size, in_loop):
        self.model = model
        self.batch_size = batch_size
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
            validation_data
        )
        self.data = (x, y, sample_weight)
        tensors = _to_tensors(self.data)
        samples = int(train_steps.batch_size(tensors[0]))
        self.in_loop = (
            in_loop and -(-samples // batch_size) <= _MAX_VALIDATION_BATCHES
        )
        self.batches = ()
        if self.in_loop:
            self.batches = _batches(tensors, samples, batch_size)

    def evaluate(self, callbacks=None):
        x, y, sample_weight = self.data
        logs = self.model.evaluate(
            x=x,
            y=y,
            sample_weight=sample_weight,
            batch_size=self.batch_size,
            callbacks=callbacks,
            verbose=0,
            return_dict=True,
        )
        variables = distributed.summed_metric_variables(self.model.metrics)
        if variables:
            # Across processes: the metrics of every process's validation
            # data (`evaluate` reset them first).
            distributed.add_metric_updates(variables)
            logs = common.floats(self.model.get_metrics_result())
        return {f"val_{name}": value for name, value in logs.items()}


def _late_validation(validation, validate, offset, callback_list):
    """The validation logs of an epoch that `evaluate` validates."""
    if validation is None or validation.in_loop or not validate[offset]:
        return {}
    return validation.evaluate(callback_list)


# -- Data ---------------------------------------------------------------------


def _to_tensors(data):
    def convert(value):
        if value is None:
            return None
        return keras.ops.convert_to_tensor(value)

    return keras.tree.map_structure(convert, data)


def _batches(data, samples, batch_size):
    """`data` in consecutive batches of `batch_size` samples (the last may
    hold fewer), as `fit` and `evaluate` cut arrays."""
    return tuple(
        keras.tree.map_structure(
            lambda t, s=start: None if t is None else t[s : s + batch_size],
            data,
        )
        for start in range(0, samples, batch_size)
    )


def _build(model, data):
    """Builds the model, its compiled loss and metrics, and the optimizer."""
    compat.symbolic_build(model, data)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
