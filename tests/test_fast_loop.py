"""The fast full-batch loop: `fit_full_batch(..., steps_per_epoch=k)`.

`k` optimizer steps per epoch in one compiled call must train exactly the
weights of `k` one-step epochs, and the callbacks must see epochs of `k`
steps with the logs of each epoch's last step.
"""

import keras
import numpy as np
import pytest

import keras_rprop
from tests import helpers


def make_data():
    return helpers.sine_data()


def make_model(variant):
    model = helpers.tanh_model()
    model.compile(optimizer=keras_rprop.Rprop(variant), loss="mse")
    return model


# rprop+ reverts moves with the learning rate of the previous step and
# irprop+ compares the loss of consecutive steps: both carry state from one
# step to the next inside the loop.
@pytest.mark.parametrize("variant", ["rprop+", "irprop+"])
def test_steps_per_epoch_trains_the_same_weights(variant):
    x, y = make_data()
    plain = make_model(variant)
    plain_history = keras_rprop.fit_full_batch(
        plain, x, y, epochs=20, verbose=0
    )
    fast = make_model(variant)
    fast_history = keras_rprop.fit_full_batch(
        fast, x, y, epochs=4, steps_per_epoch=5, verbose=0
    )
    for fast_weights, plain_weights in zip(
        fast.get_weights(), plain.get_weights()
    ):
        if keras.backend.backend() == "torch":
            # The replayed steps run the eager kernels in the eager order.
            np.testing.assert_array_equal(fast_weights, plain_weights)
        else:
            np.testing.assert_allclose(fast_weights, plain_weights, atol=1e-6)
    assert int(fast.optimizer.iterations) == 20
    # One History entry per epoch of 5 steps, with its last step's loss.
    np.testing.assert_allclose(
        fast_history.history["loss"],
        plain_history.history["loss"][4::5],
        rtol=1e-5,
    )


# Arguments the engine does not take, and eager models, train through
# Keras's `fit` with the same k-step train step.
@pytest.mark.parametrize("path", ["keras_fit", "keras_fit_eagerly"])
@pytest.mark.parametrize("variant", ["rprop+", "irprop+"])
def test_steps_per_epoch_through_keras_fit(variant, path):
    x, y = make_data()
    plain = make_model(variant)
    plain_history = keras_rprop.fit_full_batch(
        plain, x, y, epochs=12, verbose=0
    )
    fast = helpers.tanh_model()
    fast.compile(
        optimizer=keras_rprop.Rprop(variant),
        loss="mse",
        run_eagerly=path == "keras_fit_eagerly",
    )
    fast_history = keras_rprop.fit_full_batch(
        fast, x, y, epochs=3, steps_per_epoch=4, verbose=0, class_weight=None
    )
    for fast_weights, plain_weights in zip(
        fast.get_weights(), plain.get_weights()
    ):
        np.testing.assert_allclose(fast_weights, plain_weights, atol=1e-6)
    assert int(fast.optimizer.iterations) == 12
    np.testing.assert_allclose(
        fast_history.history["loss"],
        plain_history.history["loss"][3::4],
        rtol=1e-5,
    )


def test_early_stopping_counts_epochs_of_steps():
    x, y = make_data()
    model = make_model("irprop-")
    stop = keras.callbacks.EarlyStopping(
        monitor="loss", patience=1, min_delta=1e3
    )
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=10, steps_per_epoch=3, callbacks=[stop], verbose=0
    )
    assert len(history.history["loss"]) == 2
    assert int(model.optimizer.iterations) == 6
    assert "train_step" not in model.__dict__


def test_progress_bar_shows_epochs(capsys):
    x, y = make_data()
    model = make_model("irprop-")
    keras_rprop.fit_full_batch(model, x, y, epochs=2, steps_per_epoch=3)
    out = capsys.readouterr().out
    # One bar over the epochs of 3 steps each.
    assert "2/2" in out and "loss:" in out and "Epoch 1/2" not in out


