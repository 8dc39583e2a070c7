"""The one full-batch training step of `keras_rprop`, per backend.

A step is made of three parts, so that the gradient of data in several
pieces (chunks of a data set, shards held by several processes) is added up
before it is used:

- `gradient_sums`: the gradient and the loss of a batch, as sums over its
  samples (the mean times the number of samples), with that number. Sums of
  pieces add up to the sums of the whole data.
- `global_sums`: the sums over every piece that takes part in the step. In
  one process they are the sums themselves; training across processes adds
  the sums of all processes here, and only here.
- `apply_sums`: divides by the number of samples (the mean gradient and loss
  of the whole data) and applies one optimizer step, the loss handed to
  Rprop through the loss channel.

Everything that trains builds on them: `enable_loss`'s `train_step`, the
engine of `fit_full_batch`, `steps_per_epoch=k`, the chunked gradient sums
and PyTorch's recorded step. For the Keras trainers this module also
defines:

- `train_step`: Keras's training step, but handing the unscaled loss to the
  optimizer (`enable_loss`); with `steps=k`, `update_steps`: k updates on
  the same batch in one call.
- `accumulate_step`: no update; adds the chunk's `gradient_sums` to a
  `GradientAccumulator` (exact full-batch training from chunks).

On JAX every function is stateless: it takes the values of the variables
and returns new ones.
"""

import collections
import warnings

import keras
from keras import ops

from keras_rprop import compat
from keras_rprop.training import distributed
from keras_rprop.training.loss_channel import apply_with_loss
from keras_rprop.training.loss_channel import stateless_apply_with_loss

Sums = collections.namedtuple("Sums", ["grads", "loss", "samples"])
Sums.__doc__ = """Sums over the samples of a batch.

Attributes:
    grads: List of the gradient sums, one per trainable variable (the mean
        gradient times `samples`); `None` for a variable without gradient.
    loss: The loss sum (the mean loss times `samples`), a scalar.
    samples: The number of samples, a float32 scalar.
"""


def global_sums(sums):
    """The sums of every process that takes part in the step.

    In one process: `sums` itself. Training across processes all-reduces
    (adds) `sums.grads`, `sums.loss` and `sums.samples` over the processes
    here, so that every process applies the same step.

    Args:
        sums: The `Sums` of this process.

    Returns:
        The `Sums` of all processes.
    """
    return distributed.global_sums(sums)


def mean_gradients_and_loss(sums, variables):
    """The mean gradients (in the variables' dtypes) and loss of `sums`."""
    grads = []
    for total, variable in zip(sums.grads, variables):
        if total is None:
            grads.append(None)
            continue
        grads.append(_scaled(total, sums.samples, variable.dtype, divide=True))
    loss = ops.divide(ops.cast(sums.loss, "float32"), sums.samples)
    return grads, loss


def _to_sums(grads, loss, samples):
    samples = ops.cast(samples, "float32")
    grads = [None if g is None else _scaled(g, samples, g.dtype) for g in grads]
    return Sums(grads, ops.cast(loss, "float32") * samples, samples)


def _scaled(gradient, samples, dtype, divide=False):
    """`gradient` times (or divided by) `samples`, as `dtype`.

    TensorFlow's sparse gradients (`IndexedSlices`, from embeddings) stay
    sparse.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            values = _scaled(gradient.values, samples, dtype, divide)
            return tf.IndexedSlices(
                values, gradient.indices, gradient.dense_shape
            )
    factor = ops.cast(samples, gradient.dtype)
    if divide:
        return ops.cast(ops.divide(gradient, factor), dtype)
    return ops.cast(ops.multiply(gradient, factor), dtype)


def _forward(model, x):
    if compat.call_has_training_arg(model):
        return model(x, training=True)
    return model(x)


def batch_size(x):
    """The number of samples in a batch `x` (a tensor or a nest of them)."""
    first = next(i for i in keras.tree.flatten(x) if i is not None)
    return ops.shape(first)[0]


def _global_loss(loss):
    """The loss of the whole batch from one replica's share (TensorFlow)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            return loss * ops.cast(replicas, loss.dtype)
    return loss


