"""The multi-tensor Rprop update of the PyTorch backend.

PyTorch runs every operation of the rule eagerly, as its own pass over
memory, with a fixed dispatch cost per call. Applying the rule one variable
at a time therefore pays that cost once per operation and variable (it
dominates for many small tensors), and for large tensors each of the rule's
temporaries is a fresh allocation that goes through the whole tensor in
main memory.

This path applies `keras_rprop.rule.apply` to buckets of about
`BUCKET_SIZE` elements instead: small variables are concatenated into one
bucket, large ones are cut into views of that size. Every bucket's
temporaries then fit in the CPU caches, and the number of calls no longer
grows with the number of variables. With `fused` (see `torch_fused`), each
bucket runs the rule compiled into one loop instead: large tensors alone
and whole, small ones merged, with their weights, step sizes and signs laid
end to end so that the loop updates them where they lie. The rule is
element-wise, so either way the result is bit for bit the one of the
per-variable path.
"""

import torch
from keras import ops

from keras_rprop import compat
from keras_rprop import rule
from keras_rprop.optimizers import torch_fused

# Elements per bucket of the eager rule: its ~30 temporaries of one bucket
# (256 KiB each in float32) stay in the caches, and its ~30 calls, a few
# microseconds of dispatch each, are spread over many elements. Measured
# against 2**15, 2**17 and 2**18 on 2 cores: the fastest or within 15% of it
# for layouts from 200 x 1,000 to 8 x 100,000 parameters.
BUCKET_SIZE = 1 << 16

# Elements per concatenated bucket of the fused kernel, which has no
# temporaries: large enough that its ~40 microseconds per call vanish.
# Tensors of at least `FUSED_ALONE_SIZE` elements run the kernel alone, in
# place; smaller ones are merged into buckets, which costs a copy of their
# gradients and a pass to add the moves. Measured on 2 cores against
# buckets of 2**18 and 2**20 and alone-sizes of 2**18: the fastest or within
# 3% for 200 x 10,000, 20 x 50,000, 20 x 150,000 and 20 x 500,000.
FUSED_BUCKET_SIZE = 1 << 19
FUSED_ALONE_SIZE = 1 << 17

# Elements per bucket, fused or eager, for tensors on an accelerator. There
# every call is a kernel launch that costs more host time (5-70 us) than a
# pass over a few MiB takes the device, and no CPU cache is to be kept: the
# buckets gather up to 16 MiB of float32 and large tensors are not cut.
# Measured on an H100: 10M parameters in 20 tensors took 74 ms per eager
# step in buckets of 2**16 against 17 ms per variable.
ACCELERATOR_BUCKET_SIZE = 1 << 22


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
    fused = torch_fused.use_fused(optimizer, plan.parameter_count, plan.device)
    flat_grads = [
        _flat(g if isinstance(g, torch.Tensor) else ops.convert_to_tensor(g))
        for g in grads
    ]
    with torch.no_grad():
        # Variables of several dtypes may share a bucket: each one's move is
        # cast to its own dtype, as the per-variable path does.
        for dtype in plan.dtypes:
            arguments = optimizer._rule_arguments(learning_rate, dtype)
            if not fused:
                for layout in plan.buckets(dtype, fused=False):
                    _update_bucket(
                        optimizer.config, _views(layout, flat_grads), arguments
                    )
                continue
            state = torch_fused.state_of(optimizer)
            kernel_arguments = state.kernel_arguments(
                optimizer.config, arguments
            )
            for bucket in plan.fused_buckets(dtype):
                if not bucket.run(state, flat_grads, kernel_arguments):
                    _update_bucket(
                        optimizer.config,
                        _views(bucket.layout, flat_grads),
                        arguments,
                    )
    return True


def _flat(tensor):
    """`tensor` as a 1-D tensor, a view of it where it is contiguous."""
    # A dispatch or two less than `reshape(-1)` per gradient: 1-3 us, as
    # much as a fifth of the fused update of a 10,000-element tensor.
    if tensor.dim() == 1:
        return tensor
    return tensor.view(-1) if tensor.is_contiguous() else tensor.reshape(-1)


