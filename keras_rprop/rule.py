"""The Rprop update rule for one tensor, as a pure function.

Every code path of the optimizer (the per-variable Keras path and the
vectorized multi-tensor paths) calls `rprop_update`, so the four variants
cannot drift apart between backends. `move_from_new_state` and
`move_against_gradient` restate the move of the variants without
backtracking from the state that `rprop_update` returns, for a caller that
reads that state back. All only use `keras.ops`, which accept native
tensors of the active backend.
"""

import keras
from keras import ops

RPROP_PLUS = "rprop+"
RPROP_MINUS = "rprop-"
IRPROP_PLUS = "irprop+"
IRPROP_MINUS = "irprop-"

VARIANTS = (RPROP_PLUS, RPROP_MINUS, IRPROP_PLUS, IRPROP_MINUS)

# Variants that revert the previous move of a weight whose gradient changed
# sign. They are the ones for which the previous learning rate matters.
BACKTRACKING_VARIANTS = (RPROP_PLUS, IRPROP_PLUS)


def rprop_update(
    gradient,
    previous_sign,
    step,
    *,
    variant,
    eta_minus,
    eta_plus,
    min_step,
    max_step,
    learning_rate=1.0,
    previous_learning_rate=1.0,
    loss_increased=None,
    sign_dtype=None,
):
    """Computes one Rprop update for one tensor.

    The stored "previous gradient" of the papers is only ever used through
    its sign, so it is kept as a sign (-1, 0 or +1). The previous move is
    `-previous_sign * step * previous_learning_rate`: it is derived, not
    stored, which keeps the state at two tensors per weight for every
    variant.

    Args:
        gradient: The current (full-batch) gradient.
        previous_sign: Sign of the gradient stored at the previous step, as a
            floating tensor with values in {-1, 0, +1}. Zero at the first step
            and right after a sign change in the variants that freeze.
        step: The step sizes used for the previous move (Delta in the papers).
        variant: One of `VARIANTS`.
        eta_minus: Factor applied to the step size on a sign change.
        eta_plus: Factor applied to the step size while the sign holds.
        min_step: Lower bound of the step sizes.
        max_step: Upper bound of the step sizes.
        learning_rate: Scalar multiplying the applied move; 1.0 is the papers'
            rule.
        previous_learning_rate: The learning rate of the previous step, so
            that backtracking reverts exactly the move that was made.
        loss_increased: For `"irprop+"` only: a boolean scalar, whether the
            loss rose since the previous step, `E(t) > E(t-1)`.
        sign_dtype: If given, `new_sign` is computed in this dtype (that of
            the stored signs) from comparisons, and is 0 for a NaN gradient.
            By default it is made from the gradient's float sign, which an
            eager caller computes anyway for the move.

    Returns:
        A tuple `(move, new_sign, new_step)`: the increment to add to the
        weights, the sign to store for the next step and the new step sizes.
    """
    sign = ops.sign(gradient)
    # The papers compare gradient(t) * gradient(t-1) with 0. With
    # `previous_sign` in {-1, 0, +1} the product is +-gradient or +-0
    # exactly, so it compares like `sign * previous_sign` for every value
    # (NaN, inf and -0.0 included); computed from the gradient itself, the
    # step-size output does not need `sign`, which XLA, computing each output
    # in a loop of its own, then leaves out of that loop.
    product = gradient * previous_sign
    same_sign = product > 0
    sign_change = product < 0

    # Not `ops.minimum`/`ops.maximum`: on the PyTorch backend they compute
    # float64 inputs in float32, which would round float64 step sizes.
    max_step = ops.convert_to_tensor(max_step, dtype=step.dtype)
    min_step = ops.convert_to_tensor(min_step, dtype=step.dtype)
    grown = step * eta_plus
    grown = ops.where(grown > max_step, max_step, grown)
    shrunk = step * eta_minus
    shrunk = ops.where(shrunk < min_step, min_step, shrunk)
    kept_or_grown = ops.where(same_sign, grown, step)
    new_step = ops.where(sign_change, shrunk, kept_or_grown)

    if sign_dtype is None:
        new_sign = sign
    else:
        # Two comparisons in the stored dtype: converting the float sign to
        # `int8` (NaN and saturation included) took XLA 8 of the 18
        # instructions per 8 elements of the loop that writes the signs.
        # A NaN gradient gives 0, as its float sign does once stored.
        sign_dtype = keras.backend.standardize_dtype(sign_dtype)
        new_sign = ops.cast(gradient > 0, sign_dtype)
        new_sign = new_sign - ops.cast(gradient < 0, sign_dtype)
    if variant == RPROP_MINUS:
        return -sign * new_step * learning_rate, new_sign, new_step

    # The other variants replace the move on a sign change, so their move
    # never needs the shrunk step: XLA, computing the move in a loop of its
    # own, leaves it out there.
    new_sign = ops.where(sign_change, ops.zeros_like(new_sign), new_sign)
    if variant == RPROP_PLUS:
        # The previous move was `-previous_sign * step *
        # previous_learning_rate`, and on a sign change `previous_sign` is
        # `-sign` exactly: the revert is `-sign * step *
        # previous_learning_rate`, bit for bit. Every move is then the sign
        # times a scaled step size, one product with the sign per element.
        scaled = ops.where(
            sign_change,
            step * previous_learning_rate,
            kept_or_grown * learning_rate,
        )
        return -sign * scaled, new_sign, new_step
    move = -sign * kept_or_grown * learning_rate
    if variant == IRPROP_MINUS:
        revert = ops.zeros_like(move)
    elif variant == IRPROP_PLUS:
        if loss_increased is None:
            raise ValueError(
                "The 'irprop+' variant needs `loss_increased`. Received: None."
            )
        revert = ops.where(
            loss_increased,
            previous_sign * step * previous_learning_rate,
            ops.zeros_like(move),
        )
    else:
        raise ValueError(
            f"Argument `variant` must be one of {VARIANTS}. "
            f"Received: variant={variant!r}"
        )
    move = ops.where(sign_change, revert, move)
    return move, new_sign, new_step


