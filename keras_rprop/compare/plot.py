"""The loss-curve figure of a comparison."""

import math

import numpy as np

from keras_rprop.compare import problems as problems_lib


def plot_loss_curves(results, path, title=None, dpi=90):
    """Plots the training loss over epochs, one panel per problem.

    Each optimizer is one line, the median over seeds, with a shaded band
    from the lowest to the highest seed. The y axis is logarithmic and the
    problem's target loss is a dashed line.

    Uses Matplotlib's object-oriented interface with the Agg canvas, so it
    neither needs a display nor touches `pyplot`'s global state.

    Args:
        results: A list of `RunResult`.
        path: The PNG file to write.
        title: Figure title; defaults to one naming the backend and seeds.
        dpi: Resolution of the PNG.

    Returns:
        `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r.problem for r in results))
    optimizers = list(dict.fromkeys(r.optimizer for r in results))
    columns = min(len(names), 3)
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows + 0.6), dpi=dpi)
    FigureCanvasAgg(figure)
    colors = _colors(optimizers)
    axes_list = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, name in zip(axes_list, names):
        problem = problems_lib.get_problem(name)
        for optimizer in optimizers:
            curves = [
                r.losses
                for r in results
                if r.problem == name and r.optimizer == optimizer
            ]
            if not curves:
                continue
            # A loss of exactly zero has no place on a log axis.
            curves = np.maximum(np.stack(curves), 1e-12)
            epochs = np.arange(curves.shape[1])
            axes.plot(
                epochs,
                np.median(curves, axis=0),
                color=colors[optimizer],
                label=optimizer,
                linewidth=1.4,
                linestyle="--" if optimizer.startswith("adam-") else "-",
            )
            if len(curves) > 1:
                axes.fill_between(
                    epochs,
                    curves.min(axis=0),
                    curves.max(axis=0),
                    color=colors[optimizer],
                    alpha=0.12,
                    linewidth=0,
                )
        axes.axhline(
            problem.target_loss, color="gray", linestyle=":", linewidth=1
        )
        axes.set_yscale("log")
        # Below a thousandth of the target, curves only show float32
        # round-off; the table gives the final losses.
        bottom, top = axes.get_ylim()
        axes.set_ylim(max(bottom, problem.target_loss / 1000), top)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.set_ylabel(
            f"training loss, {problem.loss_label}", fontsize="small"
        )
        axes.grid(True, which="major", alpha=0.3)
    for axes in axes_list[len(names) :]:
        axes.set_visible(False)
    handles, labels = axes_list[0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(len(labels), 7),
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
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path)
    return path


def _colors(optimizers):
    # Fixed colors per optimizer name, so that plots of different runs agree.
    palette = {
        "rprop+": "#1f77b4",
        "rprop-": "#17becf",
        "irprop+": "#2ca02c",
        "irprop-": "#9acd32",
        "adam": "#d62728",
        "sgd": "#7f7f7f",
        "adam-mb32": "#ff7f0e",
    }
    extra = iter(["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#000000"] * 10)
    colors = {}
    for name in optimizers:
        color = palette.get(name.split(":")[0])
        if color is None or color in colors.values():
            color = next(extra)
        colors[name] = color
    return colors
