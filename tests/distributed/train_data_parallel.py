"""Trains a tiny model with every Rprop variant, on one device and in parallel.

Run as a child process by `tests/test_distributed.py`: the devices must be
configured before the backend starts, which a test process cannot redo.

    python train_data_parallel.py ENGINE OUTPUT.json [WORKER PORT0 PORT1]

ENGINE is `jax_data_parallel` (4 CPU devices), `tf_mirrored` (4 logical CPU
devices) or `tf_multi_worker` (2 worker processes on 127.0.0.1, one CPU
replica each; worker 0 writes the results). The JSON written holds, for
each run on one device and data-parallel, the final weights, the optimizer's
scalar variables and the full-data loss (in float64 NumPy) at the weights
the last update started from.
"""

import json
import os
import sys
import warnings

ENGINE = sys.argv[1]
OUTPUT = sys.argv[2]
REPLICAS = 4

if ENGINE == "jax_data_parallel":
    os.environ["KERAS_BACKEND"] = "jax"
    # Both runs on the CPU, also where a GPU would take the one-device run:
    # the same kernels, so that only the distribution differs.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={REPLICAS}"
    )
else:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if ENGINE == "tf_multi_worker":
        worker = int(sys.argv[3])
        ports = sys.argv[4:6]
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": worker},
            }
        )

import numpy as np  # noqa: E402

if ENGINE == "jax_data_parallel":
    import keras  # noqa: E402

    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == REPLICAS, devices
    strategy = None
else:
    import tensorflow as tf  # noqa: E402

    if ENGINE == "tf_mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
        )
        strategy = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(REPLICAS)]
        )
    else:
        # Must exist before any other TensorFlow op runs.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras  # noqa: E402

import keras_rprop  # noqa: E402

EPOCHS = 20
SAMPLES = 64

rng = np.random.default_rng(0)
X = rng.normal(size=(SAMPLES, 4)).astype("float32")
Y = np.sin(X @ rng.normal(size=(4, 1))).astype("float32")
INITIAL = [
    rng.normal(size=(4, 3)).astype("float32"),
    np.zeros(3, "float32"),
    rng.normal(size=(3, 1)).astype("float32"),
    np.zeros(1, "float32"),
]

# name -> (optimizer arguments, global batch size, run eagerly, updates)
RUNS = {
    variant: ({"variant": variant}, SAMPLES, False, EPOCHS)
    for variant in keras_rprop.VARIANTS
}
# The full-batch gradient accumulated over 2 chunks, which also checks that
# the accumulated loss is summed once over the replicas. Keras's gradient
# accumulation under tf.distribute only runs eagerly (its `cond` around the
# update cannot hold a cross-replica merge inside a `tf.function`, for any
# optimizer); few updates keep that slow path short.
RUNS["irprop+ accumulated"] = (
    {"variant": "irprop+", "gradient_accumulation_steps": 2},
    SAMPLES // 2,
    strategy is not None,
    5,
)


def full_data_loss(weights):
    w1, b1, w2, b2 = (np.asarray(w, "float64") for w in weights)
    prediction = np.tanh(X.astype("float64") @ w1 + b1) @ w2 + b2
    return float(np.mean((prediction - Y) ** 2))


class WeightsBeforeLastUpdate(keras.callbacks.Callback):
    """Keeps the weights the last update started from."""

    def __init__(self, first_batch_of_last_update):
        super().__init__()
        self.batch = first_batch_of_last_update

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            self.weights = [np.array(w) for w in self.model.get_weights()]


def build(arguments, run_eagerly):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )
    model.set_weights(INITIAL)
    optimizer = keras_rprop.Rprop(**arguments)
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=run_eagerly)
    keras_rprop.enable_loss(model)
    return model, optimizer


def train_in_custom_loop(model, optimizer, batch_size, run_eagerly, updates):
    """Data-parallel steps written with `strategy.run`, as TF documents them.

    Keras's `fit` fails under `MultiWorkerMirroredStrategy` in Keras 3.15
    (its symbolic build all-reduces a data batch that the collective
    strategy cannot convert), so the multi-worker run uses its own step. Each
    replica's loss is its share of the global mean, as in `fit`.
    """
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    dataset = (
        tf.data.Dataset.from_tensor_slices((X, Y))
        .batch(batch_size)
        .repeat(updates)
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    batches = strategy.experimental_distribute_dataset(
        dataset.with_options(options)
    )

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            prediction = model(x, training=True)
            loss = tf.nn.compute_average_loss(
                tf.reduce_mean(tf.square(prediction - y), axis=-1),
                global_batch_size=batch_size,
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables, loss=loss)

    def step(batch):
        strategy.run(replica_step, args=batch)

    if not run_eagerly:
        step = tf.function(step)
    weights = None
    for index, batch in enumerate(batches):
        if index == (SAMPLES // batch_size) * (updates - 1):
            weights = [np.array(w) for w in model.get_weights()]
        step(batch)
    return weights


def run(name, distributed):
    arguments, batch_size, run_eagerly, updates = RUNS[name]
    if distributed and strategy is not None:
        with strategy.scope():
            model, optimizer = build(arguments, run_eagerly)
    else:
        model, optimizer = build(arguments, run_eagerly)
    batches_per_update = SAMPLES // batch_size
    recorder = WeightsBeforeLastUpdate(batches_per_update * (updates - 1))
    if distributed and ENGINE == "tf_multi_worker":
        recorder.weights = train_in_custom_loop(
            model, optimizer, batch_size, run_eagerly, updates
        )
    else:
        # One epoch over the data repeated, one full batch per step: a new
        # distributed iterator per epoch would cost more than the training.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", keras_rprop.MiniBatchWarning)
            model.fit(
                np.tile(X, (updates, 1)),
                np.tile(Y, (updates, 1)),
                batch_size=batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[recorder],
            )
    scalars = {
        v.name: float(keras.ops.convert_to_numpy(v))
        for v in optimizer.variables
        if len(v.shape) == 0
    }
    return {
        "weights": [np.asarray(w).tolist() for w in model.get_weights()],
        "scalars": scalars,
        "loss_before_last_update": full_data_loss(recorder.weights),
        "iterations": int(keras.ops.convert_to_numpy(optimizer.iterations)),
    }


def main():
    results = {
        "single": {},
        "distributed": {},
        "initial_loss": full_data_loss(INITIAL),
    }
    if ENGINE == "jax_data_parallel":
        for name in RUNS:
            results["single"][name] = run(name, distributed=False)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        for name in RUNS:
            results["distributed"][name] = run(name, distributed=True)
        # Every variable is replicated on all the devices.
        model, _ = build({"variant": "irprop-"}, False)
        results["replicas"] = len(model.weights[0].value.sharding.device_set)
    else:
        for name in RUNS:
            results["distributed"][name] = run(name, distributed=True)
        results["replicas"] = strategy.num_replicas_in_sync
        if ENGINE == "tf_multi_worker" and int(sys.argv[3]) != 0:
            return
        for name in RUNS:
            results["single"][name] = run(name, distributed=False)
    with open(OUTPUT, "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main()
