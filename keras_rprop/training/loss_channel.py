"""`enable_loss`: hands the training loss of every `fit` step to Rprop.

Keras's built-in `train_step` calls `optimizer.apply(grads, variables)` (or
`stateless_apply` on JAX) without the loss, but iRprop+ decides whether to
revert a move by comparing the loss of consecutive steps. `enable_loss`
gives one model a `train_step` that is the same computation plus the loss.
"""

import contextlib
import threading
import types
import warnings
import weakref

import keras
from keras import ops

from keras_rprop.optimizers.rprop import Rprop


def enable_loss(model):
    """Makes `model.fit` pass the loss of every step to the Rprop optimizer.

    Call it once, after `model.compile(...)`:

    ```python
    model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    keras_rprop.enable_loss(model)
    model.fit(x, y, batch_size=len(x), epochs=100)
    ```

    The loss handed over is the full training loss of the step: the compiled
    loss plus every regularization and `add_loss` term, before loss scaling.
    Under `tf.distribute` each replica hands over its own share (Keras
    divides each replica's loss by the number of replicas); the optimizer
    sums the shares into the global loss. When mixed precision wraps the
    optimizer in a `keras.optimizers.LossScaleOptimizer`, the loss reaches
    the inner Rprop optimizer, and steps skipped for non-finite gradients
    skip the loss too.

    Only the `"irprop+"` variant uses the loss; the other variants ignore
    it, so `enable_loss` is harmless with them. It works for Sequential,
    Functional and subclassed models on the TensorFlow, JAX and PyTorch
    backends, compiled or with `run_eagerly=True`. It binds a new
    `train_step` method to this model instance only, so the model's class,
    config and saved files are unchanged: a model loaded from disk or made by
    `keras.models.clone_model` needs its own `enable_loss` call.

    A model whose class overrides `train_step` has its own training step,
    which `enable_loss` cannot change: pass the loss there instead, as
    `self.optimizer.apply(grads, variables, loss=loss)` (TensorFlow, PyTorch)
    or `self.optimizer.stateless_apply(..., loss=loss)` (JAX).

    Args:
        model: A compiled `keras.Model` whose optimizer is a
            `keras_rprop.Rprop` (or a `LossScaleOptimizer` wrapping one).

    Returns:
        The same `model`, for chaining.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model`. "
            f"Received: model={model!r}"
        )
    if not getattr(model, "compiled", False):
        raise ValueError(
            "Argument `model` must be compiled before `enable_loss` is "
            "called: call `model.compile(optimizer=keras_rprop.Rprop(...), "
            f"...)` first. Received: model={model.name!r} (not compiled)"
        )
    if rprop_inside(model.optimizer) is None:
        raise ValueError(
            "`enable_loss` hands the loss to a `keras_rprop.Rprop` "
            "optimizer, but the model was compiled with another one. "
            f"Received: optimizer={model.optimizer!r}"
        )
    owner = _train_step_owner(model)
    if not owner.__module__.startswith("keras."):
        raise ValueError(
            f"`{owner.__name__}` overrides `train_step`, so `enable_loss` "
            "cannot change how it calls the optimizer. Pass the loss in "
            "your `train_step` instead: "
            "`self.optimizer.apply(grads, variables, loss=loss)` "
            "(TensorFlow, PyTorch) or "
            "`self.optimizer.stateless_apply(..., loss=loss)` (JAX). "
            f"Received: model of class {type(model).__name__}"
        )
    backend = keras.backend.backend()
    if backend == "jax" and keras.config.is_nnx_enabled():
        raise ValueError(
            "`enable_loss` does not support Keras's Flax NNX mode, which "
            "calls the class's `train_step` directly. Override `train_step` "
            "and pass `loss=` to `stateless_apply` instead. Received: "
            "keras.config.is_nnx_enabled()=True"
        )
    if backend not in _TRAIN_STEPS:
        raise ValueError(
            "`enable_loss` supports the TensorFlow, JAX and PyTorch "
            f"backends. Received: backend={backend!r}"
        )
    model.train_step = types.MethodType(_TRAIN_STEPS[backend], model)
    # A train function made before this call closes over the old step.
    model.train_function = None
    return model


def loss_enabled(model):
    """Whether `enable_loss(model)` was called on this model instance."""
    step = model.__dict__.get("train_step")
    return getattr(step, "__func__", None) in _TRAIN_STEPS.values()


def rprop_inside(optimizer):
    """The `Rprop` optimizer that `optimizer` is or wraps, else `None`."""
    if isinstance(optimizer, Rprop):
        return optimizer
    inner = getattr(optimizer, "inner_optimizer", None)
    if isinstance(inner, Rprop):
        return inner
    return None


def apply_with_loss(optimizer, grads, variables, loss):
    """`optimizer.apply(grads, variables)` with `loss` reaching Rprop."""
    rprop = rprop_inside(optimizer)
    if rprop is None:
        return optimizer.apply(grads, variables)
    if rprop is optimizer:
        return optimizer.apply(grads, variables, loss=loss)
    with _loss_for_wrapped(rprop, loss):
        return optimizer.apply(grads, variables)


def stateless_apply_with_loss(
    optimizer, optimizer_variables, grads, variables, loss
):
    """`optimizer.stateless_apply(...)` with `loss` reaching Rprop."""
    rprop = rprop_inside(optimizer)
    if rprop is None:
        return optimizer.stateless_apply(optimizer_variables, grads, variables)
    if rprop is optimizer:
        return optimizer.stateless_apply(
            optimizer_variables, grads, variables, loss=loss
        )
    with _loss_for_wrapped(rprop, loss):
        return optimizer.stateless_apply(optimizer_variables, grads, variables)


# -- Handing the loss through a wrapper ------------------------------------

_lock = threading.Lock()

# Losses waiting to be handed to a wrapped Rprop optimizer, by optimizer and
# replica. Kept outside the optimizer so that Keras's attribute tracking
# never copies or saves them.
_pending = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _loss_for_wrapped(rprop, loss):
    """Makes the wrapper's calls to `rprop.apply` carry `loss`.

    A wrapper such as `LossScaleOptimizer` calls the inner optimizer without
    a loss. For the duration of the block the inner `apply` and
    `stateless_apply` of this instance fill it in. Under a TensorFlow
    `MirroredStrategy` every replica thread enters the block before the
    wrapper's cross-replica merge runs the inner updates, so the pending
    losses are kept per replica.
    """
    key = _replica_key()
    with _lock:
        losses = _pending.get(rprop)
        if losses is None:
            losses = _pending[rprop] = {}
            rprop.apply = types.MethodType(_apply_with_pending_loss, rprop)
            rprop.stateless_apply = types.MethodType(
                _stateless_apply_with_pending_loss, rprop
            )
        losses[key] = loss
    try:
        yield
    finally:
        with _lock:
            losses.pop(key, None)
            if not losses:
                del _pending[rprop]
                del rprop.apply
                del rprop.stateless_apply


def _pending_loss(rprop):
    losses = _pending.get(rprop, {})
    key = _replica_key()
    if key in losses:
        return losses[key]
    return next(iter(losses.values()), None)


def _apply_with_pending_loss(self, grads, trainable_variables=None, loss=None):
    if loss is None:
        loss = _pending_loss(self)
    return Rprop.apply(self, grads, trainable_variables, loss=loss)


def _stateless_apply_with_pending_loss(
    self, optimizer_variables, grads, trainable_variables, loss=None
):
    if loss is None:
        loss = _pending_loss(self)
    return Rprop.stateless_apply(
        self, optimizer_variables, grads, trainable_variables, loss=loss
    )


def _replica_key():
    """The replica this code runs for (TensorFlow), else `None`."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:
        return None
    replica = tf.get_static_value(context.replica_id_in_sync_group)
    return None if replica is None else int(replica)


