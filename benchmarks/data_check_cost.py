"""What the data check of `fit_full_batch` costs, beside one epoch.

`fit_full_batch` checks its arrays once per call (every floating-point
value finite, every array of the same length) before it trains. This
script times that check beside the training it guards, for two problems:

- `small`: an MLP 13-32-16-1 with tanh on 500 samples of 13 float32
  features (the problem of `fullbatch_speed.py`);
- `large`: an MLP 50-32-16-1 with tanh on 100,000 samples of 50 float32
  features (20 MB of inputs);
- `large, linear`: the same data and a linear model (50-1), where an epoch
  costs little beside reading the data once.

For each backend (each in its own subprocess) and problem, a round times,
in a new shuffled order each round:

- `check, NumPy`: `check_fit_data(x, y)` on the NumPy arrays;
- `check, tensors`: the same on the backend's own tensors (the check runs
  on the tensors' library and device);
- `call, 1 epoch`: `fit_full_batch(model, x, y, epochs=1, verbose=0)` on
  NumPy arrays, the check included, with everything compiled;
- `call, 1 epoch, unchecked`: the same with `check_finite=False`;
- `call, 11 epochs`: the same as the first call with `epochs=11`.

One epoch is the difference of the two checked calls over 10. The table
gives the median of each over the rounds, and the check's cost as a
fraction of one epoch and of the one-epoch call (median of each round's
ratio). The first
check on tensors in the process, which may compile the reduction (JAX),
is timed apart before the rounds.

Usage:

    python benchmarks/data_check_cost.py                 # 15 rounds
    python benchmarks/data_check_cost.py --backends jax --repeats 30
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

# Samples, features and hidden layers.
PROBLEMS = {
    "small": (500, 13, (32, 16)),
    "large": (100_000, 50, (32, 16)),
    "large, linear": (100_000, 50, ()),
}


def _data(samples, features):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, features)).astype("float32")
    y = np.sin(x @ rng.normal(size=(features, 1)) / 3).astype("float32")
    return x, y


def _model(features, hidden):
    import keras

    import keras_rprop

    keras.utils.set_random_seed(0)
    layers = [keras.Input((features,))]
    layers += [keras.layers.Dense(units, activation="tanh") for units in hidden]
    model = keras.Sequential(layers + [keras.layers.Dense(1)])
    model.compile(optimizer=keras_rprop.Rprop("irprop-"), loss="mse")
    return model


def _timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def child(backend, problem, repeats):
    """Times one backend and problem; prints the seconds as JSON."""
    os.environ["KERAS_BACKEND"] = backend
    import keras

    import keras_rprop
    from keras_rprop.training.data_checks import check_fit_data

    samples, features, hidden = PROBLEMS[problem]
    x, y = _data(samples, features)
    xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    model = _model(features, hidden)

    def call(epochs, check_finite=True):
        return lambda: keras_rprop.fit_full_batch(
            model, x, y, epochs=epochs, verbose=0, check_finite=check_finite
        )

    steps = {
        "check, NumPy": lambda: check_fit_data(x, y),
        "check, tensors": lambda: check_fit_data(xt, yt),
        "call, 1 epoch": call(1),
        "call, 1 epoch, unchecked": call(1, check_finite=False),
        "call, 11 epochs": call(11),
    }
    first_tensor_check = _timed(steps["check, tensors"])
    # Compiles the engine's loops for both epoch counts.
    for name in ("call, 1 epoch", "call, 11 epochs"):
        steps[name]()
    seconds = {name: [] for name in steps}
    order = list(steps)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            seconds[name].append(_timed(steps[name]))
    print(
        json.dumps(
            {"seconds": seconds, "first_tensor_check": first_tensor_check}
        )
    )


def _summary(seconds):
    epoch = [
        (many - one) / 10
        for one, many in zip(
            seconds["call, 1 epoch"], seconds["call, 11 epochs"]
        )
    ]
    check = seconds["check, NumPy"]
    return {
        "median": {name: statistics.median(s) for name, s in seconds.items()},
        "epoch": statistics.median(epoch),
        "of_epoch": statistics.median(c / e for c, e in zip(check, epoch)),
        "of_call": statistics.median(
            c / t for c, t in zip(check, seconds["call, 1 epoch"])
        ),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument(
        "--problems",
        default=";".join(PROBLEMS),
        help="problems separated by semicolons (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.repeats)
        return
    print(
        "| backend | problem | check, NumPy (ms) | check, tensors (ms; "
        "first call) | one epoch (ms) | call, 1 epoch (ms) | same, "
        "`check_finite=False` (ms) | check / epoch | check / call |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        for problem in args.problems.split(";"):
            output = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    backend,
                    problem,
                    "--repeats",
                    str(args.repeats),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            summary = _summary(result["seconds"])
            median = {k: v * 1e3 for k, v in summary["median"].items()}
            print(
                f"| {backend} | {problem} | {median['check, NumPy']:.3g} | "
                f"{median['check, tensors']:.3g}; "
                f"{result['first_tensor_check'] * 1e3:.3g} | "
                f"{summary['epoch'] * 1e3:.3g} | "
                f"{median['call, 1 epoch']:.3g} | "
                f"{median['call, 1 epoch, unchecked']:.3g} | "
                f"{summary['of_epoch']:.1%} | {summary['of_call']:.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
