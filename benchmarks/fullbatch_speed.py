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
- `jax loop`: a hand-written JAX loop (a `jax.jit` step of `jax.grad` and
  `optax.rprop`, called once per epoch) without Keras, for context: what
  JAX's own compilation costs a first call.

Each is timed twice on the same model: `first` is the first call in the
process, compilation included, as a script that trains once sees it;
`second` is the next call, with everything compiled. Every backend runs in
its own subprocess (Keras reads the backend once); each hand-written loop
runs in one more. A round starts every process once; the table gives the
median epochs per second over the rounds and the ratio of `fit_full_batch`
to the torch loop of the same round (its median and range), since the
machine's speed drifts between rounds.

With `--scenarios`, the calls users write instead of the bare one, each
beside a hand-written PyTorch loop that does the same work (350 training
and 150 validation samples, 300 epochs; the second call is timed, except
for `seeds`):

- `bare`: `fit_full_batch(model, x, y, epochs=300)`; the loop as above.
- `validation`: `validation_data=(x_val, y_val)`; the loop computes the
  validation loss every epoch (`torch.no_grad()`, read with `.item()`).
- `early-stopping`: also `EarlyStopping("val_loss", patience=10**6,
  restore_best_weights=True)`; the loop keeps a copy of the weights of the
  best validation epoch and restores them at the end.
- `seeds`: five fresh models of the same structure trained in one process
  (compilation included); the loop trains five fresh `torch.nn` models.
  Each side's first call also imports a library lazily: on JAX and
  PyTorch `keras.utils.set_random_seed` imports TensorFlow when it is
  installed (about 3 s), and the loop's first `torch.optim` optimizer
  imports `torch._dynamo` (about 2 s). `--warm-imports` makes both
  imports before the timer, as the frameworks' own imports are.
- `chunks`: `chunk_size=100` (the exact full-batch gradient summed over 4
  chunks); the loop sums the gradients of 4 chunks, weighted by their
  sizes, before each step.

Usage:

    python benchmarks/fullbatch_speed.py                 # 3 rounds, ~2 min
    python benchmarks/fullbatch_speed.py --scenarios all --repeats 3
    python benchmarks/fullbatch_speed.py --repeats 5 --backends jax,torch
    python benchmarks/fullbatch_speed.py --jax-compilation-cache /tmp/jc
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

SAMPLES, FEATURES, HIDDEN = 500, 13, (32, 16)
# `Rprop(fused=...)`: None, the default, or the `--fused` given.
FUSED = None


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = np.sin(x @ rng.normal(size=(FEATURES, 1)) / 3).astype("float32")
    return x, y


def keras_model(seed=0):
    import keras

    import keras_rprop

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((FEATURES,))]
    layers += [keras.layers.Dense(units, activation="tanh") for units in HIDDEN]
    model = keras.Sequential(layers + [keras.layers.Dense(1)])
    optimizer = keras_rprop.Rprop("irprop-", fused=FUSED)
    model.compile(optimizer=optimizer, loss="mse")
    return model


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def run_keras(epochs, plain_fit):
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

    if not plain_fit:
        results["plain fit"] = [math.nan, math.nan]
        return results
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


def run_jax_loop(epochs):
    import jax
    import jax.numpy as jnp
    import optax

    x, y = (jnp.asarray(a) for a in data())
    sizes = (FEATURES,) + HIDDEN + (1,)
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [
        (
            jax.random.uniform(key, (n_in, n_out), minval=-0.3, maxval=0.3),
            jnp.zeros((n_out,)),
        )
        for key, n_in, n_out in zip(keys, sizes, sizes[1:])
    ]

    def loss_fn(params):
        h = x
        for i, (kernel, bias) in enumerate(params):
            h = h @ kernel + bias
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return jnp.mean((h - y) ** 2)

    optimizer = optax.rprop(
        learning_rate=0.1,
        eta_minus=0.5,
        eta_plus=1.2,
        min_step_size=1e-6,
        max_step_size=50.0,
    )
    state = [params, optimizer.init(params)]

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def loop():
        params, opt_state = state
        for _ in range(epochs):
            params, opt_state = step(params, opt_state)
        state[:] = jax.block_until_ready((params, opt_state))

    return {"jax loop": [epochs / timed(loop), epochs / timed(loop)]}


SCENARIOS = ("bare", "validation", "early-stopping", "seeds", "chunks")
SEEDS = 5
CHUNK = 100
TRAIN = 350


def split_data():
    x, y = data()
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN:], y[TRAIN:])


def warm_imports(backend):
    """Makes the imports a first seeded model makes lazily (`--warm-imports`).

    `keras.utils.set_random_seed` imports TensorFlow (to seed it) when it is
    installed; `torch.optim`'s first optimizer imports `torch._dynamo`.
    """
    if backend == "torch-loop":
        import torch

        torch.optim.Rprop([torch.zeros(1, requires_grad=True)])
    else:
        import keras

        keras.utils.set_random_seed(0)


