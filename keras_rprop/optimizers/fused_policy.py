"""When the update runs as one compiled program of its own (`fused`)."""


def use_fused(optimizer, parameter_count, minimum, on_cpu=True):
    """Whether the update of `optimizer` runs as one compiled program.

    `fused=True` always does, `fused=False` never, and `fused=None` does for
    models of at least `minimum` parameters on the CPU: below, the one-off
    compilation costs more than a small model's faster steps repay in most
    runs.
    """
    if optimizer.fused is None:
        return on_cpu and parameter_count >= minimum
    return optimizer.fused
