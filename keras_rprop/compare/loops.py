"""Compiled training steps for small problems, one per backend.

Each step computes the mean loss of a batch and its gradients and applies
them with `optimizer.apply(grads, variables, loss=loss)` (or
`stateless_apply(..., loss=loss)` on JAX), so every optimizer, iRprop+
included, gets the loss of the weights its gradients belong to.
"""

import keras
import numpy as np
from keras import ops

from keras_rprop.optimizers import Rprop


def make_loop(model, optimizer, loss_fn):
    """Returns the training step and loss evaluation for the current backend.

    Args:
        model: A built Keras model.
        optimizer: A Keras optimizer; it is built on the model's trainable
            variables here.
        loss_fn: Function `(y_true, y_pred) -> per-sample losses`.

    Returns:
        An object with `step(x, y) -> loss before the step` (a backend
        scalar), `evaluate(x, y) -> loss` and `finish()`, which writes the
        trained weights back into the model (JAX keeps them outside the
        model while training).
    """
    backend = keras.backend.backend()
    optimizer.build(model.trainable_variables)
    # Keras's own optimizers take no loss; the Rprop family accepts it and
    # iRprop+ needs it.
    takes_loss = isinstance(optimizer, Rprop)
    if backend == "tensorflow":
        return _TensorFlowLoop(model, optimizer, loss_fn, takes_loss)
    if backend == "jax":
        return _JaxLoop(model, optimizer, loss_fn, takes_loss)
    if backend == "torch":
        return _TorchLoop(model, optimizer, loss_fn, takes_loss)
    raise ValueError(
        "The comparison runs on the tensorflow, jax and torch backends. "
        f"Received: backend={backend!r}"
    )


def _loss_argument(loss, takes_loss):
    return {"loss": loss} if takes_loss else {}


class _TensorFlowLoop:
    def __init__(self, model, optimizer, loss_fn, takes_loss):
        import tensorflow as tf

        variables = model.trainable_variables

        def step(x, y):
            with tf.GradientTape() as tape:
                loss = ops.mean(loss_fn(y, model(x, training=True)))
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables, **_loss_argument(loss, takes_loss))
            return loss

        def evaluate(x, y):
            return ops.mean(loss_fn(y, model(x, training=False)))

        self.step = tf.function(step, reduce_retracing=True, autograph=False)
        self.evaluate = tf.function(
            evaluate, reduce_retracing=True, autograph=False
        )

    def finish(self):
        pass


class _TorchLoop:
    def __init__(self, model, optimizer, loss_fn, takes_loss):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.takes_loss = takes_loss

    def step(self, x, y):
        import torch

        variables = self.model.trainable_variables
        loss = ops.mean(self.loss_fn(y, self.model(x, training=True)))
        grads = torch.autograd.grad(loss, [v.value for v in variables])
        loss = loss.detach()
        with torch.no_grad():
            self.optimizer.apply(
                list(grads), variables, **_loss_argument(loss, self.takes_loss)
            )
        return loss

    def evaluate(self, x, y):
        import torch

        with torch.no_grad():
            return ops.mean(self.loss_fn(y, self.model(x, training=False)))

    def finish(self):
        pass


class _JaxLoop:
    def __init__(self, model, optimizer, loss_fn, takes_loss):
        import jax

        self.model = model
        self.optimizer = optimizer
        self.state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )

        def compute_loss(trainable, non_trainable, x, y, training):
            y_pred, non_trainable = model.stateless_call(
                trainable, non_trainable, x, training=training
            )
            return ops.mean(loss_fn(y, y_pred)), non_trainable

        gradient_fn = jax.value_and_grad(compute_loss, has_aux=True)

        def step(state, x, y):
            trainable, non_trainable, optimizer_variables = state
            (loss, non_trainable), grads = gradient_fn(
                trainable, non_trainable, x, y, True
            )
            trainable, optimizer_variables = optimizer.stateless_apply(
                optimizer_variables,
                grads,
                trainable,
                **_loss_argument(loss, takes_loss),
            )
            return (trainable, non_trainable, optimizer_variables), loss

        def evaluate(state, x, y):
            return compute_loss(state[0], state[1], x, y, False)[0]

        self._step = jax.jit(step, donate_argnums=0)
        self._evaluate = jax.jit(evaluate)

    def step(self, x, y):
        self.state, loss = self._step(self.state, x, y)
        return loss

    def evaluate(self, x, y):
        return self._evaluate(self.state, x, y)

    def finish(self):
        trainable, non_trainable, optimizer_variables = self.state
        for variable, value in zip(self.model.trainable_variables, trainable):
            variable.assign(value)
        for variable, value in zip(
            self.model.non_trainable_variables, non_trainable
        ):
            variable.assign(value)
        for variable, value in zip(
            self.optimizer.variables, optimizer_variables
        ):
            variable.assign(value)


def train(model, optimizer, loss_fn, x, y, epochs, batch_size=None, seed=0):
    """Trains `model` and returns its training loss after every epoch.

    Args:
        model: A built Keras model.
        optimizer: A fresh Keras optimizer.
        loss_fn: Function `(y_true, y_pred) -> per-sample losses`.
        x, y: The training set, NumPy arrays.
        epochs: Number of passes over the training set.
        batch_size: `None` for full-batch training (one step per epoch on the
            gradient of the whole training set), else the mini-batch size;
            the mini-batches are reshuffled every epoch.
        seed: Seed of the shuffling.

    Returns:
        A float64 array of `epochs + 1` losses on the whole training set:
        before training and after each epoch.
    """
    loop = make_loop(model, optimizer, loss_fn)
    x_all, y_all = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
    losses = []
    if batch_size is None or batch_size >= len(x):
        # The loss of a full-batch step is the loss before the step, i.e.
        # after the previous epoch.
        for _ in range(epochs):
            losses.append(loop.step(x_all, y_all))
        losses.append(loop.evaluate(x_all, y_all))
    else:
        rng = np.random.default_rng(seed)
        losses.append(loop.evaluate(x_all, y_all))
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), batch_size):
                batch = order[start : start + batch_size]
                loop.step(
                    ops.convert_to_tensor(x[batch]),
                    ops.convert_to_tensor(y[batch]),
                )
            losses.append(loop.evaluate(x_all, y_all))
    loop.finish()
    return np.array([float(ops.convert_to_numpy(v)) for v in losses])
