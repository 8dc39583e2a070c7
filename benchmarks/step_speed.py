"""Time one optimizer update: keras-rprop against Keras Adam and other Rprops.

Measures the time of one update step, the way each backend's Keras trainer
runs it, for two layouts of float32 parameters:

- case (a): 10M parameters in 20 tensors of 500,000;
- case (b): 2M parameters in 200 tensors of 10,000.

On each backend, in the same process and interleaved step by step (so that
noise from other processes hits every variant alike; each optimizer reads
its own copy of the gradients, so that none finds them in the caches
because the one timed before it read them), it times the four
Rprop variants, Keras Adam, and the other Rprop implementations of that
ecosystem:

- JAX: `jax.jit(optimizer.stateless_apply)` with the parameters and the
  optimizer state donated, as the JAX trainer does; `optax.rprop` jitted
  with donation too.
- TensorFlow: `tf.function(optimizer.apply)`, with `jit_compile` on and off.
- PyTorch: `optimizer.apply` under `torch.no_grad()`; `torch.optim.Rprop`
  with `foreach` on and off; and keras-rprop's per-variable path.

It also measures the memory bandwidth in the same process (on the CPU, a
copy of a large array on every core; on a GPU, an element-wise pass of the
backend over a large array on the device: bytes read and written per
second) and turns it into the time a step needs at least: an Rprop step on
float32 parameters reads the gradient, the parameter, the step size and the
int8 sign and writes the last three, 22 bytes per parameter (Adam: 28).

Every backend and case runs in its own subprocess, on the device where
Keras puts its variables: a GPU if the backend sees one. Usage:

    python benchmarks/step_speed.py
    python benchmarks/step_speed.py --quick --backends jax,torch
"""

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import unittest.mock

CASES = {
    "a": (20, 500_000),
    "b": (200, 10_000),
}
QUICK_CASES = {
    "a": (20, 50_000),
    "b": (200, 1_000),
}
BACKENDS = ("tensorflow", "jax", "torch")
RPROP_VARIANTS = ("rprop+", "rprop-", "irprop+", "irprop-")
KERAS_OPTIMIZERS = ["keras Adam"] + [f"keras-rprop {v}" for v in RPROP_VARIANTS]

# Bytes moved per float32 parameter by one step, at the least.
RPROP_BYTES = 4 + 4 * 2 + 4 * 2 + 1 * 2
ADAM_BYTES = 4 + 4 * 2 + 4 * 2 + 4 * 2


# -- Measuring ------------------------------------------------------------


def _interleaved(steps, repeats, warmup):
    """Times every callable of `steps` `repeats` times, round-robin.

    Each round runs them in a new order (shuffled with a fixed seed), so
    that no callable always runs right after the same one: a step right
    after a slow one that churned memory (Keras Adam on PyTorch allocates
    and frees its temporaries) ran about 5% slower. (Rotating the list
    would not do it: every callable but one would still always follow its
    neighbour in the list.)

    Returns a dict of name -> list of seconds.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    names = list(steps)
    times = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _bandwidth_step(megabytes=256):
    """A copy of a `megabytes` array, split across all cores.

    NumPy releases the GIL while it copies, so one thread per core copies
    its share in parallel. Returns `(callable, bytes moved per call)`.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    count = megabytes * 2**20 // 4
    source = np.ones(count, dtype="float32")
    target = np.zeros_like(source)
    workers = os.cpu_count() or 1
    bounds = np.linspace(0, count, workers + 1).astype(int)
    pool = ThreadPoolExecutor(workers)
    parts = list(zip(bounds[:-1], bounds[1:]))

    def copy(part):
        start, stop = part
        np.copyto(target[start:stop], source[start:stop])

    def step():
        list(pool.map(copy, parts))

    return step, 2 * source.nbytes


