"""The Rprop update rule: the variants, a checked configuration, a function.

`VARIANT_TABLE` says what each variant does on a sign change, and all else
the package knows of a variant follows from it. `RpropConfig` holds the
hyper-parameters of the rule, checked once.
`apply(config, gradient, step, sign, ...)` computes one update of one tensor
from them and is the only way into the rule: every code path of the
optimizer calls it, so the four variants cannot drift apart between
backends or between the eager and the compiled updates. It owns the casts
between the stored state and the arithmetic, the propagation of NaN
gradients and the dtype of the stored signs.

`rprop_update` is the rule itself, on tensors of one dtype, as published.
"""

import collections
import dataclasses
import math
import numbers
import types

import keras

RPROP_PLUS = "rprop+"
RPROP_MINUS = "rprop-"
IRPROP_PLUS = "irprop+"
IRPROP_MINUS = "irprop-"

# What a variant does with a weight whose gradient changed sign (its step
# size shrinks in all of them).
MOVE = "move by the shrunk step"
STAY = "stay"
REVERT = "revert the previous move"
REVERT_IF_LOSS_ROSE = "revert the previous move if the loss rose, else stay"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One variant of the rule: what it does on a sign change.

    Everything else the package knows of a variant follows from
    `on_sign_change`, here and nowhere else, so that a new variant is
    described once for every code path.

    Args:
        name: The variant's name, as `RpropConfig.variant` holds it.
        on_sign_change: One of `MOVE`, `STAY`, `REVERT` and
            `REVERT_IF_LOSS_ROSE`.
    """

    name: str
    on_sign_change: str

    @property
    def backtracks(self):
        """Whether it may revert a move, which the previous learning rate
        scaled."""
        return self.on_sign_change in (REVERT, REVERT_IF_LOSS_ROSE)

    @property
    def forgets_sign(self):
        """Whether it stores a zero sign after a sign change."""
        return self.on_sign_change != MOVE

    @property
    def needs_loss(self):
        """Whether it compares the loss of consecutive steps."""
        return self.on_sign_change == REVERT_IF_LOSS_ROSE

    @property
    def move_follows_from_new_state(self):
        """Whether its move is `-new_sign * new_step * learning_rate` (see
        `move_from_new_state`): true unless it reverts an old move."""
        return not self.backtracks


VARIANT_TABLE = {
    variant.name: variant
    for variant in (
        Variant(RPROP_PLUS, REVERT),
        Variant(RPROP_MINUS, MOVE),
        Variant(IRPROP_PLUS, REVERT_IF_LOSS_ROSE),
        Variant(IRPROP_MINUS, STAY),
    )
}

VARIANTS = tuple(VARIANT_TABLE)

# Variants that revert the previous move of a weight whose gradient changed
# sign. They are the ones for which the previous learning rate matters.
BACKTRACKING_VARIANTS = tuple(
    name for name, variant in VARIANT_TABLE.items() if variant.backtracks
)


def _hyperparameter(default, must_be=None, holds=None, rule=True):
    """A field of `RpropConfig`: a real number, checked when made.

    Args:
        default: Its default value.
        must_be: The range it must lie in, in words ("> 1"), for the error.
        holds: A function of the value that is True inside that range.
        rule: Whether `apply` reads it.
    """
    return dataclasses.field(
        default=default,
        metadata={"must_be": must_be, "holds": holds, "rule": rule},
    )


@dataclasses.dataclass(frozen=True)
class RpropConfig:
    """The hyper-parameters of the Rprop rule, checked when made.

    Args:
        variant: One of `VARIANTS`, in any case.
        initial_step: Initial step size of every weight (Delta_0), > 0 and
            within `[min_step, max_step]`: a real number, or an initializer
            (a callable taking `shape` and `dtype`) that gives each weight
            its own; the optimizers check its values when they build.
        eta_minus: Factor in (0, 1) by which a step size shrinks after a
            sign change.
        eta_plus: Factor > 1 by which a step size grows while the sign
            holds.
        min_step: Lower bound (>= 0) of the step sizes.
        max_step: Upper bound (> 0) of the step sizes.

    Raises:
        ValueError: naming the argument and the received value, for a value
            outside its range or that is not a finite real number.
    """

    variant: str = IRPROP_MINUS
    # The optimizers take every field by keyword, and by position in this
    # order after `variant`: a new one goes last.
    # Riedmiller & Braun (1993) start every step size at 0.1 and call the
    # choice "rather uncritical"; SNNS, FANN and Encog use it too.
    initial_step: float = _hyperparameter(0.1, rule=False)
    eta_minus: float = _hyperparameter(
        0.5, "in the open interval (0, 1)", lambda value: 0.0 < value < 1.0
    )
    eta_plus: float = _hyperparameter(1.2, "> 1", lambda value: value > 1.0)
    min_step: float = _hyperparameter(1e-6, ">= 0", lambda value: value >= 0)
    max_step: float = _hyperparameter(50.0, "> 0", lambda value: value > 0)

    def __post_init__(self):
        set_field = object.__setattr__
        set_field(self, "variant", check_variant(self.variant))
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            if field.name == "initial_step" and is_initializer(value):
                continue
            value = check_real(field.name, value)
            holds = field.metadata["holds"]
            if holds is not None and not holds(value):
                raise ValueError(
                    f"Argument `{field.name}` must be "
                    f"{field.metadata['must_be']}. "
                    f"Received: {field.name}={value}"
                )
            set_field(self, field.name, value)
        if self.min_step > self.max_step:
            raise ValueError(
                "Argument `min_step` must be <= `max_step`. "
                f"Received: min_step={self.min_step}, "
                f"max_step={self.max_step}"
            )
        if not is_initializer(self.initial_step):
            self.check_initial_steps(self.initial_step, self.initial_step)

    def check_initial_steps(self, low, high, where=""):
        """Raises unless initial step sizes from `low` to `high` are valid.

        Args:
            low, high: The smallest and largest initial step size (NaN if
                any is NaN).
            where: Words saying which values these are, for the error.
        """
        if not (0.0 < low and self.min_step <= low <= high <= self.max_step):
            received = low if low == high else f"values in [{low}, {high}]"
            raise ValueError(
                "Argument `initial_step` must be > 0 and within "
                f"[min_step, max_step] = [{self.min_step}, {self.max_step}]. "
                f"Received: initial_step={received}{where}"
            )

    @property
    def rule_values(self):
        """The variant and the values of `RULE_PARAMETERS`, as a tuple."""
        return (self.variant,) + tuple(
            getattr(self, name) for name in RULE_PARAMETERS
        )


# The hyper-parameters `apply` reads.
RULE_PARAMETERS = tuple(
    field.name
    for field in dataclasses.fields(RpropConfig)[1:]
    if field.metadata["rule"]
)

# What `apply` reads of a config, with the values of `RULE_PARAMETERS` as
# scalar tensors: compiled updates pass them so, to use the values of the
# time they run rather than those of the time they were compiled.
TensorConfig = collections.namedtuple(
    "TensorConfig", ("variant",) + RULE_PARAMETERS
)


def step_dtype(variable_dtype):
    """The dtype of the step sizes of a variable of `variable_dtype`.

    The variable's, but at least float32: in bfloat16, `1.2 * step` rounds
    back to `step` for a wide range of values, which would stall the
    adaptation.
    """
    dtype = keras.backend.standardize_dtype(variable_dtype)
    return dtype if dtype in ("float32", "float64") else "float32"


def is_initializer(value):
    """Whether an `initial_step` is an initializer rather than a number."""
    return callable(value) and not isinstance(value, numbers.Real)


def check_variant(variant):
    """Returns `variant` in lower case, or raises if it is not one of them."""
    if not isinstance(variant, str) or variant.lower() not in VARIANTS:
        raise ValueError(
            f"Argument `variant` must be one of {VARIANTS}. "
            f"Received: variant={variant!r}"
        )
    return variant.lower()


def check_real(name, value):
    """Returns `value` as a float, or raises if it is not a finite real."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Argument `{name}` must be a real number. "
            f"Received: {name}={value!r} (of type {type(value).__name__})"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"Argument `{name}` must be finite. Received: {name}={value!r}"
        )
    return value


