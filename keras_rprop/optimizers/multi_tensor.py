"""The multi-tensor Rprop update of the PyTorch backend.

PyTorch runs every operation of the rule eagerly, as its own pass over
memory, with a fixed dispatch cost per call. Applying the rule one variable
at a time therefore pays that cost once per operation and variable (it
dominates for many small tensors), and for large tensors each of the rule's
temporaries is a fresh allocation that goes through the whole tensor in
main memory.

This path applies `keras_rprop.rule.rprop_update` to buckets of about
`BUCKET_SIZE` elements instead: small variables are concatenated into one
bucket, large ones are cut into views of that size. Every bucket's
temporaries then fit in the CPU caches, and the number of calls no longer
grows with the number of variables. With `fused` (see `torch_fused`), each
bucket runs the rule compiled into one loop instead, and large tensors are
not cut. The rule is element-wise, so either way the result is bit for bit
the one of the per-variable path.
"""

import torch
from keras import ops

from keras_rprop import rule
from keras_rprop.optimizers import backend_compat
from keras_rprop.optimizers import torch_fused

# Elements per bucket: the rule's temporaries of one bucket (1 MiB each in
# float32) stay in the last-level cache, and the ~30 calls of the rule, a
# few microseconds of dispatch each, are spread over many elements.
# PyTorch's own threading still splits every operation of a bucket.
BUCKET_SIZE = 1 << 18


def update(optimizer, grads, trainable_variables, learning_rate):
    """Applies one Rprop step to all variables, a bucket at a time.

    Args:
        optimizer: The `keras_rprop.Rprop` instance; its step-size and sign
            slots are updated in place.
        grads: The gradients, one per variable (torch tensors).
        trainable_variables: The Keras variables to update in place.
        learning_rate: The learning rate of this step, a scalar.

    Returns:
        `False`, having changed nothing, if a variable cannot take this path:
        one without Rprop state (overwritten with its gradient) or with
        non-contiguous storage, which cannot be viewed flat in place. The
        per-variable path must run instead. `True` otherwise.
    """
    plan = _plan(optimizer, trainable_variables)
    if plan is None:
        return False
    fused = torch_fused.use_fused(optimizer, plan.parameter_count)
    flat_grads = [
        (g if isinstance(g, torch.Tensor) else ops.convert_to_tensor(g))
        .reshape(-1)
        for g in grads
    ]
    with torch.no_grad():
        # Variables of several dtypes may share a bucket: each one's move is
        # cast to its own dtype, as the per-variable path does.
        for dtype in plan.dtypes:
            arguments = optimizer._rule_arguments(learning_rate, dtype)
            if fused:
                kernel_arguments = torch_fused.kernel_arguments(arguments)
            # The fused kernel has no temporaries to keep in cache: it takes
            # large tensors whole, in one call each.
            for layout in plan.buckets(dtype, split=not fused):
                bucket = [
                    (flat_grads[i][part], weight, step, sign)
                    for i, part, weight, step, sign in layout
                ]
                if not (
                    fused
                    and _update_bucket_fused(
                        bucket, kernel_arguments, plan.workspace
                    )
                ):
                    _update_bucket(bucket, arguments)
    return True


class _Plan:
    """Flat views of the variables and their state, and their buckets.

    Building them costs a few microseconds per variable (Keras's `value`
    property, views), as much as the whole update of a small variable, so
    the plan is kept between steps for as long as the variables hold the
    same tensors (Keras assigns in place).
    """

    def __init__(self, values, members):
        self.values = values
        self.parameter_count = sum(v.numel() for v in values)
        self._members = {}
        for dtype, member in members:
            self._members.setdefault(dtype, []).append(member)
        self.dtypes = list(self._members)
        self._buckets = {}
        self._workspace = {}

    def workspace(self, tensors, count):
        """Flat buffers of `count` elements, like `tensors`, kept for reuse.

        Concatenating into fresh tensors of a few MiB costs more than the
        update itself: the allocator hands such sizes back to the system,
        and every step then faults their pages in again.
        """
        key = tuple((t.dtype, t.device) for t in tensors)
        buffers = self._workspace.get(key)
        if buffers is None or buffers[0].numel() < count:
            buffers = tuple(
                torch.empty(count, dtype=dtype, device=device)
                for dtype, device in key
            )
            self._workspace[key] = buffers
        return tuple(b[:count] for b in buffers)

    def is_for(self, values):
        return len(values) == len(self.values) and all(
            a is b for a, b in zip(values, self.values)
        )

    def buckets(self, dtype, split):
        """The buckets of `dtype`, as lists of `(i, part, var, step, sign)`.

        `i` is the index of the gradient and `part` the slice of its flat
        view that goes with the flat views of the variable and its state.
        """
        key = (dtype, split, BUCKET_SIZE)
        if key not in self._buckets:
            self._buckets[key] = list(
                _buckets(self._members[dtype], BUCKET_SIZE, split)
            )
        return self._buckets[key]