def _warn_no_weights():
    warnings.warn(
        "The model does not have any trainable weights.", stacklevel=2
    )


# -- TensorFlow and PyTorch: the variables hold the state --------------------


def gradient_sums(model, x, y, sample_weight, track_loss=True):
    """The `Sums` of the batch `(x, y, sample_weight)` at the current weights.

    Args:
        model: The compiled Keras model.
        x: The inputs.
        y: The targets.
        sample_weight: The sample weights, or `None`.
        track_loss: Whether to feed the loss to the model's loss tracker.

    Returns:
        A tuple `(sums, y_pred)`.
    """
    if keras.backend.backend() == "torch":
        return _torch_gradient_sums(model, x, y, sample_weight, track_loss)
    return _tensorflow_gradient_sums(model, x, y, sample_weight, track_loss)


def apply_sums(model, sums):
    """Applies one optimizer step with the mean gradient and loss of `sums`.

    Args:
        model: The compiled Keras model.
        sums: The `Sums`, normally from `global_sums`.
    """
    variables = model.trainable_weights[:]
    if not variables:
        _warn_no_weights()
        return
    grads, loss = mean_gradients_and_loss(sums, variables)
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            apply_with_loss(model.optimizer, grads, variables, loss)
    else:
        # Under tf.distribute each replica hands over its share of the
        # loss; the optimizer sums the shares.
        apply_with_loss(model.optimizer, grads, variables, loss)


def add_sums(total, sums):
    """`total + sums`, where `total` may be `None` (nothing added yet)."""
    if total is None:
        return sums
    grads = [
        b if a is None else a if b is None else ops.add(a, b)
        for a, b in zip(total.grads, sums.grads)
    ]
    return Sums(
        grads,
        ops.add(total.loss, sums.loss),
        ops.add(total.samples, sums.samples),
    )


def update_chunks(model, chunks, on_chunk=None, track_loss=True):
    """One optimizer step with the gradient of all `chunks` together.

    The chunks' `Sums` are added up in order, as a `GradientAccumulator`
    adds them, and one step is applied with their mean. The loss tracker
    sees every chunk (weighted by its size).

    Args:
        model: The compiled Keras model.
        chunks: A sequence of `(x, y, sample_weight)` batches.
        on_chunk: Called as `on_chunk(x, y, y_pred, sample_weight)` after
            each chunk's gradient, for the metrics; its last result is
            returned.
        track_loss: Whether to feed the loss to the model's loss tracker.
    """
    total = None
    result = None
    for x, y, sample_weight in chunks:
        sums, y_pred = gradient_sums(model, x, y, sample_weight, track_loss)
        if on_chunk is not None:
            result = on_chunk(x, y, y_pred, sample_weight)
        total = add_sums(total, sums)
    apply_sums(model, global_sums(total))
    return result


def update_steps(model, chunks, steps, on_chunk=None):
    """`steps` optimizer steps on the same `chunks`, in one call.

    Only the last step feeds the loss tracker and `on_chunk`, so the logs
    describe the weights the last step started from (as `fit`'s logs
    describe the weights each batch's step started from).

    Args:
        model: The compiled Keras model.
        chunks: A sequence of `(x, y, sample_weight)` batches, whose
            gradients are added up for each step (`update_chunks`).
        steps: The number of steps, a positive Python integer.
        on_chunk: As for `update_chunks`, in the last step only.
    """
    if steps > 1:
        _REPEATS[keras.backend.backend()](model, chunks, steps - 1)
    return update_chunks(model, chunks, on_chunk)


def _untracked_update(model, chunks, _y=None, _sample_weight=None):
    # The signature of a step that `torch_replay` records.
    update_chunks(model, chunks, track_loss=False)


