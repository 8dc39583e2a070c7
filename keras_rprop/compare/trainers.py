"""How `keras-rprop compare` trains: one trainer per model and optimizer.

A trainer is made once per problem and optimizer and then trains from the
initial weights of each seed, so the seeds after the first pay no
compilation. Each run returns a `recording.Curve`.

- Keras optimizers train through the public API: full-batch runs through
  `keras_rprop.fit_full_batch`, which hands each step's loss to Rprop, and
  mini-batch runs through `model.fit`, each with a callback of
  `recording` that notes every epoch.
- `lbfgs` and `lm` run SciPy's L-BFGS-B and Levenberg-Marquardt on the
  model's flattened weights (see `scipy_solvers`).
"""

import contextlib
import time

import keras
from keras import ops

from keras_rprop.compare import autodiff
from keras_rprop.compare import scipy_solvers
from keras_rprop.compare.recording import MiniBatchRecorder
from keras_rprop.compare.recording import full_batch_curve
from keras_rprop.training import fit_full_batch


def make_trainer(model, spec, problem, data):
    """Returns the trainer of `model` for the optimizer `spec`.

    Args:
        model: A built Keras model (the trainer sets its weights).
        spec: A `runner.OptimizerSpec`.
        problem: The `Problem` (gives the loss).
        data: The problem's `Dataset`.

    Returns:
        A trainer: `trainer.run(weights, epochs, seed)` trains from
        `weights` (in `model.weights` order) and returns the `Curve`.
    """
    if spec.method is not None:
        try:
            import scipy  # noqa: F401
        except ImportError as error:
            raise ImportError(
                f"The optimizer {spec.name!r} of `keras-rprop compare` runs "
                "SciPy: pip install 'keras-rprop[demo]' (or scipy)."
            ) from error
    if spec.method == "lbfgs":
        return LbfgsTrainer(model, problem, data)
    if spec.method == "lm":
        return LevenbergMarquardtTrainer(model, data)
    return KerasTrainer(model, spec.make(), problem, data, spec.batch_size)


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


class KerasTrainer:
    """Trains with a Keras optimizer: `fit_full_batch` or `model.fit`.

    Args:
        model: A built Keras model; compiled here with the optimizer.
        optimizer: A fresh Keras optimizer.
        problem: The `Problem`.
        data: The problem's `Dataset`.
        batch_size: `None` for full batches, else the mini-batch size;
            mini-batches are reshuffled every epoch.
    """

    def __init__(self, model, optimizer, problem, data, batch_size=None):
        self.model = model
        self.optimizer = optimizer
        self.data = data
        self.batch_size = batch_size
        loss = problem.make_loss()
        model.compile(optimizer=optimizer, loss=loss)
        optimizer.build(model.trainable_variables)
        self._initial_optimizer_state = [
            ops.convert_to_numpy(v) for v in optimizer.variables
        ]
        compute_loss = autodiff.compiled(
            autodiff.mean_loss(model, loss, data.x_train, data.y_train)
        )
        self._measure_loss = lambda: float(
            ops.convert_to_numpy(
                compute_loss([v.value for v in model.trainable_variables])
            )
        )

    def reset(self, weights):
        """Sets the model's weights and the optimizer's initial state."""
        self.model.set_weights(weights)
        for variable, value in zip(
            self.optimizer.variables, self._initial_optimizer_state
        ):
            variable.assign(value)

    def run(self, weights, epochs, seed=0):
        """Trains `epochs` epochs from `weights`; returns the `Curve`."""
        self.reset(weights)
        x, y = self.data.x_train, self.data.y_train
        with _one_torch_thread():
            if self.batch_size is None:
                start = time.perf_counter()
                history = fit_full_batch(
                    self.model, x, y, epochs=epochs, verbose=0
                )
                seconds = time.perf_counter() - start
                return full_batch_curve(history, seconds, self._measure_loss())
            else:
                recorder = MiniBatchRecorder(
                    len(x), self.batch_size, self._measure_loss
                )
                keras.utils.set_random_seed(seed)
                self.model.fit(
                    x,
                    y,
                    batch_size=self.batch_size,
                    epochs=epochs,
                    shuffle=True,
                    verbose=0,
                    callbacks=[recorder],
                )
            return recorder.finish()


class LbfgsTrainer:
    """Trains with SciPy's L-BFGS-B, at most `epochs` iterations."""

    def __init__(self, model, problem, data):
        self.model = model
        self.function, self.flat = autodiff.loss_and_gradient_function(
            model, problem.make_loss(), data.x_train, data.y_train
        )

    def run(self, weights, epochs, seed=0):
        start = time.perf_counter()
        self.model.set_weights(weights)
        with _one_torch_thread():
            result, curve = scipy_solvers.minimize_lbfgs(
                self.function, self.flat.get(), epochs, start
            )
        self.flat.set(result.x)
        return curve


class LevenbergMarquardtTrainer:
    """Trains with MINPACK's Levenberg-Marquardt, at most `epochs` residual
    evaluations."""

    def __init__(self, model, data):
        self.model = model
        self.residuals, self.jacobian, self.flat = (
            autodiff.residual_and_jacobian_functions(
                model, data.x_train, data.y_train
            )
        )

    def run(self, weights, epochs, seed=0):
        start = time.perf_counter()
        self.model.set_weights(weights)
        with _one_torch_thread():
            result, curve = scipy_solvers.least_squares_lm(
                self.residuals, self.jacobian, self.flat.get(), epochs, start
            )
        self.flat.set(result.x)
        return curve
