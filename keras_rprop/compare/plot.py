"""The loss-curve figure of a comparison."""

import math

import numpy as np

from keras_rprop.compare import problems as problems_lib

X_AXES = ("epochs", "evaluations", "seconds")
DEFAULT_X = "epochs"

_X_LABELS = {
    "epochs": "epoch (iteration for lbfgs, lm)",
    "evaluations": "gradient evaluations (Jacobians for lm)",
    "seconds": "seconds",
}

# Points per curve on the x axes that are not integers.
_GRID_POINTS = 400

# Below this, a loss is float32 round-off; zeros go there on the log axis.
_FLOOR = 1e-12


def curve_x(result, x_axis):
    """The x values of a run's points for the axis `x_axis`."""
    if x_axis == "epochs":
        return np.arange(len(result.losses), dtype="float64")
    if x_axis == "evaluations":
        return np.asarray(result.gradient_evaluations, "float64")
    if x_axis == "seconds":
        return np.asarray(result.times, "float64")
    raise ValueError(
        f"Argument `x_axis` must be one of {X_AXES}. Received: {x_axis!r}"
    )


def step_values(x, y, grid):
    """The loss at each grid point: that of the last point at or before it.

    Curves of several seeds have their points at different x (different
    evaluation counts, times or lengths); on a common grid they have a
    median. Before a curve's first point the value is NaN; after its last
    point it keeps its last value (the run had ended there).
    """
    index = np.searchsorted(x, grid, side="right") - 1
    values = np.asarray(y, "float64")[np.maximum(index, 0)]
    return np.where(index >= 0, values, np.nan)


def plot_loss_curves(
    results, path, title=None, dpi=90, x_axis=DEFAULT_X, x_max=None
):
    """Writes the figure of `loss_curves_figure` to the PNG file `path`.

    Returns:
        `path`.
    """
    figure = loss_curves_figure(results, title, dpi, x_axis, x_max)
    figure.savefig(path)
    return path


