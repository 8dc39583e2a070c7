"""The TensorFlow update compiled with XLA inside a graph.

Keras runs `model.fit` on CPU as a plain `tf.function` (its `jit_compile`
default, "auto", turns XLA off there). A plain graph runs every operation of
the rule as its own kernel, a full pass over memory each: about twenty
passes per variable, where XLA fuses the rule into a few loops. Calling the
per-variable update through a nested `tf.function(jit_compile=True)` compiles
the update alone with XLA, whatever the caller's setting; inside a caller
that already compiles with XLA it is simply inlined.
"""

import tensorflow as tf

# The default (`fused=None`) compiles the update apart for models of at
# least this many parameters: its compilation (under a second) costs more
# than the steps of a smaller model save in runs of a few thousand steps
# (see benchmarks/README.md).
MIN_PARAMETERS = 1 << 17


def is_supported(grads):
    """Whether the update of these gradients can be compiled here.

    Only inside a graph (eagerly, a new function per call would be traced
    every step), outside `tf.distribute` strategies (their replica-local
    update path must run as Keras wrote it), and for dense gradients (XLA
    needs the static shape that `IndexedSlices` only carry as a tensor).
    """
    if tf.executing_eagerly() or tf.distribute.has_strategy():
        return False
    return not any(isinstance(g, tf.IndexedSlices) for g in grads)


def update(optimizer, grads, trainable_variables, learning_rate):
    """Runs `optimizer.update_step` on every variable in one XLA program.

    Args:
        optimizer: The `keras_rprop.Rprop` instance.
        grads: The gradients, one per variable.
        trainable_variables: The Keras variables to update.
        learning_rate: The learning rate of this step.
    """

    def update_all(grads, learning_rate):
        for grad, variable in zip(grads, trainable_variables):
            optimizer.update_step(grad, variable, learning_rate)

    # No Python control flow of the update depends on a tensor, so
    # AutoGraph's rewriting of every function it calls is only tracing time.
    tf.function(update_all, jit_compile=True, autograph=False)(
        list(grads), tf.convert_to_tensor(learning_rate)
    )
