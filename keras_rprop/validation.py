"""Checks of the optimizer's arguments, with errors that say what is wrong."""

import math
import numbers

import keras
from keras import ops


def check_variant(variant, variants):
    """Returns `variant` in lower case, or raises if it is not one of them."""
    if not isinstance(variant, str) or variant.lower() not in variants:
        raise ValueError(
            f"Argument `variant` must be one of {variants}. "
            f"Received: variant={variant!r}"
        )
    return variant.lower()


def check_config(config, variants):
    """Checks the fields of an `RpropConfig`; returns them as a new dict.

    Args:
        config: A dict of the fields.
        variants: The names a variant may take.
    """
    config = dict(config)
    config["variant"] = check_variant(config["variant"], variants)
    names = ("initial_step", "eta_minus", "eta_plus", "min_step", "max_step")
    values = check_hyperparameters(*(config[name] for name in names))
    config.update(zip(names, values, strict=True))
    return config


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


def check_hyperparameters(
    initial_step, eta_minus, eta_plus, min_step, max_step
):
    """Validates the Rprop hyper-parameters and returns them as floats."""
    initial_step = check_real("initial_step", initial_step)
    eta_minus = check_real("eta_minus", eta_minus)
    eta_plus = check_real("eta_plus", eta_plus)
    min_step = check_real("min_step", min_step)
    max_step = check_real("max_step", max_step)
    if not 0.0 < eta_minus < 1.0:
        raise ValueError(
            "Argument `eta_minus` must be in the open interval (0, 1). "
            f"Received: eta_minus={eta_minus}"
        )
    if not eta_plus > 1.0:
        raise ValueError(
            f"Argument `eta_plus` must be > 1. Received: eta_plus={eta_plus}"
        )
    if min_step < 0.0:
        raise ValueError(
            f"Argument `min_step` must be >= 0. Received: min_step={min_step}"
        )
    if not max_step > 0.0:
        raise ValueError(
            f"Argument `max_step` must be > 0. Received: max_step={max_step}"
        )
    if min_step > max_step:
        raise ValueError(
            "Argument `min_step` must be <= `max_step`. "
            f"Received: min_step={min_step}, max_step={max_step}"
        )
    if not min_step <= initial_step <= max_step or initial_step <= 0.0:
        raise ValueError(
            "Argument `initial_step` must be > 0 and within "
            f"[min_step, max_step] = [{min_step}, {max_step}]. "
            f"Received: initial_step={initial_step}"
        )
    return initial_step, eta_minus, eta_plus, min_step, max_step


def check_fused(fused):
    if fused is not None and not isinstance(fused, bool):
        raise ValueError(
            "Argument `fused` must be True, False or None. "
            f"Received: fused={fused!r}"
        )
    return fused


def check_gradient_shapes(grads, trainable_variables):
    """Raises if a gradient's shape is not its variable's."""
    # Without this check a gradient of shape (1,) would silently
    # broadcast over a variable of shape (3,).
    if trainable_variables is None:
        return
    if len(grads) != len(trainable_variables):
        return  # Keras raises its own error for a count mismatch.
    for grad, variable in zip(grads, trainable_variables, strict=True):
        if grad is None:
            continue
        grad_shape = tuple(grad.shape)
        variable_shape = tuple(variable.shape)
        if grad_shape == variable_shape:
            continue
        if len(grad_shape) != len(variable_shape) or any(
            g is not None and v is not None and g != v
            for g, v in zip(grad_shape, variable_shape, strict=True)
        ):
            name = getattr(variable, "path", getattr(variable, "name", ""))
            raise ValueError(
                "Each gradient must have the shape of its variable. "
                f"Received: gradient of shape {grad_shape} for variable "
                f"{name!r} of shape {variable_shape}"
            )


def check_loss(loss, needs_loss):
    """Returns `loss` as a float32 scalar tensor, or None.

    Raises if it is not a scalar, or is None where `needs_loss`.
    """
    if loss is None:
        if needs_loss:
            raise ValueError(
                "The 'irprop+' variant compares the loss of consecutive "
                "steps, but no loss was given. Pass it as "
                "`optimizer.apply(grads, variables, loss=loss)` or "
                "`optimizer.stateless_apply(..., loss=loss)`; with "
                "`model.fit`, call `keras_rprop.enable_loss(model)` "
                "after `model.compile(...)`. Received: loss=None"
            )
        return None
    if isinstance(loss, (str, bytes, bool)) or loss is ...:
        raise ValueError(
            "Argument `loss` must be a scalar number or tensor. "
            f"Received: loss={loss!r}"
        )
    try:
        tensor = ops.convert_to_tensor(loss)
    except Exception as error:
        raise ValueError(
            "Argument `loss` must be a scalar number or tensor. "
            f"Received: loss={loss!r}"
        ) from error
    if len(tensor.shape) != 0:
        raise ValueError(
            "Argument `loss` must be a scalar (a tensor of shape ()). "
            f"Received: loss with shape {tuple(tensor.shape)}"
        )
    if "float" not in keras.backend.standardize_dtype(tensor.dtype):
        tensor = ops.cast(tensor, "float32")
    return ops.cast(ops.stop_gradient(tensor), "float32")
