"""The fused Rprop update of the PyTorch backend, compiled by `torch.compile`.

Run eagerly, the rule is some thirty PyTorch operations, each a pass over
its tensor with a temporary of its own, where the update needs one pass:
read the gradient, the weight, the step size and the sign, write the last
three. `torch.compile` (Inductor) turns `keras_rprop.rule.rprop_update` into
one C++ loop that does exactly that, in place. It is the same rule, traced,
so the result is the eager result bit for bit (Inductor's C++ is built
without floating-point contraction, and keeps NaN semantics).

Compiling costs about 4 s for the first kernel of a process (mostly loading
Inductor) and 0.3-0.6 s for each further variant once Inductor's on-disk
cache holds its kernels, which pays off on large models: see `use_fused`. Every shape shares one compiled kernel
(`dynamic=True`), and each variant has a function of its own, so that the
variants do not crowd each other out of Dynamo's per-function cache.
"""

import collections
import warnings

import torch

from keras_rprop import rule

# Below this many parameters the default (`fused=None`) stays eager: the
# one-off compilation (~4 s on 2 cores) outweighs what a small model's
# training saves (a 1M-parameter step: 7.8 ms eager, about 1.6 ms fused,
# so ~650 steps to break even). On a GPU the default always stays eager: there
# the first kernel took 10 s to compile and saved about 1 ms per step (H100,
# 10M and 2M parameters), 10,000 steps to break even.
MIN_PARAMETERS = 1 << 20

# Smaller buckets run eagerly: they are cheap either way, and Dynamo would
# compile separate kernels for sizes 0 and 1.
MIN_BUCKET_SIZE = 1024

_DTYPES = (torch.float32, torch.float64)

# Inductor decides whether a loop runs on all cores from the size of the
# first call, and with `dynamic=True` that kernel serves every size after
# (and later processes, through its cache): first compiled on a small
# bucket, it ran a bucket of 2**19 elements on one core, at half the speed.
# With `dynamic_threads` the loop is always parallel and OpenMP picks the
# number of threads per call.
_OPTIONS = {"cpp.dynamic_threads": True}

# The rule's hyper-parameters as tensors, for `rule.apply`.
_KernelConfig = collections.namedtuple(
    "_KernelConfig", ("variant",) + rule.RULE_PARAMETERS
)

_compiled = {}
_failure = None
_constant_cache = {}


def use_fused(optimizer, parameter_count, device):
    """Whether this step of `optimizer` runs the compiled kernel.

    `fused=True` always does, `fused=False` never, and `fused=None` does for
    models of at least `MIN_PARAMETERS` parameters on the CPU. Never while
    the step is itself being traced (`make_fx` records of the fast loop,
    Dynamo), nor after compilation failed once in this process.
    """
    fused = optimizer.fused
    if fused is False or _failure is not None or is_tracing():
        return False
    if fused is None:
        return device.type == "cpu" and parameter_count >= MIN_PARAMETERS
    return True


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
        for w, s in zip(weights, steps)
    )


def kernel_arguments(config, arguments):
    """The kernel's arguments, from the `RpropConfig` and those of `rule.apply`.

    The hyper-parameters become tensors of the step sizes' dtype (the rule
    rounds the Python floats to that dtype too), so that Dynamo does not
    compile a kernel per value.
    """
    learning_rate = arguments["learning_rate"]
    values = tuple(getattr(config, name) for name in rule.RULE_PARAMETERS)
    return (
        config.variant,
        arguments["learning_rate"],
        arguments["previous_learning_rate"],
        arguments["loss_increased"],
        *_constants(values, learning_rate.dtype, learning_rate.device),
    )


def _constants(values, dtype, device):
    """Tensors of `values`, made once per set of values, dtype and device.

    A tensor made from a Python number on a GPU is a copy from the host
    that waits for the device to finish its queued work: made every step,
    four of them would stall every step.
    """
    key = (values, dtype, device)
    tensors = _constant_cache.get(key)
    if tensors is None:
        if len(_constant_cache) >= 64:  # Hyper-parameters that keep changing.
            _constant_cache.clear()
        tensors = tuple(
            torch.tensor(v, dtype=dtype, device=device) for v in values
        )
        _constant_cache[key] = tensors
    return tensors


def update_(weight, gradient, step, sign, kernel_arguments, moves=False):
    """Applies the rule to flat tensors in place, with the compiled kernel.

    Args:
        weight, gradient, step, sign: Flat tensors of one bucket; `weight`,
            `step` and `sign` are updated in place.
        kernel_arguments: From `kernel_arguments`.
        moves: If true, `weight` receives the moves instead of having them
            added, for the caller to add to weights held elsewhere.

    Returns:
        `True` if the kernel ran, `False` if it could not be compiled (the
        tensors are then untouched; a warning says why, once per process).
    """
    global _failure
    if _failure is not None:
        return False
    variant, *scalars = kernel_arguments
    key = (variant, moves)
    kernel = _compiled.get(key)
    if kernel is None:
        kernel = torch.compile(
            _KERNELS[key], dynamic=True, fullgraph=True, options=_OPTIONS
        )
        _compiled[key] = kernel
    try:
        kernel(weight, gradient, step, sign, *scalars)
    except Exception as error:  # Compilers fail in many ways.
        _failure = error
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


def is_tracing():
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return torch.compiler.is_compiling() or get_proxy_mode() is not None


def _update(
    weight,
    gradient,
    step,
    sign,
    learning_rate,
    previous_learning_rate,
    loss_increased,
    *values,
    variant,
    moves=False,
):
    config = _KernelConfig(variant, *values)
    new_step, new_sign, move = rule.apply(
        config,
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


# One function (one code object, one Dynamo cache) per variant and output.
def _rprop_plus(*args):
    _update(*args, variant=rule.RPROP_PLUS)


def _rprop_minus(*args):
    _update(*args, variant=rule.RPROP_MINUS)


def _irprop_plus(*args):
    _update(*args, variant=rule.IRPROP_PLUS)


def _irprop_minus(*args):
    _update(*args, variant=rule.IRPROP_MINUS)


def _rprop_plus_moves(*args):
    _update(*args, variant=rule.RPROP_PLUS, moves=True)


def _rprop_minus_moves(*args):
    _update(*args, variant=rule.RPROP_MINUS, moves=True)


def _irprop_plus_moves(*args):
    _update(*args, variant=rule.IRPROP_PLUS, moves=True)


def _irprop_minus_moves(*args):
    _update(*args, variant=rule.IRPROP_MINUS, moves=True)


_KERNELS = {
    (rule.RPROP_PLUS, False): _rprop_plus,
    (rule.RPROP_MINUS, False): _rprop_minus,
    (rule.IRPROP_PLUS, False): _irprop_plus,
    (rule.IRPROP_MINUS, False): _irprop_minus,
    (rule.RPROP_PLUS, True): _rprop_plus_moves,
    (rule.RPROP_MINUS, True): _rprop_minus_moves,
    (rule.IRPROP_PLUS, True): _irprop_plus_moves,
    (rule.IRPROP_MINUS, True): _irprop_minus_moves,
}
