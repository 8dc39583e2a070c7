"""The loss-curve figure of a comparison."""

import math

import numpy as np

from keras_rprop.compare import problems as problems_lib

X_AXES = ("evaluations", "seconds", "epochs")
DEFAULT_X = ("evaluations", "seconds")

# The optimizers whose spread over the seeds is drawn as a band: the default
# Rprop variant and the second-order solvers. Bands for all of them would
# cover each other and the lines.
DEFAULT_BANDS = ("irprop-", "lbfgs", "lm")

# Points per curve on the x axes that are not integers.
_GRID_POINTS = 400

# Inches: the narrowest figure (room for the title and legend), and the
# height below the panels per row of the legend.
_MIN_WIDTH = 9.0
_LEGEND_ROW = 0.3

# Below this, a loss is float32 round-off; zeros go there on the log axis.
FLOOR = 1e-12


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


def x_label(x_axis, optimizers=()):
    """The axis label: what one unit of `x_axis` counts for `optimizers`.

    Args:
        x_axis: One of `X_AXES`.
        optimizers: Labels of the optimizers drawn on the axis; the label
            names those whose unit differs from the full-batch one.

    Returns:
        The label, on one or two lines.
    """
    names = {name.split(":")[0] for name in optimizers}
    if x_axis == "seconds":
        return "seconds since the start of the run (log scale)"
    notes = []
    if x_axis == "evaluations":
        if "adam-mb32" in names:
            notes.append("adam-mb32: passes over the set")
        if "lm" in names:
            notes.append("lm: Jacobian evaluations")
        label = "gradient evaluations on the training set"
    elif x_axis == "epochs":
        if "adam-mb32" in names:
            notes.append("adam-mb32: passes of 32-sample steps")
        solvers = sorted(names & {"lbfgs", "lm"})
        if solvers:
            notes.append(f"{', '.join(solvers)}: iterations")
        label = "epochs (full batch: one step each)"
    else:
        raise ValueError(
            f"Argument `x_axis` must be one of {X_AXES}. Received: {x_axis!r}"
        )
    return label + ("\n(" + "; ".join(notes) + ")" if notes else "")


def step_values(x, y, grid):
    """The loss at each grid point: that of the last point at or before it.

    Curves of several seeds have their points at different x (different
    evaluation counts, times or lengths); on a common grid they have a
    median. Before a curve's first point the value is NaN; after its last
    point it keeps its last value, the run's final loss.
    """
    index = np.searchsorted(x, grid, side="right") - 1
    values = np.asarray(y, "float64")[np.maximum(index, 0)]
    return np.where(index >= 0, values, np.nan)


def plot_loss_curves(
    results,
    path,
    title=None,
    dpi=90,
    x_axis=DEFAULT_X,
    x_max=None,
    bands=DEFAULT_BANDS,
):
    """Writes the figure of `loss_curves_figure` to the PNG file `path`.

    Returns:
        `path`.
    """
    figure = loss_curves_figure(results, title, dpi, x_axis, x_max, bands)
    figure.savefig(path)
    return path


def x_axes(x_axis):
    """`x_axis` as a tuple of names in `X_AXES`, checked."""
    axes = (x_axis,) if isinstance(x_axis, str) else tuple(x_axis)
    if not axes or any(axis not in X_AXES for axis in axes):
        raise ValueError(
            f"Argument `x_axis` must be one of {X_AXES} or a non-empty list "
            f"of them. Received: {x_axis!r}"
        )
    return tuple(dict.fromkeys(axes))


