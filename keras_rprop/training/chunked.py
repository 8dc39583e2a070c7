"""The full-batch gradient of data that does not fit in one batch.

`fit` runs over the chunks of an epoch with a training step that only adds
each chunk's gradient and loss, weighted by its number of samples, to a
`GradientAccumulator`. After the last chunk, `ApplyAccumulated` divides by
the number of samples and applies one optimizer step. With a loss that
averages over the samples (Keras's default reduction,
`"sum_over_batch_size"`), the weighted mean of the chunks' gradients is the
gradient of the whole data set, whatever the size of the last chunk; the
regularization terms, added once to every chunk's loss, come out once.
Keras's own `gradient_accumulation_steps` averages the chunks with equal
weights instead, which is wrong for a short last chunk.
"""

import keras
import numpy as np
from keras import ops

from keras_rprop.optimizers import backend_compat
from keras_rprop.training import distributed
from keras_rprop.training import train_steps


class GradientAccumulator(keras.metrics.Metric):
    """Sums of the sample-weighted gradients and losses of the chunks.

    It is a `Metric` so that the JAX trainer threads its variables through
    the compiled training step with the other metric variables. Keras resets
    metrics at the start of every epoch; this one is cleared by
    `ApplyAccumulated` after each optimizer step instead, and logs nothing.

    Args:
        variables: The trainable variables whose gradients are summed.
        name: Name of the metric.
    """

    def __init__(self, variables, name="keras_rprop_gradient_sums"):
        super().__init__(name=name)
        self.gradient_sums = [
            self.add_variable(
                shape=variable.shape,
                initializer="zeros",
                dtype=backend_compat.step_dtype(variable.dtype),
                name=f"gradient_sum_{i}",
            )
            for i, variable in enumerate(variables)
        ]
        self.samples = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="samples"
        )
        self.loss_sum = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="loss_sum"
        )

    def update_state(self, sums):
        """Adds one chunk's `train_steps.Sums`."""
        for total, grad in zip(self.gradient_sums, sums.grads):
            if grad is None:
                continue
            total.assign_add(
                ops.cast(backend_compat.densify(grad), total.dtype)
            )
        self.samples.assign_add(ops.cast(sums.samples, "float32"))
        self.loss_sum.assign_add(ops.cast(sums.loss, "float32"))

    def sums(self):
        """The sums of the chunks so far, as `train_steps.Sums`."""
        return train_steps.Sums(
            [v.value for v in self.gradient_sums],
            self.loss_sum.value,
            self.samples.value,
        )

    add = update_state

    def result(self):
        return {}

    def reset_state(self):
        # The sums span an epoch's chunks and outlive Keras's reset at the
        # start of the next epoch until `ApplyAccumulated` used them.
        pass

    def clear(self):
        for variable in self.variables:
            # NumPy zeros give every variable a buffer of its own (the JAX
            # trainer donates them, and a shared constant is donated twice).
            variable.assign(np.zeros(variable.shape, variable.dtype))


class ApplyAccumulated(keras.callbacks.Callback):
    """Applies the accumulated full-batch gradient once per pass over the data.

    The step is applied right after the last chunk of the epoch, before
    validation and the other callbacks' `on_epoch_end`, so they all see the
    weights after the epoch's step, as in any Keras training. When the number
    of chunks is unknown (a dataset of unknown cardinality), the step is
    applied at the start of `on_epoch_end`, after validation.

    Args:
        accumulator: The `GradientAccumulator` the training step fills.
    """

    def __init__(self, accumulator):
        super().__init__()
        self.accumulator = accumulator
        self._compiled_apply = None

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps") if self.params else None
        if steps is not None and batch + 1 >= steps:
            self.apply()

    def on_epoch_end(self, epoch, logs=None):
        self.apply()

    def apply(self):
        """Applies one optimizer step with the accumulated gradient."""
        model = self.model
        backend = keras.backend.backend()
        if backend == "jax":
            # The JAX trainer keeps the state outside the variables during
            # an epoch; after this it reads them back.
            model.jax_state_sync()
        if float(ops.convert_to_numpy(self.accumulator.samples)) == 0.0:
            return
        if self._compiled_apply is None:
            self._compiled_apply = _COMPILERS[backend](model, self.accumulator)
        self._compiled_apply()
        self.accumulator.clear()
        # The epoch's logs, read after this, are those of all the shards;
        # the metrics were reset when the epoch began.
        metrics = [m for m in model.metrics if m is not self.accumulator]
        variables = distributed.summed_metric_variables(metrics)
        if variables:
            distributed.add_metric_updates(variables)


def _tensorflow_apply(model, accumulator):
    import tensorflow as tf

    def apply():
        sums = train_steps.global_sums(accumulator.sums())
        train_steps.apply_sums(model, sums)

    return tf.function(apply, autograph=False)


def _jax_apply(model, accumulator):
    import jax

    def stateless(trainable, optimizer_state, metric_state):
        mapping = list(zip(accumulator.variables, metric_state))
        with keras.StatelessScope(state_mapping=mapping):
            sums = accumulator.sums()
        return train_steps.jax_apply_sums(
            model, trainable, optimizer_state, train_steps.global_sums(sums)
        )

    stateless = jax.jit(stateless)

    def apply():
        trainable, optimizer_state = stateless(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in accumulator.variables],
        )
        for variable, value in zip(model.trainable_variables, trainable):
            variable.assign(value)
        for variable, value in zip(model.optimizer.variables, optimizer_state):
            variable.assign(value)

    return apply


def _torch_apply(model, accumulator):
    def apply():
        sums = train_steps.global_sums(accumulator.sums())
        train_steps.apply_sums(model, sums)

    return apply


_COMPILERS = {
    "tensorflow": _tensorflow_apply,
    "jax": _jax_apply,
    "torch": _torch_apply,
}