def _gpu_bandwidth_step(backend, megabytes=1024):
    """An element-wise pass over a `megabytes` float32 array on the GPU.

    It reads the array and writes another, as an optimizer step does, with
    the backend's own kernels. Returns `(callable, bytes moved per call)`.
    """
    count = megabytes * 2**20 // 4
    if backend == "torch":
        import torch

        source = torch.ones(count, device="cuda")
        target = torch.empty_like(source)

        def step():
            torch.add(source, 1.0, out=target)
            torch.cuda.synchronize()

    elif backend == "jax":
        import jax

        source = jax.numpy.ones(count, dtype="float32")
        add_one = jax.jit(lambda x: x + 1.0)

        def step():
            add_one(source).block_until_ready()

    else:
        import tensorflow as tf

        source = tf.ones(count)
        add_one = tf.function(lambda x: x + 1.0)

        def step():
            # Reading one element waits for the pass to finish.
            add_one(source)[0].numpy()

    return step, 2 * count * 4


def _device(backend):
    """The device the backend's Keras variables live on, in words."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return device.device_kind
    else:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "GPU"
    return "CPU"


def _gradients(rng, count, size):

    return [rng.standard_normal(size).astype("float32") for _ in range(count)]


def _copies(grads):
    """Gradients of one optimizer's own, equal to `grads`.

    Each optimizer reads its own copy, so that none finds the gradients in
    the CPU caches because the one timed before it just read them.
    """
    if hasattr(grads[0], "clone"):  # PyTorch
        return [g.clone() for g in grads]
    if hasattr(grads[0], "block_until_ready"):  # JAX
        import jax

        return [jax.numpy.array(g, copy=True) for g in grads]
    import tensorflow as tf

    return [tf.constant(g.numpy()) for g in grads]


def _state_bytes(arrays, params):
    """Bytes of optimizer state per parameter (scalars included)."""
    return sum(int(a.size) * a.dtype.itemsize for a in arrays) / params


def _keras_state(optimizer):
    import keras
    import numpy as np

    return [
        np.asarray(keras.ops.convert_to_numpy(v)) for v in optimizer.variables
    ]


def _make_optimizer(name):
    import keras

    import keras_rprop

    if name == "keras Adam":
        return keras.optimizers.Adam(learning_rate=1e-3)
    return keras_rprop.Rprop(variant=name.split()[-1])


def _built_optimizer(name, grads_np):
    """The Keras optimizer `name`, built on new variables like `grads_np`."""
    import keras

    variables = [keras.Variable(g * 0.0) for g in grads_np]
    optimizer = _make_optimizer(name)
    optimizer.build(variables)
    return optimizer, variables


def _needs_loss(name):
    return name.startswith("keras-rprop")


# -- One backend ------------------------------------------------------------


def _jax_steps(count, size, rng):
    import jax
    import optax

    grads_np = _gradients(rng, count, size)
    grads = [jax.numpy.asarray(g) for g in grads_np]
    loss = jax.numpy.float32(1.0)
    steps, state_bytes = {}, {}
    for name in KERAS_OPTIMIZERS:
        optimizer, variables = _built_optimizer(name, grads_np)
        kwargs = {"loss": loss} if _needs_loss(name) else {}

        def apply(params, state, grads, optimizer=optimizer, kwargs=kwargs):
            return optimizer.stateless_apply(state, grads, params, **kwargs)

        jitted = jax.jit(apply, donate_argnums=(0, 1))
        values = {
            "params": [v.value for v in variables],
            "state": [v.value for v in optimizer.variables],
        }

        def step(jitted=jitted, values=values, grads=_copies(grads)):
            params, state = jitted(values["params"], values["state"], grads)
            jax.block_until_ready((params, state))
            values["params"], values["state"] = params, state

        steps[name] = step
        state_bytes[name] = _state_bytes(_keras_state(optimizer), count * size)

    transform = optax.rprop(learning_rate=0.1)
    params = [g * 0.0 for g in grads]
    values = {"params": params, "state": transform.init(params)}

    def optax_apply(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    optax_jitted = jax.jit(optax_apply, donate_argnums=(0, 1))

    def optax_step(grads=_copies(grads)):
        params, state = optax_jitted(values["params"], values["state"], grads)
        jax.block_until_ready((params, state))
        values["params"], values["state"] = params, state

    steps["optax.rprop"] = optax_step
    state_bytes["optax.rprop"] = _state_bytes(
        [
            jax.numpy.asarray(x)
            for x in jax.tree_util.tree_leaves(values["state"])
        ],
        count * size,
    )
    return steps, state_bytes


def _tf_apply(optimizer, variables, needs_loss):
    # A closure, not default arguments: `tf.function` would trace those.
    def apply(grads, loss):
        if needs_loss:
            optimizer.apply(grads, variables, loss=loss)
        else:
            optimizer.apply(grads, variables)

    return apply


def _tensorflow_steps(count, size, rng):
    import tensorflow as tf

    grads_np = _gradients(rng, count, size)
    grads = [tf.constant(g) for g in grads_np]
    loss = tf.constant(1.0)
    steps, state_bytes = {}, {}
    for jit_compile in (True, False):
        for name in KERAS_OPTIMIZERS:
            optimizer, variables = _built_optimizer(name, grads_np)
            apply = _tf_apply(optimizer, variables, _needs_loss(name))
            function = tf.function(apply, jit_compile=jit_compile)
            label = f"{name} ({'jit' if jit_compile else 'graph'})"

            def step(
                function=function, optimizer=optimizer, grads=_copies(grads)
            ):
                function(grads, loss)
                # `apply` returns nothing; reading a variable waits for
                # the update to finish.
                optimizer.iterations.numpy()

            steps[label] = step
            state_bytes[label] = _state_bytes(
                _keras_state(optimizer), count * size
            )
    return steps, state_bytes


def _per_variable_path(enabled):
    """Within it, the optimizer does not take the backend's fast path."""
    from keras_rprop.optimizers import fast_paths

    if not enabled:
        return contextlib.nullcontext()
    return unittest.mock.patch.object(fast_paths, "update", lambda *args: False)


