"""Progress over hundreds of one-step epochs, and stopping at a loss goal."""

import math
import time

import keras


class LossGoal(keras.callbacks.Callback):
    """Stops training once the training loss reaches a goal.

    At the end of every epoch, training stops if the epoch's `loss` is at or
    below `goal`, like the performance goal of MATLAB's `trainrp`
    (`net.trainParam.goal`). With `keras_rprop.fit_full_batch`, the logged
    loss of an epoch is the loss at the weights its step started from, so
    the weights returned are one step past the first that reached the goal,
    as with any Keras callback that stops training.

    ```python
    keras_rprop.fit_full_batch(
        model, x, y, epochs=5000, callbacks=[keras_rprop.LossGoal(1e-4)]
    )
    ```

    `fit_full_batch` checks the goal inside its compiled loop over epochs,
    so this callback does not slow it down.

    Args:
        goal: The loss to reach, a finite number.
        monitor: The log entry to compare with the goal. Defaults to
            `"loss"`.
    """

    def __init__(self, goal, monitor="loss"):
        super().__init__()
        if (
            isinstance(goal, bool)
            or not isinstance(goal, (int, float))
            or not math.isfinite(goal)
        ):
            raise ValueError(
                "Argument `goal` must be a finite number. "
                f"Received: goal={goal!r}"
            )
        if not isinstance(monitor, str):
            raise ValueError(
                "Argument `monitor` must be the name of a log entry. "
                f"Received: monitor={monitor!r}"
            )
        self.goal = float(goal)
        self.monitor = monitor
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and float(value) <= self.goal:
            self.stopped_epoch = epoch
            self.model.stop_training = True


class EpochProgress(keras.callbacks.Callback):
    """Shows training progress over epochs rather than over batches.

    With `verbose=1`, one progress bar over all epochs: the epoch reached,
    the latest logs and the time left. With `verbose=2`, one line per epoch.

    Args:
        epochs: The number of epochs of the training.
        verbose: 1 for a progress bar, 2 for one line per epoch.
    """

    def __init__(self, epochs, verbose=1):
        super().__init__()
        self.epochs = epochs
        self.verbose = verbose
        self._bar = None
        self._shown = 0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._bar = None
        self._shown = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.verbose == 2:
            seconds = time.perf_counter() - self._start
            values = " - ".join(
                f"{key}: {_format(value)}" for key, value in logs.items()
            )
            print(
                f"Epoch {epoch + 1}/{self.epochs} - {seconds:.2f}s - {values}",
                flush=True,
            )
            return
        if self._bar is None:
            self._bar = keras.utils.Progbar(
                self.epochs,
                verbose=1,
                unit_name="epoch",
                stateful_metrics=list(logs),
            )
        self._bar.update(epoch + 1, list(logs.items()))
        self._shown = epoch + 1

    def on_train_end(self, logs=None):
        if self._bar is not None and self._shown < self.epochs:
            # Training stopped early: end the bar's line.
            print(flush=True)


def _format(value):
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def progress_callback(verbose, epochs):
    """The progress display for `verbose` (0, 1 or 2), or `None`."""
    if verbose in (0, False):
        return None
    if verbose not in (1, 2, True):
        raise ValueError(
            "Argument `verbose` must be 0 (silent), 1 (a progress bar over "
            "the epochs), 2 (one line per epoch) or 'auto' (1). "
            f"Received: verbose={verbose!r}"
        )
    return EpochProgress(epochs, verbose=int(verbose))
