"""Tables, CSV and JSON from the results of a comparison."""

import csv
import json
import math

import numpy as np

from keras_rprop.compare import problems as problems_lib


def summarize(results):
    """Aggregates the runs of each (problem, optimizer) over the seeds.

    Epochs to target are summarized over all seeds with "not reached"
    counted as infinitely many epochs, so the median is "not reached" when
    more than half of the seeds missed the target; the spread is over the
    seeds that reached it.

    Args:
        results: A list of `RunResult`.

    Returns:
        A list of dicts, one per (problem, optimizer) in order of first
        appearance, with the keys `problem`, `optimizer`, `runs`, `reached`,
        `epochs_median`, `epochs_min`, `epochs_max` (`None` when not reached),
        `loss_median`, `loss_min`, `loss_max`, `metric_median`, `metric_min`,
        `metric_max` and `time_median`.
    """
    groups = {}
    for result in results:
        groups.setdefault((result.problem, result.optimizer), []).append(result)
    rows = []
    for (problem, optimizer), runs in groups.items():
        epochs = [
            math.inf if r.epochs_to_target is None else r.epochs_to_target
            for r in runs
        ]
        reached = [e for e in epochs if e != math.inf]
        median = float(np.median(epochs))
        losses = [r.final_loss for r in runs]
        metrics = [r.test_metric for r in runs]
        rows.append(
            {
                "problem": problem,
                "optimizer": optimizer,
                "runs": len(runs),
                "reached": len(reached),
                "epochs_median": None if median == math.inf else median,
                "epochs_min": min(reached) if reached else None,
                "epochs_max": max(reached) if reached else None,
                "loss_median": float(np.median(losses)),
                "loss_min": float(np.min(losses)),
                "loss_max": float(np.max(losses)),
                "metric_median": float(np.median(metrics)),
                "metric_min": float(np.min(metrics)),
                "metric_max": float(np.max(metrics)),
                "time_median": float(np.median([r.wall_time for r in runs])),
            }
        )
    return rows


def _epochs_cell(row):
    if row["epochs_median"] is None:
        if row["reached"]:
            return (
                f"not reached (reached: {row['epochs_min']}-"
                f"{row['epochs_max']})"
            )
        return "not reached"
    median = f"{row['epochs_median']:g}"
    return f"{median} ({row['epochs_min']}-{row['epochs_max']})"


def format_table(problem, rows):
    """A Markdown table of one problem's summary rows, aligned for terminals.

    Args:
        problem: The `Problem` (or its name).
        rows: Rows of `summarize` for this problem.

    Returns:
        The table as a string, without a trailing newline.
    """
    if isinstance(problem, str):
        problem = problems_lib.get_problem(problem)
    spread = "median (min-max)"
    header = [
        "optimizer",
        "reached",
        f"epochs to loss {problem.target_loss:g}, {spread}",
        f"final loss, {spread}",
        f"{problem.metric_name}, {spread}",
        "time (s), median",
    ]
    metric_format = ".1f" if problem.task == problems_lib.REGRESSION else ".3f"
    body = [
        [
            row["optimizer"],
            f"{row['reached']}/{row['runs']}",
            _epochs_cell(row),
            f"{row['loss_median']:.2e} ({row['loss_min']:.1e}-"
            f"{row['loss_max']:.1e})",
            f"{row['metric_median']:{metric_format}} "
            f"({row['metric_min']:{metric_format}}-"
            f"{row['metric_max']:{metric_format}})",
            f"{row['time_median']:.2f}",
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(6)]

    def line(cells):
        padded = (cell.ljust(width) for cell, width in zip(cells, widths))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule] + [line(cells) for cells in body])


def format_report(results, header=""):
    """One titled table per problem, as Markdown.

    Args:
        results: A list of `RunResult`.
        header: Text placed before the tables (e.g. the command and backend).

    Returns:
        The report as a string.
    """
    rows = summarize(results)
    parts = [header.rstrip()] if header else []
    for name in dict.fromkeys(row["problem"] for row in rows):
        problem = problems_lib.get_problem(name)
        seeds = len({r.seed for r in results if r.problem == name})
        epochs = next(r.epochs for r in results if r.problem == name)
        parts.append(
            f"## {name}\n\n{problem.summary}. Loss {problem.loss_label}, "
            f"{epochs} epochs, {seeds} seed{'s' if seeds > 1 else ''}.\n\n"
            + format_table(
                problem, [row for row in rows if row["problem"] == name]
            )
        )
    return "\n\n".join(parts) + "\n"


RUN_FIELDS = (
    "problem",
    "optimizer",
    "seed",
    "backend",
    "epochs",
    "batch_size",
    "epochs_to_target",
    "final_loss",
    "test_metric",
    "wall_time",
)


def write_csv(results, path):
    """Writes one row per run (without the loss curves) to `path`."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(RUN_FIELDS + ("metric",))
        for result in results:
            problem = problems_lib.get_problem(result.problem)
            writer.writerow(
                [_csv_value(getattr(result, f)) for f in RUN_FIELDS]
                + [problem.metric_name]
            )


def _csv_value(value):
    return "" if value is None else value


def write_json(results, path, metadata=None):
    """Writes the problems, the summary and every run with its loss curve.

    Args:
        results: A list of `RunResult`.
        path: File to write.
        metadata: Optional dict stored under `"metadata"` (command, backend,
            versions).
    """
    names = list(dict.fromkeys(r.problem for r in results))
    problems = {}
    for name in names:
        problem = problems_lib.get_problem(name)
        problems[name] = {
            "summary": problem.summary,
            "hidden": list(problem.hidden),
            "activation": problem.activation,
            "output_activation": problem.output_activation,
            "loss": problem.loss_label,
            "target_loss": problem.target_loss,
            "metric": problem.metric_name,
        }
    runs = []
    for result in results:
        run = {field: getattr(result, field) for field in RUN_FIELDS}
        run["losses"] = list(result.losses)
        runs.append(run)
    document = {
        "metadata": metadata or {},
        "problems": problems,
        "summary": summarize(results),
        "runs": runs,
    }
    with open(path, "w") as file:
        json.dump(_jsonable(document), file, indent=1, allow_nan=False)
        file.write("\n")


def _jsonable(value):
    """`value` with NumPy numbers as Python ones and NaN/inf as strings.

    JSON has no NaN or infinity; a diverged run keeps a readable record.
    """
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else str(value)
