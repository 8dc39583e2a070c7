"""Trains a `tf_keras` model with every variant, on one device and mirrored.

Run as a child process by `tests/test_tf_keras.py`: the logical devices must
be configured before TensorFlow starts, which a test process cannot redo.

    python tf_keras_mirrored.py OUTPUT.json

Each variant trains twice on one device and twice under a `MirroredStrategy`
over 2 logical CPU devices: with `model.fit` (full batch) and with a custom
`tf.function` loop calling `strategy.run` and `apply_gradients(loss=)`. The
JSON written holds, for each run, the final weights, the losses the optimizer
holds and the full-data loss (float64 NumPy) at the weights the last update
started from, which is the loss iRprop+ must compare.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensorflow as tf  # noqa: E402

REPLICAS = 2
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
)

import tf_keras  # noqa: E402
from reference import VARIANTS  # noqa: E402
from reference import make_mlp_params  # noqa: E402
from reference import make_regression_data  # noqa: E402
from reference import mlp_loss_and_grads  # noqa: E402

import keras_rprop.tf_keras  # noqa: E402

OUTPUT = sys.argv[1]
# The batch size each replica of the mirrored custom loop sees, recorded
# when traced.
BATCH_SIZES = set()
STEPS = 15
X, Y = make_regression_data(n=32)
X, Y = X.astype("float32"), Y.astype("float32")
INITIAL = [p.astype("float32") for p in make_mlp_params()]


def make_model():
    model = tf_keras.Sequential(
        [
            tf_keras.Input((3,)),
            tf_keras.layers.Dense(6, activation="tanh"),
            tf_keras.layers.Dense(1),
        ]
    )
    model.set_weights(INITIAL)
    return model


def weights_of(model):
    return [w.numpy().astype("float64") for w in model.weights]


def train_fit(variant):
    model = make_model()
    model.compile(optimizer=keras_rprop.tf_keras.Rprop(variant), loss="mse")
    model.fit(X, Y, batch_size=len(X), epochs=STEPS - 1, verbose=0)
    before_last = weights_of(model)
    model.fit(X, Y, batch_size=len(X), epochs=1, verbose=0)
    return model, model.optimizer, before_last


def train_loop(variant, strategy):
    model = make_model()
    optimizer = keras_rprop.tf_keras.Rprop(variant)
    global_batch = len(X)

    def replica_step(x, y):
        if tf.distribute.get_replica_context().num_replicas_in_sync > 1:
            BATCH_SIZES.add(int(x.shape[0]))
        with tf.GradientTape() as tape:
            error = model(x, training=True) - y
            # This replica's share of the mean over the global batch.
            loss = tf.reduce_sum(error**2) / global_batch
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(
            zip(grads, model.trainable_variables), loss=loss
        )

    if strategy is None:
        step = tf.function(replica_step)
        for _ in range(STEPS - 1):
            step(X, Y)
        before_last = weights_of(model)
        step(X, Y)
        return model, optimizer, before_last
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(global_batch)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    for _ in range(STEPS - 1):
        step(batch)
    before_last = weights_of(model)
    step(batch)
    return model, optimizer, before_last


def summary(model, optimizer, before_last):
    return {
        "variable_types": sorted(
            {type(v).__name__ for v in model.weights + optimizer.variables}
        ),
        "weights": [w.tolist() for w in weights_of(model)],
        "previous_loss": float(optimizer._previous_loss.numpy()),
        "current_loss": float(optimizer._current_loss.numpy()),
        "loss_before_last_update": float(
            mlp_loss_and_grads(before_last, X, Y)[0]
        ),
    }


strategy = tf.distribute.MirroredStrategy(
    [f"/cpu:{i}" for i in range(REPLICAS)]
)
results = {"replicas": strategy.num_replicas_in_sync, "runs": {}}
initial_loss = mlp_loss_and_grads([p.astype("float64") for p in INITIAL], X, Y)[
    0
]
results["initial_loss"] = float(initial_loss)
for variant in VARIANTS:
    results["runs"][f"{variant} fit single"] = summary(*train_fit(variant))
    with strategy.scope():
        results["runs"][f"{variant} fit mirrored"] = summary(
            *train_fit(variant)
        )
    results["runs"][f"{variant} loop single"] = summary(
        *train_loop(variant, None)
    )
    with strategy.scope():
        results["runs"][f"{variant} loop mirrored"] = summary(
            *train_loop(variant, strategy)
        )

results["loop_batch_sizes"] = sorted(BATCH_SIZES)
with open(OUTPUT, "w") as file:
    json.dump(results, file)