def _plan(optimizer, trainable_variables):
    values = [variable.value for variable in trainable_variables]
    # A record (`make_fx`) must see views made from its input tensors, or
    # it would freeze the views as constants of the record.
    tracing = torch_fused.is_tracing()
    plan = getattr(optimizer, "_multi_tensor_plan", None)
    if plan is not None and not tracing and plan.is_for(values):
        return plan
    members = []
    for i, (variable, value) in enumerate(zip(trainable_variables, values)):
        index = optimizer._get_variable_index(variable)
        step_variable = optimizer._steps[index]
        if step_variable is None or not value.is_contiguous():
            return None
        members.append(
            (
                step_variable.dtype,
                (
                    i,
                    value.view(-1),
                    step_variable.value.view(-1),
                    optimizer._signs[index].value.view(-1),
                ),
            )
        )
    plan = _Plan(values, members)
    if not tracing:
        optimizer._multi_tensor_plan = plan
    return plan


def _buckets(members, size, split=True):
    """Groups flat `(i, var, step, sign)` views into buckets of `size`.

    Yields lists of `(i, part, var, step, sign)`: one slice of a large
    tensor (or the whole tensor if not `split`), or several whole small
    tensors whose sizes add up to about `size`.
    """
    pending = []
    pending_size = 0
    whole = slice(None)
    for i, *views in members:
        count = views[0].numel()
        if count >= size and split:
            for start in range(0, count, size):
                part = slice(start, start + size)
                yield [(i, part, *(v[part] for v in views))]
            continue
        if count >= size:
            yield [(i, whole, *views)]
            continue
        pending.append((i, whole, *views))
        pending_size += count
        if pending_size >= size:
            yield pending
            pending = []
            pending_size = 0
    if pending:
        yield pending


def _update_bucket_fused(bucket, kernel_arguments, workspace):
    """Runs the compiled kernel on a bucket; returns whether it could."""
    grads, variables, steps, signs = zip(*bucket)
    if not all(
        torch_fused.supports(v, g, s) for g, v, s, _ in bucket
    ) or not torch_fused.supports_size(sum(s.numel() for s in steps)):
        return False
    if len(bucket) == 1:
        flat = (variables[0], grads[0], steps[0], signs[0])
    else:
        parts = (variables, grads, steps, signs)
        flat = workspace(
            [p[0] for p in parts], sum(s.numel() for s in steps)
        )
        for tensors, out in zip(parts, flat):
            torch.cat(tensors, out=out)
    if not torch_fused.update_(*flat, kernel_arguments):
        return False
    if len(bucket) > 1:
        # The kernel updated the concatenations: copy them back.
        sizes = [v.numel() for v in variables]
        for originals, updated in zip(
            (variables, steps, signs), (flat[0], flat[2], flat[3])
        ):
            torch._foreach_copy_(list(originals), list(updated.split(sizes)))
    return True


def _update_bucket(bucket, arguments):
    grads, variables, steps, signs = zip(*bucket)
    if len(bucket) == 1:
        grad, step, sign = grads[0], steps[0], signs[0]
    else:
        grad = torch.cat(grads)
        step = torch.cat(steps)
        sign = torch.cat(signs)
    grad = grad.to(step.dtype)
    move, new_sign, new_step = rule.rprop_update(
        grad, sign.to(step.dtype), step, **arguments
    )
    move = backend_compat.propagate_nan(move, grad)
    new_sign = new_sign.to(sign.dtype)
    if len(bucket) == 1:
        variables[0].add_(move.to(variables[0].dtype))
        steps[0].copy_(new_step)
        signs[0].copy_(new_sign)
        return
    sizes = [v.numel() for v in variables]
    moves = [
        m.to(v.dtype) for m, v in zip(move.split(sizes), variables)
    ]
    torch._foreach_add_(list(variables), moves)
    torch._foreach_copy_(list(steps), list(new_step.split(sizes)))
    torch._foreach_copy_(list(signs), list(new_sign.split(sizes)))
