"""Checks of the arrays given to `fit_full_batch`, before the first step.

A NaN or an infinity in the data makes the loss NaN at the first step, and
the first optimizer step then writes NaN into the weights: the model is lost
before `keras.callbacks.TerminateOnNaN` can stop anything. Arrays of
different lengths fail deep inside the backend's loss computation, with a
message that names no argument. `check_fit_data` finds both in the data
given to `fit_full_batch` and raises a `ValueError` that names the array,
before the model or its optimizer is touched.

Only arrays are checked: NumPy arrays (and what converts to one, such as
Python numbers and pandas objects) and dense TensorFlow, JAX and PyTorch
tensors, alone or in nests of dicts, lists and tuples. A tensor in CPU
memory is checked through a NumPy view of it, one on another device by its
own library, there. Datasets, generators, `PyDataset`s and `DataLoader`s
are not read here: their chunks come one at a time during training, and
reading them twice would cost a pass over the data (or use up a
generator). Sparse and ragged tensors are counted for their samples but not
checked for finiteness.
"""

import sys

import keras
import numpy as np

# A NumPy array is checked in blocks of about this many elements along its
# first axis, so that the check needs little memory even for data that
# `chunk_size` splits to bound memory, and stops at the first bad block.
_BLOCK_ELEMENTS = 2**20

# The parts of `validation_data=(x, y, sample_weight)`, as errors name them.
_VALIDATION_PARTS = ("inputs", "targets", "sample weights")


def check_fit_data(
    x, y=None, sample_weight=None, validation_data=None, check_finite=True
):
    """Checks the data of one `fit_full_batch` call before training.

    The training arrays (`x`, `y`, `sample_weight`) must all hold the same
    number of samples, and so must the arrays of `validation_data`. With
    `check_finite`, every floating-point (or complex) array must also hold
    finite values only; arrays of integers, booleans or strings have
    nothing to check there. Data that is not an array (a dataset, a
    generator) is left out.

    Args:
        x: The `x` argument of `fit_full_batch`.
        y: Its `y` argument.
        sample_weight: Its `sample_weight` argument.
        validation_data: Its `validation_data` argument: a tuple `(x, y)` or
            `(x, y, sample_weight)` of arrays, or a dataset.
        check_finite: Whether to look for NaN and infinite values, one pass
            over the data.

    Raises:
        ValueError: If the arrays hold different numbers of samples (naming
            every array and its count), or if an array holds a NaN or an
            infinity (naming the array, the index of the first such value,
            the value and how many there are).
    """
    if not isinstance(check_finite, bool):
        raise ValueError(
            "Argument `check_finite` must be True or False. "
            f"Received: check_finite={check_finite!r}"
        )
    training = _named_leaves(
        [("x", None, x), ("y", None, y), ("sample_weight", None, sample_weight)]
    )
    _check_cardinality(training, where="")
    validation = []
    if validation_data is not None:
        parts = keras.utils.unpack_x_y_sample_weight(validation_data)
        validation = _named_leaves(
            [
                ("validation_data", part, data)
                for part, data in zip(_VALIDATION_PARTS, parts)
            ]
        )
        _check_cardinality(validation, where=" in `validation_data`")
    if check_finite:
        for argument, name, leaf in training + validation:
            _check_finite(argument, name, leaf)


def _named_leaves(arguments):
    """`(argument, name, leaf)` per leaf of `(argument, part, data)` items.

    The name says where the leaf is, as in `` `x['a'][0]` `` or
    `` `validation_data` inputs `['a']` ``.
    """
    leaves = []
    for argument, part, data in arguments:
        if data is None:
            continue
        for path, leaf in keras.tree.flatten_with_path(data):
            if leaf is None:
                continue
            where = "".join(f"[{key!r}]" for key in path)
            if part is None:
                name = f"`{argument}{where}`"
            elif where:
                name = f"`{argument}` {part} `{where}`"
            else:
                name = f"`{argument}` {part}"
            leaves.append((argument, name, leaf))
    return leaves


def _check_cardinality(leaves, where):
    counts = [
        (name, int(leaf.shape[0]))
        for _, name, leaf in leaves
        if _is_array(leaf) and len(leaf.shape) > 0
    ]
    if len({count for _, count in counts}) > 1:
        received = ", ".join(
            f"{name} with {count} samples" for name, count in counts
        )
        raise ValueError(
            f"Data cardinality is ambiguous{where}: all arrays must hold "
            "the same number of samples (the size of their first axis). "
            f"Received: {received}"
        )


def _is_array(leaf):
    """Whether `leaf` is an array that `fit` slices into samples."""
    shape = getattr(leaf, "shape", None)
    return shape is not None and not callable(shape)


