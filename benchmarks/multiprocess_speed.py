"""Epochs per second of `fit_full_batch` on 1, 2 and 4 processes.

Every process trains on its shard of one data set (200,000 samples, an MLP
whose gradient dominates the step), through each backend's multi-process
engine, as `docs/distributed.md` shows: `torch.distributed` (gloo),
multi-process JAX with `DataParallel`, TensorFlow's
`MultiWorkerMirroredStrategy`. All processes run on 127.0.0.1. Process 0
reports the epochs per second of the timed call (after a warm-up call).

    python benchmarks/multiprocess_speed.py [--quick] [--backends jax,torch]

`--quick` trains a small data set for a few epochs: a smoke test of the
script, not a measurement.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")
PROCESSES = (1, 2, 4)
TIMEOUT = 1800


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


def worker(backend, rank, processes, ports, samples, epochs, output):
    """One process: set up the engine, train its shard, time the epochs."""
    os.environ["KERAS_BACKEND"] = backend
    strategy = None
    if processes > 1 and backend == "tensorflow":
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": rank},
            }
        )
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif processes > 1 and backend == "jax":
        import keras

        keras.distribution.initialize(
            f"127.0.0.1:{ports[0]}", num_processes=processes, process_id=rank
        )
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=keras.distribution.list_devices(),
                auto_shard_dataset=False,
            )
        )
    elif processes > 1:
        import torch.distributed

        torch.distributed.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{ports[0]}",
            rank=rank,
            world_size=processes,
        )
    import contextlib

    import keras
    import numpy as np

    import keras_rprop

    # Each process makes only its own shard of the data set.
    bounds = np.linspace(0, samples, processes + 1).astype(int)
    local = bounds[rank + 1] - bounds[rank]
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(local, 32)).astype("float32")
    y = np.sin(x[:, :1] + x[:, 1:2] * x[:, 2:3]).astype("float32")
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((32,)),
                keras.layers.Dense(256, activation="tanh"),
                keras.layers.Dense(256, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    # The warm-up call has the timed call's epochs: JAX compiles one loop
    # per epoch count (rounded up to a power of two).
    keras_rprop.fit_full_batch(model, x, y, epochs=epochs, verbose=0)
    began = time.perf_counter()
    keras_rprop.fit_full_batch(model, x, y, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - began
    if rank == 0:
        with open(output, "w") as file:
            json.dump({"epochs_per_second": epochs / seconds}, file)


def measure(backend, processes, samples, epochs):
    """Runs `processes` workers; returns process 0's epochs per second."""
    ports = ",".join(str(p) for p in _free_ports(processes))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.pop("TF_CONFIG", None)
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory() as directory:
        output = os.path.join(directory, "result.json")
        children = []
        try:
            for rank in range(processes):
                children.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--worker",
                            backend,
                            str(rank),
                            str(processes),
                            ports,
                            str(samples),
                            str(epochs),
                            output,
                        ],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
            for child in children:
                log, _ = child.communicate(timeout=TIMEOUT)
                if child.returncode != 0:
                    raise RuntimeError(
                        f"{backend}, {processes} processes failed:\n"
                        f"{log[-3000:]}"
                    )
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
        with open(output) as file:
            return json.load(file)["epochs_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", nargs=7)
    args = parser.parse_args()
    if args.worker:
        backend, rank, processes, ports, samples, epochs, output = args.worker
        worker(
            backend,
            int(rank),
            int(processes),
            [int(p) for p in ports.split(",")],
            int(samples),
            int(epochs),
            output,
        )
        return
    samples, epochs = (4_000, 3) if args.quick else (200_000, 20)
    print(f"{samples} samples, {epochs} timed epochs, MLP 32-256-256-1")
    print("| Backend | Processes | Epochs/s | vs 1 process |")
    print("|---|---|---|---|")
    for backend in args.backends.split(","):
        single = None
        for processes in PROCESSES:
            rate = measure(backend, processes, samples, epochs)
            single = single or rate
            print(
                f"| {backend} | {processes} | {rate:.2f} | "
                f"{rate / single:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