_DEFAULTS = RpropConfig()


def apply(
    config,
    gradient,
    step,
    sign,
    *,
    weight=None,
    learning_rate=1.0,
    previous_learning_rate=1.0,
    loss_increased=None,
    signs_from_comparisons=False,
    ops=keras.ops,
):
    """Computes one Rprop update of one tensor from its stored state.

    Args:
        config: An `RpropConfig`, or any object with its `variant` and the
            attributes named in `RULE_PARAMETERS` (a compiled kernel passes
            them as scalar tensors; they are then not checked here).
        gradient: The current (full-batch) gradient, of any float dtype; it
            is computed in the dtype of `step`.
        step: The step sizes used for the previous move (Delta in the
            papers).
        sign: The stored sign of the previous gradient, -1, 0 or +1, in the
            dtype it is stored in (`int8`, or any float dtype).
        weight: If given, the weights, and the result holds their new value
            (the move cast to their dtype and added) instead of the move.
        learning_rate: Scalar multiplying the applied move; 1.0 is the
            papers' rule.
        previous_learning_rate: The learning rate of the previous step, so
            that backtracking reverts exactly the move that was made.
        loss_increased: For `"irprop+"` only: a boolean scalar, whether the
            loss rose since the previous step, `E(t) > E(t-1)`.
        signs_from_comparisons: Whether the new signs are made by comparing
            the gradient with 0 in their stored dtype (a NaN gradient gives
            0), which a compiler fuses into few instructions; by default
            they are cast from the float signs the move uses.
        ops: The namespace of operations, `keras.ops` by default. Another
            one (TensorFlow's own functions, say) must provide `sign`,
            `where`, `zeros_like`, `cast` and `convert_to_tensor(x, dtype)`
            with the meaning of `keras.ops`, and its tensors the operators
            `*`, `+`, unary `-`, `>`, `<` and `!=`.

    Returns:
        A tuple `(new_weight_or_move, new_sign, new_step)`, in the order of
        `rprop_update`: either the new weights (dtype of `weight`) or the
        move to add to them (dtype of `step`), the sign to store for the
        next step (dtype of `sign`) and the new step sizes (dtype of
        `step`). A NaN gradient gives a NaN move, a stored sign of 0 and an
        unchanged step size.
    """
    dtype = step.dtype
    gradient = ops.cast(gradient, dtype)
    move, new_sign, new_step = _rule(
        ops,
        gradient,
        ops.cast(sign, dtype),
        step,
        config,
        learning_rate=ops.cast(learning_rate, dtype),
        previous_learning_rate=ops.cast(previous_learning_rate, dtype),
        loss_increased=loss_increased,
        sign_dtype=sign.dtype if signs_from_comparisons else None,
    )
    move = propagate_nan(move, gradient, ops=ops)
    new_sign = ops.cast(new_sign, sign.dtype)
    if weight is None:
        return move, new_sign, new_step
    return add_move(weight, move, ops=ops), new_sign, new_step


