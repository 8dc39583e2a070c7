"""Full-batch training spread over processes, against one process.

Every process calls `fit_full_batch` with its own shard of the data; each
step must use the gradient and the loss of all the shards together, so that
every process ends with the weights and the optimizer state of one process
trained on all the data. Two processes on 127.0.0.1 (ports chosen free at
run time) run each backend's own multi-process engine, in that backend's
pass of the suite: `torch.distributed` (gloo), multi-process JAX with
`DataParallel`, TensorFlow's `MultiWorkerMirroredStrategy`. The shards
differ in size (21 and 43 samples), and process 1 starts from other weights
than process 0, which the training must replace with process 0's. Every
process's History must be the one process's: the logged loss and metrics
are those of all the data, so callbacks that stop on them stop every
process at the same epoch.

The children are `tests/distributed/train_multiprocess.py`; each is bounded
in time and killed if it still runs when its test ends.
"""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_rprop
from tests.test_distributed import _child_environment
from tests.test_distributed import _free_ports

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "distributed" / "train_multiprocess.py"
PROCESSES = 2
# Generous for a 2-core CI machine; a child that hangs fails the test.
TIMEOUT = 300


def _load_child_module():
    spec = importlib.util.spec_from_file_location("train_multiprocess", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


child = _load_child_module()


class Children:
    """The processes of one multi-process training, always reaped."""

    def __init__(self, mode, outdir):
        ports = ",".join(str(p) for p in _free_ports(PROCESSES))
        self.outdir = outdir
        self.processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(CHILD),
                    BACKEND,
                    mode,
                    str(rank),
                    str(PROCESSES),
                    ports,
                    str(outdir),
                ],
                env=_child_environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in range(PROCESSES)
        ]

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()

    def wait(self, timeout=TIMEOUT):
        """Waits for every child; returns their exit codes and logs."""
        deadline = time.monotonic() + timeout
        logs = []
        for process in self.processes:
            try:
                log, _ = process.communicate(
                    timeout=max(deadline - time.monotonic(), 0.1)
                )
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"a child ran for more than {timeout} s "
                    f"(mode of the run: {self.processes[0].args[3]})"
                )
            logs.append(log)
        return [p.returncode for p in self.processes], logs

    def results(self, timeout=TIMEOUT):
        codes, logs = self.wait(timeout)
        for code, log in zip(codes, logs):
            assert code == 0, log[-5000:]
        return [self.result(rank) for rank in range(PROCESSES)]

    def result(self, rank):
        with open(self.outdir / f"rank{rank}.json") as file:
            return json.load(file)


def _one_process(variant, epochs=child.EPOCHS, options=None, **arguments):
    """The same training in this process, on all the data."""
    x, y = child.data()
    if (options or {}).get("validation"):
        arguments["validation_data"] = (x, y)
    model = child.build_model(
        keras,
        keras_rprop,
        variant,
        regularized=(options or {}).get("regularized", False),
    )
    history = keras_rprop.fit_full_batch(
        model, x, y, epochs=epochs, verbose=0, **arguments
    )
    return {**child.state(keras, model), "history": history.history}


def _assert_same_history(got, expected, name):
    """Every process logs the loss and metrics of all the data."""
    assert sorted(got) == sorted(expected), name
    for key, values in expected.items():
        assert len(got[key]) == len(values), f"{name}: {key}"
        np.testing.assert_allclose(
            got[key], values, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}"
        )


def _assert_same_state(got, expected, name):
    assert len(got["weights"]) == len(expected["weights"])
    for a, b in zip(got["weights"], expected["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert len(got["optimizer"]) == len(expected["optimizer"]), name
    for (got_name, got_value), (variable, value) in zip(
        got["optimizer"], expected["optimizer"]
    ):
        # Per-weight variables are named after layers, which are numbered
        # by creation in each process; the scalars have fixed names.
        if not isinstance(value, list):
            assert got_name == variable, name
        np.testing.assert_allclose(
            got_value,
            value,
            rtol=1e-5,
            atol=1e-6,
            err_msg=f"{name}: {variable}",
        )


def test_shards_in_processes_train_as_one_process(tmp_path):
    with Children("train", tmp_path) as children:
        results = children.results()
    assert [r["samples"] for r in results] == [21, 43]
    if BACKEND == "jax":
        for result in results:
            assert "validation_split=0.25" in result["validation_split_error"]
    initial = np.asarray(child.initial_weights()[0])
    runs = child.runs(keras, keras_rprop)
    for name, (variant, arguments, options) in runs.items():
        expected = _one_process(variant, options=options, **arguments)
        # Training happened: the comparison is not between untouched models.
        assert not np.allclose(expected["weights"][0], initial)
        for result in results:
            _assert_same_state(result[name], expected, name)
            _assert_same_history(
                result[name]["history"], expected["history"], name
            )
        if "callbacks" in arguments:
            # The callback stopped the training, at the same epoch in every
            # process as in one process.
            assert len(expected["history"]["loss"]) < child.EPOCHS, name
        if options.get("validation"):
            assert "val_loss" in expected["history"], name
        if options.get("regularized"):
            assert {"loss", "mae"} <= set(expected["history"]), name
        if variant == "irprop+":
            # The loss iRprop+ compares is the loss of all the data, the
            # same in every process.
            losses = [
                value
                for variable, value in expected["optimizer"]
                if variable == "previous_loss"
            ]
            assert len(losses) == 1 and np.isfinite(losses[0])


def test_a_lost_process_stops_the_others_with_a_clear_error(tmp_path):
    with Children("die", tmp_path) as children:
        codes, logs = children.wait()
    # The last process killed itself; the others raised, within the peer
    # timeout of the child and the test's bound, instead of hanging.
    assert codes[-1] != 0
    for rank in range(PROCESSES - 1):
        assert codes[rank] != 0, logs[rank][-5000:]
        result = children.result(rank)
        assert result["error"] is not None, logs[rank][-5000:]
        assert result["error"].startswith("RuntimeError"), result["error"]
        assert "process" in result["error"], result["error"]
        assert result["seconds"] < 3 * child.PEER_TIMEOUT + 30, result


def test_restart_from_backup_ends_with_the_uninterrupted_weights(tmp_path):
    with Children("interrupt", tmp_path) as children:
        interrupted = children.results()
    assert all(r.get("interrupted") for r in interrupted)
    with Children("resume", tmp_path) as children:
        resumed = children.results()
    expected = _one_process("irprop+")
    stopped = _one_process("irprop+", epochs=child.INTERRUPTED_AFTER)
    for result in interrupted:
        _assert_same_state(result["irprop+"], stopped, "interrupted")
    for result in resumed:
        _assert_same_state(result["irprop+"], expected, "resumed")
