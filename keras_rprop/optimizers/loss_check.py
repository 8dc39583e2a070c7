"""Whether a training step hands the loss to the optimizer.

Keras's own `train_step` calls the optimizer without the loss, which
iRprop+ needs; `keras_rprop.enable_loss` binds a step that passes it, and a
model class may override `train_step` with its own. This module tells them
apart, for the optimizer's early error and for `enable_loss`.
"""

import keras

from keras_rprop import compat


def train_step_owner(model):
    """The class whose `train_step` `model` runs (Keras's, or the user's)."""
    for cls in type(model).__mro__:
        if "train_step" in cls.__dict__:
            return cls
    return type(model)


def has_keras_train_step(model):
    """Whether `model` trains with Keras's own step, which drops the loss."""
    if "train_step" in model.__dict__:
        return False
    return train_step_owner(model).__module__.startswith("keras.")


def check_fit_passes_loss():
    """Raises if Keras's JAX `fit` is about to train iRprop+ without the loss.

    Called when an iRprop+ optimizer is built. Keras's JAX `fit` builds the
    optimizer before its first step, then takes the weights out of the
    model's variables for the step; an error raised in the step (where
    Rprop finds no loss) would leave the model without its weights. So the
    missing loss is reported here, before anything happened, when the
    build comes from the JAX `fit` of a model whose training step is
    Keras's own (no `enable_loss`).
    """
    if keras.backend.backend() != "jax":
        return
    model = compat.keras_jax_fit_model()
    if model is not None and has_keras_train_step(model):
        raise ValueError(
            "The 'irprop+' variant compares the loss of consecutive "
            "steps, but Keras's training step does not hand the loss "
            "to the optimizer. Call `keras_rprop.enable_loss(model)` "
            "after `model.compile(...)`, or train with "
            "`keras_rprop.fit_full_batch(model, x, y, ...)`. "
            f"Received: model={model.name!r} without `enable_loss`"
        )