def add_move(weight, move, ops=keras.ops):
    """`weight` plus `move`, the move rounded to the weight's dtype first."""
    # `+`, not `ops.add`: on TensorFlow `ops.add` turns into a `BiasAdd`
    # for some shapes, which rejects empty tensors.
    return weight + ops.cast(move, weight.dtype)


def propagate_nan(move, gradient, ops=keras.ops):
    """Makes a NaN gradient give a NaN move, whatever `ops.sign` does.

    `keras.ops.sign` keeps NaN on TensorFlow and JAX but gives 0 on
    PyTorch, which would treat a NaN gradient as a zero gradient. Of
    another namespace nothing is assumed.
    """
    if ops is keras.ops and keras.backend.backend() != "torch":
        return move
    # `gradient != gradient`, not `isnan`: Inductor's C++ has no vector
    # `isnan` and evaluates it one element at a time inside a vector loop.
    return ops.where(gradient != gradient, gradient, move)


def rprop_update(
    gradient,
    previous_sign,
    step,
    *,
    variant,
    learning_rate=1.0,
    previous_learning_rate=1.0,
    loss_increased=None,
    sign_dtype=None,
    **hyperparameters,
):
    """Computes one Rprop update for one tensor, as the papers state it.

    The stored "previous gradient" of the papers is only ever used through
    its sign, so it is kept as a sign (-1, 0 or +1). The previous move is
    `-previous_sign * step * previous_learning_rate`: it is derived, not
    stored, which keeps the state at two tensors per weight for every
    variant. The optimizer calls the rule through `apply`, which also
    handles the stored dtypes and NaN gradients.

    Args:
        gradient: The current (full-batch) gradient.
        previous_sign: Sign of the gradient stored at the previous step, as a
            floating tensor with values in {-1, 0, +1}. Zero at the first step
            and right after a sign change in the variants that freeze.
        step: The step sizes used for the previous move (Delta in the papers).
        variant: One of `VARIANTS`.
        learning_rate: Scalar multiplying the applied move; 1.0 is the papers'
            rule.
        previous_learning_rate: The learning rate of the previous step, so
            that backtracking reverts exactly the move that was made.
        loss_increased: For `"irprop+"` only: a boolean scalar, whether the
            loss rose since the previous step, `E(t) > E(t-1)`.
        sign_dtype: If given, `new_sign` is computed in this dtype from
            comparisons, and is 0 for a NaN gradient. By default it is the
            gradient's float sign.
        **hyperparameters: Those of `RULE_PARAMETERS` (`eta_minus`,
            `eta_plus`, `min_step`, `max_step`) by keyword, with the
            meaning and default `RpropConfig` gives them; they are not
            checked here.

    Returns:
        A tuple `(move, new_sign, new_step)`: the increment to add to the
        weights, the sign to store for the next step and the new step sizes.
    """
    variant = check_variant(variant)
    if sign_dtype is not None:
        sign_dtype = keras.backend.standardize_dtype(sign_dtype)
    unknown = set(hyperparameters) - set(RULE_PARAMETERS)
    if unknown:
        raise TypeError(
            f"rprop_update() takes the hyper-parameters {RULE_PARAMETERS}. "
            f"Received: {tuple(sorted(unknown))}"
        )
    config = types.SimpleNamespace(
        variant=variant,
        **{name: getattr(_DEFAULTS, name) for name in RULE_PARAMETERS},
    )
    vars(config).update(hyperparameters)
    return _rule(
        keras.ops,
        gradient,
        previous_sign,
        step,
        config,
        learning_rate=learning_rate,
        previous_learning_rate=previous_learning_rate,
        loss_increased=loss_increased,
        sign_dtype=sign_dtype,
    )