def _torch_steps(count, size, rng):
    import torch
    from keras import ops

    grads_np = _gradients(rng, count, size)
    # On the device of Keras's variables, the GPU if there is one.
    grads = [ops.convert_to_tensor(g) for g in grads_np]
    loss = ops.convert_to_tensor(1.0)
    # Kernels on a GPU run asynchronously: a step is over when they are.
    synchronize = torch.cuda.synchronize if grads[0].is_cuda else lambda: None
    steps, state_bytes = {}, {}
    names = KERAS_OPTIMIZERS + [
        "keras-rprop irprop- (fused=False)",
        "keras-rprop irprop- (per-variable)",
    ]
    for name in names:
        optimizer, variables = _built_optimizer(name.split(" (")[0], grads_np)
        if name.startswith("keras-rprop"):
            # Said explicitly: `fused=None` compiles only on the CPU, and
            # only for >= 2**20 parameters (not in --quick).
            optimizer.fused = not name.endswith("(fused=False)")
        per_variable = name.endswith("(per-variable)")
        if per_variable:
            optimizer.fused = False
        kwargs = {"loss": loss} if _needs_loss(name) else {}

        def step(
            optimizer=optimizer,
            variables=variables,
            kwargs=kwargs,
            grads=_copies(grads),
            per_variable=per_variable,
        ):
            # The per-variable row takes Keras's loop over `update_step`.
            with _per_variable_path(per_variable), torch.no_grad():
                optimizer.apply(grads, variables, **kwargs)
            synchronize()

        if getattr(optimizer, "fused", False):
            # The first step compiles the kernel: reported, not timed.
            start = time.perf_counter()
            step()
            print(
                f"NOTE torch, {count} x {size:,}: {name}: first step, "
                f"compiling the kernel, {time.perf_counter() - start:.1f} s"
            )
        steps[name] = step
        state_bytes[name] = _state_bytes(_keras_state(optimizer), count * size)

    for foreach in (True, False):
        params = [torch.nn.Parameter(g * 0.0) for g in grads]
        for param, grad in zip(params, _copies(grads)):
            param.grad = grad
        optimizer = torch.optim.Rprop(params, lr=0.1, foreach=foreach)
        label = f"torch.optim.Rprop (foreach={foreach})"

        def torch_step(optimizer=optimizer):
            optimizer.step()
            synchronize()

        steps[label] = torch_step
        torch_step()
        state_bytes[label] = _state_bytes(
            [
                t.cpu().numpy()
                for state in optimizer.state.values()
                for t in state.values()
            ],
            count * size,
        )
    return steps, state_bytes


