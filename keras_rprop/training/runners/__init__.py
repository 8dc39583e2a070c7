"""The runners of the engine: each runs epochs with one backend's compiled code.

A runner is made for a model and a number of optimizer steps per epoch, and
kept on the model; `run(epochs, ...)` runs up to `epochs` epochs on its
`data` and returns a `common.Result`: the logs of every epoch run (with the
validation's where the epoch validated) and, when asked, the weights after
every epoch. Runners compile their code once and reuse it as long as
nothing it holds as a constant changes: the data's structure and shapes,
the step count, the optimizer and its configuration.
"""

import keras

from keras_rprop import compat
from keras_rprop.training import distributed
from keras_rprop.training.runners import multiworker

# Compiled epoch loops are kept on the model, past Keras's attribute
# tracking (they are no state of the model), and reused by the next call
# with the same step count, data structure and optimizer configuration.
_CACHE_ATTRIBUTE = "_keras_rprop_engines"


def _optimizer_key(optimizer):
    """The optimizer's configuration, which compiled code holds as constants.

    The learning rate is left out: it lives in a variable that the compiled
    code reads at every step.
    """
    config = dict(optimizer.get_config())
    config.pop("learning_rate", None)
    return repr(sorted(config.items()))


def runner(model, data, steps):
    """The runner of `model`'s epochs on `data`, compiled once and kept."""
    key = (
        keras.backend.backend(),
        steps,
        str(keras.tree.map_structure(_spec, data)),
        id(model.optimizer),
        _optimizer_key(model.optimizer),
        id(compat.loss_tracker(model)),
        model.jit_compile,
    )
    cache = model.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = {}
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)
    found = cache.get(key)
    if found is None:
        if distributed.tf_multi_worker_strategy(model) is not None:
            runner_class = multiworker.TensorFlowMultiWorkerRunner
        else:
            runner_class = _runner_class()
        found = runner_class(model, steps)
        cache.clear()
        cache[key] = found
    found.data = data
    return found


def _spec(value):
    if value is None:
        return None
    return (tuple(value.shape), str(value.dtype))


def _runner_class():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from keras_rprop.training.runners import tensorflow

        return tensorflow.TensorFlowRunner
    if backend == "jax":
        from keras_rprop.training.runners import jax

        return jax.JaxRunner
    from keras_rprop.training.runners import torch

    return torch.TorchRunner
