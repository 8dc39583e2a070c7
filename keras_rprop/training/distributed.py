"""Full-batch training across processes: every step sums all the shards.

Each process calls `fit_full_batch` with its own shard of the data. A step
computes the sums over the shard's samples of the gradient and of the loss,
and the number of samples (`train_steps.Sums`); the sums of all the shards
together give the mean gradient and loss of the whole data set, whatever the
size of each shard. How they are summed depends on the backend's own
multi-process engine:

- PyTorch, with a `torch.distributed` process group initialized:
  `global_sums` all-reduces the flattened sums, once per step (after the
  last chunk when the shard comes in chunks).
- TensorFlow, under `tf.distribute.MultiWorkerMirroredStrategy`: the step
  runs in `strategy.run`, `global_sums` all-reduces the sums across the
  replicas, and the step is applied once per worker, outside the replica
  context, with the same sums everywhere.
- JAX, with `keras.distribution.DataParallel` over the devices of several
  processes: every batch is one global array made of the processes' local
  batches, so the compiled step computes the global sums itself. JAX needs
  the local batches to have the same size: `pad_shard` pads the shards with
  samples of weight zero and weights the real samples so that Keras's mean
  over the padded batch is the mean over the real samples.

Before the first step, process 0's weights and optimizer state are copied
to every process (`broadcast_state`). A collective that fails because
another process died or stopped answering raises a `RuntimeError` that says
so (`collective_errors`).
"""

import contextlib
import functools
import math

import keras
import numpy as np

from keras_rprop import compat
from keras_rprop.training.data_checks import check_fit_data

# Words in the errors that the collectives of the three backends raise when
# another process is gone (gloo, XLA's coordination service, TensorFlow's
# collective ops).
_PEER_FAILURE_MARKERS = (
    "gloo",
    "connection closed",
    "connection reset",
    "timed out",
    "timeout",
    "deadline",
    "unavailable",
    "heartbeat",
    "peer",
    "collective",
    "socket",
)


def process_count(model=None):
    """The number of processes that train together (1 without any).

    Args:
        model: On TensorFlow, the model whose strategy counts (by default,
            the strategy in scope).
    """
    backend = keras.backend.backend()
    if backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1
    if backend == "jax":
        import jax

        return jax.process_count()
    strategy = tf_multi_worker_strategy(model)
    if strategy is None:
        return 1
    return compat.tf_num_workers(strategy)


def process_index(model=None):
    """The index of this process among those that train together."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
        return 0
    if backend == "jax":
        import jax

        return jax.process_index()
    strategy = tf_multi_worker_strategy(model)
    if strategy is None:
        return 0
    return strategy.cluster_resolver.task_id or 0


def tf_multi_worker_strategy(model=None):
    """The `MultiWorkerMirroredStrategy` of `model` or in scope, else `None`.

    TensorFlow only; `model`'s strategy is the one it was built under.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if model is not None:
        strategy = model.distribute_strategy
    elif tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    else:
        return None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return strategy
    return None


# -- Summing the shards ------------------------------------------------------


