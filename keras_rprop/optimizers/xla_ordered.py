"""The per-tensor update in the order XLA on the CPU runs it without copies.

XLA on the CPU computes each output of an element-wise update in a loop of its
own: one for the new weight, one for the new step size and one for the new
sign, each reading the gradient and the old state. The Keras trainers donate
the optimizer state to the compiled step, so every new value is written over
its old buffer. An old buffer that another loop still reads must then be
copied first, unless XLA can prove that the readers run before the writer;
XLA proves it from data dependencies only. Without them, the backtracking
variants copy every old step size and sign, in separate passes.

`after(x, dependency)` returns `x` bit for bit, but computed from one
element of `dependency`, which gives XLA the data dependency. `update`
computes the new sign from inputs that come "after" the new step size, so
the old signs are overwritten last. The backtracking variants move a weight
by its old step size on a sign change, so their new step size is computed
from a step size that comes "after" the new weight. The other variants move
it by the new step size and sign, which they compute first and the weight's
loop reads back (`rule.move_from_new_state`). Either way, each old buffer is
read by loops that all run before the one overwriting it.
"""

import re

import keras

from keras_rprop import compat
from keras_rprop import rule

# The unsigned integer type of each width, to reinterpret any value as bits.
_UNSIGNED = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}


CPU = "cpu"
ACCELERATOR = "accelerator"


def xla_target(tensor):
    """What XLA compiles `tensor`'s program for: `CPU`, `ACCELERATOR` or None.

    None when `tensor` is not being traced into an XLA program: eagerly, or
    in a TensorFlow graph that XLA does not compile (under `tf.distribute`,
    say). There every operation is a pass of its own anyway, and recomputing
    the rule for each output would only triple the work.

    On the CPU, the three outputs of a tensor need the ordering. On a GPU,
    XLA fuses them into one kernel that reads each old element before it
    writes it, so it copies nothing; the ordering would split that kernel
    in three and bring the copies back.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if not isinstance(tensor, jax.core.Tracer):
            return None
        return CPU if jax.default_backend() == "cpu" else ACCELERATOR
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly() or not compat.tf_in_xla_context():
            return None
        # TensorFlow places the step on an accelerator if there is one.
        if any(tf.config.list_logical_devices(k) for k in ("GPU", "TPU")):
            return ACCELERATOR
        return CPU
    return None


def after(x, dependency):
    """Returns `x` unchanged, with a data dependency on `dependency`.

    The bits of `x` are OR-ed with zero bits computed from the first element
    of `dependency`: the result is `x` exactly, for every value including
    -0.0 and NaN. The zero is `(bits >> half) >> half`, which XLA's
    simplifier does not fold into a constant; if a later version folds it,
    only the ordering (and so the speed) is lost, never the value.

    Args:
        x: A JAX array or TensorFlow tensor.
        dependency: A non-empty JAX array or TensorFlow tensor.
    """
    if keras.backend.backend() == "jax":
        return _after_jax(x, dependency)
    return _after_tensorflow(x, dependency)


def _after_jax(x, dependency):
    from jax import lax

    first = lax.reshape(dependency, (dependency.size,))[0]
    zero = _zero_bits(
        lax.bitcast_convert_type(first, _unsigned(first.dtype)),
        lambda bits, shift: lax.shift_right_logical(
            bits, bits.dtype.type(shift)
        ),
    )
    unsigned = _unsigned(x.dtype)
    bits = lax.bitcast_convert_type(x, unsigned)
    bits = lax.bitwise_or(bits, zero.astype(unsigned))
    return lax.bitcast_convert_type(bits, x.dtype)


def _after_tensorflow(x, dependency):
    import tensorflow as tf

    first = tf.reshape(dependency, [-1])[0]
    zero = _zero_bits(
        tf.bitcast(first, _unsigned(first.dtype)),
        tf.bitwise.right_shift,
    )
    unsigned = _unsigned(x.dtype)
    bits = tf.bitwise.bitwise_or(
        tf.bitcast(x, unsigned), tf.cast(zero, unsigned)
    )
    return tf.bitcast(bits, x.dtype)


def _itemsize(dtype):
    # From the name, which also covers bfloat16 (unknown to NumPy).
    name = keras.backend.standardize_dtype(dtype)
    return 1 if name == "bool" else int(re.search(r"\d+", name)[0]) // 8


def _unsigned(dtype):
    return _UNSIGNED[_itemsize(dtype)]


def _zero_bits(bits, shift_right):
    """Zero, as `(bits >> half) >> half` of an unsigned scalar."""
    half = _itemsize(bits.dtype) * 4
    return shift_right(shift_right(bits, half), half)


def update(config, gradient, step, sign, weight, arguments):
    """`rule.apply` of one tensor, computed in the order described above.

    Args:
        config: The hyper-parameters given to `rule.apply`.
        gradient: The gradient, in the dtype of `step`.
        step, sign: The stored step sizes and signs.
        weight: The weights.
        arguments: The other keyword arguments of `rule.apply`.

    Returns:
        `(new_weight, new_sign, new_step)`, the values of `rule.apply` bit
        for bit but for the sign of a zero weight (see
        `rule.move_from_new_state`).
    """

    def apply(gradient, step, sign, **kwargs):
        return rule.apply(
            config,
            gradient,
            step,
            sign,
            signs_from_comparisons=True,
            **kwargs,
            **arguments,
        )

    def sign_after(new_step):
        # The signs are overwritten last: every other loop reads them.
        return apply(after(gradient, new_step), step, after(sign, new_step))[1]

    if not rule.VARIANT_TABLE[config.variant].move_follows_from_new_state:
        # The move on a sign change reverts the old step size, so the
        # weight's loop runs first and the step sizes' loop after it.
        new_weight = apply(gradient, step, sign, weight=weight)[0]
        new_step = apply(gradient, after(step, new_weight), sign)[2]
        return new_weight, sign_after(new_step), new_step

    # The move follows from the new state alone: computed from it, the
    # weight's loop reads it back instead of computing the rule a third
    # time.
    new_step = apply(gradient, step, sign)[2]
    new_sign = sign_after(new_step)
    move = rule.move_from_new_state(
        gradient,
        keras.ops.cast(new_sign, step.dtype),
        new_step,
        learning_rate=keras.ops.cast(arguments["learning_rate"], step.dtype),
    )
    return rule.add_move(weight, move), new_sign, new_step
