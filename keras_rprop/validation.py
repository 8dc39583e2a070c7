"""What the two `Rprop` classes share: their arguments and their checks.

`keras_rprop.Rprop` (Keras 3) and `keras_rprop.tf_keras.Rprop` (Keras 2)
take the same arguments and reject the same bad input with the same
errors. This module holds that part in plain Python; each class converts
its framework's tensors and shapes before calling it.
"""

import dataclasses

from keras_rprop import rule


def rule_config(variant, args, kwargs):
    """Takes the rule's hyper-parameters from the optimizer's arguments.

    Args:
        variant: The `variant` argument.
        args: The positional arguments after `variant`: hyper-parameters in
            the order of `rule.HYPERPARAMETERS`.
        kwargs: The keyword arguments; those that are hyper-parameters are
            removed from it.

    Returns:
        The checked `rule.RpropConfig`.
    """
    names = rule.HYPERPARAMETERS
    if len(args) > len(names):
        raise TypeError(
            f"Rprop takes at most {len(names)} hyper-parameters {names} "
            f"after `variant` by position. Received: {args!r}"
        )
    given = dict(zip(names, args, strict=False))
    for name in names:
        if name in kwargs:
            if name in given:
                raise TypeError(
                    f"Rprop got multiple values for argument {name!r}"
                )
            given[name] = kwargs.pop(name)
    return rule.RpropConfig(variant=variant, **given)


def expose_config(optimizer_class):
    """Gives the class a property per field of its `config`.

    `optimizer.eta_plus` and the like, as Keras optimizers expose theirs.
    Setting one replaces `config` with a checked copy holding the new value.
    """
    for field in dataclasses.fields(rule.RpropConfig):
        setattr(optimizer_class, field.name, _read_config(field.name))
    return optimizer_class


def _read_config(name):
    def set_field(self, value):
        self.config = dataclasses.replace(self.config, **{name: value})

    return property(
        lambda self: getattr(self.config, name),
        set_field,
        doc=f"The `{name}` of the optimizer's `RpropConfig`.",
    )


def one_variant(class_name, variant, given, rprop_name):
    """The variant of a named class, which `given` must name.

    Args:
        class_name: The named class, `"RpropPlus"` say.
        variant: Its variant.
        given: The `variant` argument it received.
        rprop_name: The general class to point to for another variant.
    """
    if rule.check_variant(given) != variant:
        raise ValueError(
            f"`{class_name}` is the {variant!r} variant; use "
            f"`{rprop_name}(variant={given!r})` for another one. "
            f"Received: variant={given!r}"
        )
    return variant


def float_learning_rate(learning_rate):
    """`learning_rate` as given, but a Python int as a float.

    Keras rejects ints; `learning_rate=1` is a natural thing to write for a
    multiplier that defaults to 1.0.
    """
    if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
        return float(learning_rate)
    return learning_rate


def check_fused(fused):
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(
            "Argument `fused` must be True, False or None. "
            f"Received: fused={fused!r}"
        )
    return fused


def check_float_variable(is_float, name, dtype):
    """Raises unless the variable `name` has a floating-point dtype."""
    # A move of a fraction of a step would be truncated away (or be
    # meaningless for booleans) without any error.
    if not is_float:
        raise ValueError(
            "Rprop can only train floating-point variables. "
            f"Received: variable {name!r} with dtype {dtype}"
        )


def check_gradient_shapes(shapes):
    """Raises if a gradient's shape is not its variable's.

    Args:
        shapes: `(gradient_shape, variable_shape, variable_name)` triples,
            the shapes as tuples of ints (None where unknown).
    """
    # Without this check a gradient of shape (1,) would silently
    # broadcast over a variable of shape (3,).
    for grad_shape, variable_shape, name in shapes:
        if grad_shape == variable_shape:
            continue
        if len(grad_shape) != len(variable_shape) or any(
            g is not None and v is not None and g != v
            for g, v in zip(grad_shape, variable_shape, strict=True)
        ):
            raise ValueError(
                "Each gradient must have the shape of its variable. "
                f"Received: gradient of shape {grad_shape} for variable "
                f"{name!r} of shape {variable_shape}"
            )


def check_loss(loss, needs_loss, convert_to_tensor, how_to_pass):
    """Returns `loss` as a scalar tensor, or None.

    Args:
        loss: The `loss` argument.
        needs_loss: Whether a loss is required (for `"irprop+"`).
        convert_to_tensor: The framework's conversion, which raises on a
            value it cannot convert.
        how_to_pass: The sentences saying how to pass the loss, for the
            error on a missing one.

    Raises:
        ValueError: for a missing loss where `needs_loss`, or one that is
            not a scalar number or tensor.
    """
    if loss is None:
        if needs_loss:
            raise ValueError(
                "The 'irprop+' variant compares the loss of consecutive "
                f"steps, but no loss was given. {how_to_pass} "
                "Received: loss=None"
            )
        return None
    if isinstance(loss, (str, bytes, bool)) or loss is ...:
        raise not_a_number(loss)
    try:
        tensor = convert_to_tensor(loss)
    except Exception as error:
        raise not_a_number(loss) from error
    rank = getattr(tensor.shape, "rank", None)
    if (len(tensor.shape) if rank is None else rank) != 0:
        raise ValueError(
            "Argument `loss` must be a scalar (a tensor of shape ()). "
            f"Received: loss with shape {tuple(tensor.shape)}"
        )
    return tensor


def not_a_number(loss):
    """The error for a `loss` that is not a scalar number or tensor."""
    return ValueError(
        "Argument `loss` must be a scalar number or tensor. "
        f"Received: loss={loss!r}"
    )


def clip_step_sizes(steps, config, clip):
    """Clips the step sizes to `[config.min_step, config.max_step]`.

    A state saved with other `min_step` / `max_step` can hold step sizes
    outside the bounds; the rule clips a step size only when it grows or
    shrinks, so a loaded state is clipped once.

    Args:
        steps: The step-size variables (None for a variable without them).
        config: The optimizer's `rule.RpropConfig`.
        clip: The framework's `clip(x, low, high)`.
    """
    for step in steps:
        if step is not None:
            step.assign(clip(step, config.min_step, config.max_step))
