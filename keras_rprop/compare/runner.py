"""Runs every optimizer on every problem and seed from the same start."""

import dataclasses
import time
from collections.abc import Callable

import keras
import numpy as np

from keras_rprop.compare import problems as problems_lib
from keras_rprop.compare import trainers
from keras_rprop.optimizers import Rprop
from keras_rprop.rule import VARIANTS


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer of the comparison and how it is trained.

    Attributes:
        name: Name on the command line and in the tables.
        summary: What it is, for `--list`.
        build: Function `(learning_rate or None) -> keras optimizer`; `None`
            keeps the optimizer's default learning rate. `None` for the
            SciPy methods.
        batch_size: `None` for full-batch training, else the mini-batch size.
        learning_rate: Learning rate given as `name:rate` on the command
            line, or `None` for the default.
        method: `None` for a Keras optimizer, `"lbfgs"` or `"lm"` for
            SciPy's L-BFGS-B and Levenberg-Marquardt.
    """

    name: str
    summary: str
    build: Callable | None
    batch_size: int | None = None
    learning_rate: float | None = None
    method: str | None = None

    @property
    def label(self):
        if self.learning_rate is None:
            return self.name
        return f"{self.name}:{self.learning_rate:g}"

    def make(self):
        return self.build(self.learning_rate)

    def skip_reason(self, problem, data):
        """Why this optimizer does not run on `problem`, or `None`."""
        samples = len(data.x_train)
        if self.batch_size is not None and samples <= self.batch_size:
            return (
                f"skipped: {samples} training samples, so one batch of "
                f"{self.batch_size} is the full batch"
            )
        if self.method == "lm":
            if problem.loss != "MeanSquaredError":
                return (
                    "skipped: Levenberg-Marquardt needs a squared-error loss "
                    f"(this problem's is {problem.loss})"
                )
            residuals = samples * problem.output_units(data)
            weights = _count_weights(problem, data)
            if residuals < weights:
                return (
                    f"skipped: Levenberg-Marquardt needs at least as many "
                    f"residuals ({residuals}) as weights ({weights})"
                )
        return None


def _count_weights(problem, data):
    sizes = [data.x_train.shape[1], *problem.hidden, problem.output_units(data)]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _keras_optimizer(cls):
    def build(learning_rate):
        if learning_rate is None:
            return cls()
        return cls(learning_rate=learning_rate)

    return build


def _rprop(variant):
    def build(learning_rate):
        return Rprop(variant, learning_rate=learning_rate or 1.0)

    return build


# Every optimizer runs with its library's defaults: the comparison shows what
# one gets without tuning. `name:rate` on the command line sets a learning
# rate (for Rprop, a factor on every move).
OPTIMIZERS = {
    **{
        variant: OptimizerSpec(
            variant,
            f"keras_rprop.Rprop({variant!r}), defaults, full batch",
            _rprop(variant),
        )
        for variant in VARIANTS
    },
    "adam": OptimizerSpec(
        "adam",
        "keras.optimizers.Adam, defaults (learning rate 0.001), full batch",
        _keras_optimizer(keras.optimizers.Adam),
    ),
    "sgd": OptimizerSpec(
        "sgd",
        "keras.optimizers.SGD, defaults (learning rate 0.01), full batch",
        _keras_optimizer(keras.optimizers.SGD),
    ),
    "adam-mb32": OptimizerSpec(
        "adam-mb32",
        "keras.optimizers.Adam, defaults, mini-batches of 32 reshuffled "
        "every epoch (skipped when the training set fits in one batch)",
        _keras_optimizer(keras.optimizers.Adam),
        batch_size=32,
    ),
    "lbfgs": OptimizerSpec(
        "lbfgs",
        "scipy.optimize.minimize(method='L-BFGS-B'), defaults, at most "
        "EPOCHS iterations and loss-and-gradient evaluations",
        None,
        method="lbfgs",
    ),
    "lm": OptimizerSpec(
        "lm",
        "scipy.optimize.least_squares(method='lm'), Levenberg-Marquardt, "
        "defaults, at most EPOCHS residual evaluations; squared-error "
        "problems only",
        None,
        method="lm",
    ),
}

DEFAULT_OPTIMIZERS = tuple(OPTIMIZERS)


def get_optimizer(spec):
    """Parses `"name"` or `"name:learning_rate"` into an `OptimizerSpec`."""
    if isinstance(spec, OptimizerSpec):
        return spec
    name, _, rate = str(spec).partition(":")
    if name not in OPTIMIZERS:
        raise ValueError(
            "Argument `optimizers` must name optimizers among "
            f"{list(OPTIMIZERS)}, optionally as name:learning_rate. "
            f"Received: {spec!r}"
        )
    if not rate:
        return OPTIMIZERS[name]
    if OPTIMIZERS[name].method is not None:
        raise ValueError(
            f"Argument `optimizers`: {name} has no learning rate. "
            f"Received: {spec!r}"
        )
    try:
        learning_rate = float(rate)
    except ValueError:
        learning_rate = float("nan")
    if not learning_rate > 0 or not np.isfinite(learning_rate):
        raise ValueError(
            "Argument `optimizers`: a learning rate after ':' must be a "
            f"positive number. Received: {spec!r}"
        )
    return dataclasses.replace(OPTIMIZERS[name], learning_rate=learning_rate)


@dataclasses.dataclass
class RunResult:
    """The outcome of training one optimizer on one problem from one seed.

    The curves hold one point per epoch (per iteration for `lbfgs` and
    `lm`), the first at the initial weights.

    Attributes:
        problem, optimizer, seed, backend: What ran where.
        epochs: Budget (epochs; iterations and evaluations for `lbfgs`,
            residual evaluations for `lm`).
        batch_size: `None` for full batch.
        losses: Training loss on the whole training set.
        loss_evaluations: Loss evaluations the optimizer had made when each
            loss was known; with mini-batches, one pass over the training
            set counts as one.
        gradient_evaluations: Gradient evaluations by then (Jacobian
            evaluations for `lm`).
        times: Seconds from the start of the run until each loss was known.
            The first seed of each optimizer also pays for compiling.
        epochs_to_target: First epoch (iteration) whose loss was at or below
            the problem's target, or `None` if none was.
        evaluations_to_target: Gradient evaluations at that point.
        seconds_to_target: Seconds at that point.
        final_loss: The last loss.
        test_metric: Test accuracy, or test RMSE for regression.
        wall_time: Seconds spent on the run.
        skipped: Why the optimizer did not run on the problem, or `None`.
            A skipped optimizer has one result, with `seed=None`, empty
            curves and NaN numbers.
    """

    problem: str
    optimizer: str
    seed: int | None
    backend: str
    epochs: int
    batch_size: int | None
    losses: np.ndarray
    loss_evaluations: np.ndarray
    gradient_evaluations: np.ndarray
    times: np.ndarray
    epochs_to_target: int | None
    evaluations_to_target: float | None
    seconds_to_target: float | None
    final_loss: float
    test_metric: float
    wall_time: float
    skipped: str | None = None


def epochs_to_target(losses, target):
    """First epoch whose loss is at or below `target`, or `None`."""
    reached = np.flatnonzero(np.asarray(losses) <= target)
    return int(reached[0]) if reached.size else None


def _result(problem, spec, seed, epochs, curve=None, skipped=None, **rest):
    empty = np.zeros(0)
    losses, loss_evals, grad_evals, times = (
        curve.arrays() if curve is not None else (empty,) * 4
    )
    index = epochs_to_target(losses, problem.target_loss)
    return RunResult(
        problem=problem.name,
        optimizer=spec.label,
        seed=seed,
        backend=keras.backend.backend(),
        epochs=int(epochs),
        batch_size=spec.batch_size,
        losses=losses,
        loss_evaluations=loss_evals,
        gradient_evaluations=grad_evals,
        times=times,
        epochs_to_target=index,
        evaluations_to_target=(
            None if index is None else float(grad_evals[index])
        ),
        seconds_to_target=None if index is None else float(times[index]),
        final_loss=float(losses[-1]) if losses.size else float("nan"),
        skipped=skipped,
        **rest,
    )


def run_seeds(problem, spec, seeds, epochs=None, data=None):
    """Trains one optimizer on one problem from the weights of each seed.

    The model and its compiled functions are made once and reset to the
    initial weights of every seed (and the optimizer to its initial state).

    Args:
        problem: A `Problem` or its name.
        spec: An `OptimizerSpec` or its name (`"name:rate"` allowed).
        seeds: List of integer seeds of the initial weights (and of the
            shuffling of mini-batches).
        epochs: Epoch budget; defaults to the problem's
            (`Problem.epoch_budget`).
        data: The problem's data, if already loaded.

    Yields:
        A `RunResult` per seed, or one with `skipped` set when the
        optimizer does not apply to the problem.
    """
    if isinstance(problem, str):
        problem = problems_lib.get_problem(problem)
    spec = get_optimizer(spec)
    data = data if data is not None else problem.load()
    if epochs is None:
        epochs = problem.epoch_budget(mini_batch=spec.batch_size is not None)
    skipped = spec.skip_reason(problem, data)
    if skipped:
        yield _result(
            problem,
            spec,
            None,
            epochs,
            skipped=skipped,
            test_metric=float("nan"),
            wall_time=float("nan"),
        )
        return
    # Frees the previous model's graphs and layer names; a full garbage
    # collection would cost more than a small run.
    keras.utils.clear_session(free_memory=False)
    model = problem.build_model(data, seeds[0])
    trainer = trainers.make_trainer(model, spec, problem, data)
    shapes = [tuple(w.shape) for w in model.weights]
    for seed in seeds:
        weights = problems_lib.initial_weights(shapes, seed)
        start = time.perf_counter()
        curve = trainer.run(weights, epochs, seed)
        wall_time = time.perf_counter() - start
        predictions = keras.ops.convert_to_numpy(
            model(data.x_test, training=False)
        )
        yield _result(
            problem,
            spec,
            int(seed),
            epochs,
            curve,
            test_metric=problem.test_metric(data, predictions),
            wall_time=wall_time,
        )


def _seed_list(seeds):
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(
                f"Argument `seeds` must be at least 1. Received: seeds={seeds}"
            )
        return list(range(int(seeds)))
    seeds = list(seeds)
    if not seeds or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool)
        for s in seeds
    ):
        raise ValueError(
            "Argument `seeds` must be a positive count or a non-empty list "
            f"of integers. Received: seeds={seeds!r}"
        )
    return [int(s) for s in seeds]


def resolve(problems, optimizers, seeds, epochs):
    """Checks the arguments of `run_comparison` and resolves the names.

    Returns:
        A tuple `(problems, optimizer_specs, seeds)` of lists.
    """
    if isinstance(problems, str) or isinstance(optimizers, str):
        raise ValueError(
            "Arguments `problems` and `optimizers` must be lists of names. "
            f"Received: problems={problems!r}, optimizers={optimizers!r}"
        )
    problems = [
        (
            p
            if isinstance(p, problems_lib.Problem)
            else problems_lib.get_problem(p)
        )
        for p in (problems or problems_lib.DEFAULT_PROBLEMS)
    ]
    specs = [get_optimizer(o) for o in (optimizers or DEFAULT_OPTIMIZERS)]
    if len({spec.label for spec in specs}) < len(specs):
        raise ValueError(
            "Argument `optimizers` must not name an optimizer twice. "
            f"Received: optimizers={optimizers!r}"
        )
    if epochs is not None and (
        isinstance(epochs, bool)
        or not isinstance(epochs, (int, np.integer))
        or epochs < 1
    ):
        raise ValueError(
            "Argument `epochs` must be a positive integer. "
            f"Received: epochs={epochs!r}"
        )
    return problems, specs, _seed_list(seeds)


def run_comparison(
    problems=None,
    optimizers=None,
    seeds=5,
    epochs=None,
    log=print,
):
    """Trains every optimizer on every problem for every seed.

    Args:
        problems: Problem names (or `Problem`s); defaults to
            `problems.DEFAULT_PROBLEMS`.
        optimizers: Optimizer names, optionally `"name:learning_rate"`;
            defaults to all of `OPTIMIZERS`.
        seeds: Number of seeds (0, 1, ...) or a list of seeds.
        epochs: Epoch budget for every problem and optimizer; defaults to
            each problem's (`Problem.epoch_budget`).
        log: Function called with one line of progress per run, or `None`.

    Returns:
        A list of `RunResult`: problem by problem, optimizer by optimizer,
        seed by seed.
    """
    problems, specs, seeds = resolve(problems, optimizers, seeds, epochs)
    total = len(problems) * len(specs) * len(seeds)
    done = 0
    results = []
    for problem in problems:
        data = problem.load()
        for spec in specs:
            for result in run_seeds(problem, spec, seeds, epochs, data):
                results.append(result)
                done += len(seeds) if result.skipped else 1
                if log:
                    log(_progress_line(done, total, problem, result))
    return results


def _progress_line(index, total, problem, result):
    width = len(str(total))
    prefix = f"[{index:>{width}}/{total}] {problem.name} {result.optimizer:<10}"
    if result.skipped:
        return f"{prefix} {result.skipped}"
    if result.epochs_to_target is None:
        reached = "target not reached"
    else:
        reached = (
            f"target at epoch {result.epochs_to_target} "
            f"({result.evaluations_to_target:g} gradient evaluations, "
            f"{result.seconds_to_target:.2f} s)"
        )
    return (
        f"{prefix} seed {result.seed}: loss {result.final_loss:.3g}, "
        f"{reached}, {problem.metric_name} {result.test_metric:.3f}, "
        f"{result.wall_time:.2f} s"
    )
