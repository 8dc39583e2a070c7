"""The `keras-rprop` command's entry point.

It lives outside the `keras_rprop` package because importing that package
imports Keras and its backend, and TensorFlow writes start-up lines (CPU
features, oneDNN, CUDA drivers) to the standard error when it is loaded,
some of them before any of its logging settings apply. The command loads
it with the standard error of the process pointed at the null device, so
that those lines do not bury its output; an import error is still
reported once the standard error is back. Library users' logging is left
alone.
"""

import contextlib
import os


def main(argv=None):
    """Runs `keras-rprop`; see `keras_rprop.cli.main`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _quiet_standard_error():
        from keras_rprop import cli

    return cli.main(argv)


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
