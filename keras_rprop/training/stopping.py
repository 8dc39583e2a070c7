"""Prechelt's early-stopping criteria GL, PQ and UP as Keras callbacks."""

import logging
import math
import numbers
import warnings

import keras


class _PrecheltStopping(keras.callbacks.Callback):
    """What the three criteria share: reading the logs, the best weights.

    A subclass implements `_decide(epoch, error, progress)`, which returns
    why training stops after `epoch` (a string) or `None`. `error` is the
    epoch's validation error, `None` for an epoch without one; `progress`
    is `P_k(t)` at the end of a strip whose training errors were all
    seen, else `None`. `self.best` holds `E_opt(t)` by then.

    The callback reads everything from the `logs` of `on_epoch_end`, the
    weights only through `model.get_weights()` at an epoch with a new best,
    writes them back only through `model.set_weights()` in `on_train_end`,
    and stops training only through `model.stop_training`: so the engine
    of `fit_full_batch` may call it after the epochs it judges have run.
    """

    # Whether the criterion needs the validation error at every strip end.
    _decides_at_strip_ends = False

    def __init__(
        self,
        monitor,
        min_progress,
        strip_length,
        training_monitor,
        restore_best_weights,
        start_from_epoch,
        verbose,
    ):
        super().__init__()
        self.monitor = _log_name("monitor", monitor)
        self.min_progress = (
            None
            if min_progress is None
            else _positive_number("min_progress", min_progress)
        )
        self.strip_length = _integer("strip_length", strip_length, minimum=1)
        self.training_monitor = _log_name("training_monitor", training_monitor)
        if not isinstance(restore_best_weights, bool):
            raise ValueError(
                "Argument `restore_best_weights` must be True or False. "
                f"Received: restore_best_weights={restore_best_weights!r}"
            )
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = _integer(
            "start_from_epoch", start_from_epoch, minimum=0
        )
        if isinstance(verbose, bool) or verbose not in (0, 1):
            raise ValueError(
                "Argument `verbose` must be 0 (silent) or 1 (a message when "
                f"training stops). Received: verbose={verbose!r}"
            )
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None
        self._reason = None
        self._strip = {}
        self._directions_checked = False
        self._epochs_monitored = 0
        self._monitor_seen = False
        self._warned_strip_end = False

    def on_train_begin(self, logs=None):
        # Allows instances to be reused across `fit` calls.
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.start_from_epoch:
            return
        logs = logs or {}
        if not self._directions_checked:
            self._check_directions()
        self._epochs_monitored += 1
        error = self._validation_error(logs, epoch)
        progress = None
        if self._reads_progress():
            training_error = self._read(logs, self.training_monitor, epoch)
            if training_error is None:
                self._warn_missing(self.training_monitor, logs)
            elif not math.isfinite(training_error):
                self._stop(epoch, f"`{self.training_monitor}` is not finite")
                return
            else:
                progress = self._progress(epoch, training_error)
        if error is not None:
            if not math.isfinite(error):
                self._stop(epoch, f"`{self.monitor}` is not finite")
                return
            if self.best is None or error < self.best:
                self.best = error
                self.best_epoch = epoch
                if self.restore_best_weights:
                    self.best_weights = self.model.get_weights()
        reason = self._decide(epoch, error, progress)
        if (
            reason is None
            and self.min_progress is not None
            and progress is not None
            and progress < self.min_progress
        ):
            reason = (
                f"training progress P_{self.strip_length} = {progress:.4g} "
                f"< {self.min_progress:g}"
            )
        if reason is not None:
            self._stop(epoch, reason)

    def on_train_end(self, logs=None):
        if self._epochs_monitored and not self._monitor_seen:
            warnings.warn(
                f"`{type(self).__name__}` monitors `{self.monitor}`, which "
                "no epoch's logs held, so it never stopped training. Pass "
                "`validation_data` or `validation_split` to `fit`, or "
                "monitor an entry of the logs.",
                stacklevel=2,
            )
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print_message(
                f"Epoch {self.stopped_epoch + 1}: early stopping: "
                f"{self._reason}."
            )
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print_message(
                    "Restoring model weights from the end of the best "
                    f"epoch: {self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)

    def _reads_progress(self):
        return self.min_progress is not None

    def _is_strip_end(self, epoch):
        return (epoch + 1) % self.strip_length == 0

    def _stop(self, epoch, reason):
        self.stopped_epoch = epoch
        self._reason = reason
        self.model.stop_training = True

    def _validation_error(self, logs, epoch):
        error = self._read(logs, self.monitor, epoch)
        if error is not None:
            self._monitor_seen = True
        elif self.monitor.startswith("val_") and not any(
            key.startswith("val_") for key in logs
        ):
            # An epoch without validation (`validation_freq`): expected,
            # unless a criterion needs it at this strip end.
            if self._decides_at_strip_ends and self._is_strip_end(epoch):
                self._warn_strip_end(epoch)
        else:
            self._warn_missing(self.monitor, logs)
        return error

    def _progress(self, epoch, training_error):
        """`P_k(t)` at a strip end whose errors were all seen, else `None`."""
        first = epoch + 1 - self.strip_length
        self._strip = {e: v for e, v in self._strip.items() if e >= first}
        self._strip[epoch] = training_error
        if self._is_strip_end(epoch) and len(self._strip) == (
            self.strip_length
        ):
            return training_progress(list(self._strip.values()))
        return None

    def _read(self, logs, name, epoch):
        value = logs.get(name)
        if value is None:
            return None
        value = float(value)
        if value < 0:
            raise ValueError(
                f"`{type(self).__name__}` needs errors, which are at least "
                f"0 and lower when better, but `{name}` was {value!r} at "
                f"epoch {epoch + 1}. Received: monitor={self.monitor!r}, "
                f"training_monitor={self.training_monitor!r}"
            )
        return value

    def _warn_missing(self, name, logs):
        # Worded as `keras.callbacks.EarlyStopping` words it.
        warnings.warn(
            f"Early stopping conditioned on metric `{name}` "
            "which is not available. "
            f"Available metrics are: {','.join(list(logs.keys()))}",
            stacklevel=3,
        )

    def _warn_strip_end(self, epoch):
        if self._warned_strip_end:
            return
        self._warned_strip_end = True
        warnings.warn(
            f"`{type(self).__name__}` decides at the end of every strip of "
            f"{self.strip_length} epochs, but epoch {epoch + 1} had no "
            f"`{self.monitor}`, so that strip end was skipped. Validate at "
            f"every strip end (`validation_freq={self.strip_length}` or 1).",
            stacklevel=4,
        )

    def _check_directions(self):
        """Raises if Keras knows a monitored entry as higher-is-better."""
        self._directions_checked = True
        names = [self.monitor]
        if self._reads_progress():
            names.append(self.training_monitor)
        for name in names:
            # `EarlyStopping` infers the direction of its `monitor` from the
            # model's metrics in its first `on_epoch_end`: asking it keeps
            # the inference Keras's own.
            probe = keras.callbacks.EarlyStopping(monitor=name)
            probe.set_model(self.model)
            try:
                probe.on_epoch_end(0, {name: 0.0})
            except ValueError:
                continue  # A metric of unknown direction: trust the user.
            if probe.monitor_op is keras.ops.greater:
                raise ValueError(
                    f"`{type(self).__name__}` needs errors, which are lower "
                    f"when better, but Keras maximizes `{name}`. Monitor a "
                    "loss or an error metric. "
                    f"Received: monitor={self.monitor!r}, "
                    f"training_monitor={self.training_monitor!r}"
                )


# The end of every criterion's docstring: its last arguments, attributes
# and references, shared as Keras's optimizers share theirs.
_SHARED_ARGS = """\
        restore_best_weights: Whether to restore, when training ends
            (stopped or not), the weights of the epoch with the lowest
            `monitor`, as PROBEN1 does. If `False`, the weights of the last
            epoch are kept. Defaults to `True`.
        start_from_epoch: Number of epochs to ignore before monitoring
            starts (a warm-up). Defaults to `0`.
        verbose: 0 or 1: with 1, a message when training stops and when the
            best weights are restored. Defaults to `0`.

    Attributes:
        stopped_epoch: The epoch (counted from 0) after which training was
            stopped, `0` if it was not.
        best: The lowest validation error, `E_opt`.
        best_epoch: The epoch (counted from 0) of `best`.
        best_weights: The weights after `best_epoch`, if
            `restore_best_weights`.

    References:
        - Prechelt, "Early stopping - but when?", in Neural Networks: Tricks
          of the Trade, Springer LNCS 1524, 1998.
        - Prechelt, "PROBEN1 - A set of neural network benchmark problems
          and benchmarking rules", Technical Report 21/94, Universitaet
          Karlsruhe, 1994.
"""


class StopOnGeneralizationLoss(_PrecheltStopping):
    """Stops training when the generalization loss exceeds `alpha` (GL).

    Prechelt's criterion GL_alpha. With `E_va(t)` the validation error
    (`monitor`) after epoch `t` and `E_opt(t)` the lowest validation error
    up to `t`, the generalization loss is the validation error's excess
    over its lowest value, in percent:

    `GL(t) = 100 * (E_va(t) / E_opt(t) - 1)`

    and training stops after the first epoch with `GL(t) > alpha`. GL is
    checked at every epoch that has a validation error; the weights of the
    epoch with the lowest one are restored at the end of training.

    With `min_progress`, training also stops at the end of a strip of `k`
    (`strip_length`) epochs whose training progress, the excess of the
    strip's mean training error over its lowest, in per mille,

    `P_k(t) = 1000 * (sum(E_tr over the strip) / (k * min(E_tr over the
    strip)) - 1)`,

    is below `min_progress`. Strip ends are the epochs whose number
    (counted from 1) is a multiple of `k`, the epochs `fit` validates with
    `validation_freq=k`. PROBEN1's rule is GL_5 with `min_progress=0.1`,
    validation every 5 epochs and at most 3000 epochs:

    ```python
    stop = keras_rprop.StopOnGeneralizationLoss(alpha=5.0, min_progress=0.1)
    keras_rprop.fit_full_batch(
        model,
        x,
        y,
        epochs=3000,
        validation_data=(x_val, y_val),
        validation_freq=5,
        callbacks=[stop],
    )
    print(stop.stopped_epoch, stop.best_epoch, stop.best)
    ```

    Errors must be at least 0 and lower when better; a negative one, or a
    metric Keras maximizes (such as accuracy), raises a `ValueError`. A NaN
    or infinite error stops training, as no criterion can be computed from
    it, and the best weights seen before are restored.

    Args:
        alpha: The generalization loss, in percent, above which training
            stops. Defaults to `5.0`, PROBEN1's.
        monitor: The validation error `E_va`, a log entry. Defaults to
            `"val_loss"`.
        min_progress: If not `None`, also stop at a strip end where
            `P_k(t) < min_progress`. Defaults to `None`.
        strip_length: The length `k` of a strip, in epochs. Defaults to
            `5`, PROBEN1's.
        training_monitor: The training error `E_tr` of `P_k`, a log entry.
            Defaults to `"loss"`.
        {{shared_args}}
    """

    def __init__(
        self,
        alpha=5.0,
        monitor="val_loss",
        min_progress=None,
        strip_length=5,
        training_monitor="loss",
        restore_best_weights=True,
        start_from_epoch=0,
        verbose=0,
    ):
        self.alpha = _positive_number("alpha", alpha)
        super().__init__(
            monitor,
            min_progress,
            strip_length,
            training_monitor,
            restore_best_weights,
            start_from_epoch,
            verbose,
        )

    def _decide(self, epoch, error, progress):
        if error is None:
            return None
        loss = generalization_loss(error, self.best)
        if loss > self.alpha:
            return f"generalization loss GL = {loss:.4g} > {self.alpha:g}"
        return None


class StopOnProgressQuotient(_PrecheltStopping):
    """Stops training when generalization loss outweighs progress (PQ).

    Prechelt's criterion PQ_alpha. At the end of each strip of `k`
    (`strip_length`) epochs, training stops if the generalization loss
    `GL(t)` divided by the training progress `P_k(t)` exceeds `alpha`:

    `GL(t) = 100 * (E_va(t) / E_opt(t) - 1)`

    `P_k(t) = 1000 * (sum(E_tr over the strip) / (k * min(E_tr over the
    strip)) - 1)`

    `PQ(t) = GL(t) / P_k(t) > alpha`

    where `E_va(t)` is the validation error (`monitor`) after epoch `t`,
    `E_opt(t)` the lowest validation error up to `t`, and `E_tr` the
    training error (`training_monitor`) of the strip's epochs. Fast
    training progress thus tolerates a higher generalization loss. A strip
    end is an epoch whose number (counted from 1) is a multiple of `k`, so
    validation is needed there (`validation_freq=k` validates exactly
    there); the weights of the epoch with the lowest validation error are
    restored at the end of training. A strip that training does not cover
    wholly (after `initial_epoch` or `start_from_epoch`) is not judged.
    With no progress at all (`P_k = 0`), any generalization loss stops.

    ```python
    keras_rprop.fit_full_batch(
        model,
        x,
        y,
        epochs=3000,
        validation_data=(x_val, y_val),
        validation_freq=5,
        callbacks=[keras_rprop.StopOnProgressQuotient(alpha=0.5)],
    )
    ```

    Errors must be at least 0 and lower when better; a negative one, or a
    metric Keras maximizes (such as accuracy), raises a `ValueError`. A NaN
    or infinite error stops training, and the best weights seen before are
    restored.

    Args:
        alpha: The quotient `GL / P_k` above which training stops.
        strip_length: The length `k` of a strip, in epochs. Defaults to
            `5`, PROBEN1's.
        monitor: The validation error `E_va`, a log entry. Defaults to
            `"val_loss"`.
        training_monitor: The training error `E_tr`, a log entry. Defaults
            to `"loss"`.
        min_progress: If not `None`, also stop at a strip end where
            `P_k(t) < min_progress`, as PROBEN1 does with `0.1`. Defaults
            to `None`.
        {{shared_args}}
    """

    _decides_at_strip_ends = True

    def __init__(
        self,
        alpha,
        strip_length=5,
        monitor="val_loss",
        training_monitor="loss",
        min_progress=None,
        restore_best_weights=True,
        start_from_epoch=0,
        verbose=0,
    ):
        self.alpha = _positive_number("alpha", alpha)
        super().__init__(
            monitor,
            min_progress,
            strip_length,
            training_monitor,
            restore_best_weights,
            start_from_epoch,
            verbose,
        )

    def _reads_progress(self):
        return True

    def _decide(self, epoch, error, progress):
        if error is None or progress is None:
            return None
        quotient = progress_quotient(
            generalization_loss(error, self.best), progress
        )
        if quotient > self.alpha:
            return f"progress quotient PQ = {quotient:.4g} > {self.alpha:g}"
        return None


class StopOnValidationIncreases(_PrecheltStopping):
    """Stops training when validation error rose in `strips` strips (UP).

    Prechelt's criterion UP_s. Training is divided into strips of `k`
    (`strip_length`) epochs; at the end of each, the validation error
    `E_va(t)` (`monitor`) is compared with its value at the end of the
    strip before, `E_va(t - k)`. Training stops after the first strip end
    where it had risen at `s` (`strips`) successive strip ends:

    `E_va(t - j * k) > E_va(t - (j + 1) * k)` for `j = 0, ..., s - 1`.

    A strip end is an epoch whose number (counted from 1) is a multiple of
    `k`, so validation is needed there (`validation_freq=k` validates
    exactly there); a strip end without validation breaks the run of
    rises. The weights of the epoch with the lowest validation error (at
    any validated epoch) are restored at the end of training.

    ```python
    keras_rprop.fit_full_batch(
        model,
        x,
        y,
        epochs=3000,
        validation_data=(x_val, y_val),
        validation_freq=5,
        callbacks=[keras_rprop.StopOnValidationIncreases(strips=3)],
    )
    ```

    Errors must be at least 0 and lower when better; a negative one, or a
    metric Keras maximizes (such as accuracy), raises a `ValueError`. A NaN
    or infinite error stops training, and the best weights seen before are
    restored.

    Args:
        strips: The number `s` of successive strips in which the validation
            error must rise.
        strip_length: The length `k` of a strip, in epochs. Defaults to
            `5`, PROBEN1's.
        monitor: The validation error `E_va`, a log entry. Defaults to
            `"val_loss"`.
        training_monitor: The training error `E_tr` of `P_k`, a log entry.
            Defaults to `"loss"`.
        min_progress: If not `None`, also stop at a strip end where the
            training progress `P_k(t) = 1000 * (sum(E_tr over the strip) /
            (k * min(E_tr over the strip)) - 1)` is below it, as PROBEN1
            does with `0.1`. Defaults to `None`.
        {{shared_args}}
    """

    _decides_at_strip_ends = True

    def __init__(
        self,
        strips,
        strip_length=5,
        monitor="val_loss",
        training_monitor="loss",
        min_progress=None,
        restore_best_weights=True,
        start_from_epoch=0,
        verbose=0,
    ):
        self.strips = _integer("strips", strips, minimum=1)
        super().__init__(
            monitor,
            min_progress,
            strip_length,
            training_monitor,
            restore_best_weights,
            start_from_epoch,
            verbose,
        )

    def _reset(self):
        super()._reset()
        self._previous_end = None
        self._rises = 0

    def _decide(self, epoch, error, progress):
        if not self._is_strip_end(epoch):
            return None
        if error is None:
            # No comparison across a strip end without validation.
            self._previous_end = None
            self._rises = 0
            return None
        if self._previous_end is not None and error > self._previous_end:
            self._rises += 1
        else:
            self._rises = 0
        self._previous_end = error
        if self._rises >= self.strips:
            return (
                f"`{self.monitor}` rose at {self._rises} successive strip ends"
            )
        return None


for _criterion in (
    StopOnGeneralizationLoss,
    StopOnProgressQuotient,
    StopOnValidationIncreases,
):
    if _criterion.__doc__:  # None under `python -OO`.
        _criterion.__doc__ = _criterion.__doc__.replace(
            "        {{shared_args}}\n", _SHARED_ARGS
        )

# The classes whose every reading of the model goes through the logs,
# `get_weights` and `set_weights`, for the engine of `fit_full_batch`.
STOPPING_CRITERIA = (
    StopOnGeneralizationLoss,
    StopOnProgressQuotient,
    StopOnValidationIncreases,
)


def _print_message(message):
    # Where Keras's callbacks print theirs: to the console, or to the log
    # when interactive logging is off.
    if keras.config.is_interactive_logging_enabled():
        print(message, flush=True)
    else:
        logging.getLogger(__name__).info(message)


def generalization_loss(error, lowest):
    """`GL = 100 * (error / lowest - 1)`: excess over the lowest, in %."""
    if error == lowest:
        return 0.0
    if lowest == 0:
        return math.inf
    return 100.0 * (error / lowest - 1.0)


def training_progress(errors):
    """`P_k = 1000 * (sum(errors) / (k * min(errors)) - 1)`, in per mille.

    The strip's mean training error over its lowest: large while training
    still improves, 0 when the strip was flat.
    """
    total = math.fsum(errors)
    lowest = min(errors)
    if lowest == 0:
        return 0.0 if total == 0 else math.inf
    return 1000.0 * (total / (len(errors) * lowest) - 1.0)


def progress_quotient(loss, progress):
    """`PQ = GL / P_k`; no generalization loss is 0, no progress infinite."""
    if loss == 0:
        return 0.0
    if progress == 0 or math.isinf(loss):
        return math.inf
    return loss / progress


def _positive_number(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _integer(name, value, minimum):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        kind = "a positive integer" if minimum == 1 else "an integer >= 0"
        raise ValueError(
            f"Argument `{name}` must be {kind}. Received: {name}={value!r}"
        )
    return int(value)


def _log_name(name, value):
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"Argument `{name}` must be the name of a log entry, such as "
            f"'val_loss'. Received: {name}={value!r}"
        )
    return value