def _check_finite(argument, name, leaf):
    if _skipped(leaf):
        return
    if _library(leaf) is not None:
        if not _float_dtype(leaf.dtype):
            return
        shape, dtype = tuple(leaf.shape), leaf.dtype
        array = _cpu_array(leaf)
        if array is None:
            if _tensor_all_finite(leaf):
                return
            array = _tensor_to_numpy(leaf)
        leaf = array
    else:
        leaf = np.asarray(leaf)
        if not _float_dtype(leaf.dtype):
            return
        shape, dtype = leaf.shape, leaf.dtype
    found = _first_non_finite(leaf)
    if found is None:
        return
    index, value, count = found
    if argument == "validation_data":
        harm = "makes the validation loss and metrics NaN"
    else:
        harm = (
            "makes the loss NaN, and the first optimizer step then makes "
            "the weights NaN"
        )
    if count == 1:
        where = f"1 non-finite value: {value} at index {index}"
    else:
        where = f"{count} non-finite values, the first {value} at index {index}"
    raise ValueError(
        f"Argument `{argument}` must hold finite values only: a NaN or an "
        f"infinity in it {harm}. Received: {name} with {where} (shape "
        f"{shape}, dtype {_dtype_name(dtype)})"
    )


def _skipped(leaf):
    """Whether `leaf` is not checked for finiteness (see the module)."""
    if isinstance(leaf, (str, bytes)) or _sparse(leaf):
        return True
    # Datasets, generators and other sources of chunks.
    return not (
        _library(leaf) is not None
        or hasattr(leaf, "__array__")
        or isinstance(leaf, (int, float, complex))
    )


def _sparse(leaf):
    """Whether `leaf` is a sparse or ragged tensor or a SciPy sparse array."""
    sparse_classes = (
        _loaded("tensorflow", "RaggedTensor"),
        _loaded("tensorflow", "SparseTensor"),
        _loaded("jax.experimental.sparse", "JAXSparse"),
    )
    if isinstance(leaf, tuple(c for c in sparse_classes if c is not None)):
        return True
    issparse = _loaded("scipy.sparse", "issparse")
    if issparse is not None and issparse(leaf):
        return True
    return _library(leaf) == "torch" and leaf.layout is not _torch().strided


def _loaded(module_name, class_name):
    """`module_name.class_name` if that module is imported, else `None`.

    Nothing is imported: a value of a class exists only once its module is.
    A module that another thread is still importing may not define the
    class yet; its values cannot have reached the caller either.
    """
    return getattr(sys.modules.get(module_name), class_name, None)


def _library(leaf):
    """The library of a dense tensor, `None` for anything else."""
    # A tensor exists only once its library is imported, so the test
    # imports none.
    for library, tensor_class in (
        ("torch", "Tensor"),
        ("jax", "Array"),
        ("tensorflow", "Tensor"),
    ):
        loaded = _loaded(library, tensor_class)
        if loaded is not None and isinstance(leaf, loaded):
            return library
    return None


def _float_dtype(dtype):
    return _dtype_name(dtype).startswith(("float", "bfloat", "complex"))


def _dtype_name(dtype):
    # NumPy, ml_dtypes and TensorFlow dtypes have a `name`; PyTorch's print
    # as `torch.float32`.
    return getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]


def _cpu_array(tensor):
    """A NumPy view of a tensor in CPU memory, `None` if there is none.

    On the CPU, the tensor is checked as a NumPy array is, in blocks: the
    libraries' own reductions are no faster there, and PyTorch's much
    slower.
    """
    library = _library(tensor)
    if library == "torch":
        if tensor.device.type != "cpu" or tensor.dtype == _torch().bfloat16:
            return None
        return tensor.detach().numpy()
    if library == "jax":
        if any(device.platform != "cpu" for device in tensor.devices()):
            return None
        return np.asarray(tensor)
    # `np.asarray`, not `tensor.numpy()`, which copies.
    if "device:CPU" not in tensor.device:
        return None
    return np.asarray(tensor)


def _tensor_all_finite(tensor):
    """Whether a dense tensor is finite, reduced on the tensor's device."""
    library = _library(tensor)
    if library == "torch":
        return bool(_torch().isfinite(tensor).all())
    if library == "jax":
        import jax.numpy as jnp

        return bool(jnp.isfinite(tensor).all())
    import tensorflow as tf

    if tensor.dtype.is_complex:
        # `tf.math.is_finite` takes real dtypes only: NumPy decides.
        return False
    return bool(tf.reduce_all(tf.math.is_finite(tensor)))


def _tensor_to_numpy(tensor):
    library = _library(tensor)
    if library == "torch":
        tensor = tensor.detach().cpu()
        if not tensor.dtype.is_complex:
            # NumPy has no bfloat16 of PyTorch's; float64 keeps every value.
            tensor = tensor.double()
        return tensor.numpy()
    if library == "jax":
        return np.asarray(tensor)
    return tensor.numpy()


def _first_non_finite(array):
    """`(index, value, count)` of the non-finite values, or `None`."""
    if array.ndim == 0:
        if np.isfinite(array):
            return None
        return (), array.item(), 1
    row = max(1, array[:1].size)
    rows = max(1, _BLOCK_ELEMENTS // row)
    first = None
    count = 0
    for start in range(0, array.shape[0], rows):
        finite = np.isfinite(array[start : start + rows])
        if finite.all():
            continue
        count += finite.size - np.count_nonzero(finite)
        if first is None:
            index = np.unravel_index(np.argmin(finite), finite.shape)
            first = (start + int(index[0]),) + tuple(int(i) for i in index[1:])
    if first is None:
        return None
    return first, array[first].item(), count


def _torch():
    import torch

    return torch