def _tensorflow_repeat(model, chunks, count):
    import tensorflow as tf

    if distributed.tf_multi_worker_strategy(model) is not None:
        # TensorFlow refuses a collective inside a loop of a replica's
        # function.
        for _ in range(count):
            _untracked_update(model, chunks)
        return

    def body(i):
        _untracked_update(model, chunks)
        return (i + 1,)

    tf.while_loop(
        lambda i: i < count,
        body,
        (tf.constant(0),),
        parallel_iterations=1,
    )


def _torch_repeat(model, chunks, count):
    from keras_rprop.training import torch_replay

    if torch_replay.recording():
        # Part of a step being recorded: the record holds every step.
        for _ in range(count):
            _untracked_update(model, chunks)
    else:
        # Replays one recorded step (see `torch_replay`).
        torch_replay.repeat(
            model, _untracked_update, (chunks, None, None), count
        )


_REPEATS = {"tensorflow": _tensorflow_repeat, "torch": _torch_repeat}


def _tensorflow_gradient_sums(model, x, y, sample_weight, track_loss):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        y_pred = _forward(model, x)
        loss = compat.compute_loss(model, x, y, y_pred, sample_weight)
        if track_loss:
            compat.loss_tracker(model).update_state(
                _global_loss(loss), sample_weight=batch_size(x)
            )
        scaled_loss = model.optimizer.scale_loss(loss)
    variables = model.trainable_weights
    grads = tape.gradient(scaled_loss, variables) if variables else []
    return _to_sums(grads, loss, batch_size(x)), y_pred


def _torch_gradient_sums(model, x, y, sample_weight, track_loss):
    import torch

    y_pred = _forward(model, x)
    loss = compat.compute_loss(model, x, y, y_pred, sample_weight)
    if track_loss:
        compat.loss_tracker(model).update_state(
            loss, sample_weight=batch_size(x)
        )
    variables = model.trainable_weights[:]
    grads = []
    if variables:
        # Gradients as outputs, not `.grad` fields: PyTorch's recorded step
        # (`torch_replay`) follows outputs only.
        grads = torch.autograd.grad(
            model.optimizer.scale_loss(loss),
            [v.value for v in variables],
            allow_unused=True,
        )
    with torch.no_grad():
        sums = _to_sums(list(grads), loss.detach(), batch_size(x))
    return sums, y_pred


def _train_step(self, data, steps=1):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    # Across processes the logs are those of all the shards.
    with distributed.global_metrics(self.metrics) as summed:
        logs = update_steps(
            self, [(x, y, sample_weight)], steps, self.compute_metrics
        )
    return self.get_metrics_result() if summed else logs


def _accumulate_step(self, data, accumulator):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    sums, y_pred = gradient_sums(self, x, y, sample_weight)
    accumulator.add(sums)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


# -- JAX: stateless ----------------------------------------------------------


def jax_gradient_sums(model, state, x, y, sample_weight):
    """The `Sums` of a batch, statelessly (JAX).

    Args:
        model: The compiled Keras model.
        state: The values `(trainable, non_trainable, optimizer, metrics)`.
        x: The inputs.
        y: The targets.
        sample_weight: The sample weights, or `None`.

    Returns:
        A tuple `(sums, y_pred, non_trainable, metrics)` with the new values
        of the non-trainable and metrics variables.
    """
    import jax

    (
        trainable_variables,
        non_trainable_variables,
        optimizer_variables,
        metrics_variables,
    ) = state
    grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
    (_, aux), grads = grad_fn(
        trainable_variables,
        non_trainable_variables,
        metrics_variables,
        x,
        y,
        sample_weight,
        training=True,
        optimizer_variables=optimizer_variables,
    )
    loss, y_pred, non_trainable_variables, metrics_variables = aux
    sums = _to_sums(grads, loss, batch_size(x))
    return sums, loss, y_pred, non_trainable_variables, metrics_variables