def run_keras_scenario(scenario, epochs):
    import keras

    import keras_rprop

    (x, y), validation = split_data()
    kwargs = {}
    if scenario in ("validation", "early-stopping"):
        kwargs["validation_data"] = validation
    if scenario == "early-stopping":
        kwargs["callbacks"] = [
            keras.callbacks.EarlyStopping(
                "val_loss", patience=10**6, restore_best_weights=True
            )
        ]
    if scenario == "chunks":
        kwargs["chunk_size"] = CHUNK
    if scenario == "seeds":

        def seeds():
            for seed in range(SEEDS):
                keras.utils.set_random_seed(seed)
                model = keras_model(seed=seed)
                keras_rprop.fit_full_batch(
                    model, x, y, epochs=epochs, verbose=0
                )

        return {"rate": SEEDS * epochs / timed(seeds)}
    model = keras_model()

    def natural():
        keras_rprop.fit_full_batch(
            model, x, y, epochs=epochs, verbose=0, **kwargs
        )

    timed(natural)
    return {"rate": epochs / timed(natural)}


def torch_scenario(scenario, epochs):
    import copy

    import torch

    (x, y), (x_val, y_val) = (
        tuple(torch.from_numpy(a) for a in pair) for pair in split_data()
    )
    loss_fn = torch.nn.MSELoss()

    def new_model(seed):
        torch.manual_seed(seed)
        sizes = (FEATURES,) + HIDDEN
        layers = []
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(n_in, n_out), torch.nn.Tanh()]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 1))
        optimizer = torch.optim.Rprop(
            model.parameters(),
            lr=0.1,
            etas=(0.5, 1.2),
            step_sizes=(1e-6, 50),
        )
        return model, optimizer

    def train(model, optimizer):
        best, best_state = math.inf, None
        for _ in range(epochs):
            optimizer.zero_grad()
            if scenario == "chunks":
                for start in range(0, len(x), CHUNK):
                    xc, yc = x[start : start + CHUNK], y[start : start + CHUNK]
                    (loss_fn(model(xc), yc) * (len(xc) / len(x))).backward()
            else:
                loss_fn(model(x), y).backward()
            optimizer.step()
            if scenario in ("validation", "early-stopping"):
                with torch.no_grad():
                    val_loss = loss_fn(model(x_val), y_val).item()
                if scenario == "early-stopping" and val_loss < best:
                    best = val_loss
                    best_state = copy.deepcopy(model.state_dict())
        if best_state is not None:
            model.load_state_dict(best_state)

    if scenario == "seeds":

        def seeds():
            for seed in range(SEEDS):
                train(*new_model(seed))

        return {"rate": SEEDS * epochs / timed(seeds)}
    model, optimizer = new_model(0)
    timed(lambda: train(model, optimizer))
    return {"rate": epochs / timed(lambda: train(model, optimizer))}


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


def child(backend, epochs, threads, plain_fit, scenario=None, warm=False):
    if threads:
        limit_threads(threads)
    if warm:
        warm_imports(backend)
    if scenario is not None:
        if backend == "torch-loop":
            return torch_scenario(scenario, epochs)
        return run_keras_scenario(scenario, epochs)
    if backend == "torch-loop":
        return run_torch_loop(epochs)
    if backend == "jax-loop":
        return run_jax_loop(epochs)
    return run_keras(epochs, plain_fit)


