"""Tables, CSV and JSON from the results of a comparison."""

import csv
import json
import math

import numpy as np

from keras_rprop.compare import problems as problems_lib


def summarize(results):
    """Aggregates the runs of each (problem, optimizer) over the seeds.

    Epochs, gradient evaluations and seconds to target are summarized over
    all seeds with "not reached" counted as infinitely many, so the median
    is "not reached" when more than half of the seeds missed the target; the
    spread is over the seeds that reached it.

    Args:
        results: A list of `RunResult`.

    Returns:
        A list of dicts, one per (problem, optimizer) in order of first
        appearance, with the keys `problem`, `optimizer`, `runs`, `reached`,
        `skipped` (the reason, or `None`), and for each of `epochs`,
        `evaluations` and `seconds` (to target) `<key>_median`, `<key>_min`
        and `<key>_max` (`None` when not reached), then `loss_median`,
        `loss_min`, `loss_max`, `metric_median`, `metric_min`, `metric_max`
        and `time_median`.
    """
    groups = {}
    for result in results:
        groups.setdefault((result.problem, result.optimizer), []).append(result)
    rows = []
    for (problem, optimizer), runs in groups.items():
        row = {"problem": problem, "optimizer": optimizer}
        if runs[0].skipped:
            row.update(runs=0, reached=0, skipped=runs[0].skipped)
            rows.append(row)
            continue
        row.update(runs=len(runs), skipped=None)
        for key, attribute in (
            ("epochs", "epochs_to_target"),
            ("evaluations", "evaluations_to_target"),
            ("seconds", "seconds_to_target"),
        ):
            values = [getattr(r, attribute) for r in runs]
            reached = [v for v in values if v is not None]
            median = float(
                np.median([math.inf if v is None else v for v in values])
            )
            row[f"{key}_median"] = None if median == math.inf else median
            row[f"{key}_min"] = min(reached) if reached else None
            row[f"{key}_max"] = max(reached) if reached else None
            row["reached"] = len(reached)
        for key, values in (
            ("loss", [r.final_loss for r in runs]),
            ("metric", [r.test_metric for r in runs]),
        ):
            row[f"{key}_median"] = float(np.median(values))
            row[f"{key}_min"] = float(np.min(values))
            row[f"{key}_max"] = float(np.max(values))
        row["time_median"] = float(np.median([r.wall_time for r in runs]))
        rows.append(row)
    return rows


def _to_target_cell(row, key, number_format, spread=True):
    median = row[f"{key}_median"]
    low, high = row[f"{key}_min"], row[f"{key}_max"]
    if median is None:
        if row["reached"] and spread:
            return (
                f"not reached (reached: {low:{number_format}}-"
                f"{high:{number_format}})"
            )
        return "not reached"
    if not spread:
        return f"{median:{number_format}}"
    low, high = f"{low:{number_format}}", f"{high:{number_format}}"
    return f"{median:{number_format}} ({low}-{high})"


# Footnotes for the optimizers whose epochs and evaluations differ in kind.
NOTES = {
    "lbfgs": "lbfgs: epochs are L-BFGS-B iterations, each of one or more "
    "loss-and-gradient evaluations.",
    "lm": "lm: epochs are Levenberg-Marquardt iterations (accepted steps); "
    "its gradient evaluations are evaluations of the Jacobian of the "
    "residuals, one row per residual.",
    "adam-mb32": "adam-mb32: one pass over the training set counts as one "
    "gradient evaluation; the loss on the whole training set is measured "
    "off the clock.",
}