def jax_apply_sums(model, trainable_variables, optimizer_variables, sums):
    """Applies one step statelessly (JAX); returns the new values.

    Args:
        model: The compiled Keras model.
        trainable_variables: Values of `model.trainable_variables`.
        optimizer_variables: Values of `model.optimizer.variables`.
        sums: The `Sums`, normally from `global_sums`.

    Returns:
        A tuple `(trainable_variables, optimizer_variables)`.
    """
    grads, loss = mean_gradients_and_loss(sums, model.trainable_variables)
    return stateless_apply_with_loss(
        model.optimizer, optimizer_variables, grads, trainable_variables, loss
    )


def jax_update_chunks(model, state, chunks, track=True):
    """`update_chunks` statelessly (JAX), the metrics fed chunk by chunk.

    Args:
        model: The compiled Keras model.
        state: The values `(trainable, non_trainable, optimizer, metrics)`.
        chunks: A sequence of `(x, y, sample_weight)` batches.
        track: Whether to feed the loss tracker and the metrics; if not,
            the metrics values are returned as they came.

    Returns:
        A tuple `(state, logs)`: the new values of the four groups of
        variables and the logs after the last chunk (`None` untracked).
    """
    trainable, non_trainable, optimizer, metrics = state
    total = None
    logs = None
    for x, y, sample_weight in chunks:
        sums, loss, y_pred, non_trainable, updated = jax_gradient_sums(
            model,
            (trainable, non_trainable, optimizer, metrics),
            x,
            y,
            sample_weight,
        )
        if track:
            logs, metrics = jax_update_metrics(
                model, updated, loss, x, y, y_pred, sample_weight
            )
        total = add_sums(total, sums)
    trainable, optimizer = jax_apply_sums(
        model, trainable, optimizer, global_sums(total)
    )
    return (trainable, non_trainable, optimizer, metrics), logs


def jax_update_steps(model, state, chunks, steps):
    """`update_steps` statelessly (JAX): a `fori_loop`, then a tracked step.

    Returns:
        A tuple `(state, logs)`, as `jax_update_chunks`.
    """
    import jax

    if steps > 1:
        metrics = state[3]

        def body(_, carry):
            new_state, _ = jax_update_chunks(
                model, (*carry, metrics), chunks, track=False
            )
            return tuple(new_state[:3])

        carry = jax.lax.fori_loop(0, steps - 1, body, tuple(state[:3]))
        state = (*carry, metrics)
    return jax_update_chunks(model, state, chunks)


def jax_update_metrics(
    model, metrics_variables, loss, x, y, y_pred, sample_weight, extra=None
):
    """Updates the loss tracker and metrics (and `extra`) statelessly."""
    mapping = list(zip(model.metrics_variables, metrics_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        compat.loss_tracker(model).update_state(
            loss, sample_weight=batch_size(x)
        )
        if extra is not None:
            extra()
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
    new_values = []
    for variable, old_value in zip(model.metrics_variables, metrics_variables):
        value = scope.get_current_value(variable)
        new_values.append(old_value if value is None else value)
    return logs, new_values


def _jax_train_step(self, state, data, steps=1):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    state, logs = jax_update_steps(self, state, [(x, y, sample_weight)], steps)
    return logs, state


def _jax_accumulate_step(self, state, data, accumulator):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    sums, loss, y_pred, non_trainable_variables, metrics_variables = (
        jax_gradient_sums(self, state, x, y, sample_weight)
    )
    logs, metrics_variables = jax_update_metrics(
        self,
        metrics_variables,
        loss,
        x,
        y,
        y_pred,
        sample_weight,
        extra=lambda: accumulator.add(sums),
    )
    return logs, (
        state[0],
        non_trainable_variables,
        state[2],
        metrics_variables,
    )


TRAIN_STEPS = {
    "tensorflow": _train_step,
    "jax": _jax_train_step,
    "torch": _train_step,
}
ACCUMULATE_STEPS = {
    "tensorflow": _accumulate_step,
    "jax": _jax_accumulate_step,
    "torch": _accumulate_step,
}
