"""The `keras-rprop` command line.

`keras-rprop compare` trains the Rprop variants, Keras's Adam and SGD and
SciPy's L-BFGS and Levenberg-Marquardt on benchmark problems and reports how
they do; see `docs/compare.md`. The command's entry point,
`keras_rprop_cli.main`, parses the options (`keras_rprop_cli.parser`)
before it imports this package, then calls `run`.
"""

import os
import subprocess
import sys


def main(argv=None):
    """Runs `keras-rprop` with `argv` (defaults to `sys.argv[1:]`).

    Args:
        argv: The arguments after the program name.

    Returns:
        The exit status: 0 on success.
    """
    import keras_rprop_cli

    return keras_rprop_cli.main(argv)


def run(parser, args, argv):
    """Runs the command that `args` names.

    Args:
        parser: The parser that read `args`, for reporting errors.
        args: The parsed arguments, with a command.
        argv: The arguments after the program name, as given.

    Returns:
        The exit status: 0 on success.
    """
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
        plot_x = compare.plot.x_axes(args.plot_x or compare.plot.DEFAULT_X)
    except ValueError as error:
        parser.exit(2, f"keras-rprop compare: error: {error}\n")
    compare.run(
        problems=args.problems,
        optimizers=args.optimizers,
        seeds=args.seeds or compare.DEFAULT_SEEDS,
        epochs=args.epochs,
        output=args.output or compare.DEFAULT_OUTPUT,
        plot_x=plot_x,
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
