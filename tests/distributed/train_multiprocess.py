"""One process of a full-batch training spread over several processes.

Run by `tests/test_multiprocess.py`, one child per process, all on
127.0.0.1:

    python train_multiprocess.py BACKEND MODE RANK PROCESSES PORTS OUTDIR

BACKEND is `tensorflow` (`MultiWorkerMirroredStrategy`), `jax` (multi-process
JAX with `DataParallel`) or `torch` (`torch.distributed` with gloo). PORTS
are free ports chosen by the test, one per process, comma-separated (JAX and
PyTorch use the first: the coordinator's). Each process holds its own shard
of the data; the shards differ in size. MODE is:

- `train`: every variant, 20 epochs of `fit_full_batch` on the shard, and
  the other runs of `runs`; writes `OUTDIR/rank{RANK}.json` with the
  weights, the optimizer variables and the History of each.
  Processes other than 0 start from other weights, which the training must
  replace with process 0's.
- `die`: trains for a long time; the last process kills itself with SIGKILL
  after a few epochs. The others must fail with a clear error; what they
  raised goes to `OUTDIR/rank{RANK}.json`.
- `interrupt` / `resume`: iRprop+ with `BackupAndRestore`; `interrupt` stops
  every process with an exception after epoch 7 (as a crash of all of them
  would), `resume` starts again from the backups and finishes the 20
  epochs, writing the weights as `train` does.

The data, the model and the shards are defined here and imported by the
test, which trains the same model on all the data in one process.
"""

import json
import os
import sys
import time

import numpy as np

SAMPLES = 64
FEATURES = 4
EPOCHS = 20
INTERRUPTED_AFTER = 7
# Seconds a process waits for a lost peer before the collective fails.
PEER_TIMEOUT = 20


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = np.sin(x @ rng.normal(size=(FEATURES, 1))).astype("float32")
    return x, y


def initial_weights(rank=0):
    rng = np.random.default_rng(1)
    weights = [
        rng.normal(size=(FEATURES, 3)).astype("float32"),
        np.zeros(3, "float32"),
        rng.normal(size=(3, 1)).astype("float32"),
        np.zeros(1, "float32"),
    ]
    # Other processes start elsewhere: training must start from process 0's.
    return [w + np.float32(0.5 * rank) for w in weights]


def shard_bounds(processes):
    """Unequal shards: process i holds a share proportional to i + 1."""
    shares = np.arange(1, processes + 1)
    ends = np.round(np.cumsum(shares) / shares.sum() * SAMPLES).astype(int)
    starts = np.concatenate([[0], ends[:-1]])
    return list(zip(starts.tolist(), ends.tolist()))


def build_model(keras, keras_rprop, variant, rank=0, regularized=False):
    """The model of every run; `regularized` adds an L2 term and metrics."""
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(
                3,
                activation="tanh",
                kernel_regularizer=(
                    keras.regularizers.L2(0.05) if regularized else None
                ),
            ),
            keras.layers.Dense(1),
        ]
    )
    if keras.backend.backend() == "jax":
        # JAX itself refuses to assign a variable other values in other
        # processes (its variables are global arrays).
        rank = 0
    model.set_weights(initial_weights(rank))
    metrics, weighted_metrics = None, None
    if regularized:
        weighted_metrics = ["mae"]
        if keras.backend.backend() != "jax":
            # On JAX the padding of the shards counts in unweighted metrics.
            metrics = ["mse"]
    model.compile(
        optimizer=keras_rprop.Rprop(variant),
        loss="mse",
        metrics=metrics,
        weighted_metrics=weighted_metrics,
    )
    return model


def runs(keras, keras_rprop):
    """name -> (variant, extra arguments of `fit_full_batch`, options).

    Options: `regularized` (see `build_model`); `validation` validates on
    the training data (each process's shard); `fit` trains with
    `enable_loss` and `model.fit` instead, one batch per process and epoch,
    on the unequal shards (`"shards"`) or on equal ones (`"equal"`).
    """
    cases = {v: (v, {}, {}) for v in keras_rprop.VARIANTS}
    backend = keras.backend.backend()
    if backend != "tensorflow":
        # Each process's shard in chunks: the local sums of the chunks are
        # summed over the processes. (`MultiWorkerMirroredStrategy` takes
        # each shard as one batch.)
        cases["irprop+ chunked"] = ("irprop+", {"chunk_size": 10}, {})
    # Several optimizer steps per epoch, only the last feeding the logs.
    cases["irprop+ steps"] = ("irprop+", {"steps_per_epoch": 4}, {})
    # The regularization term counts once, however the data is split, and
    # the logged loss and metric are those of all the data.
    cases["irprop+ regularized"] = ("irprop+", {}, {"regularized": True})
    # Every process takes the same decision to stop, on the global loss:
    # in the fast loop (`LossGoal`) and epoch by epoch (`EarlyStopping`).
    cases["irprop+ goal"] = (
        "irprop+",
        {"callbacks": [keras_rprop.LossGoal(0.48)]},
        {},
    )
    cases["irprop+ early stopping"] = (
        "irprop+",
        {
            "callbacks": [
                keras.callbacks.EarlyStopping(
                    monitor="loss", min_delta=0.025, patience=3
                )
            ]
        },
        {},
    )
    if backend == "torch":
        # Each process validates on its shard; the logs are those of all.
        cases["irprop+ validation"] = ("irprop+", {}, {"validation": True})
    # `model.fit` fails under `MultiWorkerMirroredStrategy`; JAX's global
    # batch needs local batches of one size.
    if backend == "torch":
        cases["irprop+ fit"] = ("irprop+", {}, {"fit": "shards"})
    if backend == "jax":
        cases["irprop+ fit"] = ("irprop+", {}, {"fit": "equal"})
    return cases


