"""The engine's epochs on PyTorch: recorded steps, replayed."""

import math

import keras

from keras_rprop import compat
from keras_rprop.training import distributed
from keras_rprop.training import train_steps
from keras_rprop.training.runners import common


class TorchRunner:
    """Epochs in Python; each step replays one recorded step."""

    validates = True

    def __init__(self, model, steps):
        self.model = model
        self.steps = steps
        self.data = None
        # Fresh models of one structure replay one record of each step.
        self.structure = common.structure(model, steps)

    def run(
        self,
        epochs,
        goal=None,
        stop_on_nan=False,
        snapshots=False,
        validation=None,
        validate=None,
    ):
        import torch

        from keras_rprop.training import torch_replay

        model = self.model
        # One record holds the epoch's steps (see `train_steps.update_steps`).
        epoch_steps = torch_replay.stepper(
            model,
            _epoch_steps,
            (self.data, self.steps, None),
            shared=self.structure,
        )
        validating = None
        if (
            validation is not None
            and validation.in_loop
            and any(validate or ())
        ):
            validating = torch_replay.stepper(
                model,
                _validation_step,
                (validation.batches, None, None),
                shared=self.structure,
            )
        # With the loss as the only metric and nothing that reads an
        # epoch's logs during the loop, an epoch's log is its loss
        # tracker's sum and count, read once after the epochs.
        loss_only = (
            list(model.metrics) == [compat.loss_tracker(model)]
            and goal is None
            and not stop_on_nan
            and validating is None
        )
        tracker = compat.loss_tracker(model)
        logs_by_epoch = []
        weights = [] if snapshots else None
        sums = []
        for epoch in range(epochs):
            epoch_steps()
            if loss_only:
                sums.append(
                    (tracker.total.value.clone(), tracker.count.value.clone())
                )
            else:
                logs = common.floats(model.get_metrics_result())
                if validating is not None and validate[epoch]:
                    validating()
                    logs.update(
                        {
                            f"val_{key}": value
                            for key, value in common.floats(
                                model.get_metrics_result()
                            ).items()
                        }
                    )
                logs_by_epoch.append(logs)
            if snapshots:
                weights.append(
                    [keras.ops.convert_to_numpy(w.value) for w in model.weights]
                )
            if not loss_only and (
                (goal is not None and logs["loss"] <= goal)
                or (stop_on_nan and not math.isfinite(logs["loss"]))
            ):
                break
        if sums:
            totals, counts = (torch.stack(v) for v in zip(*sums))
            losses = keras.ops.divide_no_nan(totals, counts)
            logs_by_epoch = [{"loss": loss} for loss in losses.tolist()]
        return common.Result(logs_by_epoch, weights)


def _epoch_steps(model, chunks, steps, _sample_weight):
    """An epoch's optimizer steps, the last feeding fresh metrics."""
    import torch

    def update_metrics(x, y, y_pred, sample_weight):
        with torch.no_grad():
            metrics = compat.compile_metrics(model)
            if metrics is not None:
                metrics.update_state(y, y_pred, sample_weight)

    for metric in model.metrics:
        metric.reset_state()
    with distributed.global_metrics(model.metrics):
        train_steps.update_steps(model, chunks, steps, update_metrics)


def _validation_step(model, batches, _y, _sample_weight):
    """The metrics of the validation batches, as `evaluate` has them."""
    import torch

    for metric in model.metrics:
        metric.reset_state()
    with torch.no_grad(), distributed.global_metrics(model.metrics):
        for batch in batches:
            model.test_step(batch)