class _Plan:
    """Flat views of the variables and their state, and their buckets.

    Building them costs a few microseconds per variable (Keras's `value`
    property, views), as much as the whole update of a small variable, so
    the plan is kept between steps for as long as the variables hold the
    same tensors (Keras assigns in place).
    """

    def __init__(self, values, members, weight_buffers=()):
        self.values = values
        self._pointers = _pointers(values)
        # The tensors this optimizer laid weights out in, by the address of
        # their memory (held, so that no other tensor gets that address),
        # kept for as long as a weight still lies in them.
        storages = {_storage_address(v) for v in values}
        self.weight_buffers = {
            address: buffer
            for address, buffer in dict(weight_buffers).items()
            if address in storages
        }
        self.parameter_count = sum(v.numel() for v in values)
        self.device = values[0].device if values else torch.device("cpu")
        # dtype -> [(i, weight, step sizes, signs)]: the tensors themselves,
        # as `_lay_out_end_to_end` may move their storage.
        self._members = {}
        for dtype, member in members:
            self._members.setdefault(dtype, []).append(member)
        self.dtypes = list(self._members)
        self._buckets = {}

    def _flat_members(self, dtype):
        return [
            (i, weight.view(-1), step.view(-1), sign.view(-1))
            for i, weight, step, sign in self._members[dtype]
        ]

    def is_for(self, values):
        """Whether `values` are this plan's tensors, in the same memory.

        The data pointers are compared too: a weight given new storage
        (`.data = ...`, `module.to(...)`) would otherwise keep being
        updated in its old memory, which the model no longer reads.
        """
        return (
            len(values) == len(self.values)
            and all(a is b for a, b in zip(values, self.values))
            and _pointers(values) == self._pointers
        )

    def fused_buckets(self, dtype):
        """The `_FusedBucket`s of `dtype`, one per bucket of large tensors
        taken whole (the fused kernel has no temporaries to keep in cache).
        """
        key = (dtype, "kernels")
        if key not in self._buckets:
            if self._lay_out_end_to_end(dtype):
                # Views made of the moved tensors are stale.
                self._buckets.pop((dtype, True), None)
                self._buckets.pop((dtype, False), None)
            buckets = [
                _FusedBucket(layout)
                for layout in self.buckets(dtype, fused=True)
            ]
            # One gradient buffer (and one for the moves, where the weights
            # do not lie end to end), for the largest bucket of several
            # tensors, serves every bucket in turn. Reused, not allocated per
            # step: fresh buffers of a few MiB cost more than the update
            # itself, as the allocator hands such sizes back to the system
            # and every step faults their pages in again.
            shared = [b for b in buckets if b.state is not None]
            if shared:
                count = max(b.count for b in shared)
                # Weights and gradients have the step sizes' dtype there.
                step = shared[0].steps[0]
                gradient = torch.empty(
                    count, dtype=step.dtype, device=step.device
                )
                moves = None
                if any(b.weight is None for b in shared):
                    moves = torch.empty_like(gradient)
                for bucket in shared:
                    bucket.use_buffers(moves, gradient)
            self._buckets[key] = buckets
        return self._buckets[key]

    def _lay_out_end_to_end(self, dtype):
        """Lays out the small tensors' weights, step sizes and signs end to end.

        The small tensors of `dtype` (those the fused path concatenates)
        get their step sizes moved into one tensor, their signs into another
        and their weights into a third, in bucket order, and each tensor
        becomes a view of its part (`tensor.data = view`). Every tensor
        keeps its identity and its value, so the model, Keras's in-place
        `assign`, saving and loading see no difference. A bucket of small
        tensors then runs the kernel on them where they lie, instead of
        concatenating its state and copying it back every step, and of
        adding the moves to each weight in a pass of their own (for 200
        tensors of 10,000 parameters, 4.1 against 3.0 ms a step).

        The weights are moved only if each of them is a tensor of the
        step sizes' dtype that owns its memory (or lies in memory that this
        optimizer laid out): one that is a view of a larger tensor of the
        user's stays where it is, so as not to break what the user made it
        share. `is_for` notices weights given new memory later on, and the
        plan made then lays them out again.

        Returns whether any storage moved.
        """
        alone = self._bucket_sizes(fused=True)[1]
        small = [
            member
            for member in self._members[dtype]
            if member[1].numel() < alone
        ]
        if len(small) < 2:
            return False
        columns = [2, 3]  # Step sizes, then signs.
        # Weights that already lie end to end are left as they are below.
        if all(
            weight.dtype == step.dtype
            and (
                _owns_storage(weight)
                or _storage_address(weight) in self.weight_buffers
            )
            for _, weight, step, _ in small
        ):
            columns.append(1)
        moved = False
        for column in columns:
            tensors = [member[column] for member in small]
            if _tiled([t.view(-1) for t in tensors]) is not None:
                continue
            with torch.no_grad():
                flat = torch.cat([t.reshape(-1) for t in tensors])
                start = 0
                for tensor in tensors:
                    stop = start + tensor.numel()
                    tensor.data = flat[start:stop].view(tensor.shape)
                    start = stop
            if column == 1:
                self.weight_buffers[_storage_address(flat)] = flat
            moved = True
        self._pointers = _pointers(self.values)
        return moved

    def _bucket_sizes(self, fused):
        """The elements per bucket, and the size from which a tensor is
        not merged with others."""
        if self.device.type != "cpu":
            return ACCELERATOR_BUCKET_SIZE, ACCELERATOR_BUCKET_SIZE
        if fused:
            return FUSED_BUCKET_SIZE, FUSED_ALONE_SIZE
        return BUCKET_SIZE, BUCKET_SIZE

    def buckets(self, dtype, fused):
        """The buckets of `dtype`, as lists of `(i, part, var, step, sign)`.

        `i` is the index of the gradient and `part` the slice of its flat
        view that goes with the flat views of the variable and its state.
        The fused kernel takes large tensors whole; the eager rule cuts them
        on the CPU.
        """
        key = (dtype, fused)
        if key not in self._buckets:
            on_cpu = self.device.type == "cpu"
            size, alone = self._bucket_sizes(fused)
            self._buckets[key] = list(
                _buckets(
                    self._flat_members(dtype),
                    size,
                    split=on_cpu and not fused,
                    alone=alone,
                )
            )
        return self._buckets[key]


