"""`keras_rprop.fit_full_batch`: exact full-batch training, in memory and
from chunks.

23 samples in chunks of 5 leave a short last chunk of 3, which equal-weight
accumulation gets wrong.
"""

import math
import warnings

import keras
import numpy as np
import pytest

import keras_rprop
from tests import helpers

SAMPLES, CHUNK, EPOCHS = 23, 5, 20
L2 = 0.01


def make_data():
    return helpers.sine_data(SAMPLES)


def make_model(optimizer):
    model = helpers.tanh_model(l2=L2)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def flat_weights(model):
    return np.concatenate([w.ravel() for w in model.get_weights()])


def one_batch(optimizer_fn, epochs=EPOCHS):
    x, y = make_data()
    model = make_model(optimizer_fn())
    history = keras_rprop.fit_full_batch(model, x, y, epochs=epochs, verbose=0)
    return flat_weights(model), history.history["loss"]


def chunk_sources():
    """Builders of the same 23 samples in chunks of 5, one per data type."""
    x, y = make_data()
    starts = range(0, SAMPLES, CHUNK)

    def tf_dataset():
        # An extra on the JAX and PyTorch backends: the CI installs it.
        tf = pytest.importorskip("tensorflow")

        return tf.data.Dataset.from_tensor_slices((x, y)).batch(CHUNK), {}

    class Chunks(keras.utils.PyDataset):
        def __len__(self):
            return len(starts)

        def __getitem__(self, i):
            return (
                x[i * CHUNK : (i + 1) * CHUNK],
                y[i * CHUNK : (i + 1) * CHUNK],
            )

    def py_dataset():
        return Chunks(), {}

    def generator():
        def chunks():
            while True:
                for start in starts:
                    yield x[start : start + CHUNK], y[start : start + CHUNK]

        return chunks(), {"chunks_per_epoch": len(starts)}

    def data_loader():
        import torch

        data = torch.utils.data.TensorDataset(
            torch.from_numpy(x), torch.from_numpy(y)
        )
        return torch.utils.data.DataLoader(data, batch_size=CHUNK), {}

    def arrays():
        return (x, y), {"chunk_size": CHUNK}

    return {
        "arrays": arrays,
        "tf.data": tf_dataset,
        "PyDataset": py_dataset,
        "generator": generator,
        "DataLoader": data_loader,
    }


def chunked(optimizer_fn, source="arrays", epochs=EPOCHS):
    data, kwargs = chunk_sources()[source]()
    x, y = data if isinstance(data, tuple) else (data, None)
    model = make_model(optimizer_fn())
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=epochs, verbose=0, **kwargs
    )
    return flat_weights(model), history.history["loss"]


@pytest.mark.parametrize("variant", keras_rprop.VARIANTS)
def test_chunked_arrays_match_one_batch(variant):
    expected, expected_loss = one_batch(lambda: keras_rprop.Rprop(variant))
    weights, loss = chunked(lambda: keras_rprop.Rprop(variant))
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)


@pytest.fixture(scope="module")
def irprop_plus_one_batch():
    return one_batch(lambda: keras_rprop.Rprop("irprop+"))


@pytest.mark.parametrize(
    "source", ["tf.data", "PyDataset", "generator", "DataLoader"]
)
def test_chunk_sources_match_one_batch(source, irprop_plus_one_batch):
    expected, expected_loss = irprop_plus_one_batch
    weights, loss = chunked(lambda: keras_rprop.Rprop("irprop+"), source)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)


def test_chunked_gradient_is_the_full_batch_gradient():
    # Plain gradient descent moves by the gradient's magnitude, which Rprop
    # ignores: this checks the sample weighting of the chunks itself.
    def sgd():
        return keras.optimizers.SGD(learning_rate=0.5)

    expected, _ = one_batch(sgd, epochs=3)
    weights, _ = chunked(sgd, epochs=3)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    # Keras's own accumulation weighs the short last chunk like the others.
    x, y = make_data()
    model = make_model(
        keras.optimizers.SGD(
            learning_rate=0.5, gradient_accumulation_steps=math.ceil(23 / 5)
        )
    )
    model.fit(x, y, batch_size=CHUNK, epochs=3, shuffle=False, verbose=0)
    assert np.abs(flat_weights(model) - expected).max() > 1e-4


def test_chunked_loss_is_the_loss_of_all_samples():
    x, y = make_data()
    model = make_model(keras_rprop.Rprop("irprop+"))
    w1, b1, w2, b2 = model.get_weights()
    hidden = np.tanh(x.astype(np.float64) @ w1 + b1)
    mse = np.mean((hidden @ w2 + b2 - y) ** 2)
    expected = mse + L2 * np.sum(w1.astype(np.float64) ** 2)
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=1, chunk_size=CHUNK, verbose=0
    )
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
    assert int(model.optimizer.iterations) == 1
    # The accumulator and the training step were lent for the call only.
    assert "train_step" not in model.__dict__
    assert list(model.metrics_names) == ["loss"]


def test_mini_batches_warn_once():
    x, y = make_data()
    model = make_model(keras_rprop.Rprop("irprop-"))
    keras_rprop.enable_loss(model)
    with pytest.warns(keras_rprop.MiniBatchWarning, match="fit_full_batch"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", keras_rprop.MiniBatchWarning)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        full = make_model(keras_rprop.Rprop("irprop-"))
        keras_rprop.enable_loss(full)
        full.fit(x, y, batch_size=SAMPLES, epochs=1, verbose=0)


def test_fit_full_batch_rejects_bad_arguments():
    x, y = make_data()
    model = make_model(keras_rprop.Rprop())
    with pytest.raises(ValueError, match="batch_size"):
        keras_rprop.fit_full_batch(model, x, y, batch_size=8)
    with pytest.raises(ValueError, match="epochs"):
        keras_rprop.fit_full_batch(model, x, y, epochs=0)
    with pytest.raises(ValueError, match="chunk_size"):
        keras_rprop.fit_full_batch(model, x, y, chunk_size=-1)
    with pytest.raises(ValueError, match="chunks_per_epoch"):
        keras_rprop.fit_full_batch(model, x, y, chunks_per_epoch=3)
    generator, _ = chunk_sources()["generator"]()
    with pytest.raises(ValueError, match="chunks_per_epoch"):
        keras_rprop.fit_full_batch(model, generator)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        keras_rprop.fit_full_batch(
            model, generator, chunks_per_epoch=5, steps_per_epoch=2
        )
    with pytest.raises(ValueError, match="compiled"):
        keras_rprop.fit_full_batch(
            keras.Sequential([keras.layers.Dense(1)]), x, y
        )
