"""A Keras model's loss, gradient and Jacobian as functions of its weights.

SciPy's solvers work on one float64 vector. `FlatModel` maps it to the
model's trainable weights, and the functions here evaluate the model with
`model.stateless_call` (the variables stay untouched) and differentiate it
with the backend's own automatic differentiation (`tf.GradientTape`,
`jax.grad`, `torch.autograd` and `torch.func`), compiled once
(`tf.function`, `jax.jit`; PyTorch runs eagerly).
"""

import keras
import numpy as np
from keras import ops


class FlatModel:
    """A model's trainable weights as one float64 vector.

    Args:
        model: A built Keras model.
    """

    def __init__(self, model):
        self.model = model
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.size = int(sum(self.sizes))
        self.dtype = model.trainable_variables[0].dtype

    def flatten(self, weights):
        """Concatenates arrays in `trainable_variables` order, as float64."""
        return np.concatenate(
            [
                np.asarray(ops.convert_to_numpy(w), "float64").reshape(-1)
                for w in weights
            ]
        )

    def unflatten(self, vector):
        """Splits `vector` into tensors of the weights' shapes and dtype."""
        pieces = np.split(np.asarray(vector), np.cumsum(self.sizes)[:-1])
        return [
            ops.convert_to_tensor(piece.reshape(shape).astype(self.dtype))
            for piece, shape in zip(pieces, self.shapes)
        ]

    def get(self):
        """The model's current trainable weights as a vector."""
        return self.flatten(self.model.trainable_variables)

    def set(self, vector):
        """Assigns `vector` to the model's trainable weights."""
        for variable, value in zip(
            self.model.trainable_variables, self.unflatten(vector)
        ):
            variable.assign(value)


def _forward(model, x):
    non_trainable = [v.value for v in model.non_trainable_variables]

    def forward(trainable):
        outputs, _ = model.stateless_call(
            trainable, non_trainable, x, training=True
        )
        return outputs

    return forward


def mean_loss(model, loss, x, y):
    """`trainable -> mean loss of model on (x, y)`, a backend function."""
    loss_fn = keras.losses.get(loss)
    x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    forward = _forward(model, x)
    return lambda trainable: ops.mean(loss_fn(y, forward(trainable)))


def residuals(model, x, y):
    """`trainable -> model(x) - y`, flattened, a backend function.

    Their mean square is Keras's `MeanSquaredError` of the model on `(x, y)`.
    """
    x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    forward = _forward(model, x)
    return lambda trainable: ops.reshape(forward(trainable) - y, (-1,))


def _check_backend(backend):
    if backend not in ("tensorflow", "jax", "torch"):
        raise ValueError(
            "`keras-rprop compare` runs on the tensorflow, jax and torch "
            f"backends. Received: backend={backend!r}"
        )


def compiled(fn):
    """`fn` compiled for the current backend, without gradients."""
    backend = keras.backend.backend()
    _check_backend(backend)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        # Keras code needs no AutoGraph, and converting it costs more than
        # a small run.
        return tf.function(fn, autograph=False)
    import torch

    def no_grad(trainable):
        with torch.no_grad():
            return fn(trainable)

    return no_grad


def value_and_grad(fn):
    """`trainable -> (fn(trainable), [d fn / d w for w in trainable])`."""
    backend = keras.backend.backend()
    _check_backend(backend)
    if backend == "jax":
        import jax

        return jax.jit(jax.value_and_grad(fn))
    if backend == "tensorflow":
        import tensorflow as tf

        def tensorflow_value_and_grad(trainable):
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                value = fn(trainable)
            return value, tape.gradient(value, trainable)

        return tf.function(tensorflow_value_and_grad, autograph=False)
    import torch

    def torch_value_and_grad(trainable):
        trainable = [w.detach().requires_grad_(True) for w in trainable]
        value = fn(trainable)
        return value.detach(), torch.autograd.grad(value, trainable)

    return torch_value_and_grad


