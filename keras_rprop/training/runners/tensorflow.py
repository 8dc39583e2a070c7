"""The engine's epochs on TensorFlow: one `tf.function` over many epochs.

The function takes the model's variables as arguments instead of capturing
them, so that models of the same structure (the same Keras layers and
configuration, compiled with the same loss, metrics and optimizer
configuration) share one traced function: training several fresh models
(seeds, restarts) traces once.
"""

import threading
import weakref

import numpy as np

from keras_rprop import compat
from keras_rprop.training import train_steps
from keras_rprop.training.runners import common

_PROGRAMS = common.Programs()


class TensorFlowRunner:
    """Epochs in one `tf.function`: a `tf.while_loop` over epochs."""

    validates = True

    def __init__(self, model, steps):
        self.model = model
        self.steps = steps
        self.data = None
        self.variables = common.state_variables(model)
        self.program = self._program()
        self.keys = self.program.keys

    def _program(self):
        return _PROGRAMS.get(
            self.model,
            self.steps,
            lambda: _Program(self.model, self.steps),
            serves=lambda program: program.serves(self.model),
        )

    def run(
        self,
        epochs,
        goal=None,
        stop_on_nan=False,
        snapshots=False,
        validation=None,
        validate=None,
    ):
        import tensorflow as tf

        if not self.program.serves(self.model):
            # A trace captured another model's state: trace our own.
            self.program = self._program()
        batches = common.in_loop_batches(validation)
        count, train, val, saved = self.program(
            self.model,
            self.variables,
            self.data,
            batches,
            tf.constant(
                common.mask(validate, common.capacity(epochs, validate))
            ),
            tf.constant(epochs),
            tf.constant(-np.inf if goal is None else goal, "float32"),
            stop_on_nan,
            snapshots,
        )
        count = int(count)
        return common.Result(
            common.epoch_logs(self.keys, train, val, validate, count),
            common.snapshots_by_epoch(saved, count) if snapshots else None,
        )


class _Program:
    """The traced epochs of one model structure.

    The `tf.function` takes the `tf.Variable`s of the calling model's
    variables (model, optimizer, metrics) as arguments; while it traces,
    the calling model's Keras variables stand for those arguments, so the
    trace reads and writes its arguments and captures no state. TensorFlow
    keeps one trace for any variables of the same shapes and dtypes.
    """

    def __init__(self, model, steps):
        import tensorflow as tf

        self.steps = steps
        self.keys = common.log_keys(model)
        # The calling model and its variables, during a call (per thread:
        # a call that traces binds the model of its own thread).
        self.calling = threading.local()
        # The model whose trace captured state, if one did: the program
        # then serves that model only.
        self.owner = None
        # Keras compiles its own steps without AutoGraph too: the step has
        # no Python control flow on tensors to convert.
        self.function = tf.function(
            self._traced,
            autograph=False,
            jit_compile=bool(model.jit_compile),
            reduce_retracing=True,
        )

    def serves(self, model):
        return self.owner is None or self.owner() is model

    def __call__(self, model, variables, *args):
        values = [compat.tf_variable(v) for v in variables]
        traces = self.function.experimental_get_tracing_count()
        self.calling.model = model, variables
        try:
            result = self.function(values, *args)
        finally:
            del self.calling.model
        if self.function.experimental_get_tracing_count() != traces:
            concrete = self.function.get_concrete_function(values, *args)
            if concrete.captured_inputs:
                self.owner = weakref.ref(model)
        return result

    def _traced(self, values, *args):
        model, variables = self.calling.model
        with compat.tf_variables_bound(variables, values):
            return self._epochs(model, *args)

    def _validate(self, model, batches):
        import tensorflow as tf

        for metric in model.metrics:
            metric.reset_state()
        for batch in batches:
            model.test_step(batch)
        logs = model.get_metrics_result()
        return [tf.cast(logs[key], "float32") for key in self.keys]

    def _epochs(
        self,
        model,
        data,
        batches,
        validate,
        epochs,
        goal,
        stop_on_nan,
        snapshots,
    ):
        import tensorflow as tf

        weights = list(model.weights) if snapshots else []
        nan = [tf.constant(np.nan, "float32") for _ in self.keys]

        def body(epoch, stop, train, val, saved):
            for metric in model.metrics:
                metric.reset_state()
            logs = train_steps.update_steps(
                model, data, self.steps, model.compute_metrics
            )
            loss = tf.cast(logs["loss"], "float32")
            train = [
                array.write(epoch, tf.cast(logs[key], "float32"))
                for array, key in zip(train, self.keys)
            ]
            if batches:
                values = tf.cond(
                    validate[epoch],
                    lambda: self._validate(model, batches),
                    lambda: nan,
                )
                val = [
                    array.write(epoch, value)
                    for array, value in zip(val, values)
                ]
            saved = [
                array.write(epoch, tf.identity(w.value))
                for array, w in zip(saved, weights)
            ]
            stop = common.stop_condition(loss, goal, stop_on_nan)
            return epoch + 1, stop, train, val, saved

        def arrays(count, dtypes):
            return [tf.TensorArray(dtype, size=epochs) for dtype in dtypes]

        train = arrays(len(self.keys), ["float32"] * len(self.keys))
        val = arrays(len(self.keys), ["float32"] * len(self.keys))
        val = val if batches else []
        saved = [
            tf.TensorArray(w.dtype, size=epochs, element_shape=w.shape)
            for w in weights
        ]
        count, _, train, val, saved = tf.while_loop(
            lambda epoch, stop, *_: tf.logical_and(
                epoch < epochs, tf.logical_not(stop)
            ),
            body,
            (tf.constant(0), tf.constant(False), train, val, saved),
            parallel_iterations=1,
        )
        return (
            count,
            [a.stack() for a in train],
            [a.stack() for a in val],
            [a.stack() for a in saved],
        )
