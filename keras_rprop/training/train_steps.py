"""The training steps that `keras_rprop` binds to a model, per backend.

Each backend gets three steps, all built from the same update:

- `train_step`: Keras's training step, but handing the unscaled loss to the
  optimizer (`enable_loss`).
- `repeated_train_step`: `steps` such updates on the same batch in one call,
  compiled as one loop (the fast full-batch loop). Only the last update
  feeds the metrics, so the logs describe the current weights.
- `accumulate_step`: no update; adds the chunk's gradient and loss, weighted
  by the chunk's number of samples, to a `GradientAccumulator` (exact
  full-batch training from chunks).
"""

import warnings

import keras
from keras import ops

from keras_rprop.training.loss_channel import apply_with_loss
from keras_rprop.training.loss_channel import stateless_apply_with_loss


def _forward(model, x):
    if model._call_has_training_arg:
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
    warnings.warn("The model does not have any trainable weights.")


# -- TensorFlow --------------------------------------------------------------


def _tensorflow_gradients(model, x, y, sample_weight, track_loss):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        y_pred = _forward(model, x)
        loss = model._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        if track_loss:
            model._loss_tracker.update_state(
                _global_loss(loss), sample_weight=batch_size(x)
            )
        scaled_loss = model.optimizer.scale_loss(loss)
    variables = model.trainable_weights
    grads = tape.gradient(scaled_loss, variables) if variables else []
    return y_pred, loss, grads


def _tensorflow_update(model, x, y, sample_weight, track_loss=True):
    y_pred, loss, grads = _tensorflow_gradients(
        model, x, y, sample_weight, track_loss
    )
    if grads:
        # Under tf.distribute each replica hands over its share of the
        # loss; the optimizer sums the shares.
        apply_with_loss(model.optimizer, grads, model.trainable_weights, loss)
    else:
        _warn_no_weights()
    return y_pred


def _tensorflow_train_step(self, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = _tensorflow_update(self, x, y, sample_weight)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _tensorflow_repeated_train_step(self, data, steps):
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

    def body(i):
        _tensorflow_update(self, x, y, sample_weight, track_loss=False)
        return (i + 1,)

    tf.while_loop(
        lambda i: i < steps - 1,
        body,
        (tf.constant(0),),
        parallel_iterations=1,
    )
    y_pred = _tensorflow_update(self, x, y, sample_weight)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _tensorflow_accumulate_step(self, data, accumulator):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred, loss, grads = _tensorflow_gradients(
        self, x, y, sample_weight, track_loss=True
    )
    accumulator.add(grads, loss, batch_size(x))
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


# -- PyTorch -----------------------------------------------------------------


def _torch_gradients(model, x, y, sample_weight, track_loss):
    y_pred = _forward(model, x)
    model.zero_grad()
    loss = model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )
    if track_loss:
        model._loss_tracker.update_state(loss, sample_weight=batch_size(x))
    variables = model.trainable_weights[:]
    grads = []
    if variables:
        model.optimizer.scale_loss(loss).backward()
        grads = [v.value.grad for v in variables]
    return y_pred, loss.detach(), grads


def _torch_update(model, x, y, sample_weight, track_loss=True):
    import torch

    y_pred, loss, grads = _torch_gradients(
        model, x, y, sample_weight, track_loss
    )
    if grads:
        with torch.no_grad():
            apply_with_loss(
                model.optimizer, grads, model.trainable_weights[:], loss
            )
    else:
        _warn_no_weights()
    return y_pred


def _torch_train_step(self, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = _torch_update(self, x, y, sample_weight)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _torch_repeated_train_step(self, data, steps):
    from keras_rprop.training import torch_replay

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    # All steps but the last replay one recorded step (see `torch_replay`);
    # the last runs eagerly, to feed the loss tracker and the metrics.
    torch_replay.repeat_update(
        self,
        x,
        y,
        sample_weight,
        steps - 1,
        lambda: _torch_update(self, x, y, sample_weight, track_loss=False),
    )
    y_pred = _torch_update(self, x, y, sample_weight)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _torch_accumulate_step(self, data, accumulator):
    import torch

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred, loss, grads = _torch_gradients(
        self, x, y, sample_weight, track_loss=True
    )
    with torch.no_grad():
        accumulator.add(grads, loss, batch_size(x))
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


# -- JAX ---------------------------------------------------------------------


def _jax_gradients(model, state, x, y, sample_weight):
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
    return grads, loss, y_pred, non_trainable_variables, metrics_variables


def _jax_update_metrics(
    model, metrics_variables, loss, x, y, y_pred, sample_weight, extra=None
):
    """Updates the loss tracker and metrics (and `extra`) statelessly."""
    mapping = list(zip(model.metrics_variables, metrics_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        model._loss_tracker.update_state(loss, sample_weight=batch_size(x))
        if extra is not None:
            extra()
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
    new_values = []
    for variable, old_value in zip(model.metrics_variables, metrics_variables):
        value = scope.get_current_value(variable)
        new_values.append(old_value if value is None else value)
    return logs, new_values


def _jax_update(model, state, x, y, sample_weight):
    grads, loss, y_pred, non_trainable_variables, metrics_variables = (
        _jax_gradients(model, state, x, y, sample_weight)
    )
    trainable_variables, optimizer_variables = stateless_apply_with_loss(
        model.optimizer, state[2], grads, state[0], loss
    )
    state = (
        trainable_variables,
        non_trainable_variables,
        optimizer_variables,
        metrics_variables,
    )
    return state, loss, y_pred


def _jax_train_step(self, state, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    state, loss, y_pred = _jax_update(self, state, x, y, sample_weight)
    logs, metrics_variables = _jax_update_metrics(
        self, state[3], loss, x, y, y_pred, sample_weight
    )
    return logs, (*state[:3], metrics_variables)


def _jax_repeated_train_step(self, state, data, steps):
    import jax

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    metrics_variables = state[3]

    def body(_, carry):
        # Metrics are fed by the last update only; what the earlier ones
        # did to the metric variables is dropped with `carry`.
        new_state, _, _ = _jax_update(
            self, (*carry, metrics_variables), x, y, sample_weight
        )
        return new_state[:3]

    carry = jax.lax.fori_loop(0, steps - 1, body, tuple(state[:3]))
    return _jax_train_step(self, (*carry, metrics_variables), data)


def _jax_accumulate_step(self, state, data, accumulator):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    grads, loss, y_pred, non_trainable_variables, metrics_variables = (
        _jax_gradients(self, state, x, y, sample_weight)
    )
    logs, metrics_variables = _jax_update_metrics(
        self,
        metrics_variables,
        loss,
        x,
        y,
        y_pred,
        sample_weight,
        extra=lambda: accumulator.add(grads, loss, batch_size(x)),
    )
    return logs, (
        state[0],
        non_trainable_variables,
        state[2],
        metrics_variables,
    )


TRAIN_STEPS = {
    "tensorflow": _tensorflow_train_step,
    "jax": _jax_train_step,
    "torch": _torch_train_step,
}
REPEATED_TRAIN_STEPS = {
    "tensorflow": _tensorflow_repeated_train_step,
    "jax": _jax_repeated_train_step,
    "torch": _torch_repeated_train_step,
}
ACCUMULATE_STEPS = {
    "tensorflow": _tensorflow_accumulate_step,
    "jax": _jax_accumulate_step,
    "torch": _torch_accumulate_step,
}
