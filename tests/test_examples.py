"""The scripts of `examples/` run as their docs say and print what they show.

Each example runs in child processes on the backend of the suite's pass,
every child bounded in time and killed if it still runs when its test ends.
The quickstart's code must be the README's example and its output the
README's, up to the digits that differ between backends; the two processes
of `examples/two_processes.py`, launched with the command of
`docs/distributed.md`, must both print the loss of one process trained on
all the data, trained here.
"""

import contextlib
import importlib.util
import re
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_rprop
from tests.test_distributed import _child_environment

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Generous for a 2-core CI machine; a child that hangs fails the test.
TIMEOUT = 300
# The README's claim on the quickstart's losses, whatever the backend.
QUICKSTART_LOSS_BOUND = 1e-2
# A printed line: its text, then a number.
NUMBER_AT_END = re.compile(r"^(.*): ([-+0-9.e]+)$")


@contextlib.contextmanager
def _children(argument_lists, folder, backend=None):
    """Starts one child per argument list in `folder`; always reaps them.

    Their output goes to files (pipes could fill up while a child waits for
    the other one). Yields a function that waits for them and returns
    their standard outputs.
    """
    environment = _child_environment()
    if backend:
        environment["KERAS_BACKEND"] = backend
    processes = []

    def wait():
        for process in processes:
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{process.args} ran for more than {TIMEOUT} s")
        outputs = []
        for index, process in enumerate(processes):
            output = (folder / f"stdout{index}.txt").read_text()
            errors = (folder / f"stderr{index}.txt").read_text()
            assert process.returncode == 0, errors[-5000:]
            outputs.append(output)
        return outputs

    try:
        for index, arguments in enumerate(argument_lists):
            with (
                open(folder / f"stdout{index}.txt", "w") as stdout,
                open(folder / f"stderr{index}.txt", "w") as stderr,
            ):
                processes.append(
                    subprocess.Popen(
                        [sys.executable, *arguments],
                        cwd=folder,
                        env=environment,
                        stdout=stdout,
                        stderr=stderr,
                    )
                )
        yield wait
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def _readme_example():
    """The Python blocks and the output block of the README's Example."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL)
    code = [text for language, text in blocks if language == "python"]
    output = [text for language, text in blocks if language == "text"]
    return code, output


def _lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_readme_example_is_the_quickstart():
    code, output = _readme_example()
    assert len(code) == 2 and len(output) == 1
    script = "\n".join(_lines((EXAMPLES / "quickstart.py").read_text()))
    for block in code:
        # Each block is a run of the script's lines, in order.
        assert "\n".join(_lines(block)) in script, block


def test_quickstart_prints_the_readme_output(tmp_path):
    script = EXAMPLES / "quickstart.py"
    with _children([[str(script)]], tmp_path, backend=BACKEND) as wait:
        (printed,) = wait()
    _, (expected,) = _readme_example()
    printed, expected = _lines(printed), _lines(expected)
    assert len(printed) == len(expected), printed
    losses = []
    for got, want in zip(printed, expected):
        got_text, got_loss = NUMBER_AT_END.match(got).groups()
        want_text, want_loss = NUMBER_AT_END.match(want).groups()
        # The epochs are the README's; the losses, which depend on the
        # backend's initial weights, are below the README's bound.
        assert got_text == want_text
        assert float(want_loss) < QUICKSTART_LOSS_BOUND
        assert 0 < float(got_loss) < QUICKSTART_LOSS_BOUND, got
        losses.append(float(got_loss))
    # Training on from the saved model lowered the loss further.
    assert losses[1] < losses[0]
    # The file holds the model and its optimizer after the first 300
    # epochs.
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(saved.optimizer, keras_rprop.Rprop)
    assert saved.optimizer.get_config()["variant"] == "irprop+"
    assert int(saved.optimizer.iterations) == 300


def _two_processes_module():
    path = EXAMPLES / "two_processes.py"
    spec = importlib.util.spec_from_file_location("two_processes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented_command(backend):
    """The arguments of the launch line of `docs/distributed.md`."""
    docs = (ROOT / "docs" / "distributed.md").read_text()
    launch = re.search(
        r"^for rank in 0 1; do python (examples/two_processes\.py) "
        rf"({backend}) \$rank --port (\d+) & done; wait",
        docs,
        re.MULTILINE,
    )
    assert launch, f"no launch line for {backend} in docs/distributed.md"
    return launch.group(1), int(launch.group(3))


def _free_port_pair():
    """A free port whose successor is free too (TensorFlow's 2 workers)."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def test_two_processes_train_as_one_process(tmp_path):
    example = _two_processes_module()
    script, documented_port = _documented_command(BACKEND)
    assert 1024 < documented_port < 65535
    port = _free_port_pair()
    arguments = [
        [str(ROOT / script), BACKEND, str(rank), "--port", str(port)]
        for rank in range(example.PROCESSES)
    ]
    with _children(arguments, tmp_path) as wait:
        outputs = wait()

    x, y = example.data()
    model = example.make_model()
    model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=example.EPOCHS, verbose=0
    )
    expected = history.history["loss"][-1]
    shard = len(x) // example.PROCESSES
    for rank, output in enumerate(outputs):
        (line,) = [
            line for line in _lines(output) if line.startswith("process ")
        ]
        text, loss = NUMBER_AT_END.match(line).groups()
        assert text == (
            f"process {rank}: {shard} of {len(x)} samples, "
            f"loss after {example.EPOCHS} epochs"
        )
        # Printed to 4 significant digits.
        np.testing.assert_allclose(float(loss), expected, rtol=1e-3)
