"""Epochs per second of full-batch Rprop training on a small MLP.

The problem: an MLP 10-48-32-1 (2,129 parameters), 500 samples, mean
squared error, 1000 full-batch epochs (one optimizer step each) with the
iRprop- variant (`torch.optim.Rprop` implements iRprop- as well). Three ways
to train it:

- `plain fit`: `model.fit(x, y, batch_size=len(x), epochs=1000)`, Keras
  out of the box with `keras_rprop.Rprop("irprop-")`.
- `fast path`: `keras_rprop.fit_full_batch(model, x, y, epochs=10,
  steps_per_epoch=100)`, 100 optimizer steps per compiled call (on
  PyTorch: one step recorded, then replayed as a TorchScript trace).
- `torch loop`: a hand-written PyTorch loop (`torch.nn` model,
  `torch.optim.Rprop`, forward, backward, step) without Keras.

Each is timed twice on a fresh model: `cold` is the first call, compilation
included, as a script that trains once sees it; `warm` is a second call on
the same model, with everything already compiled. Every backend runs in its
own subprocess (Keras reads the backend once); the torch loop runs in one
more. The table gives epochs per second and the ratios of the fast path to
the other two.

Usage:

    python benchmarks/fullbatch_speed.py
    python benchmarks/fullbatch_speed.py --backends jax,torch --epochs 500
"""

import argparse
import json
import os
import subprocess
import sys
import time

SAMPLES, FEATURES, HIDDEN = 500, 10, (48, 32)
STEPS_PER_EPOCH = 100


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = np.sin(x @ rng.normal(size=(FEATURES, 1))).astype("float32")
    return x, y


def keras_model():
    import keras

    import keras_rprop

    keras.utils.set_random_seed(0)
    layers = [keras.Input((FEATURES,))]
    layers += [keras.layers.Dense(units, activation="tanh") for units in HIDDEN]
    model = keras.Sequential(layers + [keras.layers.Dense(1)])
    model.compile(optimizer=keras_rprop.Rprop("irprop-"), loss="mse")
    return model


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def run_keras(epochs):
    import warnings

    import keras_rprop

    x, y = data()
    results = {}
    model = keras_model()
    results["parameters"] = model.count_params()

    def plain():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, y, batch_size=len(x), epochs=epochs, verbose=0)

    results["plain fit"] = [epochs / timed(plain), epochs / timed(plain)]

    model = keras_model()
    blocks = max(1, epochs // STEPS_PER_EPOCH)

    def fast():
        keras_rprop.fit_full_batch(
            model,
            x,
            y,
            epochs=blocks,
            steps_per_epoch=STEPS_PER_EPOCH,
            verbose=0,
        )

    steps = blocks * STEPS_PER_EPOCH
    results["fast path"] = [steps / timed(fast), steps / timed(fast)]
    return results


def run_torch_loop(epochs):
    import torch

    x, y = (torch.from_numpy(a) for a in data())
    torch.manual_seed(0)

    def make():
        sizes = (FEATURES,) + HIDDEN
        layers = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 1))
        optimizer = torch.optim.Rprop(
            model.parameters(), lr=0.1, etas=(0.5, 1.2), step_sizes=(1e-6, 50)
        )
        return model, optimizer

    model, optimizer = make()
    loss_fn = torch.nn.MSELoss()

    def loop():
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()

    return {"torch loop": [epochs / timed(loop), epochs / timed(loop)]}


def limit_threads(threads):
    """Runs every framework on `threads` CPU threads (set before import)."""
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false"
        + f" intra_op_parallelism_threads={threads}"
    )
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def child(backend, epochs, threads):
    if threads:
        limit_threads(threads)
    if backend == "torch-loop":
        return run_torch_loop(epochs)
    return run_keras(epochs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per framework (0: each framework's default). One "
        "thread is the fastest for a model this small and keeps the "
        "comparison fair on a busy machine.",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.epochs, args.threads)))
        return

    results = {}
    for backend in args.backends.split(",") + ["torch-loop"]:
        env = dict(os.environ, KERAS_BACKEND=backend.replace("-loop", ""))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                backend,
                "--epochs",
                str(args.epochs),
                "--threads",
                str(args.threads),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            sys.exit(f"{backend} failed:\n{out.stderr[-3000:]}")
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])

    torch_cold, torch_warm = results.pop("torch-loop")["torch loop"]
    print(
        f"{args.epochs} full-batch epochs, MLP {FEATURES}-"
        f"{'-'.join(map(str, HIDDEN))}-1, {SAMPLES} samples, irprop-; "
        "epochs per second (cold = first call incl. compilation, "
        f"warm = second call), {args.threads or 'default'} CPU thread(s)"
    )
    header = (
        f"{'backend':<11} {'':<5} {'plain fit':>10} {'fast path':>10} "
        f"{'torch loop':>11} {'fast/plain':>11} {'fast/torch':>11}"
    )
    print(header)
    print("-" * len(header))
    for backend, result in results.items():
        for i, label in enumerate(("cold", "warm")):
            plain = result["plain fit"][i]
            fast = result["fast path"][i]
            torch_rate = (torch_cold, torch_warm)[i]
            print(
                f"{backend:<11} {label:<5} {plain:>10.0f} {fast:>10.0f} "
                f"{torch_rate:>11.0f} {fast / plain:>10.1f}x "
                f"{fast / torch_rate:>10.2f}x"
            )


if __name__ == "__main__":
    main()
