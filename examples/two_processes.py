"""Full-batch training in two processes, each holding half of the data.

Both processes run this script, with the same backend and port and their
own rank (0 for the process that coordinates). Launch both from one shell,
on 127.0.0.1:

    for rank in 0 1; do
        python examples/two_processes.py torch $rank --port 12355 &
    done; wait

with `torch` (`torch.distributed`, gloo), `jax` (multi-process JAX) or
`tensorflow` (`MultiWorkerMirroredStrategy`, whose worker RANK listens on
PORT + RANK, so it takes ports 12355 and 12356). Each step of
`keras_rprop.fit_full_batch` uses the gradient and the loss of both halves
together, so both processes end with the weights of one process trained on
all the data, and print its loss (of all the data), on PyTorch:

    process 0: 250 of 500 samples, loss after 100 epochs: 4.623e-02
    process 1: 250 of 500 samples, loss after 100 epochs: 4.623e-02

(the order of the lines may vary; each backend draws its own initial
weights, so the loss differs between backends). On several machines,
replace 127.0.0.1 by the address of process 0 (TensorFlow: of each
worker).
"""

import argparse
import contextlib
import datetime
import json
import os

import numpy as np

PROCESSES = 2
EPOCHS = 100
# Seconds a process waits for the other before its step fails.
TIMEOUT = 60


def parse_args():
    """The backend, the rank and the port, from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backend", choices=("tensorflow", "jax", "torch"))
    parser.add_argument("rank", type=int, choices=range(PROCESSES))
    parser.add_argument(
        "--port",
        type=int,
        default=12355,
        help="port of process 0 on 127.0.0.1 (TensorFlow: PORT + RANK)",
    )
    return parser.parse_args()


def connect(backend, rank, port):
    """Joins the processes; runs before Keras builds anything.

    Returns:
        The `tf.distribute` strategy under which to build the model on
        TensorFlow, else `None`.
    """
    if backend == "tensorflow":
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {
                    "worker": [
                        f"127.0.0.1:{port + i}" for i in range(PROCESSES)
                    ]
                },
                "task": {"type": "worker", "index": rank},
            }
        )
        import tensorflow as tf

        # The strategy comes before any other TensorFlow operation.
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=TIMEOUT
            )
        )
    if backend == "jax":
        import keras

        keras.distribution.initialize(
            f"127.0.0.1:{port}", num_processes=PROCESSES, process_id=rank
        )
        # Each process passes its own shard: no sharding of the input.
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(
                devices=keras.distribution.list_devices(),
                auto_shard_dataset=False,
            )
        )
        return None
    import torch.distributed

    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=PROCESSES,
        timeout=datetime.timedelta(seconds=TIMEOUT),
    )
    return None


def data():
    """All the data; each process keeps its own shard of it."""
    rng = np.random.default_rng(0)
    x = rng.random((500, 8), dtype="float32")
    y = np.sin(x.sum(axis=1, keepdims=True))
    return x, y


def make_model():
    """The network, built from seeded initial weights."""
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


def main():
    args = parse_args()
    # Keras reads the backend once, when it is first imported.
    os.environ["KERAS_BACKEND"] = args.backend
    strategy = connect(args.backend, args.rank, args.port)

    import keras_rprop

    x, y = data()
    x_local, y_local = x[args.rank :: PROCESSES], y[args.rank :: PROCESSES]
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = make_model()
        model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    history = keras_rprop.fit_full_batch(
        model, x_local, y_local, epochs=EPOCHS, verbose=0
    )
    # The logged loss is that of all the data, the same in both processes.
    print(
        f"process {args.rank}: {len(x_local)} of {len(x)} samples, "
        f"loss after {len(history.epoch)} epochs: "
        f"{history.history['loss'][-1]:.3e}"
    )


if __name__ == "__main__":
    main()