def make_special_model(kind):
    keras.utils.set_random_seed(2)
    layers = [keras.Input((3,)), keras.layers.Dense(4, activation="tanh")]
    optimizer = keras_rprop.Rprop("irprop+")
    if kind == "dropout":
        layers.append(keras.layers.Dropout(0.5, seed=3))
    elif kind == "batch_norm":
        layers.append(keras.layers.BatchNormalization())
    elif kind == "accumulation":
        optimizer = keras_rprop.Rprop("irprop+", gradient_accumulation_steps=2)
    model = keras.Sequential(layers + [keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


# On PyTorch the loop records one step and replays it: a random draw
# (dropout), state updated in the forward pass (batch norm statistics) and
# a branch on a tensor value (gradient accumulation) must still train the
# weights of the one-step epochs, every draw and branch as in eager steps.
@pytest.mark.parametrize("kind", ["dropout", "batch_norm", "accumulation"])
def test_steps_per_epoch_with_state_randomness_and_branches(kind):
    x, y = make_data()
    plain = make_special_model(kind)
    keras_rprop.fit_full_batch(plain, x, y, epochs=12, verbose=0)
    fast = make_special_model(kind)
    keras_rprop.fit_full_batch(
        fast, x, y, epochs=2, steps_per_epoch=4, verbose=0
    )
    keras_rprop.fit_full_batch(
        fast, x, y, epochs=1, steps_per_epoch=4, verbose=0
    )
    for fast_weights, plain_weights in zip(
        fast.get_weights(), plain.get_weights()
    ):
        np.testing.assert_allclose(fast_weights, plain_weights, atol=1e-6)
    assert int(fast.optimizer.iterations) == int(plain.optimizer.iterations)


def test_changed_hyperparameters_take_effect_between_calls():
    x, y = make_data()
    models = []
    for steps_per_epoch in (1, 5):
        model = make_model("rprop-")
        keras_rprop.fit_full_batch(
            model,
            x,
            y,
            epochs=10 // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            verbose=0,
        )
        model.optimizer.eta_plus = 1.5
        model.optimizer.learning_rate = 0.5
        keras_rprop.fit_full_batch(
            model,
            x,
            y,
            epochs=10 // steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            verbose=0,
        )
        models.append(model)
    for fast_weights, plain_weights in zip(
        models[1].get_weights(), models[0].get_weights()
    ):
        np.testing.assert_allclose(fast_weights, plain_weights, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the recorded replay is the PyTorch backend's loop",
)
def test_replay_uses_torchscript_only_on_the_cpu():
    # On CUDA, TorchScript's executor rewrote the replayed graph after its
    # second run and the third replay trained other weights (seen on an
    # H100); off the CPU the record must run as it is. A "meta" tensor
    # stands for a tensor on another device.
    import torch

    from keras_rprop.training import torch_replay

    def record(state, x, y, sample_weight):
        state[0].add_(x)

    def replay(device):
        state = [torch.zeros(3, device=device)]
        x = torch.ones(3, device=device)
        return torch_replay._compile(record, state, (x, x, None))

    assert isinstance(replay("cpu"), torch.jit.ScriptFunction)
    off_cpu = replay("meta")
    assert not isinstance(off_cpu, torch.jit.ScriptFunction)
    state = [torch.zeros(3)]
    off_cpu(state[0], torch.ones(3), torch.ones(3))
    np.testing.assert_array_equal(state[0].numpy(), [1.0, 1.0, 1.0])


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the recorded replay is the PyTorch backend's loop",
)
def test_record_skips_fake_values_in_its_own_thread_only(monkeypatch):
    # A record skips `make_fx`'s fake copy of each tensor; a `make_fx` that
    # another thread runs meanwhile (a `torch.compile`, say) keeps them.
    import threading

    from torch.fx.experimental import proxy_tensor

    from keras_rprop.training import torch_replay

    stored = []

    def set_meta(proxy, value):
        stored.append(value)
        return proxy

    monkeypatch.setattr(proxy_tensor, "set_meta", set_meta)
    with torch_replay._without_fake_values():
        assert proxy_tensor.set_meta("proxy", "own") == "proxy"
        other = threading.Thread(
            target=proxy_tensor.set_meta, args=("proxy", "other")
        )
        other.start()
        other.join(timeout=10)
    assert stored == ["other"]
    assert proxy_tensor.set_meta is set_meta
