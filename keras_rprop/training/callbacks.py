"""Callbacks that show what Rprop is doing."""

import keras
import numpy as np

from keras_rprop import rule
from keras_rprop.training.loss_channel import rprop_inside


class StepSizeLogger(keras.callbacks.Callback):
    """Logs Rprop's step sizes and sign changes at the end of every epoch.

    Adds four entries to the epoch's logs, and so to the `History` and to
    every later callback that writes logs, such as
    `keras.callbacks.TensorBoard` (list `StepSizeLogger` before it):

    - `step_size_min`, `step_size_median`, `step_size_max`: over all weights
      of all variables the optimizer updates.
    - `sign_flip_fraction`: the fraction of those weights whose gradient
      changed sign since the previous epoch's end.

    A sign change is read from the optimizer's state, exactly: where the
    variant keeps the gradient's sign (`"rprop-"`), a change is a stored
    sign that turned into its opposite. The other variants store 0 after a
    change (and after a zero gradient, which leaves the step size
    alone); a change is a stored sign that turned to 0 while the step size
    shrank. A weight whose step size already sat at `min_step` cannot shrink
    further; a 0 there counts as a change. With one optimizer step per epoch,
    the full-batch training Rprop is made for, this is the fraction of
    weights whose gradient changed sign in that step; with several steps
    per epoch it compares the state at consecutive epoch ends.

    The statistics are computed on the host from a copy of the step sizes,
    which costs one transfer of the optimizer's step sizes per epoch.

    Args:
        prefix: Prefix of the log keys. Defaults to `""`.
    """

    def __init__(self, prefix=""):
        super().__init__()
        if not isinstance(prefix, str):
            raise ValueError(
                "Argument `prefix` must be a string. "
                f"Received: prefix={prefix!r}"
            )
        self.prefix = prefix
        self._previous = None

    def on_train_begin(self, logs=None):
        optimizer = rprop_inside(getattr(self.model, "optimizer", None))
        if optimizer is None:
            raise ValueError(
                "`StepSizeLogger` reads the state of a `keras_rprop.Rprop` "
                "optimizer, but the model was compiled with another one. "
                f"Received: optimizer={self.model.optimizer!r}"
            )
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self._previous = self._read_state(optimizer)

    def on_epoch_end(self, epoch, logs=None):
        optimizer = rprop_inside(self.model.optimizer)
        steps, signs = self._read_state(optimizer)
        previous_steps, previous_signs = self._previous
        if not rule.VARIANT_TABLE[optimizer.variant].forgets_sign:
            flipped = previous_signs * signs < 0
        else:
            shrank = (steps < previous_steps) | (
                previous_steps <= optimizer.min_step
            )
            flipped = (previous_signs != 0) & (signs == 0) & shrank
        self._previous = (steps, signs)
        if logs is None or steps.size == 0:
            return
        logs[f"{self.prefix}step_size_min"] = float(np.min(steps))
        logs[f"{self.prefix}step_size_median"] = float(np.median(steps))
        logs[f"{self.prefix}step_size_max"] = float(np.max(steps))
        logs[f"{self.prefix}sign_flip_fraction"] = float(np.mean(flipped))

    def _read_state(self, optimizer):
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()
        steps = [s for s in optimizer._steps if s is not None]
        signs = [s for s in optimizer._signs if s is not None]
        return (
            _flat(steps, np.float64),
            _flat(signs, np.int8),
        )


def _flat(variables, dtype):
    if not variables:
        return np.zeros((0,), dtype)
    return np.concatenate(
        [
            np.asarray(keras.ops.convert_to_numpy(v.value), dtype).ravel()
            for v in variables
        ]
    )
