"""What every run of `keras-rprop compare` records, epoch by epoch.

A run's `Curve` holds one point per epoch (or per iteration of L-BFGS and
Levenberg-Marquardt): the training loss on the whole training set, the
numbers of loss and gradient evaluations the optimizer had made when that
loss was known, and the seconds since the run started. Full-batch runs
read it from the History `keras_rprop.fit_full_batch` returns
(`full_batch_curve`); mini-batch runs record it with `MiniBatchRecorder`,
a callback given to `model.fit`.
"""

import time

import keras
import numpy as np


class Curve:
    """The points of one run, in order.

    Attributes:
        losses: Training loss on the whole training set.
        loss_evaluations: Loss evaluations made when the loss was known.
        gradient_evaluations: Gradient evaluations made by then (Jacobian
            evaluations for Levenberg-Marquardt).
        times: Seconds since the start of the run.

    With mini-batches, one pass over the training set counts as one loss and
    one gradient evaluation.
    """

    def __init__(self):
        self.losses = []
        self.loss_evaluations = []
        self.gradient_evaluations = []
        self.times = []

    def add(self, loss, loss_evaluations, gradient_evaluations, seconds):
        self.losses.append(float(loss))
        self.loss_evaluations.append(loss_evaluations)
        self.gradient_evaluations.append(gradient_evaluations)
        self.times.append(float(seconds))

    def arrays(self):
        """The four lists as float64 NumPy arrays, in the order above."""
        return (
            np.asarray(self.losses, "float64"),
            np.asarray(self.loss_evaluations, "float64"),
            np.asarray(self.gradient_evaluations, "float64"),
            np.asarray(self.times, "float64"),
        )


def full_batch_curve(history, seconds, final_loss):
    """The `Curve` of a `keras_rprop.fit_full_batch` run, from its History.

    The loss logged for epoch `k` is the loss at the weights the epoch's
    step started from, computed by that step's loss and gradient
    evaluation, the `k + 1`-th; `final_loss`, the loss after the last
    epoch, is one more loss evaluation. Every epoch is the same one step, so
    the run's seconds are spread evenly over its epochs: epoch `k` ends at
    `seconds * (k + 1) / epochs`. (A callback that read the clock every
    epoch would make the engine run one compiled call per epoch instead of
    all of them in one, and so measure a slower run than users get.)

    Args:
        history: The `History` that `fit_full_batch` returned.
        seconds: The wall-clock seconds of the `fit_full_batch` call.
        final_loss: The loss on the whole training set after training.
    """
    curve = Curve()
    losses = history.history["loss"]
    epochs = len(losses)
    for epoch, loss in enumerate(losses):
        evaluations = epoch + 1
        curve.add(
            loss, evaluations, evaluations, seconds * evaluations / epochs
        )
    curve.add(final_loss, epochs + 1, epochs, seconds)
    return curve


class MiniBatchRecorder(keras.callbacks.Callback):
    """Records a `Curve` while `model.fit` trains on mini-batches.

    Each batch's gradient counts as its share of the training set, so a pass
    counts as one evaluation. The loss on the whole training set is measured
    before training and after every epoch by `measure_loss`, off the clock:
    the optimizer never computes it.

    Args:
        num_samples: Size of the training set.
        batch_size: The mini-batch size.
        measure_loss: Function without arguments returning the loss on the
            whole training set at the model's current weights.
    """

    def __init__(self, num_samples, batch_size, measure_loss):
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.measure_loss = measure_loss
        self.curve = Curve()
        self.evaluations = 0
        self._samples = 0
        self._excluded = 0.0
        self._start = time.perf_counter()
        self._add_measured()

    def _seconds(self):
        return time.perf_counter() - self._start - self._excluded

    def _add_measured(self):
        seconds = self._seconds()
        before = time.perf_counter()
        loss = self.measure_loss()
        self._excluded += time.perf_counter() - before
        self.curve.add(loss, self.evaluations, self.evaluations, seconds)

    def on_train_batch_end(self, batch, logs=None):
        first = batch * self.batch_size
        self._samples += min(self.batch_size, self.num_samples - first)
        self.evaluations = self._samples / self.num_samples

    def on_epoch_end(self, epoch, logs=None):
        self._add_measured()

    def finish(self):
        return self.curve