def loss_curves_figure(
    results,
    title=None,
    dpi=90,
    x_axis=DEFAULT_X,
    x_max=None,
    bands=DEFAULT_BANDS,
):
    """Plots the training loss, one panel per problem and x axis.

    Each optimizer is one line, the median over seeds. The line ends at the
    median of the runs' last points, so a solver that stopped early (L-BFGS-B
    and Levenberg-Marquardt stop by their own tests) ends there instead of
    going on flat. The optimizers in `bands` also get a light band from the
    lowest to the highest seed (a run that stopped keeps its final loss in
    it), up to the last run's end. The Rprop variants are blues, the
    gradient baselines (Adam, SGD) reds and the second-order solvers
    greens; within a family each optimizer has its own dash pattern and
    markers, so that lines on top of each other stay apart. The y axis is
    logarithmic down to the lowest loss of any run (losses below `FLOOR`,
    float32 round-off, are drawn at `FLOOR`); the problem's target loss is
    a dotted line.

    Uses Matplotlib's object-oriented interface with the Agg canvas, so it
    neither needs a display nor touches `pyplot`'s global state.

    Args:
        results: A list of `RunResult` (skipped ones are left out).
        title: Figure title; defaults to one naming the backend and seeds.
        dpi: Resolution of the PNG.
        x_axis: One of `X_AXES` or a list of them, a row of panels each:
            `"evaluations"` (gradient evaluations on the whole training
            set; a pass of mini-batches counts as one, and for `lm` a
            Jacobian evaluation), `"seconds"` (logarithmic) or `"epochs"`
            (full-batch steps; passes for mini-batches; iterations for
            `lbfgs` and `lm`).
        x_max: Right end of the x axes; defaults to the longest curve.
        bands: Optimizer labels whose min-max band over the seeds is drawn.

    Returns:
        A Matplotlib `Figure` on an Agg canvas.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axes_names = x_axes(x_axis)
    optimizers = list(dict.fromkeys(r.optimizer for r in results))
    results = [r for r in results if not r.skipped and len(r.losses)]
    names = list(dict.fromkeys(r.problem for r in results))
    columns = max(1, min(len(names), 4))
    rows_per_axis = max(1, math.ceil(len(names) / columns))
    rows = rows_per_axis * len(axes_names)
    figure = Figure(
        figsize=(max(4.6 * columns, _MIN_WIDTH), 3.7 * rows + 0.8), dpi=dpi
    )
    FigureCanvasAgg(figure)
    styles = _styles(optimizers)
    grid_of_axes = figure.subplots(rows, columns, squeeze=False)
    used = []
    for block, name_of_axis in enumerate(axes_names):
        panels = grid_of_axes[
            block * rows_per_axis : (block + 1) * rows_per_axis
        ]
        panels = panels.ravel()
        for axes, name in zip(panels, names):
            runs = [r for r in results if r.problem == name]
            _plot_panel(
                axes, name, runs, optimizers, styles, name_of_axis, x_max, bands
            )
            used.append(axes)
        for axes in panels[len(names) :]:
            axes.set_visible(False)
    handles = {}
    for axes in used:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [o for o in optimizers if o in handles]
    legend_columns = max(1, min(len(labels), int(figure.get_figwidth() / 1.4)))
    legend_rows = math.ceil(len(labels) / legend_columns)
    figure.set_figheight(3.7 * rows + _LEGEND_ROW * (legend_rows + 1))
    figure.legend(
        [handles[label] for label in labels],
        labels,
        loc="lower center",
        ncol=legend_columns,
        fontsize="small",
        frameon=False,
        handlelength=3.5,
    )
    if title is None:
        backend = results[0].backend if results else "?"
        seeds = len({r.seed for r in results})
        banded = [o for o in optimizers if o in bands and o in handles]
        band_text = (
            f"band: min-max of {', '.join(banded)}; "
            if seeds > 1 and banded
            else ""
        )
        title = (
            f"Training loss, median over {seeds} seed"
            f"{'s' if seeds != 1 else ''}, Keras backend {backend}\n"
            f"({band_text}dotted: target; a line ends where the median run "
            "stopped)"
        )
    figure.suptitle(title, fontsize="medium")
    bottom = _LEGEND_ROW * (legend_rows + 0.5) / figure.get_figheight()
    figure.tight_layout(rect=(0, bottom, 1, 1))
    return figure


def _plot_panel(axes, name, runs, optimizers, styles, x_axis, x_max, bands):
    problem = problems_lib.get_problem(name)
    log_x = x_axis == "seconds"
    xs = {id(r): curve_x(r, x_axis) for r in runs}
    right = x_max or max(x[-1] for x in xs.values()) or 1.0
    if log_x:
        starts = [x[1] if len(x) > 1 else x[0] for x in xs.values()]
        left = min(s for s in starts if s > 0) / 2.0
        grid = np.geomspace(left, right, _GRID_POINTS)
    elif x_axis == "epochs":
        left = 0.0
        grid = np.arange(int(right) + 1, dtype="float64")
    else:
        left = 0.0
        grid = np.linspace(0.0, right, _GRID_POINTS)
    finite = [r.losses[np.isfinite(r.losses)] for r in runs]
    lowest = min(
        (float(np.maximum(f, FLOOR).min()) for f in finite if f.size),
        default=None,
    )
    for optimizer in optimizers:
        group = [r for r in runs if r.optimizer == optimizer]
        if not group:
            continue
        ends = np.array([xs[id(r)][-1] for r in group])
        end = float(np.median(ends))
        # The runs' ends join the grid, so that each line and band stops
        # exactly where its runs did, with the loss they ended at.
        points = np.union1d(grid, np.append(ends, end))
        points = points[(points >= grid[0]) & (points <= grid[-1])]
        curves = np.stack(
            [
                step_values(xs[id(r)], np.maximum(r.losses, FLOOR), points)
                for r in group
            ]
        )
        line = points <= end
        median = _over_seeds(np.nanmedian, curves[:, line])
        style = styles[optimizer]
        axes.plot(
            points[line],
            median,
            label=optimizer,
            linewidth=style["width"],
            markersize=5,
            markevery=(style["offset"], 0.14),
            markerfacecolor="none",
            markeredgewidth=1.0,
            color=style["color"],
            linestyle=style["linestyle"],
            marker=style["marker"],
        )
        if optimizer in bands and len(group) > 1:
            inside = points <= ends.max()
            axes.fill_between(
                points[inside],
                _over_seeds(np.nanmin, curves[:, inside]),
                _over_seeds(np.nanmax, curves[:, inside]),
                color=style["color"],
                alpha=0.12,
                linewidth=0,
            )
    axes.axhline(problem.target_loss, color="gray", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    if lowest is not None:
        axes.set_ylim(bottom=lowest / 2.0)
    if log_x:
        axes.set_xscale("log")
    axes.set_xlim(left, right)
    axes.set_title(name)
    axes.set_xlabel(
        x_label(x_axis, [r.optimizer for r in runs]), fontsize="small"
    )
    axes.set_ylabel(f"training loss, {problem.loss_label}", fontsize="small")
    axes.grid(True, which="major", alpha=0.3)


def _over_seeds(reduce, curves):
    """`reduce(curves, axis=0)` where any seed has a value, else NaN.

    NumPy's NaN-ignoring reductions warn on columns without any value
    (grid points before every curve's first point); these stay NaN.
    """
    seen = ~np.all(np.isnan(curves), axis=0)
    values = np.full(curves.shape[1], np.nan)
    values[seen] = reduce(curves[:, seen], axis=0)
    return values


# Fixed styles per optimizer name, so that plots of different runs agree:
# (color, line style, marker, line width). Color families: blues for the
# Rprop variants, reds for the gradient baselines, greens for the
# second-order solvers; within a family the line styles and markers differ.
_STYLES = {
    "rprop+": ("#08306b", "-", "^", 1.6),
    "rprop-": ("#2171b5", "--", "v", 1.6),
    "irprop+": ("#4292c6", ":", "o", 1.9),
    "irprop-": ("#17becf", "-.", "s", 1.6),
    "adam": ("#cb181d", "-", "x", 1.4),
    "sgd": ("#fb6a4a", "--", "+", 1.4),
    "adam-mb32": ("#a50f15", ":", "d", 1.6),
    "lbfgs": ("#006d2c", "-", "*", 1.5),
    "lm": ("#41ab5d", "--", "P", 1.5),
}
_EXTRA = [
    ("#6a51a3", "-", "h", 1.4),
    ("#6a51a3", "--", "p", 1.4),
    ("#000000", ":", "X", 1.6),
    ("#000000", "-.", "D", 1.4),
]


def _styles(optimizers):
    styles, used, extra = {}, set(), iter(_EXTRA * 10)
    for index, name in enumerate(optimizers):
        style = _STYLES.get(name.split(":")[0])
        if style is None or style in used:
            style = next(extra)
        used.add(style)
        color, linestyle, marker, width = style
        styles[name] = {
            "color": color,
            "linestyle": linestyle,
            "marker": marker,
            "width": width,
            # Markers of different optimizers at different places along x.
            "offset": (index * 0.029) % 0.14,
        }
    return styles