def _plan(optimizer, trainable_variables):
    values = compat.variable_values(trainable_variables)
    # A record (`make_fx`) must see views made from its input tensors, or
    # it would freeze the views as constants of the record.
    tracing = compat.torch_is_tracing()
    plan = getattr(optimizer, "_multi_tensor_plan", None)
    if plan is not None and not tracing and plan.is_for(values):
        return plan
    members = []
    for i, (variable, value) in enumerate(zip(trainable_variables, values)):
        index = compat.variable_index(optimizer, variable)
        step_variable = optimizer._steps[index]
        if step_variable is None or not value.is_contiguous():
            return None
        members.append(
            (
                step_variable.dtype,
                (
                    i,
                    value,
                    step_variable.value,
                    optimizer._signs[index].value,
                ),
            )
        )
    plan = _Plan(values, members, getattr(plan, "weight_buffers", {}))
    if not tracing:
        optimizer._multi_tensor_plan = plan
    return plan


def _pointers(values):
    return [value.data_ptr() for value in values]


def _storage_address(tensor):
    return tensor.untyped_storage().data_ptr()


def _owns_storage(tensor):
    """Whether `tensor` is the whole of its storage, shared with no other."""
    return (
        tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes()
        == tensor.numel() * tensor.element_size()
    )


def _buckets(members, size, split=True, alone=None):
    """Groups flat `(i, var, step, sign)` views into buckets of `size`.

    Yields lists of `(i, part, var, step, sign)`: one slice of a tensor of
    at least `size` elements (or the whole tensor if not `split`), one whole
    tensor of at least `alone` elements (default: `size`), or several whole
    smaller tensors whose sizes add up to about `size`.
    """
    alone = size if alone is None else alone
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
        if count >= alone:
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