def global_sums(sums):
    """The sums of all the processes' shards, in every process.

    Args:
        sums: This process's `Sums(grads, loss, samples)`: the sums over
            the samples of its shard.

    Returns:
        The same structure holding the sums over all the shards. In one
        process, and on JAX (whose global arrays already span the
        processes), `sums` itself.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        if process_count() > 1:
            return _torch_all_reduce(sums)
        return sums
    if backend == "tensorflow" and _in_multi_worker_replica():
        return _tensorflow_all_reduce(sums)
    return sums


def _flat_float64(sums, ops):
    values = [g for g in sums.grads if g is not None]
    return values, [
        ops.reshape(ops.cast(v, "float64"), (-1,))
        for v in [*values, sums.loss, sums.samples]
    ]


def _unflatten(sums, values, flat, ops):
    sizes = [math.prod(v.shape) for v in values]
    pieces = []
    start = 0
    for size in [*sizes, 1, 1]:
        pieces.append(flat[start : start + size])
        start += size
    reduced = iter(pieces)
    grads = []
    for grad in sums.grads:
        if grad is None:
            grads.append(None)
            continue
        piece = next(reduced)
        grads.append(ops.cast(ops.reshape(piece, grad.shape), grad.dtype))
    loss = ops.cast(ops.reshape(next(reduced), ()), sums.loss.dtype)
    samples = ops.reshape(next(reduced), ())
    samples = ops.cast(
        samples,
        keras.backend.standardize_dtype(sums.samples.dtype)
        if hasattr(sums.samples, "dtype")
        else "float64",
    )
    return sums._replace(grads=grads, loss=loss, samples=samples)


def _torch_all_reduce(sums):
    import torch
    import torch.distributed as dist

    values = [g for g in sums.grads if g is not None]
    with torch.no_grad():
        flat = torch.cat(
            [
                torch.as_tensor(v).detach().reshape(-1).to(torch.float64)
                for v in [*values, sums.loss, sums.samples]
            ]
        )
        dist.all_reduce(flat)
    return _unflatten(sums, values, flat, keras.ops)


def _in_multi_worker_replica():
    import tensorflow as tf

    if tf_multi_worker_strategy() is None:
        return False
    return not tf.distribute.in_cross_replica_context()


def _tensorflow_all_reduce(sums):
    import tensorflow as tf

    values, flat = _flat_float64(sums, keras.ops)
    flat = tf.concat(flat, axis=0)
    flat = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, flat
    )
    return _unflatten(sums, values, flat, keras.ops)


# -- Summing the metrics -----------------------------------------------------


@contextlib.contextmanager
def global_metrics(metrics):
    """Adds up what the block adds to `metrics` in every process.

    Inside the block each process updates the metrics with its own shard;
    at its end, every process holds the states of the metrics updated with
    all the shards: what each process added is all-reduced and added to the
    states the block started from (the same in every process). The states
    of Keras's metrics (`Mean`, `MeanMetricWrapper`, confusion counts, ...)
    are sums, marked with `aggregation="sum"`; those are the ones added up.
    A variable with another aggregation stays this process's own. In one
    process, and on JAX (whose global arrays already span the processes),
    the block runs alone.

    Args:
        metrics: The metrics (normally `model.metrics`).

    Yields:
        Whether the metrics are added up over processes.
    """
    variables = summed_metric_variables(metrics)
    if not variables:
        yield False
        return
    before = [_copy(v.value) for v in variables]
    yield True
    add_metric_updates(variables, before)


def add_metric_updates(variables, before=None):
    """Adds up over processes what each added to `variables` since `before`.

    Args:
        variables: Metric variables whose states are sums.
        before: Their values, the same in every process, before this
            process's updates; `None` for zeros (metrics just reset).
    """
    ops = keras.ops
    if before is None:
        before = [ops.zeros(v.shape, v.dtype) for v in variables]
    before = [ops.cast(b, "float64") for b in before]
    added = [
        ops.reshape(ops.cast(v.value, "float64") - b, (-1,))
        for v, b in zip(variables, before)
    ]
    flat = _all_reduced(ops.concatenate(added))
    start = 0
    for variable, value in zip(variables, before):
        size = math.prod(variable.shape)
        total = value + ops.reshape(flat[start : start + size], variable.shape)
        variable.assign(ops.cast(total, variable.dtype))
        start += size


def summed_metric_variables(metrics):
    """The variables of `metrics` that `global_metrics` adds up.

    Empty in one process and on JAX.
    """
    backend = keras.backend.backend()
    if backend == "torch":
        if process_count() <= 1:
            return []
    elif backend != "tensorflow" or not _in_multi_worker_replica():
        return []
    variables = []
    for metric in metrics:
        for variable in metric.variables:
            if getattr(variable, "aggregation", "sum") == "sum":
                variables.append(variable)
    return list({id(v): v for v in variables}.values())


def _copy(value):
    if keras.backend.backend() == "torch":
        return value.detach().clone()
    import tensorflow as tf

    return tf.identity(value)


def _all_reduced(flat):
    """The sum over processes of a float64 vector (PyTorch, TensorFlow)."""
    if keras.backend.backend() == "torch":
        import torch.distributed as dist

        flat = flat.clone()
        dist.all_reduce(flat)
        return flat
    import tensorflow as tf

    return tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, flat
    )


# -- Training across processes ----------------------------------------------


def across_processes(fit):
    """Makes `fit_full_batch` train one shard of a training across processes.

    In one process, `fit` itself. Across processes, before `fit` runs:
    TensorFlow enters the model's `MultiWorkerMirroredStrategy` (whose
    replicas run the steps), JAX pads the shard (`pad_shard`), and process
    0's weights and optimizer state go to every process. A lost process
    makes the others raise a `RuntimeError` (`collective_errors`).
    """

    @functools.wraps(fit)
    def wrapper(model, x=None, y=None, **kwargs):
        if (
            not isinstance(model, keras.Model)
            or getattr(model, "optimizer", None) is None
        ):
            # `fit` explains what is wrong.
            return fit(model, x, y, **kwargs)
        count = process_count(model)
        if count <= 1:
            return fit(model, x, y, **kwargs)
        backend = keras.backend.backend()
        if not model.built:
            raise ValueError(
                f"Training across {count} processes starts from process "
                "0's weights, which must exist before the first step: "
                "build the model (call it on a batch or call "
                "`model.build(input_shape)`) before `fit_full_batch`. "
                f"Received: model={model.name!r} (not built)"
            )
        if backend == "jax":
            if kwargs.get("validation_split"):
                raise ValueError(
                    "Across JAX processes, `validation_split` would split "
                    "the padded shard; pass each process's validation "
                    "data (of the same size in every process) as "
                    "`validation_data` instead. Received: "
                    f"validation_split={kwargs['validation_split']!r}"
                )
            # Before the padding, which would hide a length mismatch.
            check_fit_data(
                x,
                y,
                kwargs.get("sample_weight"),
                kwargs.get("validation_data"),
                check_finite=kwargs.get("check_finite", True),
            )
            x, y, kwargs["sample_weight"] = pad_shard(
                x, y, kwargs.get("sample_weight"), kwargs.get("chunk_size")
            )
        if backend == "tensorflow":
            if kwargs.get("chunk_size") is not None:
                raise ValueError(
                    "Under `MultiWorkerMirroredStrategy`, `fit_full_batch` "
                    "trains on each worker's shard as one batch; chunks "
                    "are not supported there. Received: "
                    f"chunk_size={kwargs['chunk_size']!r}"
                )
            scope = model.distribute_strategy.scope()
        else:
            scope = contextlib.nullcontext()
        with scope, collective_errors(model):
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            broadcast_state(model)
            return fit(model, x, y, **kwargs)

    return wrapper


# -- Starting from the same state --------------------------------------------


def broadcast_state(model):
    """Copies process 0's weights and optimizer variables to every process.

    Every process must then take the same steps: the processes of a
    training may have built or loaded their models differently (another
    seed, another checkpoint), and the first step would otherwise start
    from as many states as there are processes.
    """
    if process_count(model) <= 1:
        return
    variables = list(model.variables)
    optimizer = model.optimizer
    if optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    # Rprop's hyper-parameters held in a variable follow from its
    # configuration, the same in every process.
    derived = getattr(optimizer, "_rule_parameters", None)
    unique = [
        v for v in {id(v): v for v in variables}.values() if v is not derived
    ]
    if not unique:
        return
    backend = keras.backend.backend()
    if backend == "torch":
        _torch_broadcast(unique)
    elif backend == "tensorflow":
        _tensorflow_broadcast(model, unique)
    # On JAX, the variables are global arrays: JAX refuses an assignment
    # with other values in other processes, so they cannot differ.


def _torch_broadcast(variables):
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        tensors = [v.value for v in variables]
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        dist.broadcast(flat, src=0)
        start = 0
        for tensor in tensors:
            size = tensor.numel()
            tensor.copy_(flat[start : start + size].reshape(tensor.shape))
            start += size


def _tensorflow_broadcast(model, variables):
    import tensorflow as tf

    strategy = tf_multi_worker_strategy(model)
    chief = process_index(model) == 0

    @tf.function
    def reduced():
        def replica_values():
            context = tf.distribute.get_replica_context()
            values = [
                tf.cast(tf.convert_to_tensor(v.value), "float64")
                for v in variables
            ]
            if not chief:
                values = [tf.zeros_like(v) for v in values]
            return context.all_reduce(tf.distribute.ReduceOp.SUM, values)

        return strategy.run(replica_values)

    with strategy.scope():
        values = reduced()
        for variable, value in zip(variables, values):
            local = strategy.experimental_local_results(value)[0]
            variable.assign(tf.cast(local, variable.dtype))


# -- JAX: equal local batches ------------------------------------------------


def pad_shard(x, y, sample_weight, chunk_size=None):
    """Pads this process's shard to the length of every process's (JAX).

    JAX makes one global batch of the processes' local batches, which must
    all have the same shape. Every shard is padded with zeros to a common
    length (a whole number of chunks of `chunk_size`), the padding with
    sample weight 0. Keras's default loss reduction divides by the number of
    samples in the batch, padding included, so the real samples get the
    weight `padded samples / real samples` (times their own weight): the
    loss and the gradient are then those of the real samples.

    Args:
        x: This process's inputs: an array or a nest of arrays.
        y: Its targets, or `None`.
        sample_weight: Its sample weights, or `None`.
        chunk_size: The chunk size of the training, or `None`.

    Returns:
        `(x, y, sample_weight)`, padded.
    """
    from jax.experimental import multihost_utils

    leaves = [a for a in keras.tree.flatten(x) if a is not None]
    samples = int(np.shape(leaves[0])[0])
    counts = np.asarray(
        multihost_utils.process_allgather(np.asarray([samples], "int64"))
    ).reshape(-1)
    if chunk_size is None:
        length = int(counts.max())
    else:
        length = int(max(-(-int(c) // chunk_size) for c in counts))
        length *= chunk_size
    total = int(counts.sum())
    if total == 0:
        raise ValueError(
            "The processes' shards hold no samples at all. "
            f"Received: samples per process={counts.tolist()}"
        )

    def pad(array):
        if array is None:
            return None
        array = np.asarray(array)
        widths = [(0, length - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
        return np.pad(array, widths)

    scale = len(counts) * length / total
    if sample_weight is None:
        weights = np.ones(samples, keras.backend.floatx())
    else:
        weights = np.asarray(sample_weight)
    weights = weights * np.asarray(scale, weights.dtype)
    return (
        keras.tree.map_structure(pad, x),
        keras.tree.map_structure(pad, y),
        pad(weights),
    )


# -- A lost process ----------------------------------------------------------


@contextlib.contextmanager
def collective_errors(model=None):
    """Turns the failure of a collective into a `RuntimeError` that says why.

    When a process of the training dies, or stops answering for longer than
    the engine's timeout (gloo's `timeout` of `init_process_group`, the
    `CommunicationOptions(timeout_seconds=)` of TensorFlow's strategy, JAX's
    heartbeat), the others' next collective fails with an error that names
    the transport, not the cause.
    """
    count = process_count(model)
    if count <= 1:
        yield
        return
    try:
        yield
    except Exception as error:
        if not _is_peer_failure(error):
            raise
        detail = str(error).strip().splitlines()
        detail = detail[0][:500] if detail else ""
        raise RuntimeError(
            f"Training across {count} processes failed in process "
            f"{process_index(model)}: another process has stopped or did not "
            "answer within the timeout, so the gradient of the whole data "
            "set cannot be summed. Restart all the processes (with "
            "`keras.callbacks.BackupAndRestore`, the training resumes from "
            f"its last backup). The error was {type(error).__name__}: "
            f"{detail}"
        ) from error


def _is_peer_failure(error):
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return False
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(
            error,
            (
                tf.errors.UnavailableError,
                tf.errors.DeadlineExceededError,
                tf.errors.CancelledError,
                tf.errors.AbortedError,
            ),
        ):
            return True
    text = f"{type(error).__name__} {error}".lower()
    return any(marker in text for marker in _PEER_FAILURE_MARKERS)
