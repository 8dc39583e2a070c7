"""Trains every Rprop variant with a backup, to be killed and resumed.

Run as a child process by `tests/test_resume.py`:

    python train_and_crash.py crash WORKDIR
    python train_and_crash.py resume WORKDIR

`crash` trains one model per variant and per way of saving (a
`keras.callbacks.BackupAndRestore` directory, or a `.keras` file written by
`keras.callbacks.ModelCheckpoint`, both in `model.fit`, or a
`BackupAndRestore` directory in `keras_rprop.fit_full_batch`), all at once
in threads. Each one stops
inside `fit`, after the step of epoch `KILL_AFTER + 1` but before that
epoch's save, so the last save on disk is one epoch behind the weights in
memory. When all are there the process writes `WORKDIR/ready` and waits to
be killed with SIGKILL. `resume` restarts every run from what is on disk,
finishes the `EPOCHS` epochs and writes the results to `WORKDIR/*.npz`.

`train_uninterrupted` is the same training without the crash; the test
imports it to make the reference in its own process.
"""

import os
import sys
import threading
import time
import traceback

import numpy as np

EPOCHS = 8
KILL_AFTER = 3  # The last epoch saved before the kill (0-based).
# "engine": `keras_rprop.fit_full_batch` with a `BackupAndRestore`.
WAYS = ("backup", "checkpoint", "engine")


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = np.sin(x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    initial = [
        rng.normal(size=(3, 4)).astype("float32"),
        np.zeros(4, "float32"),
        rng.normal(size=(4, 1)).astype("float32"),
        np.zeros(1, "float32"),
    ]
    return x, y, initial


def build(variant):
    import keras

    import keras_rprop

    _, _, initial = data()
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.set_weights(initial)
    model.compile(optimizer=keras_rprop.Rprop(variant), loss="mse")
    keras_rprop.enable_loss(model)
    return model


def results(model):
    import keras

    return {
        **{f"weight_{i}": w for i, w in enumerate(model.get_weights())},
        # By position, as in checkpoints: the paths hold layer names that
        # differ from one process to the other.
        **{
            f"optimizer_{i}_{v.name.split('_')[-1]}": (
                keras.ops.convert_to_numpy(v)
            )
            for i, v in enumerate(model.optimizer.variables)
        },
    }


def train_uninterrupted(variant):
    """Returns the results and the loss of every epoch."""
    x, y, _ = data()
    model = build(variant)
    history = model.fit(x, y, batch_size=len(x), epochs=EPOCHS, verbose=0)
    return results(model), history.history["loss"]


def _paths(workdir, way, variant):
    name = variant.replace("+", "plus").replace("-", "minus")
    return (
        os.path.join(workdir, f"{way}_{name}"),
        os.path.join(workdir, f"{way}_{name}.npz"),
    )


def crash(workdir):
    import keras

    import keras_rprop

    x, y, _ = data()
    runs = [(way, variant) for way in WAYS for variant in keras_rprop.VARIANTS]
    arrived = threading.Barrier(len(runs) + 1)

    class StopBeforeSaving(keras.callbacks.Callback):
        """Blocks before the save of epoch `KILL_AFTER + 1` (listed first)."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == KILL_AFTER + 1:
                arrived.wait()
                while True:
                    time.sleep(60)

    def train(way, variant):
        path, _ = _paths(workdir, way, variant)
        model = build(variant)
        if way == "engine":
            keras_rprop.fit_full_batch(
                model,
                x,
                y,
                epochs=EPOCHS,
                verbose=0,
                callbacks=[
                    StopBeforeSaving(),
                    keras.callbacks.BackupAndRestore(path),
                ],
            )
            return
        if way == "backup":
            saver = keras.callbacks.BackupAndRestore(path)
        else:
            saver = keras.callbacks.ModelCheckpoint(path + ".keras")
        model.fit(
            x,
            y,
            batch_size=len(x),
            epochs=EPOCHS,
            verbose=0,
            callbacks=[StopBeforeSaving(), saver],
        )

    def train_or_exit(way, variant):
        # A thread that fails would leave the others waiting at the barrier
        # until the test's time limit: end the process, with the traceback.
        try:
            train(way, variant)
        except BaseException:
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)

    for way, variant in runs:
        threading.Thread(
            target=train_or_exit, args=(way, variant), daemon=True
        ).start()
    arrived.wait()
    with open(os.path.join(workdir, "ready"), "w") as file:
        file.write(str(os.getpid()))
    while True:
        time.sleep(60)


def resume(workdir):
    import keras

    import keras_rprop

    x, y, _ = data()

    class Restored(keras.callbacks.Callback):
        """Reads the state restored by `BackupAndRestore` (listed after it)."""

        def on_train_begin(self, logs=None):
            self.state = _restored_state(self.model)

    for way in WAYS:
        for variant in keras_rprop.VARIANTS:
            path, output = _paths(workdir, way, variant)
            if way == "engine":
                model = build(variant)
                restored = Restored()
                keras_rprop.fit_full_batch(
                    model,
                    x,
                    y,
                    epochs=EPOCHS,
                    verbose=0,
                    callbacks=[
                        keras.callbacks.BackupAndRestore(path),
                        restored,
                    ],
                )
                state = restored.state
            elif way == "backup":
                model = build(variant)
                restored = Restored()
                model.fit(
                    x,
                    y,
                    batch_size=len(x),
                    epochs=EPOCHS,
                    verbose=0,
                    callbacks=[
                        keras.callbacks.BackupAndRestore(path),
                        restored,
                    ],
                )
                state = restored.state
            else:
                model = keras.models.load_model(path + ".keras")
                keras_rprop.enable_loss(model)
                state = _restored_state(model)
                model.fit(
                    x,
                    y,
                    batch_size=len(x),
                    epochs=EPOCHS,
                    # One full-batch step per epoch.
                    initial_epoch=int(state["restored_iterations"]),
                    verbose=0,
                )
            np.savez(output, **state, **results(model))


def _restored_state(model):
    import keras

    scalars = {
        v.name: keras.ops.convert_to_numpy(v)
        for v in model.optimizer.variables
        if v.name in ("iteration", "previous_loss")
    }
    return {
        "restored_iterations": scalars["iteration"],
        "restored_previous_loss": scalars["previous_loss"],
    }


if __name__ == "__main__":
    phase, workdir = sys.argv[1:3]
    {"crash": crash, "resume": resume}[phase](workdir)