def state(keras, model):
    """The weights and the optimizer variables (in order), as lists."""
    return {
        "weights": [np.asarray(w).tolist() for w in model.get_weights()],
        "optimizer": [
            [v.name, np.asarray(keras.ops.convert_to_numpy(v)).tolist()]
            for v in model.optimizer.variables
        ],
    }


def _setup(backend, mode, rank, processes, ports):
    """What a user writes in each process before building the model."""
    os.environ["KERAS_BACKEND"] = backend
    if backend == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                "task": {"type": "worker", "index": rank},
            }
        )
        import tensorflow as tf

        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=PEER_TIMEOUT
            )
        )
    if backend == "jax":
        os.environ["JAX_PLATFORMS"] = "cpu"
        import keras

        if mode == "die":
            # JAX's own call, for its timeouts: after the error, a process
            # whose peer died waits for the peer's heartbeat at exit.
            import jax

            jax.distributed.initialize(
                f"127.0.0.1:{ports[0]}",
                num_processes=processes,
                process_id=rank,
                heartbeat_timeout_seconds=PEER_TIMEOUT,
            )
            # What `keras.distribution.initialize` does besides: one seed
            # in every process, for the same initial weights.
            keras.utils.set_random_seed(0)
        else:
            keras.distribution.initialize(
                f"127.0.0.1:{ports[0]}",
                num_processes=processes,
                process_id=rank,
            )
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=keras.distribution.list_devices(),
                auto_shard_dataset=False,
            )
        )
        return None
    import datetime

    import torch.distributed

    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{ports[0]}",
        rank=rank,
        world_size=processes,
        timeout=datetime.timedelta(seconds=PEER_TIMEOUT),
    )
    return None


def main():
    backend, mode = sys.argv[1], sys.argv[2]
    rank, processes = int(sys.argv[3]), int(sys.argv[4])
    ports = [int(p) for p in sys.argv[5].split(",")]
    outdir = sys.argv[6]
    strategy = _setup(backend, mode, rank, processes, ports)

    import contextlib

    import keras

    import keras_rprop

    x, y = data()
    start, end = shard_bounds(processes)[rank]
    x, y = x[start:end], y[start:end]

    def scope():
        return strategy.scope() if strategy else contextlib.nullcontext()

    result = {"rank": rank, "samples": end - start}

    if mode == "train":
        for name, (variant, arguments, options) in runs(
            keras, keras_rprop
        ).items():
            with scope():
                model = build_model(
                    keras,
                    keras_rprop,
                    variant,
                    rank,
                    regularized=options.get("regularized", False),
                )
            if "fit" in options:
                fit_x, fit_y = x, y
                if options["fit"] == "equal":
                    size = SAMPLES // processes
                    fit_x, fit_y = data()
                    fit_x = fit_x[rank * size : (rank + 1) * size]
                    fit_y = fit_y[rank * size : (rank + 1) * size]
                keras_rprop.enable_loss(model)
                history = model.fit(
                    fit_x,
                    fit_y,
                    batch_size=len(fit_x),
                    epochs=EPOCHS,
                    shuffle=False,
                    verbose=0,
                )
            else:
                if options.get("validation"):
                    arguments = {**arguments, "validation_data": (x, y)}
                history = keras_rprop.fit_full_batch(
                    model, x, y, epochs=EPOCHS, verbose=0, **arguments
                )
            result[name] = state(keras, model)
            result[name]["history"] = history.history
        if backend == "jax":
            # The split of a padded shard would be wrong: refused.
            try:
                keras_rprop.fit_full_batch(
                    model, x, y, epochs=1, verbose=0, validation_split=0.25
                )
            except ValueError as error:
                result["validation_split_error"] = str(error)

    elif mode == "die":

        class Die(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 2 and rank == processes - 1:
                    os.kill(os.getpid(), 9)

        with scope():
            model = build_model(keras, keras_rprop, "irprop+", rank)
        began = time.monotonic()
        try:
            keras_rprop.fit_full_batch(
                model, x, y, epochs=10**6, verbose=0, callbacks=[Die()]
            )
        except Exception as error:
            result["error"] = f"{type(error).__name__}: {error}"
            result["seconds"] = time.monotonic() - began
            _write(outdir, rank, result)
            raise
        result["error"] = None

    elif mode in ("interrupt", "resume"):

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == INTERRUPTED_AFTER:
                    raise RuntimeError("interrupted on purpose")

        # Each process backs up to its own directory.
        backup = keras.callbacks.BackupAndRestore(
            os.path.join(outdir, f"backup{rank}")
        )
        callbacks = [backup]
        if mode == "interrupt":
            callbacks.append(Interrupt())
        with scope():
            model = build_model(keras, keras_rprop, "irprop+", rank)
        try:
            keras_rprop.fit_full_batch(
                model, x, y, epochs=EPOCHS, verbose=0, callbacks=callbacks
            )
        except RuntimeError as error:
            if "interrupted on purpose" not in str(error):
                raise
            result["interrupted"] = True
        result["irprop+"] = state(keras, model)
    else:
        raise ValueError(f"Unknown mode: {mode!r}")
    _write(outdir, rank, result)


def _write(outdir, rank, result):
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main()