def main():
    global HIDDEN, FUSED
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
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="Rounds of fresh processes; each round times every backend "
        "and both hand-written loops once (plain fit in the first round "
        "only).",
    )
    parser.add_argument(
        "--jax-compilation-cache",
        metavar="DIR",
        help="Give every JAX process JAX's persistent compilation cache in "
        "DIR, warmed by one untimed run: the first call of a script that "
        "runs again.",
    )
    parser.add_argument(
        "--hidden",
        default=",".join(map(str, HIDDEN)),
        help="The hidden layers' widths (default: %(default)s).",
    )
    parser.add_argument(
        "--fused",
        choices=("none", "true", "false"),
        default="none",
        help="The `fused` argument of Rprop: on TensorFlow, whether the "
        "update is compiled apart with XLA (none: for 2**17 parameters or "
        "more).",
    )
    parser.add_argument(
        "--skip-plain-fit",
        action="store_true",
        help="Do not time plain `model.fit` (slow on large models).",
    )
    parser.add_argument(
        "--scenarios",
        help="Time the calls users write instead of the bare one: a "
        f"comma-separated list of {', '.join(SCENARIOS)}, or 'all'.",
    )
    parser.add_argument(
        "--warm-imports",
        action="store_true",
        help="Make the imports that each side's first call makes lazily "
        "(TensorFlow for `keras.utils.set_random_seed`, `torch._dynamo` "
        "for `torch.optim`) before the timer.",
    )
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--plain-fit", action="store_true", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    HIDDEN = tuple(int(width) for width in args.hidden.split(","))
    FUSED = {"none": None, "true": True, "false": False}[args.fused]
    if args.child:
        result = child(
            args.child,
            args.epochs,
            args.threads,
            args.plain_fit,
            args.scenario,
            args.warm_imports,
        )
        print(json.dumps(result))
        return

    def run(backend, plain_fit=False, scenario=None):
        env = dict(os.environ, KERAS_BACKEND=backend.replace("-loop", ""))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if args.jax_compilation_cache:
            env["JAX_COMPILATION_CACHE_DIR"] = args.jax_compilation_cache
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        command = [sys.executable, __file__, "--child", backend]
        command += ["--epochs", str(args.epochs)]
        command += ["--threads", str(args.threads)]
        command += ["--hidden", args.hidden, "--fused", args.fused]
        command += ["--plain-fit"] if plain_fit else []
        command += ["--scenario", scenario] if scenario else []
        command += ["--warm-imports"] if args.warm_imports else []
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{backend} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    backends = args.backends.split(",")
    if args.scenarios:
        scenarios = (
            SCENARIOS if args.scenarios == "all" else args.scenarios.split(",")
        )
        report_scenarios(run, backends, scenarios, args)
        return
    if args.jax_compilation_cache:
        for backend in ["jax-loop"] + (["jax"] if "jax" in backends else []):
            run(backend)
    rounds = []
    for index in range(args.repeats):
        results = {"torch-loop": run("torch-loop")}
        for backend in backends:
            plain_fit = index == 0 and not args.skip_plain_fit
            results[backend] = run(backend, plain_fit=plain_fit)
        results["jax-loop"] = run("jax-loop")
        rounds.append(results)

    torch_rates = [r["torch-loop"]["torch loop"] for r in rounds]
    jax_rates = [r["jax-loop"]["jax loop"] for r in rounds]
    print(
        f"{args.epochs} full-batch epochs, MLP {FEATURES}-"
        f"{'-'.join(map(str, HIDDEN))}-1 "
        f"({rounds[0][backends[0]]['parameters']} parameters), "
        f"{SAMPLES} samples, irprop- (fused={args.fused}); "
        "epochs per second (first = first call incl. compilation, "
        f"second = second call), {args.threads or 'default'} CPU thread(s); "
        f"medians of {args.repeats} rounds, the ratio's range in brackets"
        + (
            "; JAX with a warm persistent compilation cache"
            if args.jax_compilation_cache
            else ""
        )
    )
    header = (
        f"{'backend':<11} {'call':<6} {'fit_full_batch':>14} "
        f"{'torch loop':>11} {'ratio':>7} {'range':>13} {'plain fit':>10} "
        f"{'jax loop':>9}"
    )
    print(header)
    print("-" * len(header))
    for backend in backends:
        for i, label in enumerate(("first", "second")):
            natural = [r[backend]["fit_full_batch"][i] for r in rounds]
            ratios = [n / t[i] for n, t in zip(natural, torch_rates)]
            spread = f"[{min(ratios):.2f}-{max(ratios):.2f}]"
            print(
                f"{backend:<11} {label:<6} {statistics.median(natural):>14.0f} "
                f"{statistics.median(t[i] for t in torch_rates):>11.0f} "
                f"{statistics.median(ratios):>6.2f}x {spread:>13} "
                f"{rounds[0][backend]['plain fit'][i]:>10.0f} "
                f"{statistics.median(j[i] for j in jax_rates):>9.0f}"
            )


def report_scenarios(run, backends, scenarios, args):
    """Times each scenario on each backend beside its torch loop."""
    ratios = {(b, s): [] for b in backends for s in scenarios}
    rates = {(b, s): [] for b in backends + ["torch-loop"] for s in scenarios}
    for _ in range(args.repeats):
        for scenario in scenarios:
            # The torch loop right before and after, the faster taken.
            before = run("torch-loop", scenario=scenario)["rate"]
            results = {b: run(b, scenario=scenario)["rate"] for b in backends}
            after = run("torch-loop", scenario=scenario)["rate"]
            loop = max(before, after)
            rates["torch-loop", scenario].append(loop)
            for backend, rate in results.items():
                rates[backend, scenario].append(rate)
                ratios[backend, scenario].append(rate / loop)
    print(
        f"{args.epochs} full-batch epochs, MLP {FEATURES}-"
        f"{'-'.join(map(str, HIDDEN))}-1, {TRAIN} training and "
        f"{SAMPLES - TRAIN} validation samples, irprop-; epochs per second "
        "(second call; seeds: 5 fresh models, compilation included), "
        f"{args.threads or 'default'} CPU thread(s); ratio to the torch "
        f"loop of the same round, medians of {args.repeats} rounds, range "
        "in brackets"
        + ("; lazy imports made before the timer" if args.warm_imports else "")
    )
    header = f"{'scenario':<15} {'torch loop':>10}" + "".join(
        f" {backend:>24}" for backend in backends
    )
    print(header)
    print("-" * len(header))
    for scenario in scenarios:
        line = (
            f"{scenario:<15} "
            f"{statistics.median(rates['torch-loop', scenario]):>10.0f}"
        )
        for backend in backends:
            values = ratios[backend, scenario]
            cell = (
                f"{statistics.median(rates[backend, scenario]):.0f} "
                f"{statistics.median(values):.2f}x "
                f"[{min(values):.2f}-{max(values):.2f}]"
            )
            line += f" {cell:>24}"
        print(line)


if __name__ == "__main__":
    main()