def format_table(problem, rows):
    """A Markdown table of one problem's summary rows, aligned for terminals.

    Args:
        problem: The `Problem` (or its name).
        rows: Rows of `summarize` for this problem.

    Returns:
        The table as a string, without a trailing newline, followed by a
        line per skipped optimizer saying why.
    """
    if isinstance(problem, str):
        problem = problems_lib.get_problem(problem)
    target = f"{problem.target_loss:g}"
    header = [
        "optimizer",
        "reached",
        f"epochs to loss {target}, median (min-max)",
        f"gradient evaluations to {target}, median",
        f"seconds to {target}, median",
        "final loss, median (min-max)",
        f"{problem.metric_name}, median (min-max)",
        "time (s), median",
    ]
    # Errors in the target's units, of any size: significant digits.
    metric_format = ".3g" if problem.task == problems_lib.REGRESSION else ".3f"
    body, notes = [], []
    for row in rows:
        if row["skipped"]:
            body.append([row["optimizer"], "skipped, see below"] + ["-"] * 6)
            notes.append(f"{row['optimizer']} {row['skipped']}.")
            continue
        body.append(
            [
                row["optimizer"],
                f"{row['reached']}/{row['runs']}",
                _to_target_cell(row, "epochs", "g"),
                _to_target_cell(row, "evaluations", ".4g", spread=False),
                _to_target_cell(row, "seconds", ".3g", spread=False),
                f"{row['loss_median']:.2e} ({row['loss_min']:.1e}-"
                f"{row['loss_max']:.1e})",
                f"{row['metric_median']:{metric_format}} "
                f"({row['metric_min']:{metric_format}}-"
                f"{row['metric_max']:{metric_format}})",
                f"{row['time_median']:.3g}",
            ]
        )
    columns = len(header)
    widths = [
        max(len(line[i]) for line in [header] + body) for i in range(columns)
    ]

    def line(cells):
        padded = (cell.ljust(width) for cell, width in zip(cells, widths))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    table = "\n".join([line(header), rule] + [line(cells) for cells in body])
    if notes:
        table += "\n\n" + "\n".join(notes)
    return table


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
        seeds = len(
            {r.seed for r in results if r.problem == name and not r.skipped}
        )
        parts.append(
            f"## {name}\n\n{problem.summary}. Loss {problem.loss_label}, "
            f"{_budgets(results, name)}, "
            f"{seeds} seed{'s' if seeds != 1 else ''}.\n\n"
            + format_table(
                problem, [row for row in rows if row["problem"] == name]
            )
        )
    names = {r.optimizer.split(":")[0] for r in results if not r.skipped}
    notes = [note for name, note in NOTES.items() if name in names]
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts) + "\n"


def _budgets(results, name):
    """`"1000 epochs"`, or `"1000 epochs (adam-mb32: 100)"` if they differ."""
    budgets = {}
    for result in results:
        if result.problem == name:
            budgets.setdefault(result.epochs, []).append(result.optimizer)
    common = max(budgets, key=lambda epochs: len(budgets[epochs]))
    others = [
        f"{', '.join(dict.fromkeys(names))}: {epochs}"
        for epochs, names in budgets.items()
        if epochs != common
    ]
    text = f"{common} epochs"
    return f"{text} ({'; '.join(others)})" if others else text


RUN_FIELDS = (
    "problem",
    "optimizer",
    "seed",
    "backend",
    "epochs",
    "batch_size",
    "epochs_to_target",
    "evaluations_to_target",
    "seconds_to_target",
    "final_loss",
    "test_metric",
    "wall_time",
    "skipped",
)


CURVE_FIELDS = ("losses", "loss_evaluations", "gradient_evaluations", "times")


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
    """Writes the problems, the summary and every run with its curves.

    Each run holds, per epoch or iteration, `losses`, `loss_evaluations`,
    `gradient_evaluations` and `times` (see `RunResult`).

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
        for curve in CURVE_FIELDS:
            run[curve] = list(getattr(result, curve))
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


def read_json(path):
    """The runs of a `results.json` written by `write_json`.

    Lets a saved comparison be tabulated or plotted again (for instance
    against another x axis) without training anything.

    Args:
        path: The file.

    Returns:
        A list of `runner.RunResult`, in the file's order. The problems
        must be registered under the file's names to be tabulated or
        plotted.
    """
    from keras_rprop.compare.runner import RunResult

    with open(path) as file:
        document = json.load(file)
    results = []
    for run in document["runs"]:
        fields = {field: _from_json(run[field]) for field in RUN_FIELDS}
        for curve in CURVE_FIELDS:
            fields[curve] = np.asarray(
                [_from_json(value) for value in run[curve]], "float64"
            )
        results.append(RunResult(**fields))
    return results


def _from_json(value):
    """Undoes `_jsonable` for the numbers it wrote as strings."""
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


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
