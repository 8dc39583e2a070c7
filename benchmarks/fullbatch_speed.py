"""Epochs per second of `fit_full_batch`, the natural call, on a small MLP.

The problem: an MLP 13-32-16-1 with tanh (993 parameters), 500 samples,
mean squared error, 300 full-batch epochs (one optimizer step each) with
the iRprop- variant (the variant `torch.optim.Rprop` implements). Three ways
to train it:

- `fit_full_batch`: `keras_rprop.fit_full_batch(model, x, y, epochs=300,
  verbose=0)`, as a user writes it.
- `plain fit`: `model.fit(x, y, batch_size=len(x), epochs=300)`, Keras out
  of the box, for context.
- `torch loop`: a hand-written PyTorch loop (`torch.nn` model,
  `torch.optim.Rprop`, forward, backward, step) without Keras.

Each is timed twice on the same model: `first` is the first call in the
process, compilation included, as a script that trains once sees it;
`second` is the next call, with everything compiled. Every backend runs in
its own subprocess (Keras reads the backend once); the torch loop runs in
one more. The table gives epochs per second and the ratio of
`fit_full_batch` to the torch loop.

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

SAMPLES, FEATURES, HIDDEN = 500, 13, (32, 16)


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = np.sin(x @ rng.normal(size=(FEATURES, 1)) / 3).astype("float32")
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

    def natural():
        keras_rprop.fit_full_batch(model, x, y, epochs=epochs, verbose=0)

    results["fit_full_batch"] = [
        epochs / timed(natural),
        epochs / timed(natural),
    ]

    plain_model = keras_model()

    def plain():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain_model.fit(x, y, batch_size=len(x), epochs=epochs, verbose=0)

    results["plain fit"] = [epochs / timed(plain), epochs / timed(plain)]
    return results


def run_torch_loop(epochs):
    import torch

    x, y = (torch.from_numpy(a) for a in data())
    torch.manual_seed(0)
    sizes = (FEATURES,) + HIDDEN
    layers = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 1))
    optimizer = torch.optim.Rprop(
        model.parameters(), lr=0.1, etas=(0.5, 1.2), step_sizes=(1e-6, 50)
    )
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
    parser.add_argument("--epochs", type=int, default=300)
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

    torch_rates = results.pop("torch-loop")["torch loop"]
    print(
        f"{args.epochs} full-batch epochs, MLP {FEATURES}-"
        f"{'-'.join(map(str, HIDDEN))}-1, {SAMPLES} samples, irprop-; "
        "epochs per second (first = first call incl. compilation, "
        f"second = second call), {args.threads or 'default'} CPU thread(s)"
    )
    header = (
        f"{'backend':<11} {'call':<6} {'fit_full_batch':>14} "
        f"{'torch loop':>11} {'ratio':>7} {'plain fit':>10}"
    )
    print(header)
    print("-" * len(header))
    for backend, result in results.items():
        for i, label in enumerate(("first", "second")):
            natural = result["fit_full_batch"][i]
            print(
                f"{backend:<11} {label:<6} {natural:>14.0f} "
                f"{torch_rates[i]:>11.0f} {natural / torch_rates[i]:>6.2f}x "
                f"{result['plain fit'][i]:>10.0f}"
            )


if __name__ == "__main__":
    main()
