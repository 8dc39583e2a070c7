"""The fast full-batch loop of the PyTorch backend: one traced step, replayed.

PyTorch runs Keras eagerly: every step of `fit_full_batch(...,
steps_per_epoch=k)` would go through the Python of every layer call, the
loss and the optimizer, which costs several times the arithmetic of a small
model. The other backends compile the `k` steps into one loop; PyTorch has
no such loop, and `torch.compile` (Dynamo) failed on Keras's layer code
with torch 2.13 and Python 3.11.

Every step of the loop does the same thing to the same tensors: the same
batch, the same weights and optimizer state, updated in place. So the first
step is recorded with `make_fx`, which runs it for real and writes down the
ATen operations it dispatches (forward, backward and the in-place optimizer
update), and the following steps replay that record with the state tensors
as inputs. The replay runs the very kernels, in the same order, as the
eager step: the weights are the same, bit for bit, without the Python.

A step is replayed only if its record is a pure function of its inputs.
Records with a random operation (`Dropout`, noise layers: the record would
freeze one draw), a tensor value read into Python (`if tensor:`, `.item()`;
the record would freeze one branch, e.g. Keras's gradient accumulation or
`LossScaleOptimizer`) or an output shape that depends on values are
rejected, and such steps run eagerly, as before. Python side effects of a
step (a counter in a layer's `call`) happen only in the steps that run
eagerly: the recorded one and the epoch's last.
"""

import collections
import dataclasses
import threading
import warnings
import weakref

import keras
import torch
from torch.fx.experimental import proxy_tensor

from keras_rprop import compat
from keras_rprop.training import distributed

# ATen tags of operations whose record would not replay the eager step: a
# random draw, or a value or shape read back into Python.
_UNSAFE_TAGS = (
    torch.Tag.nondeterministic_seeded,
    torch.Tag.data_dependent_output,
    torch.Tag.dynamic_output_shape,
)
_UNSAFE_OPS = compat.torch_value_reads()

# `make_fx` patches module-level state while it records: one record at a
# time, when several threads train.
_recording = threading.Lock()
# Whether this thread is recording a step.
_thread = threading.local()

# Recorded steps by model and step function: (key, state tensors, replay
# function or None).
_traces = weakref.WeakKeyDictionary()

# Records shared by models of one structure (`stepper(shared=...)`), the
# most recently used last.
_shared = collections.OrderedDict()
_MAX_SHARED = 8


def repeat(model, step, data, count):
    """Runs `step(model, *data)` `count` times, replaying a record of it.

    Args:
        model: The compiled Keras model.
        step: Function `(model, x, y, sample_weight)` that runs one
            optimizer step.
        data: The tuple `(x, y, sample_weight)` of tensors (or nests).
        count: The number of runs.
    """
    if count <= 0:
        return
    run = stepper(model, step, data)
    for _ in range(count):
        run()


def recording():
    """Whether the calling thread is recording a step.

    A step that repeats itself then loops in Python, so that the record
    holds every repetition.
    """
    return getattr(_thread, "recording", False)


def stepper(model, step, data, shared=None):
    """A function of no arguments that runs `step(model, *data)` once.

    The first run for a model and step (or after anything the record
    depends on changed) records the step while it runs; later runs replay
    the record. A step that cannot be replayed runs eagerly. The function
    is valid while nothing the record depends on changes (the caller runs
    it in a loop of its own).

    A record takes the model's state tensors as inputs, so models whose
    steps are the same computation can replay one record: `shared` is a
    description of the model's structure (the caller vouches that models
    with equal descriptions compute the same step), and a record made for
    one of them serves all.
    """
    if distributed.process_count() > 1:
        # A record would not hold the all-reduce of the processes' sums.
        return lambda: step(model, *data)
    if not (model.built and model.optimizer.built):
        # A first call builds variables, which must not happen in a record.
        later = None

        def eager_first():
            nonlocal later
            if later is None:
                step(model, *data)
                later = stepper(model, step, data)
            else:
                later()

        return eager_first
    state = _state_tensors(model)
    key = _trace_key(model, step, data)
    records = _traces.setdefault(model, {})
    entry = records.get(step)
    if (
        entry is not None
        and entry[0] == key
        and len(entry[1]) == len(state)
        and all(a is b for a, b in zip(entry[1], state))
    ):
        return _replaying(model, step, data, entry[2], state)
    shared_key = None
    if shared is not None:
        shared_key = (shared, _trace_key(model, step, data, identities=False))
        if shared_key in _shared:
            _shared.move_to_end(shared_key)
            replay = _shared[shared_key]
            records[step] = (key, state, replay)
            return _replaying(model, step, data, replay, state)

    current = None

    def first():
        nonlocal current
        if current is not None:
            return current()
        with _recording:
            replay, ran = _trace_step(model, step, state, data)
        records[step] = (key, state, replay)
        if shared_key is not None and replay is not None:
            _shared[shared_key] = replay
            while len(_shared) > _MAX_SHARED:
                _shared.popitem(last=False)
        current = _replaying(model, step, data, replay, state)
        if not ran:
            current()
        return None

    return first


