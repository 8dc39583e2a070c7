"""The fused Rprop update of the PyTorch backend, compiled by `torch.compile`.

Run eagerly, the rule is some thirty PyTorch operations, each a pass over
its tensor with a temporary of its own, where the update needs one pass:
read the gradient, the weight, the step size and the sign, write the last
three. `torch.compile` (Inductor) turns `keras_rprop.rule.apply` into one
C++ loop that does exactly that, in place. It is the same rule, traced, so
the result is the eager result bit for bit (Inductor's C++ is built without
floating-point contraction, and keeps NaN semantics).

Compiling costs seconds once per process, which pays off on large models
only: see `use_fused`. Every shape shares one compiled kernel
(`dynamic=True`); `kernel` makes one per variant from the rule.
"""

import types
import warnings

import torch

from keras_rprop import compat
from keras_rprop import rule
from keras_rprop.optimizers import fused_policy

# The default (`fused=None`) compiles the kernel for models of at least this
# many parameters on the CPU, and never on a GPU (see benchmarks/README.md).
MIN_PARAMETERS = 1 << 20

# Smaller buckets run eagerly: they are cheap either way, and Dynamo would
# compile separate kernels for sizes 0 and 1.
MIN_BUCKET_SIZE = 1024

_DTYPES = (torch.float32, torch.float64)

# The compiled kernels of this process, by `(variant, moves)`: compiled
# functions only, the same for every optimizer.
_compiled = {}


class FusedState:
    """What one optimizer's fused update keeps between steps.

    The scalar tensors of its hyper-parameters (tensors, not Python floats,
    so that Dynamo does not compile a kernel per value), made once per
    dtype, device and configuration (a tensor made from a Python number on
    a GPU is a copy from the host that waits for the device's queued work),
    and the error of a failed compilation, after which the optimizer stays
    eager.
    """

    def __init__(self):
        self.failure = None
        self._constants = {}

    def kernel_arguments(self, config, arguments):
        """The kernel's scalar arguments, from those of `rule.apply`."""
        learning_rate = arguments["learning_rate"]
        key = (learning_rate.dtype, learning_rate.device)
        values = config.rule_values[1:]
        cached = self._constants.get(key)
        if cached is None or cached[0] != values:
            cached = self._constants[key] = (
                values,
                tuple(
                    torch.tensor(
                        value,
                        dtype=learning_rate.dtype,
                        device=learning_rate.device,
                    )
                    for value in values
                ),
            )
        return (
            config.variant,
            learning_rate,
            arguments["previous_learning_rate"],
            arguments["loss_increased"],
            *cached[1],
        )


def state_of(optimizer):
    """The optimizer's `FusedState`, made on first use."""
    state = getattr(optimizer, "_fused_state", None)
    if state is None:
        state = optimizer._fused_state = FusedState()
    return state


def use_fused(optimizer, parameter_count, device):
    """Whether this step of `optimizer` runs the compiled kernel.

    As `fused_policy.use_fused` decides (on a GPU the default always stays
    eager: see benchmarks/README.md), but never while the step is itself
    being traced (`make_fx` records of the fast loop, Dynamo), nor after the
    optimizer's compilation failed once.
    """
    if state_of(optimizer).failure or compat.torch_is_tracing():
        return False
    return fused_policy.use_fused(
        optimizer,
        parameter_count,
        MIN_PARAMETERS,
        on_cpu=device.type == "cpu",
    )


def supports(weights, steps):
    """Whether the kernel computes the update of a bucket of these tensors.

    The bucket must be large enough (see `MIN_BUCKET_SIZE`), and weights of
    another dtype than their step sizes (16-bit weights) must round the
    move to their dtype before adding it, as the eager path does. The
    gradients must have the step sizes' dtype too: `run` checks them, as
    they change with every step.
    """
    return sum(s.numel() for s in steps) >= MIN_BUCKET_SIZE and all(
        s.dtype in _DTYPES and w.dtype == s.dtype
        for w, s in zip(weights, steps, strict=True)
    )


def update_(state, weight, gradient, step, sign, kernel_arguments, moves=False):
    """Applies the rule to flat tensors in place, with the compiled kernel.

    Args:
        state: The optimizer's `FusedState`.
        weight, gradient, step, sign: Flat tensors of one bucket; `weight`,
            `step` and `sign` are updated in place.
        kernel_arguments: From `FusedState.kernel_arguments`.
        moves: If true, `weight` receives the moves instead of having them
            added, for the caller to add to weights held elsewhere.

    Returns:
        `True` if the kernel ran, `False` if it could not be compiled (the
        tensors are then untouched; a warning says why, once per optimizer).
    """
    if state.failure is not None:
        return False
    variant, *scalars = kernel_arguments
    try:
        kernel(variant, moves)(weight, gradient, step, sign, *scalars)
    except Exception as error:  # Compilers fail in many ways.
        state.failure = error
        warnings.warn(
            "keras_rprop: `torch.compile` could not compile the fused Rprop "
            "update, so the eager multi-tensor update runs instead (same "
            f"results, slower). The error was: {type(error).__name__}: "
            f"{error}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def kernel(variant, moves):
    """The compiled kernel of `variant`, made from `rule.apply`.

    It takes `(weight, gradient, step, sign, learning_rate,
    previous_learning_rate, loss_increased, *values)`, `values` being
    those of `rule.RULE_PARAMETERS`, and writes the new weight (or, with
    `moves`, the move into `weight`), step sizes and signs in place.
    """
    key = (variant, moves)
    if key not in _compiled:
        _compiled[key] = torch.compile(
            _kernel_function(variant, moves),
            dynamic=True,
            fullgraph=True,
            options=compat.TORCH_COMPILE_OPTIONS,
        )
    return _compiled[key]


def _kernel_function(variant, moves):
    def update(
        weight,
        gradient,
        step,
        sign,
        learning_rate,
        previous_learning_rate,
        loss_increased,
        *values,
    ):
        move, new_sign, new_step = rule.apply(
            rule.TensorConfig(variant, *values),
            gradient,
            step,
            sign,
            learning_rate=learning_rate,
            previous_learning_rate=previous_learning_rate,
            loss_increased=loss_increased,
        )
        if moves:
            weight.copy_(move)
        else:
            weight.add_(move)
        step.copy_(new_step)
        sign.copy_(new_sign)

    # Dynamo keeps one cache per code object, and a closure shares its code
    # with every other closure of the same function: a code object of its
    # own keeps each kernel from crowding the others out of that cache.
    code = update.__code__.replace(co_name=f"rprop_kernel_{len(_compiled)}")
    return types.FunctionType(
        code, update.__globals__, code.co_name, None, update.__closure__
    )
