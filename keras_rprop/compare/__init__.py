"""`keras-rprop compare`: the Rprop variants against Adam, SGD, L-BFGS and LM.

Trains the same network from the same initial weights with every optimizer
on classic Rprop benchmarks and on data sets bundled with scikit-learn, for
several seeds, then prints a table per problem (epochs, gradient evaluations
and seconds to the target loss) and writes a loss-curve plot, a CSV and a
JSON file. Keras optimizers train through `keras_rprop.fit_full_batch` (full
batch) and `model.fit` (mini-batches); `lbfgs` and `lm` are SciPy's L-BFGS-B
and Levenberg-Marquardt on the model's weights. From Python:

```python
from keras_rprop import compare

results = compare.run(problems=["encoder"], seeds=3, output="results")
```
"""

import os
import platform
import sys
import time

import keras

from keras_rprop.compare import plot
from keras_rprop.compare import report
from keras_rprop.compare.problems import DEFAULT_PROBLEMS
from keras_rprop.compare.problems import PROBLEMS
from keras_rprop.compare.problems import Problem
from keras_rprop.compare.problems import register
from keras_rprop.compare.runner import DEFAULT_OPTIMIZERS
from keras_rprop.compare.runner import OPTIMIZERS
from keras_rprop.compare.runner import RunResult
from keras_rprop.compare.runner import run_comparison

DEFAULT_SEEDS = 5
DEFAULT_OUTPUT = "compare-results"

TABLE_FILE = "table.md"
CSV_FILE = "runs.csv"
JSON_FILE = "results.json"
PLOT_FILE = "loss_curves.png"


def run(
    problems=None,
    optimizers=None,
    seeds=DEFAULT_SEEDS,
    epochs=None,
    output=DEFAULT_OUTPUT,
    plot_x=plot.DEFAULT_X,
    verbose=True,
    command=None,
):
    """Runs the comparison, prints the tables and writes the result files.

    Args:
        problems: Names of problems in `PROBLEMS`; defaults to
            `DEFAULT_PROBLEMS`.
        optimizers: Names in `OPTIMIZERS`, each optionally followed by
            `:learning_rate` (e.g. `"adam:0.01"`); defaults to all.
        seeds: Number of seeds (0, 1, ...) or a list of seeds. Each seed
            gives every optimizer the same initial weights.
        epochs: Epoch budget for every problem; defaults to each problem's.
        output: Folder for `table.md`, `runs.csv`, `results.json` and
            `loss_curves.png` (created if missing), or `None` to write
            nothing.
        plot_x: The plot's x axis, or a list of them, a row of panels
            each: `"evaluations"` (gradient evaluations on the training
            set), `"seconds"` or `"epochs"`; see
            `plot.loss_curves_figure`.
        verbose: Whether to print one line per run and the tables.
        command: The command line to record with the results.

    Returns:
        The list of `RunResult`, one per problem, seed and optimizer.
    """
    log = print_flush if verbose else None
    start = time.perf_counter()
    try:
        plot_x = plot.x_axes(plot_x)
    except (TypeError, ValueError):
        raise ValueError(
            f"Argument `plot_x` must be one of {plot.X_AXES} or a non-empty "
            f"list of them. Received: plot_x={plot_x!r}"
        ) from None
    results = run_comparison(
        problems=problems,
        optimizers=optimizers,
        seeds=seeds,
        epochs=epochs,
        log=log,
    )
    total_time = time.perf_counter() - start
    backend = keras.backend.backend()
    header = (
        f"Keras {keras.__version__}, backend {backend}, "
        f"{sum(r.skipped is None for r in results)} runs in "
        f"{total_time:.0f} s."
    )
    if command:
        header = f"`{command}`\n\n{header}"
    text = report.format_report(results, header)
    if verbose:
        print_flush("\n" + text)
    if output is not None:
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, TABLE_FILE), "w") as file:
            file.write(text)
        report.write_csv(results, os.path.join(output, CSV_FILE))
        report.write_json(
            results,
            os.path.join(output, JSON_FILE),
            metadata=_metadata(command, backend, total_time),
        )
        plot.plot_loss_curves(
            results, os.path.join(output, PLOT_FILE), x_axis=plot_x
        )
        if verbose:
            names = ", ".join((TABLE_FILE, CSV_FILE, JSON_FILE, PLOT_FILE))
            print_flush(f"Wrote {names} to {os.path.abspath(output)}")
    return results


def print_flush(line):
    print(line, flush=True)


def _metadata(command, backend, total_time):
    from keras_rprop import __version__

    return {
        "command": command,
        "backend": backend,
        "keras_version": keras.__version__,
        "keras_rprop_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "total_time_s": round(total_time, 2),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


__all__ = [
    "DEFAULT_OPTIMIZERS",
    "DEFAULT_PROBLEMS",
    "OPTIMIZERS",
    "PROBLEMS",
    "Problem",
    "RunResult",
    "register",
    "run",
]