def loss_curves_figure(
    results, title=None, dpi=90, x_axis=DEFAULT_X, x_max=None
):
    """Plots the training loss, one panel per problem.

    Each optimizer is one line, the median over seeds, with a shaded band
    from the lowest to the highest seed. Each optimizer has its own color,
    line style and markers, so that lines on top of each other stay apart.
    The y axis is logarithmic down to the lowest loss reached and the
    problem's target loss is a dotted line.

    Uses Matplotlib's object-oriented interface with the Agg canvas, so it
    neither needs a display nor touches `pyplot`'s global state.

    Args:
        results: A list of `RunResult` (skipped ones are left out).
        title: Figure title; defaults to one naming the backend and seeds.
        dpi: Resolution of the PNG.
        x_axis: `"epochs"` (iterations for `lbfgs` and `lm`),
            `"evaluations"` (gradient evaluations; Jacobian evaluations for
            `lm`) or `"seconds"`.
        x_max: Right end of the x axis; defaults to the longest curve.

    Returns:
        A Matplotlib `Figure` on an Agg canvas.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x_axis not in X_AXES:
        raise ValueError(
            f"Argument `x_axis` must be one of {X_AXES}. Received: {x_axis!r}"
        )
    optimizers = list(dict.fromkeys(r.optimizer for r in results))
    results = [r for r in results if not r.skipped and len(r.losses)]
    names = list(dict.fromkeys(r.problem for r in results))
    columns = max(1, min(len(names), 3))
    rows = max(1, math.ceil(len(names) / columns))
    figure = Figure(figsize=(4.8 * columns, 3.8 * rows + 0.7), dpi=dpi)
    FigureCanvasAgg(figure)
    styles = _styles(optimizers)
    axes_list = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, name in zip(axes_list, names):
        problem = problems_lib.get_problem(name)
        runs = [r for r in results if r.problem == name]
        right = x_max or max(curve_x(r, x_axis)[-1] for r in runs) or 1.0
        if x_axis == "epochs":
            grid = np.arange(int(right) + 1, dtype="float64")
        else:
            grid = np.linspace(0.0, right, _GRID_POINTS)
        lowest = math.inf
        for optimizer in optimizers:
            curves = [
                step_values(
                    curve_x(r, x_axis), np.maximum(r.losses, _FLOOR), grid
                )
                for r in runs
                if r.optimizer == optimizer
            ]
            if not curves:
                continue
            curves = np.stack(curves)
            seen = ~np.all(np.isnan(curves), axis=0)
            x, curves = grid[seen], curves[:, seen]
            median = np.nanmedian(curves, axis=0)
            lowest = min(lowest, float(np.nanmin(median)))
            style = styles[optimizer]
            axes.plot(
                x,
                median,
                label=optimizer,
                linewidth=1.4,
                markersize=4.5,
                markevery=(style["offset"], 0.1),
                markerfacecolor="none",
                color=style["color"],
                linestyle=style["linestyle"],
                marker=style["marker"],
            )
            if len(curves) > 1:
                axes.fill_between(
                    x,
                    np.nanmin(curves, axis=0),
                    np.nanmax(curves, axis=0),
                    color=style["color"],
                    alpha=0.1,
                    linewidth=0,
                )
        axes.axhline(
            problem.target_loss, color="gray", linestyle=":", linewidth=1
        )
        axes.set_yscale("log")
        # Down to the lowest median loss, so that no curve leaves the plot;
        # the bands may reach lower.
        if math.isfinite(lowest):
            axes.set_ylim(bottom=lowest / 3)
        axes.set_xlim(0, right)
        axes.set_title(name)
        axes.set_xlabel(_X_LABELS[x_axis])
        axes.set_ylabel(
            f"training loss, {problem.loss_label}", fontsize="small"
        )
        axes.grid(True, which="major", alpha=0.3)
    for axes in axes_list[len(names) :]:
        axes.set_visible(False)
    handles, labels = {}, {}
    for axes in axes_list[: len(names)]:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [o for o in optimizers if o in handles]
    figure.legend(
        [handles[label] for label in labels],
        labels,
        loc="lower center",
        ncol=min(len(labels), 9) or 1,
        fontsize="small",
        frameon=False,
    )
    if title is None:
        backend = results[0].backend if results else "?"
        seeds = len({r.seed for r in results})
        title = (
            f"Training loss, median over {seeds} seed"
            f"{'s' if seeds != 1 else ''} (band: min-max; dotted: target), "
            f"Keras backend {backend}"
        )
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return figure


# Fixed styles per optimizer name, so that plots of different runs agree.
# Variants that often overlap differ in line style and markers, not only in
# color.
_STYLES = {
    "rprop+": ("#1f77b4", "-", "^"),
    "rprop-": ("#17becf", "--", "v"),
    "irprop+": ("#2ca02c", "-", "o"),
    "irprop-": ("#9acd32", "--", "s"),
    "adam": ("#d62728", "-", "x"),
    "sgd": ("#7f7f7f", "-.", "+"),
    "adam-mb32": ("#ff7f0e", ":", "d"),
    "lbfgs": ("#9467bd", "-", "*"),
    "lm": ("#8c564b", "-.", "P"),
}
_EXTRA = [
    ("#e377c2", "-", "h"),
    ("#bcbd22", "--", "p"),
    ("#000000", ":", "X"),
    ("#17becf", "-.", "D"),
]


def _styles(optimizers):
    styles, used, extra = {}, set(), iter(_EXTRA * 10)
    for index, name in enumerate(optimizers):
        style = _STYLES.get(name.split(":")[0])
        if style is None or style in used:
            style = next(extra)
        used.add(style)
        color, linestyle, marker = style
        styles[name] = {
            "color": color,
            "linestyle": linestyle,
            "marker": marker,
            # Markers of different optimizers at different places along x.
            "offset": (index * 0.013) % 0.1,
        }
    return styles