def _replaying(model, step, data, replay, state):
    if replay is None:
        return lambda: step(model, *data)
    tensors = _flat_tensors(state, data)

    def run():
        # Without the TorchScript optimizations (operator fusion), which
        # could round differently from the eager kernels.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            replay(*tensors)

    return run


def _state_tensors(model):
    """The tensors of every variable that a step reads or writes."""
    variables = (
        list(model.variables)
        + list(model.optimizer.variables)
        + list(model.metrics_variables)
    )
    unique = {id(v): v for v in variables}
    return [v.value for v in unique.values()]


def _trace_key(model, step, data, identities=True):
    """What a record depends on besides the identity of the state tensors.

    With `identities=False`, without the identities of the model's own
    optimizer and loss (for records shared by models of one structure).
    """
    leaves = keras.tree.flatten(data)
    owners = (id(model.optimizer), id(compat.compiled_loss(model)))
    return (
        str(_structure(data)),
        tuple(
            (
                (tuple(t.shape), t.dtype, t.device)
                if isinstance(t, torch.Tensor)
                else repr(t)
            )
            for t in leaves
        ),
        id(step),
        owners if identities else None,
        _python_attributes(model.optimizer),
    )


def _python_attributes(optimizer):
    # Hyperparameters held as Python values (`clipnorm`, Rprop's `config`,
    # ...) are constants of the record; those held in variables are inputs.
    return tuple(
        sorted(
            (name, value)
            for name, value in vars(optimizer).items()
            if isinstance(value, (bool, int, float, str, type(None)))
            or dataclasses.is_dataclass(value)
        )
    )


# Kept under its old name for the tests that check it.
_without_fake_values = compat.torch_record_without_fake_values


def _structure(nest):
    """`nest` with None for every leaf: its structure, holding no data."""
    return keras.tree.map_structure(lambda leaf: None, nest)


def _trace_step(model, update, state, data):
    """Runs one step while recording it.

    Returns:
        A tuple `(replay, ran)`: a function of the flat state and data
        tensors that replays the step, or `None` if the record cannot
        replay it, and whether the step was run (it is not if the
        recording was given up midway).
    """

    def step(state, x, y, sample_weight):
        # `state` is not used by name: passing the tensors makes the
        # record take them as inputs instead of freezing them as constants.
        del state
        update(model, x, y, sample_weight)

    # `make_fx` refuses to read a tensor value into Python, possibly after
    # the step wrote some state (a seed generator): the step is then undone
    # and run again eagerly.
    with torch.no_grad():
        saved = [t.clone() for t in state]
    _thread.recording = True
    try:
        with (
            compat.torch_one_fake_mode(),
            compat.torch_record_without_fake_values(),
        ):
            record = proxy_tensor.make_fx(step)(state, *data)
    except RuntimeError as error:
        if "_local_scalar_dense" not in str(error):
            raise
        with torch.no_grad():
            for tensor, value in zip(state, saved):
                tensor.copy_(value)
        return None, False
    finally:
        _thread.recording = False
    for node in record.graph.nodes:
        if node.op == "call_function" and _is_unsafe(node.target):
            return None, True
    return _compile(record, state, data), True


def _flat_tensors(state, data):
    leaves = keras.tree.flatten((state, data))
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _compile(record, state, data):
    """The record as a function of the flat state and data tensors.

    The record is a Python function that calls one operation per line;
    traced into TorchScript, the same operations run from C++, which halves
    the time of a step of a small model on the CPU. If TorchScript fails,
    or the tensors are on another device, the record runs as it is.
    """
    leaves = keras.tree.flatten((state, data))
    structure = _structure((state, data))
    is_tensor = [isinstance(leaf, torch.Tensor) for leaf in leaves]
    # Not the tensors themselves: the function must not keep the data alive.
    leaves = [
        None if tensor else leaf for tensor, leaf in zip(is_tensor, leaves)
    ]

    def step(*tensors):
        tensors_left = iter(tensors)
        arguments = [
            next(tensors_left) if tensor else leaf
            for tensor, leaf in zip(is_tensor, leaves)
        ]
        state, data = keras.tree.pack_sequence_as(structure, arguments)
        record(state, *data)
        # TorchScript needs a tensor to return.
        return tensors[0]

    if any(t.device.type != "cpu" for t in _flat_tensors(state, data)):
        # On CUDA, TorchScript's executor rewrites the graph after its
        # second run despite `optimized_execution(False)`: on an H100 the
        # third replay of an Rprop step gave other weights than the eager
        # step. Kernel launches are asynchronous there, so the record runs
        # from Python at little cost.
        return step
    # Traced on copies: tracing runs the step, which must not move the
    # weights a second time.
    with torch.no_grad():
        copies = [t.detach().clone() for t in _flat_tensors(state, data)]
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated: its warnings are no news to the
            # user, and the record is the fallback if it goes away.
            warnings.simplefilter("ignore")
            return torch.jit.trace(step, tuple(copies), check_trace=False)
    except Exception:
        return step


def _is_unsafe(target):
    if target in _UNSAFE_OPS:
        return True
    tags = getattr(target, "tags", ())
    return any(tag in tags for tag in _UNSAFE_TAGS)
