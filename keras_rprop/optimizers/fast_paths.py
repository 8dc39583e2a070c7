"""The faster ways through an Rprop step, one module per strategy.

`Rprop.update_step` applies `rule.apply` to one variable at a time, as every
Keras optimizer does. Each strategy here computes the same values faster on
some backend, and each can be removed on its own (the step then takes the
path below it):

- `multi_tensor` (PyTorch, eager): the rule on buckets of many tensors at
  once, with `torch_fused`'s compiled kernel for large models.
- `xla_update` (TensorFlow, a graph that XLA does not compile): the whole
  update compiled with XLA, for large models (`use_fused`).
- `xla_ordered` (JAX and TensorFlow compiled by XLA for the CPU): each
  tensor's update computed in the order that lets XLA overwrite the state
  in place without copying it.

benchmarks/README.md records what each of them saves.
"""

import math

import keras

from keras_rprop import compat
from keras_rprop import rule
from keras_rprop.optimizers import xla_ordered
from keras_rprop.optimizers.fused_policy import use_fused


def update(optimizer, grads, trainable_variables, learning_rate):
    """Runs a whole step by the backend's own strategy.

    Returns:
        `False`, having changed nothing, where none applies: Keras's loop
        over `update_step` must run instead.
    """
    # Inside a `StatelessScope` the variables must not be written in place.
    if compat.in_stateless_scope():
        return False
    backend = keras.backend.backend()
    if backend == "torch":
        from keras_rprop.optimizers import multi_tensor

        return multi_tensor.update(
            optimizer, grads, trainable_variables, learning_rate
        )
    if backend == "tensorflow":
        from keras_rprop.optimizers import xla_update

        if xla_update.is_supported(grads) and use_fused(
            optimizer,
            sum(math.prod(v.shape) for v in trainable_variables),
            xla_update.MIN_PARAMETERS,
        ):
            xla_update.update(
                optimizer, grads, trainable_variables, learning_rate
            )
            return True
    return False


def update_tensor(config, gradient, step, sign, weight, arguments):
    """`rule.apply` for one tensor, in the form its compiler runs best.

    Args:
        config: The hyper-parameters, from the optimizer's `_rule_config`.
        gradient: The gradient, in the dtype of `step`.
        step, sign, weight: The stored step sizes and signs, and the
            weights, as tensors.
        arguments: The other keyword arguments of `rule.apply`.

    Returns:
        `(new_weight, new_sign, new_step)`.
    """
    target = xla_ordered.xla_target(gradient)
    if target == xla_ordered.CPU and math.prod(weight.shape):
        return xla_ordered.update(
            config, gradient, step, sign, weight, arguments
        )
    # Compiled by XLA, the stored sign is cheaper made in its own dtype;
    # run op by op, from the float sign the move uses.
    return rule.apply(
        config,
        gradient,
        step,
        sign,
        weight=weight,
        signs_from_comparisons=target is not None,
        **arguments,
    )
