"""Calls to an optimizer that hand the loss to the Rprop optimizer inside.

`Rprop.apply(..., loss=)` takes the loss directly, but a wrapper such as
`keras.optimizers.LossScaleOptimizer` (added by Keras under mixed
precision) calls its inner optimizer without one. The helpers here reach
the Rprop optimizer through such a wrapper.
"""

import contextlib
import threading
import types
import weakref

import keras

from keras_rprop.optimizers.rprop import Rprop


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
