"""What several test files share: data, models and training loops.

`full_batch_steps` is a hand-written full-batch training loop per backend:
each loop computes the loss and the gradients with the backend's own
autodiff and passes the loss to the optimizer (`apply(..., loss=)`, or
`stateless_apply(..., loss=)` on JAX, the path the JAX trainer uses).
"""

import contextlib

import keras
import numpy as np
from keras import ops

import keras_rprop

NAMED_CLASSES = {
    "rprop+": keras_rprop.RpropPlus,
    "rprop-": keras_rprop.RpropMinus,
    "irprop+": keras_rprop.IRpropPlus,
    "irprop-": keras_rprop.IRpropMinus,
}


def mse(y_true, y_pred):
    return ops.mean(ops.square(y_pred - y_true))


def sine_data(samples=32):
    """Three features and the sine of their sum, in float32."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 3)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True)).astype("float32")
    return x, y


def tanh_model(hidden=4, l2=0.01):
    """A `Dense(tanh)` layer with an L2 penalty and a `Dense(1)`, seeded."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                hidden,
                activation="tanh",
                kernel_regularizer=keras.regularizers.L2(l2),
            ),
            keras.layers.Dense(1),
        ]
    )


def build_mlp(params, features=3, hidden=6, outputs=1, dtype=None):
    """A `Dense(tanh)` + `Dense` model holding a copy of `params`."""
    model = keras.Sequential(
        [
            keras.Input((features,), dtype=dtype),
            keras.layers.Dense(hidden, activation="tanh", dtype=dtype),
            keras.layers.Dense(outputs, dtype=dtype),
        ]
    )
    model.set_weights([np.asarray(p) for p in params])
    return model


def weights_of(variables):
    return [np.array(ops.convert_to_numpy(v), np.float64) for v in variables]


@contextlib.contextmanager
def float64_precision():
    """Runs Keras in float64 (on JAX this needs `jax_enable_x64`)."""
    jax_backend = keras.backend.backend() == "jax"
    if jax_backend:
        import jax

        x64_before = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx("float32")
        keras.mixed_precision.set_global_policy("float32")
        if jax_backend:
            jax.config.update("jax_enable_x64", x64_before)


def full_batch_steps(
    model, optimizer, x, y, steps, pass_loss=True, loss_fn=mse, batches=1
):
    """Trains `model` for `steps` epochs with `optimizer`.

    Args:
        model: A built Keras model.
        optimizer: The optimizer; built here if it is not yet.
        x, y: The whole data set.
        steps: Number of passes over the data.
        pass_loss: Whether to hand the loss to the optimizer.
        loss_fn: `loss_fn(y_true, y_pred)` returning a scalar.
        batches: Number of equal, consecutive mini-batches per pass; each
            gets its own `apply` call (1: full batch).

    Returns:
        A tuple `(history, losses)`: the trainable weights (NumPy) after each
        pass and the loss of the last `apply` call of each pass.
    """
    variables = model.trainable_variables
    optimizer.build(variables)
    backend = keras.backend.backend()
    dtype = model.inputs[0].dtype
    x_batches = [ops.convert_to_tensor(b, dtype) for b in np.split(x, batches)]
    y_batches = [ops.convert_to_tensor(b, dtype) for b in np.split(y, batches)]
    history, losses = [], []
    if backend == "jax":
        import jax

        def compute_loss(trainable, non_trainable, x, y):
            prediction, _ = model.stateless_call(trainable, non_trainable, x)
            return loss_fn(y, prediction)

        @jax.jit
        def train_step(trainable, non_trainable, optimizer_values, x, y):
            loss, grads = jax.value_and_grad(compute_loss)(
                trainable, non_trainable, x, y
            )
            trainable, optimizer_values = optimizer.stateless_apply(
                optimizer_values,
                grads,
                trainable,
                loss=loss if pass_loss else None,
            )
            return trainable, optimizer_values, loss

        trainable = [v.value for v in variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        optimizer_values = [v.value for v in optimizer.variables]
        for _ in range(steps):
            for x_batch, y_batch in zip(x_batches, y_batches):
                trainable, optimizer_values, loss = train_step(
                    trainable, non_trainable, optimizer_values, x_batch, y_batch
                )
            history.append(weights_of(trainable))
            losses.append(float(loss))
        for variable, value in zip(variables, trainable):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, optimizer_values):
            variable.assign(value)
    elif backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables, loss=loss if pass_loss else None)
            return loss

        for _ in range(steps):
            for x_batch, y_batch in zip(x_batches, y_batches):
                loss = train_step(x_batch, y_batch)
            losses.append(float(loss))
            history.append(weights_of(variables))
    else:
        import torch

        for _ in range(steps):
            for x_batch, y_batch in zip(x_batches, y_batches):
                model.zero_grad()
                loss = loss_fn(y_batch, model(x_batch, training=True))
                loss.backward()
                grads = [v.value.grad for v in variables]
                with torch.no_grad():
                    optimizer.apply(
                        grads,
                        variables,
                        loss=loss.detach() if pass_loss else None,
                    )
            losses.append(float(loss.detach()))
            history.append(weights_of(variables))
    return history, losses


def assert_weights_close(actual, expected, rtol=1e-5, atol=1e-9, message=""):
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(
            a, e, rtol=rtol, atol=atol, err_msg=f"{message} tensor {i}"
        )