def _rule(
    ops,
    gradient,
    previous_sign,
    step,
    config,
    *,
    learning_rate,
    previous_learning_rate,
    loss_increased,
    sign_dtype,
):
    """The rule on tensors of one float dtype; see `rprop_update`."""
    on_sign_change = VARIANT_TABLE[check_variant(config.variant)].on_sign_change
    sign = ops.sign(gradient)
    # The papers compare gradient(t) * gradient(t-1) with 0. With
    # `previous_sign` in {-1, 0, +1} the product is +-gradient or +-0
    # exactly, so it compares like `sign * previous_sign` for every value
    # (NaN, inf and -0.0 included).
    product = gradient * previous_sign
    same_sign = product > 0
    sign_change = product < 0

    # Not `ops.minimum`/`ops.maximum`: on the PyTorch backend they compute
    # float64 inputs in float32, which would round float64 step sizes.
    max_step = ops.convert_to_tensor(config.max_step, dtype=step.dtype)
    min_step = ops.convert_to_tensor(config.min_step, dtype=step.dtype)
    grown = step * config.eta_plus
    grown = ops.where(grown > max_step, max_step, grown)
    shrunk = step * config.eta_minus
    shrunk = ops.where(shrunk < min_step, min_step, shrunk)
    kept_or_grown = ops.where(same_sign, grown, step)
    new_step = ops.where(sign_change, shrunk, kept_or_grown)

    if sign_dtype is None:
        new_sign = sign
    else:
        new_sign = ops.cast(gradient > 0, sign_dtype)
        new_sign = new_sign - ops.cast(gradient < 0, sign_dtype)
    if on_sign_change == MOVE:
        return -sign * new_step * learning_rate, new_sign, new_step

    new_sign = ops.where(sign_change, ops.zeros_like(new_sign), new_sign)
    if on_sign_change == REVERT:
        # The previous move was `-previous_sign * step *
        # previous_learning_rate`, and on a sign change `previous_sign` is
        # `-sign` exactly: the revert is `-sign * step *
        # previous_learning_rate`, bit for bit.
        scaled = ops.where(
            sign_change,
            step * previous_learning_rate,
            kept_or_grown * learning_rate,
        )
        return -sign * scaled, new_sign, new_step
    move = -sign * kept_or_grown * learning_rate
    if on_sign_change == STAY:
        revert = ops.zeros_like(move)
    else:
        if loss_increased is None:
            raise ValueError(
                f"The {config.variant!r} variant needs `loss_increased`. "
                "Received: None."
            )
        revert = ops.where(
            loss_increased,
            previous_sign * step * previous_learning_rate,
            ops.zeros_like(move),
        )
    move = ops.where(sign_change, revert, move)
    return move, new_sign, new_step


def move_from_new_state(gradient, new_sign, new_step, *, learning_rate=1.0):
    """The move of a variant that does not backtrack, from its new state.

    Without backtracking (`Variant.move_follows_from_new_state`), a weight
    moves by its new step size against the sign stored for the next step,
    which is 0 where the variant stays: the move is
    `-new_sign * new_step * learning_rate`. The result equals the move of
    `apply` for every gradient, NaN included (its stored sign is 0, so the
    NaN is taken from the gradient); only a zero move can be -0.0 where the
    rule gives +0.0, which changes a weight of -0.0 alone.

    Args:
        gradient: The gradient given to the rule.
        new_sign: The rule's new sign, in the dtype of `new_step`.
        new_step: The rule's new step sizes.
        learning_rate: The learning rate given to the rule.

    Returns:
        The increment to add to the weights.
    """
    # `* -learning_rate`, one negation per tensor rather than per element;
    # the product is `-(new_sign * new_step * learning_rate)` exactly.
    move = new_sign * new_step * -learning_rate
    return keras.ops.where(keras.ops.isnan(gradient), gradient, move)
