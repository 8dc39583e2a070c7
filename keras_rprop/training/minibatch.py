"""The warning for Rprop trained on mini-batches."""

import inspect
import math
import warnings
import weakref

from keras_rprop.training.loss_channel import rprop_inside


class MiniBatchWarning(UserWarning):
    """Rprop is applied batch by batch on mini-batches of the training set.

    Rprop adapts each step size from the sign of the weight's gradient and
    assumes that gradient is the gradient of the whole training set. On
    mini-batches the signs change from one batch to the next, the step sizes
    collapse towards `min_step`, and iRprop+ compares the losses of different
    batches. `keras_rprop.fit_full_batch` trains on the full batch, also for
    data that does not fit in memory.
    """


_warned = weakref.WeakSet()


def batches_per_epoch(x, batch_size=None, steps_per_epoch=None, split=0.0):
    """How many batches `fit` makes of `x` per epoch; `math.inf` if unknown.

    Args:
        x: The `x` argument of `fit`.
        batch_size: The `batch_size` argument of `fit`.
        steps_per_epoch: The `steps_per_epoch` argument of `fit`.
        split: The `validation_split` argument of `fit`.

    Returns:
        The number of batches, or `math.inf` for data of unknown length
        (a generator, a dataset of unknown cardinality).
    """
    if steps_per_epoch is not None:
        return steps_per_epoch
    samples = num_samples(x)
    if samples is not None:
        samples = int(math.ceil(samples * (1.0 - (split or 0.0))))
        return int(math.ceil(samples / (batch_size or 32)))
    cardinality = getattr(x, "cardinality", None)
    if cardinality is not None and type(x).__module__.startswith("tensorflow"):
        count = int(cardinality())
        return count if count >= 0 else math.inf
    if inspect.isgenerator(x) or hasattr(x, "__next__"):
        return math.inf
    try:
        return len(x)
    except TypeError:
        return math.inf


def num_samples(x):
    """The number of samples in in-memory arrays `x`, else `None`."""
    import keras

    leaves = keras.tree.flatten(x) if x is not None else []
    if not leaves:
        return None
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) == 0:
            return None
    return int(leaves[0].shape[0])


def check_full_batch(
    model, x, batch_size=None, steps_per_epoch=None, validation_split=0.0
):
    """Warns once per model if `fit` would apply Rprop to mini-batches."""
    rprop = rprop_inside(getattr(model, "optimizer", None))
    if rprop is None or model in _warned:
        return
    batches = batches_per_epoch(
        x, batch_size, steps_per_epoch, validation_split
    )
    accumulated = rprop.gradient_accumulation_steps or 1
    if batches <= accumulated:
        return
    _warned.add(model)
    count = "an unknown number of" if batches == math.inf else batches
    warnings.warn(
        f"`fit` is about to apply Rprop to {count} mini-batches per epoch. "
        "Rprop adapts every step size from the sign of the gradient and "
        "needs the gradient of the whole training set: on mini-batches "
        "the signs change from batch to batch, the step sizes shrink "
        "towards `min_step` and iRprop+ compares the losses of different "
        "batches. Train on full batches with "
        "`keras_rprop.fit_full_batch(model, x, y, epochs=...)`, which also "
        "accumulates datasets and generators that do not fit in memory "
        "chunk by chunk, or pass `batch_size=len(x)` to `fit`.",
        MiniBatchWarning,
        stacklevel=3,
    )
