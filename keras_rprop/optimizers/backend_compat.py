"""The few places where the optimizer must know which backend runs it."""

import keras
import numpy as np

# Step sizes below float32 precision would stall Rprop (1.2 x step rounds
# back to step in bfloat16 for a wide range of values), so 16-bit weights
# keep float32 step sizes.
_WIDE_ENOUGH = ("float32", "float64")


def step_dtype(variable_dtype):
    """The dtype of the step sizes of a variable of `variable_dtype`."""
    dtype = keras.backend.standardize_dtype(variable_dtype)
    return dtype if dtype in _WIDE_ENOUGH else "float32"


def constant_initializer(value):
    """An initializer filling a tensor with the Python number `value`.

    The value is made on the host by NumPy, in the requested dtype, and the
    variable takes it as it is: `keras.initializers.Constant` casts through
    float32 on TensorFlow (0.1 becomes 0.10000000149 in a float64 tensor).
    On JAX, `ops.full` and even `jnp.asarray` of a new shape compile a
    program of their own (two per variable of the model, on a first call);
    `jax.device_put` copies the array without one.
    """

    def initializer(shape, dtype=None):
        dtype = keras.backend.standardize_dtype(dtype)
        array = np.full(shape, value, dtype=dtype)
        if keras.backend.backend() == "jax":
            import jax

            return jax.device_put(array)
        return array

    return initializer


def is_float_dtype(dtype):
    return "float" in keras.backend.standardize_dtype(dtype)


def densify(gradient):
    """Turns a sparse gradient into a dense tensor.

    A TensorFlow `IndexedSlices` or a JAX `BCOO` array (whose element-wise
    comparisons JAX does not implement) becomes its dense equivalent.
    Rprop reads every weight's gradient sign, including the zeros of the rows
    an embedding lookup did not touch (they reset the stored sign), so a
    sparse gradient is applied through its exact dense equivalent.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    elif keras.backend.backend() == "jax":
        from jax.experimental import sparse

        if isinstance(gradient, sparse.BCOO):
            return gradient.todense()
    return gradient


def num_replicas_in_sync():
    """The number of replicas sharing one step under `tf.distribute`, else 1.

    Keras divides each replica's loss by this number, so the replicas' losses
    add up to the global loss. JAX distribution computes one global loss.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None:
            return context.num_replicas_in_sync
    return 1


def sign_dtype():
    """The dtype of the stored signs (-1, 0 or +1) of new optimizer state.

    `int8` everywhere but under `tf.distribute.MultiWorkerMirroredStrategy`,
    which broadcasts initial values between workers with a collective that
    has no `int8` kernel; `float16` holds the three values exactly in the
    next smallest size.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return "float16"
    return "int8"
