"""The `keras-rprop` command line.

`keras-rprop compare` trains the Rprop variants, Keras's Adam and SGD and
SciPy's L-BFGS and Levenberg-Marquardt on benchmark problems and reports how
they do; see `docs/compare.md`.
"""

import argparse
import os
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")


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


def _version():
    from keras_rprop import __version__

    return __version__


def build_parser():
    """The argument parser of `keras-rprop`."""
    parser = argparse.ArgumentParser(
        prog="keras-rprop",
        description="Rprop optimizers for Keras 3: tools.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}"
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
        "encoder,breast-cancer,diabetes",
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
        choices=("epochs", "evaluations", "seconds"),
        default="epochs",
        help="x axis of loss_curves.png: epochs (iterations for lbfgs and "
        "lm, default), gradient evaluations or seconds",
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


def main(argv=None):
    """Runs `keras-rprop` with `argv` (defaults to `sys.argv[1:]`).

    Args:
        argv: The arguments after the program name.

    Returns:
        The exit status: 0 on success.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0

    import keras

    if args.backend and args.backend != keras.backend.backend():
        # Keras picks its backend once, when it is first imported (here by
        # `keras_rprop` itself), so another backend needs a new process.
        environment = dict(os.environ, KERAS_BACKEND=args.backend)
        return subprocess.call(
            [sys.executable, "-m", "keras_rprop_cli", *argv], env=environment
        )
    if args.list:
        print(_listing())
        return 0

    from keras_rprop import compare
    from keras_rprop.compare import runner

    try:
        # Unknown names fail here, before anything is trained.
        runner.resolve(args.problems, args.optimizers, 1, args.epochs)
    except ValueError as error:
        parser.exit(2, f"keras-rprop compare: error: {error}\n")
    compare.run(
        problems=args.problems,
        optimizers=args.optimizers,
        seeds=args.seeds or compare.DEFAULT_SEEDS,
        epochs=args.epochs,
        output=args.output or compare.DEFAULT_OUTPUT,
        plot_x=args.plot_x,
        verbose=not args.quiet,
        command=" ".join(["keras-rprop", *argv]),
    )
    return 0


def _listing():
    import keras

    from keras_rprop import compare

    lines = [
        f"Keras backend: {keras.backend.backend()}",
        "Problems (default: " + ",".join(compare.DEFAULT_PROBLEMS) + "):",
    ]
    for problem in compare.PROBLEMS.values():
        network = "-".join(str(units) for units in problem.hidden)
        lines.append(
            f"  {problem.name:<14} {problem.summary}.\n"
            f"  {'':<14} hidden {network} {problem.activation}, output "
            f"{problem.output_activation}, loss {problem.loss_label}, target "
            f"{problem.target_loss:g}, {problem.epochs} epochs, "
            f"{problem.metric_name}"
        )
    lines.append("Optimizers (default: all):")
    for spec in compare.OPTIMIZERS.values():
        lines.append(f"  {spec.name:<14} {spec.summary}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