def run_backend(backend, cases, repeats, warmup):
    """Runs in the subprocess of one backend; returns JSON-able results."""
    if backend == "torch":
        # PyTorch must be imported before TensorFlow's libraries.
        import torch  # noqa: F401
    import keras
    import numpy as np

    make_steps = {
        "jax": _jax_steps,
        "tensorflow": _tensorflow_steps,
        "torch": _torch_steps,
    }[keras.backend.backend()]
    device = _device(backend)
    results = []
    for case, (count, size) in cases.items():
        rng = np.random.default_rng(0)
        steps, state_bytes = make_steps(count, size, rng)
        if device == "CPU":
            bandwidth_step, moved = _bandwidth_step()
        else:
            bandwidth_step, moved = _gpu_bandwidth_step(backend)
        steps["memory copy"] = bandwidth_step
        times = _interleaved(steps, repeats, warmup)
        copy_seconds = statistics.median(times.pop("memory copy"))
        for name, seconds in times.items():
            quartiles = statistics.quantiles(seconds, n=4)
            adam = times.get(_adam_for(name))
            paired = (None,) * 3
            if adam and name != _adam_for(name):
                paired = _paired_ratio(seconds, adam)
            results.append(
                {
                    "backend": backend,
                    "device": device,
                    "case": case,
                    "tensors": count,
                    "params": count * size,
                    "name": name,
                    "median_ms": 1e3 * statistics.median(seconds),
                    "q1_ms": 1e3 * quartiles[0],
                    "q3_ms": 1e3 * quartiles[2],
                    "state_bytes": state_bytes[name],
                    "bandwidth_gbs": moved / copy_seconds / 1e9,
                    "paired_adam": paired[0],
                    "paired_adam_low": paired[1],
                    "paired_adam_high": paired[2],
                }
            )
        del steps
    return results


def _adam_for(name):
    """The name of the Keras Adam row that `name` is compared with."""
    if name.endswith(("(jit)", "(graph)")):
        return "keras Adam" + name[name.rfind(" (") :]
    return "keras Adam"


def _paired_ratio(seconds, adam_seconds, resamples=2000):
    """The median of the per-round ratios to Adam, with a 95% interval.

    Both were timed in the same rounds, a few milliseconds apart, so the
    ratio of one round cancels the load that changes from round to round;
    it resolves differences of a few percent that the ratio of the two
    medians, each spread by that load, does not. The interval is a
    bootstrap of the median (fixed seed).
    """
    import numpy as np

    ratios = np.asarray(seconds) / np.asarray(adam_seconds)
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, (resamples, len(ratios))), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


# -- The report ------------------------------------------------------------


