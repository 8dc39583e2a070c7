"""Data-parallel Rprop on the engines Keras has, against one-device training.

Rprop needs the full-batch gradient and, for iRprop+, the full-batch loss.
Data-parallel training must hand it exactly those, whatever the number of
devices: every variant trained for 20 full-batch steps on 4 (or 2) replicas
must end with the weights of the same training on one device, and the loss
iRprop+ compares must be the loss of the whole data set, recomputed here in
float64 NumPy from the weights the last step started from.

The devices have to be configured before the backend starts, so each
configuration runs in a child process (`tests/distributed/`): JAX
`DataParallel` and TF `MirroredStrategy` on 4 CPU devices, and TF
`MultiWorkerMirroredStrategy` with 2 worker processes on 127.0.0.1. The JAX
child runs in the JAX pass of the suite and the TF children in the TensorFlow
pass; PyTorch has no Keras distribution engine, and its pass runs what a
PyTorch user does instead: accumulate the full-batch gradient in chunks.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_rprop

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "distributed" / "train_data_parallel.py"
# Generous for a 2-core CI machine; a child that hangs fails the test.
TIMEOUT = 300


def _child_environment():
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_children(argument_lists, output):
    """Runs the children together, bounded in time; always reaps them."""
    processes = []
    try:
        for arguments in argument_lists:
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(CHILD), *arguments],
                    env=_child_environment(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        logs = []
        for process in processes:
            log, _ = process.communicate(timeout=TIMEOUT)
            logs.append(log)
        for process, log in zip(processes, logs):
            assert process.returncode == 0, log[-5000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    with open(output) as file:
        return json.load(file)


def _check(results, replicas):
    assert results["replicas"] == replicas
    single, distributed = results["single"], results["distributed"]
    assert set(distributed) == set(keras_rprop.VARIANTS) | {
        "irprop+ accumulated"
    }
    for name, run in distributed.items():
        reference = single[name]
        for got, expected in zip(run["weights"], reference["weights"]):
            np.testing.assert_allclose(
                got, expected, rtol=1e-5, atol=1e-6, err_msg=name
            )
        # Training happened (the comparison above is not between two
        # untouched models).
        assert run["loss_before_last_update"] < 0.9 * results["initial_loss"]
        scalars = run["scalars"]
        # The loss the optimizer holds is the loss of all the data at the
        # weights the last update started from, not one replica's share.
        np.testing.assert_allclose(
            scalars["previous_loss"],
            run["loss_before_last_update"],
            rtol=2e-5,
            err_msg=name,
        )
        np.testing.assert_allclose(
            scalars["current_loss"], scalars["previous_loss"], rtol=1e-6
        )
        assert scalars["accumulated_loss"] == 0.0, name


@pytest.mark.skipif(
    BACKEND != "jax",
    reason="the JAX engine is tested in the JAX pass of the suite",
)
def test_jax_data_parallel_matches_one_device(tmp_path):
    output = tmp_path / "results.json"
    results = _run_children([["jax_data_parallel", str(output)]], output)
    _check(results, replicas=4)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.distribute is tested in the TensorFlow pass of the suite",
)
def test_tf_mirrored_strategy_matches_one_device(tmp_path):
    output = tmp_path / "results.json"
    results = _run_children([["tf_mirrored", str(output)]], output)
    _check(results, replicas=4)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.distribute is tested in the TensorFlow pass of the suite",
)
def test_tf_multi_worker_mirrored_strategy_matches_one_device(tmp_path):
    output = tmp_path / "results.json"
    ports = [str(port) for port in _free_ports(2)]
    results = _run_children(
        [
            ["tf_multi_worker", str(output), str(worker), *ports]
            for worker in range(2)
        ],
        output,
    )
    _check(results, replicas=2)


# The same full batch repeated, one step per batch: not mini-batches.
@pytest.mark.filterwarnings("ignore::keras_rprop.MiniBatchWarning")
@pytest.mark.parametrize("variant", keras_rprop.VARIANTS)
def test_accumulated_chunks_match_the_full_batch(variant):
    """What a PyTorch user does when the data outgrows one device.

    Keras has no distribution engine for PyTorch. The full-batch gradient
    and loss are the means over equal chunks, which
    `gradient_accumulation_steps` computes on one device, one chunk at a
    time; Rprop then takes exactly the full-batch steps.
    """
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = np.sin(x @ rng.normal(size=(4, 1))).astype("float32")
    initial = [
        rng.normal(size=(4, 3)).astype("float32"),
        np.zeros(3, "float32"),
        rng.normal(size=(3, 1)).astype("float32"),
        np.zeros(1, "float32"),
    ]
    steps, chunks = 10, 4

    def train(batch_size, **arguments):
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(3, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        model.set_weights(initial)
        optimizer = keras_rprop.Rprop(variant, **arguments)
        model.compile(optimizer=optimizer, loss="mse")
        keras_rprop.enable_loss(model)
        repeats = steps
        model.fit(
            np.tile(x, (repeats, 1)),
            np.tile(y, (repeats, 1)),
            batch_size=batch_size,
            shuffle=False,
            verbose=0,
        )
        scalars = {
            v.name: float(keras.ops.convert_to_numpy(v))
            for v in optimizer.variables
            if len(v.shape) == 0
        }
        return model.get_weights(), scalars

    full, full_scalars = train(64)
    chunked, chunked_scalars = train(16, gradient_accumulation_steps=chunks)
    assert not np.allclose(full[0], initial[0])
    for got, expected in zip(chunked, full):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        chunked_scalars["previous_loss"],
        full_scalars["previous_loss"],
        rtol=1e-5,
    )
    assert chunked_scalars["accumulated_loss"] == 0.0
