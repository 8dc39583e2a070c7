"""`keras-rprop --version` and `--help` answer without loading Keras.

The entry point (`keras_rprop_cli.main`, the console script's target) runs
in a fresh interpreter; afterwards the modules it loaded are read from
`sys.modules`. Neither `keras_rprop` nor Keras, a backend or matplotlib may
be among them: those imports take seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras_rprop
from keras_rprop_cli import parser

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("keras_rprop", "keras", "tensorflow", "jax", "torch", "matplotlib")
# Runs the entry point as the console script does, then reports the exit
# status and the heavy modules it loaded on the last line of stdout.
PROBE = """
import json, sys
from keras_rprop_cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
heavy = sorted(
    name for name in sys.modules if name.split(".")[0] in {heavy!r}
)
print(json.dumps({{"status": status, "heavy": heavy}}))
"""


def _run_entry_point(*argv):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), environment.get("PYTHONPATH", "")]
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    *printed, report = result.stdout.splitlines()
    return json.loads(report), "\n".join(printed), result.stderr


def test_version_loads_no_backend():
    report, printed, errors = _run_entry_point("--version")
    assert report == {"status": 0, "heavy": []}
    assert printed == f"keras-rprop {keras_rprop.__version__}"
    assert errors == ""


@pytest.mark.parametrize("argv", [["--help"], []], ids=["help", "no-command"])
def test_help_loads_no_backend(argv):
    report, printed, _ = _run_entry_point(*argv)
    assert report == {"status": 0, "heavy": []}
    assert printed.startswith("usage: keras-rprop ")
    assert "compare" in printed


def test_compare_help_loads_no_backend():
    report, printed, _ = _run_entry_point("compare", "--help")
    assert report == {"status": 0, "heavy": []}
    for option in (
        "--problems",
        "--optimizers",
        "--seeds",
        "--epochs",
        "--backend",
        "--plot-x",
        "--output",
        "--list",
        "--quiet",
    ):
        assert f"  {option} " in printed, option


def test_a_bad_argument_is_refused_without_loading_a_backend():
    report, _, errors = _run_entry_point("compare", "--seeds", "0")
    assert report == {"status": 2, "heavy": []}
    assert "argument --seeds: must be a positive integer" in errors
    assert "Received: '0'" in errors


def test_source_version_is_the_package_version():
    # Without installed metadata (a checkout run in place), the version is
    # read from the package's source.
    assert parser._source_version() == keras_rprop.__version__
    assert parser.version() == keras_rprop.__version__
