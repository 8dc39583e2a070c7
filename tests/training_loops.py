"""Hand-written full-batch training loops, one per backend, for the tests.

Each loop computes the loss and the gradients with the backend's own
autodiff and passes the loss to the optimizer (`apply(..., loss=)`, or
`stateless_apply(..., loss=)` on JAX, the path the JAX trainer uses).
"""

import keras
import numpy as np
from keras import ops


def mse(y_true, y_pred):
    return ops.mean(ops.square(y_pred - y_true))


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


def full_batch_steps(model, optimizer, x, y, steps, pass_loss=True, loss_fn=mse):
    """Trains `model` for `steps` full-batch steps with `optimizer`.

    Args:
        model: A built Keras model.
        optimizer: The optimizer; built here if it is not yet.
        x, y: The whole data set.
        steps: Number of optimizer steps.
        pass_loss: Whether to hand the loss to the optimizer.
        loss_fn: `loss_fn(y_true, y_pred)` returning a scalar.

    Returns:
        A tuple `(history, losses)`: the trainable weights (NumPy) after each
        step and the loss each step started from.
    """
    variables = model.trainable_variables
    optimizer.build(variables)
    backend = keras.backend.backend()
    x = ops.convert_to_tensor(x, dtype=model.inputs[0].dtype)
    y = ops.convert_to_tensor(y, dtype=model.inputs[0].dtype)
    history, losses = [], []
    if backend == "jax":
        import jax

        def compute_loss(trainable, non_trainable):
            prediction, _ = model.stateless_call(trainable, non_trainable, x)
            return loss_fn(y, prediction)

        @jax.jit
        def train_step(trainable, non_trainable, optimizer_values):
            loss, grads = jax.value_and_grad(compute_loss)(
                trainable, non_trainable
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
            trainable, optimizer_values, loss = train_step(
                trainable, non_trainable, optimizer_values
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
        def train_step():
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables, loss=loss if pass_loss else None)
            return loss

        for _ in range(steps):
            losses.append(float(train_step()))
            history.append(weights_of(variables))
    else:
        import torch

        for _ in range(steps):
            model.zero_grad()
            loss = loss_fn(y, model(x, training=True))
            loss.backward()
            grads = [v.value.grad for v in variables]
            with torch.no_grad():
                optimizer.apply(
                    grads, variables, loss=loss.detach() if pass_loss else None
                )
            losses.append(float(loss.detach()))
            history.append(weights_of(variables))
    return history, losses


def assert_weights_close(actual, expected, rtol=1e-5, atol=1e-9, message=""):
    for i, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(
            a, e, rtol=rtol, atol=atol, err_msg=f"{message} tensor {i}"
        )