# -- The training steps ------------------------------------------------------


def _train_step_owner(model):
    for cls in type(model).__mro__:
        if "train_step" in cls.__dict__:
            return cls
    return type(model)


def _forward(model, x):
    if model._call_has_training_arg:
        return model(x, training=True)
    return model(x)


def _batch_size(x):
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


def _no_weights_warning():
    warnings.warn("The model does not have any trainable weights.")


def _tensorflow_train_step(self, data):
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = _forward(self, x)
        loss = self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        self._loss_tracker.update_state(
            _global_loss(loss), sample_weight=_batch_size(x)
        )
        scaled_loss = self.optimizer.scale_loss(loss)
    variables = self.trainable_weights
    if variables:
        grads = tape.gradient(scaled_loss, variables)
        # Each replica hands over its share; Rprop sums them.
        apply_with_loss(self.optimizer, grads, variables, loss)
    else:
        _no_weights_warning()
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _torch_train_step(self, data):
    import torch

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = _forward(self, x)
    self.zero_grad()
    loss = self._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )
    self._loss_tracker.update_state(loss, sample_weight=_batch_size(x))
    scaled_loss = self.optimizer.scale_loss(loss)
    variables = self.trainable_weights[:]
    if variables:
        scaled_loss.backward()
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            apply_with_loss(self.optimizer, grads, variables, loss.detach())
    else:
        _no_weights_warning()
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _jax_train_step(self, state, data):
    import jax

    (
        trainable_variables,
        non_trainable_variables,
        optimizer_variables,
        metrics_variables,
    ) = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
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
    trainable_variables, optimizer_variables = stateless_apply_with_loss(
        self.optimizer, optimizer_variables, grads, trainable_variables, loss
    )
    logs, metrics_variables = self._update_metrics_variables(
        metrics_variables, loss, x, y, y_pred, sample_weight
    )
    return logs, (
        trainable_variables,
        non_trainable_variables,
        optimizer_variables,
        metrics_variables,
    )


_TRAIN_STEPS = {
    "tensorflow": _tensorflow_train_step,
    "jax": _jax_train_step,
    "torch": _torch_train_step,
}
