"""How `keras-rprop compare` trains: one trainer per model and optimizer.

A trainer compiles its training step once and is then reset to the initial
weights of each seed, so the seeds after the first cost no compilation.
There are two engines:

- `"loop"` (the default): a compiled step per backend that computes the
  batch's mean loss and gradients and calls
  `optimizer.apply(grads, variables, loss=loss)` (`stateless_apply(...,
  loss=loss)` on JAX), i.e. the loss channel of `keras_rprop.Rprop`. It
  costs about a millisecond per step on small problems.
- `"fit"`: the Keras workflow, `keras_rprop.fit_full_batch(model, x, y)` for
  full batches and `model.fit(x, y, batch_size=...)` for mini-batches. It
  trains the same weights, with Keras's per-epoch overhead on top.

Both record the training loss on the whole training set before training and
after every epoch.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_rprop.optimizers import Rprop

ENGINES = ("loop", "fit")


def make_trainer(model, optimizer, loss, engine="loop"):
    """Returns a trainer of `model` with `optimizer` for the current backend.

    Args:
        model: A built Keras model.
        optimizer: A fresh Keras optimizer; the trainer builds it.
        loss: A Keras loss (instance or name) that averages over the batch.
        engine: `"loop"` or `"fit"` (see the module docstring).

    Returns:
        A `Trainer`.
    """
    if engine == "fit":
        return FitTrainer(model, optimizer, loss)
    if engine != "loop":
        raise ValueError(
            f"Argument `engine` must be one of {ENGINES}. "
            f"Received: engine={engine!r}"
        )
    backend = keras.backend.backend()
    trainers = {
        "tensorflow": _TensorFlowTrainer,
        "jax": _JaxTrainer,
        "torch": _TorchTrainer,
    }
    if backend not in trainers:
        raise ValueError(
            "`keras-rprop compare` runs on the tensorflow, jax and torch "
            f"backends. Received: backend={backend!r}"
        )
    return trainers[backend](model, optimizer, loss)


@contextlib.contextmanager
def _one_torch_thread():
    """Runs PyTorch on one thread for the duration of the block.

    The operations of these problems are far too small to gain from
    several threads; on a busy two-core machine, PyTorch's threads waiting
    for each other made training twenty times slower than on one thread.
    """
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Trainer:
    """Trains one model with one optimizer, from any initial weights."""

    def __init__(self, model, optimizer, loss):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = keras.losses.get(loss)
        optimizer.build(model.trainable_variables)
        # Keras's own optimizers take no loss; the Rprop family accepts it
        # and iRprop+ needs it.
        self.takes_loss = isinstance(optimizer, Rprop)
        self._initial_optimizer_state = [
            ops.convert_to_numpy(v) for v in optimizer.variables
        ]

    def reset(self, weights):
        """Sets the model's weights and the optimizer's initial state."""
        self.model.set_weights(weights)
        for variable, value in zip(
            self.optimizer.variables, self._initial_optimizer_state
        ):
            variable.assign(value)

    def train(self, x, y, epochs, batch_size=None, seed=0):
        """Trains from the current weights.

        Args:
            x, y: The training set, NumPy arrays.
            epochs: Number of passes over the training set.
            batch_size: `None` for full-batch training (one step per epoch
                on the gradient of the whole training set), else the
                mini-batch size; mini-batches are reshuffled every epoch.
            seed: Seed of the shuffling.

        Returns:
            A float64 array of `epochs + 1` losses on the whole training
            set: before training and after each epoch.
        """
        with _one_torch_thread():
            return self._train(x, y, epochs, batch_size, seed)

    def _train(self, x, y, epochs, batch_size, seed):
        x_all, y_all = ops.convert_to_tensor(x), ops.convert_to_tensor(y)
        losses = []
        self._start()
        if batch_size is None or batch_size >= len(x):
            # A full-batch step returns the loss before the step, i.e. the
            # loss after the previous epoch.
            for _ in range(epochs):
                losses.append(self._step(x_all, y_all))
            losses.append(self._evaluate(x_all, y_all))
        else:
            rng = np.random.default_rng(seed)
            losses.append(self._evaluate(x_all, y_all))
            for _ in range(epochs):
                order = rng.permutation(len(x))
                for start in range(0, len(x), batch_size):
                    batch = order[start : start + batch_size]
                    self._step(
                        ops.convert_to_tensor(x[batch]),
                        ops.convert_to_tensor(y[batch]),
                    )
                losses.append(self._evaluate(x_all, y_all))
        self._finish()
        return np.array([float(ops.convert_to_numpy(v)) for v in losses])

    def _loss_argument(self, loss):
        return {"loss": loss} if self.takes_loss else {}

    def _start(self):
        pass

    def _finish(self):
        pass


class _TensorFlowTrainer(Trainer):
    def __init__(self, model, optimizer, loss):
        import tensorflow as tf

        super().__init__(model, optimizer, loss)
        variables = model.trainable_variables

        def step(x, y):
            with tf.GradientTape() as tape:
                loss = ops.mean(self.loss_fn(y, model(x, training=True)))
            grads = tape.gradient(loss, variables)
            optimizer.apply(grads, variables, **self._loss_argument(loss))
            return loss

        def evaluate(x, y):
            return ops.mean(self.loss_fn(y, model(x, training=False)))

        # Keras code needs no AutoGraph, and converting it costs more than
        # a small run.
        self._step = tf.function(step, reduce_retracing=True, autograph=False)
        self._evaluate = tf.function(
            evaluate, reduce_retracing=True, autograph=False
        )


class _TorchTrainer(Trainer):
    def _step(self, x, y):
        import torch

        variables = self.model.trainable_variables
        loss = ops.mean(self.loss_fn(y, self.model(x, training=True)))
        grads = torch.autograd.grad(loss, [v.value for v in variables])
        loss = loss.detach()
        with torch.no_grad():
            self.optimizer.apply(
                list(grads), variables, **self._loss_argument(loss)
            )
        return loss

    def _evaluate(self, x, y):
        import torch

        with torch.no_grad():
            return ops.mean(self.loss_fn(y, self.model(x, training=False)))


class _JaxTrainer(Trainer):
    """Keeps the state outside the variables while training, as Keras does."""

    def __init__(self, model, optimizer, loss):
        import jax

        super().__init__(model, optimizer, loss)

        def compute_loss(trainable, non_trainable, x, y, training):
            y_pred, non_trainable = model.stateless_call(
                trainable, non_trainable, x, training=training
            )
            return ops.mean(self.loss_fn(y, y_pred)), non_trainable

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
                **self._loss_argument(loss),
            )
            return (trainable, non_trainable, optimizer_variables), loss

        def evaluate(state, x, y):
            return compute_loss(state[0], state[1], x, y, False)[0]

        self._jit_step = jax.jit(step, donate_argnums=0)
        self._jit_evaluate = jax.jit(evaluate)

    def _start(self):
        import jax.numpy as jnp

        # Copies: the step donates the state's buffers.
        self.state = tuple(
            [jnp.array(v.value, copy=True) for v in variables]
            for variables in (
                self.model.trainable_variables,
                self.model.non_trainable_variables,
                self.optimizer.variables,
            )
        )

    def _step(self, x, y):
        self.state, loss = self._jit_step(self.state, x, y)
        return loss

    def _evaluate(self, x, y):
        return self._jit_evaluate(self.state, x, y)

    def _finish(self):
        all_variables = (
            self.model.trainable_variables,
            self.model.non_trainable_variables,
            self.optimizer.variables,
        )
        for variables, values in zip(all_variables, self.state):
            for variable, value in zip(variables, values):
                variable.assign(value)
        self.state = None


class FitTrainer(Trainer):
    """Trains with `keras_rprop.fit_full_batch` and `model.fit`."""

    def __init__(self, model, optimizer, loss):
        model.compile(optimizer=optimizer, loss=loss)
        super().__init__(model, optimizer, loss)

    def _train(self, x, y, epochs, batch_size, seed):
        from keras_rprop.training import fit_full_batch

        if batch_size is None or batch_size >= len(x):
            history = fit_full_batch(self.model, x, y, epochs=epochs, verbose=0)
            losses = history.history["loss"] + [self._full_loss(x, y)]
        else:
            keras.utils.set_random_seed(seed)
            losses = [self._full_loss(x, y)]
            record = keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: losses.append(
                    self._full_loss(x, y)
                )
            )
            self.model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                shuffle=True,
                verbose=0,
                callbacks=[record],
            )
        return np.array(losses, dtype="float64")

    def _full_loss(self, x, y):
        return float(self.model.evaluate(x, y, batch_size=len(x), verbose=0))
