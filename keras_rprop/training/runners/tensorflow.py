"""The engine's epochs on TensorFlow: one `tf.function` over many epochs."""

import numpy as np

from keras_rprop.training import train_steps
from keras_rprop.training.runners import common


class TensorFlowRunner:
    """Epochs in one `tf.function`: a `tf.while_loop` over epochs."""

    validates = True

    def __init__(self, model, steps):
        import tensorflow as tf

        self.model = model
        self.steps = steps
        self.keys = common.log_keys(model)
        self.data = None
        # Keras compiles its own steps without AutoGraph too: the step has
        # no Python control flow on tensors to convert.
        self.function = tf.function(
            self._epochs,
            autograph=False,
            jit_compile=bool(model.jit_compile),
            reduce_retracing=True,
        )

    def _validate(self, batches):
        import tensorflow as tf

        model = self.model
        for metric in model.metrics:
            metric.reset_state()
        for batch in batches:
            model.test_step(batch)
        logs = model.get_metrics_result()
        return [tf.cast(logs[key], "float32") for key in self.keys]

    def _epochs(
        self, data, batches, validate, epochs, goal, stop_on_nan, snapshots
    ):
        import tensorflow as tf

        model = self.model
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
                    lambda: self._validate(batches),
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

        batches = common.in_loop_batches(validation)
        count, train, val, saved = self.function(
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
