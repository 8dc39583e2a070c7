"""The engine's epochs under TensorFlow's `MultiWorkerMirroredStrategy`."""

import math

from keras_rprop.training import distributed
from keras_rprop.training import train_steps
from keras_rprop.training.runners import common


class TensorFlowMultiWorkerRunner:
    """The engine's epochs under `MultiWorkerMirroredStrategy`.

    Every worker runs each epoch in its replica (`strategy.run`), where
    `global_sums` sums the shards. One compiled call per epoch: TensorFlow
    refuses a collective inside a loop of a replica's function, so the
    epochs are a Python loop. Same interface as the engine's runners.

    Args:
        model: The compiled model, built under the strategy.
        steps: Optimizer steps per epoch.
    """

    def __init__(self, model, steps):
        import tensorflow as tf

        self.model = model
        self.steps = steps
        self.strategy = distributed.tf_multi_worker_strategy(model)
        self.data = None
        self.function = tf.function(self._epoch, autograph=False)

    def _epoch(self, data):
        def replica_epoch(x, y, sample_weight):
            model = self.model
            for metric in model.metrics:
                metric.reset_state()
            with distributed.global_metrics(model.metrics):
                train_steps.update_steps(
                    model,
                    [(x, y, sample_weight)],
                    self.steps,
                    model.compute_metrics,
                )
            return model.get_metrics_result()

        logs = self.strategy.run(replica_epoch, args=data[0])
        return {
            key: self.strategy.experimental_local_results(value)[0]
            for key, value in logs.items()
        }

    # Validation runs after each epoch, through `model.evaluate`.
    validates = False

    def run(
        self,
        epochs,
        goal=None,
        stop_on_nan=False,
        snapshots=False,
        validation=None,
        validate=None,
    ):
        logs_by_epoch = []
        weights = [] if snapshots else None
        for _ in range(epochs):
            logs = {
                key: float(value)
                for key, value in self.function(self.data).items()
            }
            logs_by_epoch.append(logs)
            if snapshots:
                weights.append(self.model.get_weights())
            if (goal is not None and logs["loss"] <= goal) or (
                stop_on_nan and not math.isfinite(logs["loss"])
            ):
                break
        return common.Result(logs_by_epoch, weights)


def runner_class(model):
    """The engine's runner for a training across processes, else `None`."""
    if distributed.tf_multi_worker_strategy(model) is not None:
        return TensorFlowMultiWorkerRunner
    return None
