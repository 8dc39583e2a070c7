"""What the runners of the engine share: their result and its logs."""

import collections
import json

import keras
import numpy as np


class Result:
    """What a runner's call gives: the logs and weights of each epoch run."""

    def __init__(self, logs, weights=None):
        self.logs = logs
        self.weights = weights


def log_keys(model):
    model.reset_metrics()
    if keras.backend.backend() == "jax":
        import jax

        # The names alone: computed eagerly, each metric's `result` would
        # compile small programs on a first call.
        return list(jax.eval_shape(model.get_metrics_result))
    return list(model.get_metrics_result())


def floats(logs):
    return {key: float(value) for key, value in logs.items()}


def epoch_logs(keys, train, val, validate, count):
    """The logs of each epoch from the arrays of the compiled loop."""
    train = [np.asarray(v)[:count] for v in train]
    val = [np.asarray(v)[:count] for v in val] if val else None
    logs = []
    for i in range(count):
        epoch_logs = {key: float(v[i]) for key, v in zip(keys, train)}
        if val is not None and validate[i]:
            epoch_logs.update(
                {f"val_{key}": float(v[i]) for key, v in zip(keys, val)}
            )
        logs.append(epoch_logs)
    return logs


def capacity(epochs, validate=None):
    """The power of two of arrays that hold `epochs` epochs' values."""
    epochs = max(epochs, len(validate or ()))
    return 1 << max(0, epochs - 1).bit_length()


def mask(validate, size):
    """Which epochs validate, padded to `size` epochs."""
    mask = np.zeros((size,), bool)
    if validate is not None:
        mask[: len(validate)] = validate
    return mask


def in_loop_batches(validation):
    if validation is None or not validation.in_loop:
        return ()
    return validation.batches


def snapshots_by_epoch(arrays, count):
    if arrays is None:
        return None
    arrays = [np.asarray(a) for a in arrays]
    return [[a[i] for a in arrays] for i in range(count)]


def stop_condition(loss, goal, stop_on_nan):
    """Whether a compiled loop ends after an epoch with this loss."""
    ops = keras.ops
    stop = ops.less_equal(loss, goal)
    if stop_on_nan:
        stop = ops.logical_or(stop, ops.logical_not(ops.isfinite(loss)))
    return stop


def structure(model, steps):
    """What a compiled function of `model` depends on, or `None`.

    Only models made of Keras's own layers are shared: their computation is
    what their configuration says. Names are replaced by their order, so
    that two fresh models of one structure compare equal.
    """
    layers = list(_layers(model))
    if not all(_shared_layer(layer) for layer in [model, *layers]):
        return None
    try:
        architecture = _nameless(json.loads(model.to_json()))
        compiled = json.dumps(
            model.get_compile_config(), sort_keys=True, default=repr
        )
    except Exception:  # Not serializable: not shared.
        return None
    shapes = tuple(
        (tuple(v.shape), str(v.dtype)) for v in state_variables(model)
    )
    return (
        json.dumps(architecture, sort_keys=True),
        compiled,
        shapes,
        steps,
        model.jit_compile,
        keras.backend.floatx(),
    )


def state_variables(model):
    """Every variable a step reads or writes, each once, in a fixed order."""
    variables = (
        list(model.variables)
        + list(model.optimizer.variables)
        + list(model.metrics_variables)
    )
    return list({id(v): v for v in variables}.values())


class Programs:
    """Compiled programs by model structure (`structure`), shared by models.

    Holds the most recently used `size` programs.
    """

    def __init__(self, size=8):
        self.size = size
        self._programs = collections.OrderedDict()

    def get(self, model, steps, make, serves=None):
        """The program for `model`, made by `make()` if none serves it.

        Args:
            model: The compiled model.
            steps: Optimizer steps per epoch.
            make: Makes a new program, of no arguments.
            serves: `serves(program)` tells whether a program of the same
                structure may serve `model`; any may if `None`.
        """
        key = structure(model, steps)
        program = self._programs.get(key) if key is not None else None
        if program is not None and (serves is None or serves(program)):
            self._programs.move_to_end(key)
            return program
        program = make()
        if key is not None:
            self._programs[key] = program
            while len(self._programs) > self.size:
                self._programs.popitem(last=False)
        return program

    def clear(self):
        self._programs.clear()


def _shared_layer(layer):
    """Whether `layer` computes what its configuration says.

    Keras's own layers do, but for `Lambda`: its function may read state
    outside the model, which a compiled program or record holds as it was
    for the model that made it.
    """
    return type(layer).__module__.startswith("keras.") and not isinstance(
        layer, keras.layers.Lambda
    )


def _nameless(config):
    """`config` with every name replaced by its order of appearance.

    Names (of the model, its layers and their inputs) also stand in the
    references between layers, so all their occurrences are replaced.
    """
    names = {}

    def collect(value):
        if isinstance(value, dict):
            name = value.get("name")
            if isinstance(name, str):
                names.setdefault(name, f"#{len(names)}")
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    def replace(value):
        if isinstance(value, dict):
            return {key: replace(item) for key, item in value.items()}
        if isinstance(value, list):
            return [replace(item) for item in value]
        if isinstance(value, str):
            return names.get(value, value)
        return value

    collect(config)
    return replace(config)


def _layers(model):
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _layers(layer)
