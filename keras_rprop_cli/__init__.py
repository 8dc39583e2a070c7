"""The `keras-rprop` command's entry point.

It lives outside the `keras_rprop` package because importing that package
imports Keras and its backend, which takes seconds. The arguments are
parsed first, by `keras_rprop_cli.parser` (the standard library only), so
that `--version`, `--help` and argument errors are answered at once; the
package is imported only to run a command.

TensorFlow writes start-up lines (CPU features, oneDNN, CUDA drivers) to
the standard error when it is loaded, some of them before any of its
logging settings apply. The command loads the package with the standard
error of the process pointed at the null device, so that those lines do not
bury its output; an import error is still reported once the standard error
is back. Library users' logging is left alone.
"""

import contextlib
import os
import sys

from keras_rprop_cli.parser import build_parser


def main(argv=None):
    """Runs `keras-rprop` with `argv`.

    Args:
        argv: The arguments after the program name; defaults to
            `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.backend and "keras" not in sys.modules:
        # Keras reads its backend once, when it is first imported: set
        # before that, it spares `keras_rprop.cli` a new process.
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _quiet_standard_error():
        from keras_rprop import cli

    return cli.run(parser, args, argv)


@contextlib.contextmanager
def _quiet_standard_error():
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
