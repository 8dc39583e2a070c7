"""`enable_loss` for `tf_keras`: the loss of every `fit` step reaches Rprop."""

import types

import tensorflow as tf
import tf_keras

from keras_rprop.tf_keras.rprop import Rprop


def enable_loss(model):
    """Makes `model.fit` pass the loss of every step to the Rprop optimizer.

    Call it once, after `model.compile(...)`:

    ```python
    model.compile(optimizer=keras_rprop.tf_keras.Rprop("irprop+"), loss="mse")
    keras_rprop.tf_keras.enable_loss(model)
    model.fit(x, y, batch_size=len(x), epochs=100)
    ```

    `tf_keras`'s `fit` calls `optimizer.minimize(loss, variables, tape)`,
    which hands the loss to Rprop by itself. Under mixed precision `compile`
    wraps the optimizer in a `tf_keras.mixed_precision.LossScaleOptimizer`,
    which computes the gradients of the scaled loss and calls the inner
    optimizer without it; `enable_loss` makes that wrapper hand the unscaled
    loss to Rprop (a step it skips for non-finite gradients leaves the
    comparison of losses untouched). Calling it in every case keeps code
    the same with and without mixed precision. It changes this optimizer
    instance only: a model loaded from disk needs its own call.

    Only the `"irprop+"` variant uses the loss; the others ignore it.

    Args:
        model: A compiled `tf_keras.Model` whose optimizer is a
            `keras_rprop.tf_keras.Rprop` (or a `LossScaleOptimizer` wrapping
            one).

    Returns:
        The same `model`, for chaining.
    """
    if not isinstance(model, tf_keras.Model):
        raise ValueError(
            "Argument `model` must be a `tf_keras.Model`. "
            f"Received: model={model!r}"
        )
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            "Argument `model` must be compiled before `enable_loss` is "
            "called: call `model.compile(optimizer="
            "keras_rprop.tf_keras.Rprop(...), ...)` first. "
            f"Received: model={model.name!r} (not compiled)"
        )
    if isinstance(optimizer, Rprop):
        return model
    inner = getattr(optimizer, "inner_optimizer", None)
    if not isinstance(inner, Rprop):
        raise ValueError(
            "`enable_loss` hands the loss to a `keras_rprop.tf_keras.Rprop` "
            "optimizer, but the model was compiled with another one. "
            f"Received: optimizer={optimizer!r}"
        )
    if "minimize" not in vars(optimizer):
        optimizer.minimize = types.MethodType(_minimize_handing_loss, optimizer)
    return model


def _minimize_handing_loss(self, loss, var_list, tape=None):
    """The wrapper's `minimize`, with the loss recorded by the inner Rprop."""
    if callable(loss):
        tape = tf.GradientTape() if tape is None else tape
        with tape:
            loss = loss()
    with self.inner_optimizer.loss_recorded(loss):
        return type(self).minimize(self, loss, var_list, tape=tape)