def _print_table(results):
    by_group = {}
    for row in results:
        by_group.setdefault((row["backend"], row["case"]), []).append(row)
    for (backend, case), rows in by_group.items():
        params = rows[0]["params"]
        bandwidth = rows[0]["bandwidth_gbs"]
        bound_ms = 1e3 * RPROP_BYTES * params / (bandwidth * 1e9)
        adam_bound_ms = 1e3 * ADAM_BYTES * params / (bandwidth * 1e9)
        print(
            f"\n== {backend} on {rows[0]['device']}, case ({case}): "
            f"{params:,} float32 parameters "
            f"in {rows[0]['tensors']} tensors; measured bandwidth "
            f"{bandwidth:.1f} GB/s -> bound {bound_ms:.2f} ms for Rprop "
            f"({RPROP_BYTES} B/param), {adam_bound_ms:.2f} ms for Adam "
            f"({ADAM_BYTES} B/param)"
        )
        print(
            f"{'update':44s} {'median ms':>9s} {'p25-p75 ms':>15s} "
            f"{'/Adam':>6s} {'paired /Adam':>17s} {'/bound':>6s} "
            f"{'torch/us':>8s} {'state B/p':>9s}"
        )
        adam = {
            row["name"]: row["median_ms"]
            for row in rows
            if row["name"].startswith("keras Adam")
        }
        torch_rprop = min(
            (r["median_ms"] for r in rows if "torch.optim" in r["name"]),
            default=None,
        )
        for row in rows:
            adam_ms = adam.get(_adam_for(row["name"]))
            is_ours = row["name"].startswith("keras-rprop")
            ratio = f"{row['median_ms'] / adam_ms:6.2f}" if adam_ms else ""
            own_bound = adam_bound_ms if "Adam" in row["name"] else bound_ms
            bound = f"{row['median_ms'] / own_bound:6.2f}"
            versus = (
                f"{torch_rprop / row['median_ms']:8.1f}"
                if torch_rprop and is_ours
                else ""
            )
            spread = f"{row['q1_ms']:.2f}-{row['q3_ms']:.2f}"
            paired = ""
            if row.get("paired_adam") is not None:
                paired = (
                    f"{row['paired_adam']:.3f} "
                    f"[{row['paired_adam_low']:.2f}-"
                    f"{row['paired_adam_high']:.2f}]"
                )
            print(
                f"{row['name']:44s} {row['median_ms']:9.2f} {spread:>15s} "
                f"{ratio:>6s} {paired:>17s} {bound:>6s} {versus:>8s} "
                f"{row['state_bytes']:9.2f}"
            )
    print(
        "\n/Adam: median over Keras Adam's on the same backend (TensorFlow: "
        "same jit_compile setting). paired /Adam: median of the ratios to "
        "that Adam's time in the same round, [95% interval]. /bound: median "
        "over the bandwidth bound of a step of that optimizer (an Rprop's "
        "for all but Adam). torch/us: fastest torch.optim.Rprop over ours. "
        "state B/p: optimizer state bytes per parameter."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="Comma-separated backends to run (default: all three).",
    )
    parser.add_argument(
        "--cases", default="a,b", help="Comma-separated cases: a, b."
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="Timed steps per variant."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10x fewer parameters and fewer repeats, for a smoke test.",
    )
    parser.add_argument("--json", help="Also write the results to this file.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sizes = QUICK_CASES if args.quick else CASES
    cases = {c: sizes[c] for c in args.cases.split(",")}
    repeats = args.repeats or (5 if args.quick else 30)
    warmup = 2 if args.quick else 3

    if args.worker:
        results = run_backend(args.worker, cases, repeats, warmup)
        print("RESULTS " + json.dumps(results))
        return

    results, notes = [], []
    # One process per backend and case: a process that ran the eager
    # PyTorch path on case (a) ran the fused case (b) at twice its time
    # (glibc raises its mmap threshold after freeing large blocks), and a
    # training process holds one model.
    runs = [
        (backend, case)
        for backend in args.backends.split(",")
        for case in args.cases.split(",")
    ]
    for backend, case in runs:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            backend,
            "--cases",
            case,
            "--repeats",
            str(repeats),
        ]
        if args.quick:
            command.append("--quick")
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [
            line
            for line in done.stdout.splitlines()
            if line.startswith("RESULTS ")
        ]
        if done.returncode or not lines:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"The {backend} benchmark failed.")
        results.extend(json.loads(lines[-1][len("RESULTS ") :]))
        notes += [
            line[len("NOTE ") :]
            for line in done.stdout.splitlines()
            if line.startswith("NOTE ")
        ]
    _print_table(results)
    for note in notes:
        print(note)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
