"""The few places where the optimizer must know which backend runs it."""

import keras
import numpy as np

from keras_rprop import rule

# The dtype of the step sizes of a variable of a given dtype; here for the
# code that makes state like the optimizer's.
step_dtype = rule.step_dtype


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


def widest_float():
    """The widest float dtype variables of this backend can hold.

    `float64`, but on JAX only with 64-bit values enabled (without, JAX
    stores float64 requests as float32 and warns).
    """
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "float32"
    return "float64"


def initial_values(initializer, shape, dtype):
    """The values `initializer` gives, computed eagerly.

    A Keras variable made inside a `tf.function` (an optimizer built by its
    first `apply` there) gets a symbolic initial value; the values must be
    concrete to be checked, so on TensorFlow they are computed outside the
    graph, as the variable itself is.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.init_scope():
            return initializer(shape, dtype=dtype)
    return initializer(shape, dtype=dtype)


def is_traced(tensor):
    """Whether `tensor` belongs to an update being compiled, not run.

    On TensorFlow, inside a `tf.function`; on JAX, inside a `jax.jit` (or
    any other transformation). PyTorch runs the update eagerly, and its
    records (`torch_replay`) are made again when the configuration
    changes.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    return False


def trace_scope():
    """What tells apart the graphs being built at this point, as a tuple.

    On TensorFlow, the graph and the replica of a distribution strategy,
    whose tensors cannot be used in another graph or are another
    replica's; elsewhere nothing (a JAX trace does not outlive a step).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return (
            tf.compat.v1.get_default_graph(),
            tf.distribute.get_replica_context(),
        )
    return ()
