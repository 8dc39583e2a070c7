"""Fits a small network with iRprop+, saves it, loads it and trains on.

The example of the README, complete; run it from any folder (it writes
`model.keras` there), on the backend of your choice:

    python examples/quickstart.py
    KERAS_BACKEND=jax python examples/quickstart.py

It prints the training loss (mean squared error) of the last epoch of each
part. The seed fixes the data and the initial weights; each backend draws
its own initial weights from it, so the losses differ a little between
backends.
"""

import keras
import numpy as np

import keras_rprop

keras.utils.set_random_seed(0)  # the same data and initial weights each run
x = np.random.rand(500, 8).astype("float32")
y = np.sin(x.sum(axis=1, keepdims=True))

model = keras.Sequential(
    [
        keras.Input((8,)),
        keras.layers.Dense(32, activation="tanh"),
        keras.layers.Dense(1),
    ]
)
model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
# The whole training set at every step, the loss handed to iRprop+.
history = keras_rprop.fit_full_batch(model, x, y, epochs=300, verbose=0)
loss = history.history["loss"][-1]
print(f"loss after {len(history.epoch)} epochs: {loss:.1e}")
model.save("model.keras")

model = keras.models.load_model("model.keras")  # optimizer state included
history = keras_rprop.fit_full_batch(model, x, y, epochs=100, verbose=0)
loss = history.history["loss"][-1]
print(f"loss after {len(history.epoch)} more epochs: {loss:.1e}")