def residual_jacobian(model, x, y):
    """`trainable -> Jacobian of model(x) - y`, one row per residual.

    Each residual depends on its own sample only (the networks here have no
    layer that mixes the samples of a batch), so the rows of a sample are
    the derivatives of that sample's residuals alone, and all samples are
    differentiated at once by vectorizing over them (`tf.vectorized_map`,
    `jax.vmap`, `torch.func.vmap`). Differentiating the batch's residuals
    as one function in reverse mode would instead run a backward pass
    through the whole batch for every residual: work that grows with the
    square of the number of samples.

    Args:
        model: A built Keras model whose samples do not interact.
        x, y: The training set, NumPy arrays; `y` has the model's output
            shape.

    Returns:
        A backend function of the trainable weights (a list of tensors)
        returning a list with one block per weight, each of shape
        `(samples * outputs, *weight.shape)`, the rows in the order of
        `residuals(model, x, y)`.
    """
    backend = keras.backend.backend()
    _check_backend(backend)
    non_trainable = [v.value for v in model.non_trainable_variables]
    x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    rows = int(np.prod(y.shape))

    def sample_residuals(trainable, x_sample, y_sample):
        outputs, _ = model.stateless_call(
            trainable, non_trainable, x_sample[None], training=True
        )
        return ops.reshape(outputs - y_sample[None], (-1,))

    def as_rows(blocks):
        return [
            ops.reshape(block, (rows, *block.shape[2:])) for block in blocks
        ]

    if backend == "jax":
        import jax

        per_sample = jax.vmap(
            jax.jacrev(sample_residuals), in_axes=(None, 0, 0)
        )
        return jax.jit(lambda trainable: as_rows(per_sample(trainable, x, y)))
    if backend == "tensorflow":
        import tensorflow as tf

        def tensorflow_jacobian(trainable):
            def one_sample(sample):
                with tf.GradientTape() as tape:
                    tape.watch(trainable)
                    value = sample_residuals(trainable, *sample)
                return tape.jacobian(value, trainable)

            return as_rows(tf.vectorized_map(one_sample, (x, y)))

        return tf.function(tensorflow_jacobian, autograph=False)
    import torch

    per_sample = torch.func.vmap(
        torch.func.jacrev(
            lambda trainable, x_sample, y_sample: sample_residuals(
                list(trainable), x_sample, y_sample
            )
        ),
        in_dims=(None, 0, 0),
    )

    def torch_jacobian(trainable):
        return as_rows(per_sample(tuple(trainable), x, y))

    return torch_jacobian


def loss_and_gradient_function(model, loss, x, y):
    """`vector -> (loss, gradient)` for `scipy.optimize.minimize(jac=True)`.

    Args:
        model: A built Keras model.
        loss: A Keras loss (instance or name) that averages over the batch.
        x, y: The training set, NumPy arrays.

    Returns:
        A tuple `(function, flat_model)`; `function` returns a Python float
        and a float64 vector.
    """
    flat = FlatModel(model)
    compute = value_and_grad(mean_loss(model, loss, x, y))

    def function(vector):
        value, grads = compute(flat.unflatten(vector))
        return float(ops.convert_to_numpy(value)), flat.flatten(grads)

    return function, flat


def residual_and_jacobian_functions(model, x, y):
    """`vector -> residuals` and `vector -> Jacobian` for `least_squares`.

    Args:
        model: A built Keras model.
        x, y: The training set, NumPy arrays; `y` has the model's output
            shape.

    Returns:
        A tuple `(residuals, jacobian, flat_model)`; the functions return
        float64 arrays of shapes `(m,)` and `(m, n)`, `m` residuals and `n`
        weights.
    """
    flat = FlatModel(model)
    compute_residuals = compiled(residuals(model, x, y))
    compute_jacobian = residual_jacobian(model, x, y)

    def residual_function(vector):
        value = compute_residuals(flat.unflatten(vector))
        return np.asarray(ops.convert_to_numpy(value), "float64")

    def jacobian_function(vector):
        blocks = compute_jacobian(flat.unflatten(vector))
        return np.concatenate(
            [
                np.asarray(ops.convert_to_numpy(b), "float64").reshape(
                    b.shape[0], -1
                )
                for b in blocks
            ],
            axis=1,
        )

    return residual_function, jacobian_function, flat