class _FusedBucket:
    """One bucket of the fused path, with what does not change per step.

    A single tensor runs the kernel in place. Several small tensors, whose
    step sizes and signs lie end to end (see `_Plan._lay_out_end_to_end`),
    run it on that state where it lies, with their gradients concatenated:
    on their weights too where these lie end to end, else the kernel writes
    the moves and one call adds them to the weights. The views and lists
    this takes are made once, not per step.
    """

    def __init__(self, layout):
        self.layout = layout
        indices, parts, weights, steps, signs = zip(*layout)
        assert all(part == slice(None) for part in parts), parts
        self.indices = indices
        self.weights, self.steps, self.signs = (
            list(weights),
            list(steps),
            list(signs),
        )
        self.dtype = steps[0].dtype
        self.count = sum(s.numel() for s in steps)
        self.supported = torch_fused.supports(weights, steps)
        self.state = self.weight = None
        if len(steps) > 1:
            self.state = (_tiled(self.steps), _tiled(self.signs))
            self.weight = _tiled(self.weights)
            # State elsewhere takes the eager path, which copies it.
            self.supported = self.supported and None not in self.state
        # Set by `use_buffers` for buckets of several tensors.
        self.moves = self.gradient = None

    def use_buffers(self, moves, gradient):
        """Uses the start of the shared buffers for gradients (and moves)."""
        # Not slices: Dynamo would relate their `_base`'s size to the other
        # arguments' sizes and compile the kernel again for each bucket size.
        self.gradient = _alias(gradient, 0, self.count)
        if self.weight is None:
            self.moves = _alias(moves, 0, self.count)
            self.move_parts = list(
                self.moves.split([w.numel() for w in self.weights])
            )

    def run(self, state, flat_grads, kernel_arguments):
        """Updates the bucket with the kernel; returns whether it could."""
        if not self.supported:
            return False
        # Fused buckets hold whole tensors: no slicing (a view per tensor).
        grads = [flat_grads[i] for i in self.indices]
        if any(g.dtype != self.dtype for g in grads):
            return False
        if self.state is None:
            return torch_fused.update_(
                state,
                self.weights[0],
                grads[0],
                self.steps[0],
                self.signs[0],
                kernel_arguments,
            )
        torch.cat(grads, out=self.gradient)
        if self.weight is not None:
            if not torch_fused.update_(
                state, self.weight, self.gradient, *self.state, kernel_arguments
            ):
                return False
            # The kernel wrote the weights through a tensor that autograd
            # does not know as their view: their version counters must
            # still say so, or a graph that saved the old weights would
            # compute its gradients from the new ones without an error.
            torch.autograd.graph.increment_version(self.weights)
            return True
        if not torch_fused.update_(
            state,
            self.moves,
            self.gradient,
            *self.state,
            kernel_arguments,
            moves=True,
        ):
            return False
        compat.torch_foreach_add_(self.weights, self.move_parts)
        return True


def _alias(tensor, start, count):
    """Elements `start` to `start + count` of the 1-D `tensor`, as a tensor
    of their own over the same memory (a view without a `_base`)."""
    return tensor.new_empty(0).set_(
        tensor.untyped_storage(), tensor.storage_offset() + start, (count,)
    )


def _tiled(tensors):
    """The 1-D tensor that the 1-D `tensors` tile in order, or None.

    It shares their storage, so writing it writes them.
    """
    first = tensors[0]
    storage = first.untyped_storage()
    start = offset = first.storage_offset()
    for tensor in tensors:
        if (
            tensor.untyped_storage().data_ptr() != storage.data_ptr()
            or tensor.storage_offset() != offset
            or tensor.stride() != (1,)
        ):
            return None
        offset += tensor.numel()
    return _alias(first, 0, offset - start)


def _views(layout, flat_grads):
    """A bucket's `(grad, var, step, sign)` views, for the eager rule."""
    return [
        (flat_grads[i][part], weight, step, sign)
        for i, part, weight, step, sign in layout
    ]


def _update_bucket(config, bucket, arguments):
    grads, variables, steps, signs = zip(*bucket)
    if len(bucket) == 1:
        grad, step, sign = grads[0], steps[0], signs[0]
    else:
        grad = torch.cat(grads)
        step = torch.cat(steps)
        sign = torch.cat(signs)
    move, new_sign, new_step = rule.apply(config, grad, step, sign, **arguments)
    if len(bucket) == 1:
        variables[0].add_(move.to(variables[0].dtype))
        steps[0].copy_(new_step)
        signs[0].copy_(new_sign)
        return
    sizes = [v.numel() for v in variables]
    moves = [m.to(v.dtype) for m, v in zip(move.split(sizes), variables)]
    compat.torch_foreach_add_(list(variables), moves)
    compat.torch_foreach_copy_(list(steps), list(new_step.split(sizes)))
    compat.torch_foreach_copy_(list(signs), list(new_sign.split(sizes)))