def move_from_new_state(gradient, new_sign, new_step, *, learning_rate=1.0):
    """The move of `"rprop-"` and `"irprop-"`, from the state they store.

    Without backtracking, a weight moves by its new step size against the
    sign stored for the next step, which `"irprop-"` sets to 0 where it
    freezes the weight: the move is `-new_sign * new_step * learning_rate`.
    A caller that has written the new state can compute the move from it
    rather than from the rule's inputs. The result equals the move of
    `rprop_update` for every gradient, NaN included (its stored sign is 0,
    so the NaN is taken from the gradient); only a zero move can be -0.0
    where `rprop_update` gives +0.0, which changes a weight of -0.0 alone.

    Args:
        gradient: The gradient given to `rprop_update`.
        new_sign: Its `new_sign`, in the dtype of `new_step`.
        new_step: Its `new_step`.
        learning_rate: The learning rate given to `rprop_update`.

    Returns:
        The increment to add to the weights.
    """
    # `* -learning_rate`, one negation per tensor rather than per element;
    # the product is `-(new_sign * new_step * learning_rate)` exactly.
    move = new_sign * new_step * -learning_rate
    return ops.where(ops.isnan(gradient), gradient, move)


def move_against_gradient(gradient, new_step, *, learning_rate=1.0):
    """The move of `"rprop-"`, from its new step sizes and the gradient.

    Rprop- moves every weight by its new step size against the sign of its
    current gradient, whether that sign changed or not: the move is
    `-sign(gradient) * new_step * learning_rate`, the move of
    `rprop_update` bit for bit (a NaN gradient gives a NaN move where
    `ops.sign` keeps NaN, as `rprop_update` does). A caller that has
    written the new step sizes can compute the move from them without
    reading the stored signs.

    Args:
        gradient: The gradient given to `rprop_update`.
        new_step: Its `new_step`.
        learning_rate: The learning rate given to `rprop_update`.

    Returns:
        The increment to add to the weights.
    """
    return -ops.sign(gradient) * new_step * learning_rate
