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
import math

import keras
import numpy as np

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


def process_count():
    """The number of processes that train together (1 without any)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1
    if backend == "jax":
        import jax

        return jax.process_count()
    strategy = tf_multi_worker_strategy()
    if strategy is None:
        return 1
    return strategy.extended._num_workers


def process_index():
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
    strategy = tf_multi_worker_strategy()
    if strategy is None:
        return 0
    return strategy.cluster_resolver.task_id or 0


def tf_multi_worker_strategy():
    """The `MultiWorkerMirroredStrategy` in scope (TensorFlow), else `None`."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    strategy = tf.distribute.get_strategy()
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
    samples = ops.cast(samples, keras.backend.standardize_dtype(
        sums.samples.dtype
    ) if hasattr(sums.samples, "dtype") else "float64")
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


# -- Starting from the same state --------------------------------------------


def broadcast_state(model):
    """Copies process 0's weights and optimizer variables to every process.

    Every process must then take the same steps: the processes of a
    training may have built or loaded their models differently (another
    seed, another checkpoint), and the first step would otherwise start
    from as many states as there are processes.
    """
    if process_count() <= 1:
        return
    variables = list(model.variables)
    optimizer = model.optimizer
    if optimizer is not None and optimizer.built:
        variables += list(optimizer.variables)
    unique = list({id(v): v for v in variables}.values())
    if not unique:
        return
    backend = keras.backend.backend()
    if backend == "torch":
        _torch_broadcast(unique)
    elif backend == "jax":
        _jax_broadcast(unique)
    else:
        _tensorflow_broadcast(unique)


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


def _jax_broadcast(variables):
    from jax.experimental import multihost_utils

    # Each process's own copy: a replicated global array whose copies
    # differ between processes cannot be read as one value.
    local = [np.asarray(v.value.addressable_data(0)) for v in variables]
    values = multihost_utils.broadcast_one_to_all(local)
    for variable, value in zip(variables, values):
        variable.assign(np.asarray(value))


def _tensorflow_broadcast(variables):
    import tensorflow as tf

    strategy = tf_multi_worker_strategy()
    chief = process_index() == 0

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


def distribute_batch(data):
    """Makes global arrays of the processes' local batches (JAX).

    Args:
        data: A nest of local arrays, with the same shapes in every process.

    Returns:
        The nest of global arrays laid out by the current distribution.
    """
    from keras.src.backend.jax import distribution_lib as jax_distribution

    distribution = keras.distribution.distribution()

    def to_global(array):
        if array is None:
            return None
        layout = distribution.get_data_layout(np.shape(array))
        return jax_distribution.distribute_data_input(
            array, layout, distribution.batch_dim_name
        )

    return keras.tree.map_structure(to_global, data)


# -- A lost process ----------------------------------------------------------


@contextlib.contextmanager
def collective_errors():
    """Turns the failure of a collective into a `RuntimeError` that says why.

    When a process of the training dies, or stops answering for longer than
    the engine's timeout (gloo's `timeout` of `init_process_group`, the
    `CommunicationOptions(timeout_seconds=)` of TensorFlow's strategy, JAX's
    heartbeat), the others' next collective fails with an error that names
    the transport, not the cause.
    """
    count = process_count()
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
            f"{process_index()}: another process has stopped or did not "
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
