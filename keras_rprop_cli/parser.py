"""The argument parser of `keras-rprop`, and the version it prints.

Only the standard library is imported here, so that `--version`, `--help`
and mistyped options are answered without loading Keras and its backend.
"""

import argparse
import ast
import importlib.metadata
import importlib.util
import pathlib

BACKENDS = ("tensorflow", "jax", "torch")
DISTRIBUTION = "keras-rprop"


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer. Received: {text!r}"
        )
    return value


def version():
    """The version of `keras_rprop`, without importing it.

    The installed distribution's metadata answers; a source tree run
    without installing it (`python -m keras_rprop_cli` from the checkout)
    has none, and its `keras_rprop/__init__.py` is read instead.

    Returns:
        The version string, e.g. `"0.1.0"`.
    """
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return _source_version()


def _source_version():
    spec = importlib.util.find_spec("keras_rprop")
    if spec is None or spec.origin is None:
        return "unknown"
    tree = ast.parse(pathlib.Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "__version__"
        ):
            return ast.literal_eval(node.value)
    return "unknown"


def build_parser():
    """The argument parser of `keras-rprop`.

    Returns:
        An `argparse.ArgumentParser` with the `compare` command.
    """
    parser = argparse.ArgumentParser(
        prog="keras-rprop",
        description="Rprop optimizers for Keras 3: tools.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    compare = commands.add_parser(
        "compare",
        help="compare the Rprop variants with Adam, SGD, L-BFGS and "
        "Levenberg-Marquardt on benchmarks",
        description=(
            "Trains the same network from the same initial weights with each "
            "Rprop variant, Keras's Adam and SGD (full batch, through "
            "keras_rprop.fit_full_batch), Adam with mini-batches of 32 "
            "(model.fit) and SciPy's L-BFGS-B and Levenberg-Marquardt, for "
            "several seeds; prints a table per problem with the epochs, "
            "gradient evaluations and seconds to the target loss, and "
            "writes table.md, runs.csv, results.json and loss_curves.png."
        ),
    )
    compare.add_argument(
        "--problems",
        type=_names,
        metavar="NAMES",
        help="comma-separated problems (see --list); default: "
        "encoder,breast-cancer,diabetes,sinc",
    )
    compare.add_argument(
        "--optimizers",
        type=_names,
        metavar="NAMES",
        help="comma-separated optimizers, each optionally NAME:LEARNING_RATE "
        "(e.g. adam:0.01); default: all",
    )
    compare.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        metavar="N",
        help="number of seeds (initial weights) per optimizer; default: 5",
    )
    compare.add_argument(
        "--epochs",
        type=_positive_int,
        metavar="N",
        help="epoch budget for every problem; default: each problem's own",
    )
    compare.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend; default: KERAS_BACKEND or Keras's configured one",
    )
    compare.add_argument(
        "--plot-x",
        type=_names,
        default=None,
        metavar="AXES",
        help="comma-separated x axes of loss_curves.png, a row of panels "
        "each: evaluations (gradient evaluations on the training set), "
        "seconds, epochs; default: evaluations,seconds",
    )
    compare.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="folder for the results; default: ./compare-results",
    )
    compare.add_argument(
        "--list",
        action="store_true",
        help="list the problems and optimizers and exit",
    )
    compare.add_argument(
        "--quiet", action="store_true", help="print nothing but errors"
    )
    return parser
