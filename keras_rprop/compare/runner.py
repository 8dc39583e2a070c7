"""Runs every optimizer on every problem and seed from the same start."""

import dataclasses
import time
from typing import Callable, Optional

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
            keeps the optimizer's default learning rate.
        batch_size: `None` for full-batch training, else the mini-batch size.
        learning_rate: Learning rate given as `name:rate` on the command
            line, or `None` for the default.
    """

    name: str
    summary: str
    build: Callable
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None

    @property
    def label(self):
        if self.learning_rate is None:
            return self.name
        return f"{self.name}:{self.learning_rate:g}"

    def make(self):
        return self.build(self.learning_rate)


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
        "every epoch",
        _keras_optimizer(keras.optimizers.Adam),
        batch_size=32,
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

    Attributes:
        problem, optimizer, seed, backend: What ran where.
        epochs: Epoch budget.
        batch_size: `None` for full batch.
        losses: Training loss on the whole training set before training and
            after each epoch (`epochs + 1` values).
        epochs_to_target: First epoch after which the training loss was at
            or below the problem's target, or `None` if it never was.
        final_loss: Training loss after the last epoch.
        test_metric: Test accuracy, or test RMSE for regression.
        wall_time: Seconds spent training. The first seed of each
            optimizer also pays for compiling the training step.
    """

    problem: str
    optimizer: str
    seed: int
    backend: str
    epochs: int
    batch_size: Optional[int]
    losses: np.ndarray
    epochs_to_target: Optional[int]
    final_loss: float
    test_metric: float
    wall_time: float


def epochs_to_target(losses, target):
    """First epoch whose loss is at or below `target`, or `None`."""
    reached = np.flatnonzero(np.asarray(losses) <= target)
    return int(reached[0]) if reached.size else None


def run_seeds(problem, spec, seeds, epochs=None, data=None, engine="loop"):
    """Trains one optimizer on one problem from the weights of each seed.

    The model and its compiled training step are made once and reset to the
    initial weights of every seed (and the optimizer to its initial state).

    Args:
        problem: A `Problem` or its name.
        spec: An `OptimizerSpec` or its name (`"name:rate"` allowed).
        seeds: List of integer seeds of the initial weights (and of the
            shuffling of mini-batches).
        epochs: Epoch budget; defaults to the problem's.
        data: The problem's data, if already loaded.
        engine: `"loop"` or `"fit"`, see `trainers`.

    Yields:
        A `RunResult` per seed.
    """
    if isinstance(problem, str):
        problem = problems_lib.get_problem(problem)
    spec = get_optimizer(spec)
    data = data if data is not None else problem.load()
    epochs = problem.epochs if epochs is None else epochs
    # Frees the previous model's graphs and layer names; a full garbage
    # collection would cost more than a small run.
    keras.utils.clear_session(free_memory=False)
    model = problem.build_model(data, seeds[0])
    trainer = trainers.make_trainer(
        model, spec.make(), problem.make_loss(), engine
    )
    shapes = [tuple(w.shape) for w in model.weights]
    for seed in seeds:
        trainer.reset(problems_lib.initial_weights(shapes, seed))
        start = time.perf_counter()
        losses = trainer.train(
            data.x_train, data.y_train, epochs, spec.batch_size, seed
        )
        wall_time = time.perf_counter() - start
        predictions = keras.ops.convert_to_numpy(
            model(data.x_test, training=False)
        )
        yield RunResult(
            problem=problem.name,
            optimizer=spec.label,
            seed=int(seed),
            backend=keras.backend.backend(),
            epochs=int(epochs),
            batch_size=spec.batch_size,
            losses=losses,
            epochs_to_target=epochs_to_target(losses, problem.target_loss),
            final_loss=float(losses[-1]),
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


def resolve(problems, optimizers, seeds, epochs, engine="loop"):
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
    if engine not in trainers.ENGINES:
        raise ValueError(
            f"Argument `engine` must be one of {trainers.ENGINES}. "
            f"Received: engine={engine!r}"
        )
    return problems, specs, _seed_list(seeds)


def run_comparison(
    problems=None,
    optimizers=None,
    seeds=5,
    epochs=None,
    engine="loop",
    log=print,
):
    """Trains every optimizer on every problem for every seed.

    Args:
        problems: Problem names (or `Problem`s); defaults to
            `problems.DEFAULT_PROBLEMS`.
        optimizers: Optimizer names, optionally `"name:learning_rate"`;
            defaults to all of `OPTIMIZERS`.
        seeds: Number of seeds (0, 1, ...) or a list of seeds.
        epochs: Epoch budget for every problem; defaults to each problem's.
        engine: `"loop"` (a compiled step per backend) or `"fit"` (Keras's
            `fit`, through `keras_rprop.fit_full_batch` for full batches).
        log: Function called with one line of progress per run, or `None`.

    Returns:
        A list of `RunResult`: problem by problem, optimizer by optimizer,
        seed by seed.
    """
    problems, specs, seeds = resolve(
        problems, optimizers, seeds, epochs, engine
    )
    total = len(problems) * len(specs) * len(seeds)
    results = []
    for problem in problems:
        data = problem.load()
        for spec in specs:
            for result in run_seeds(problem, spec, seeds, epochs, data, engine):
                results.append(result)
                if log:
                    log(_progress_line(len(results), total, problem, result))
    return results


def _progress_line(index, total, problem, result):
    width = len(str(total))
    if result.epochs_to_target is None:
        reached = "target not reached"
    else:
        reached = f"target at epoch {result.epochs_to_target}"
    return (
        f"[{index:>{width}}/{total}] {problem.name} {result.optimizer:<10} "
        f"seed {result.seed}: loss {result.final_loss:.3g}, {reached}, "
        f"{problem.metric_name} {result.test_metric:.3f}, "
        f"{result.wall_time:.2f} s"
    )
