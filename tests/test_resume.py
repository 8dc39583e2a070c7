"""Exact resume: a training process killed with SIGKILL loses nothing.

A child process (`tests/resume/train_and_crash.py`) trains one model per
variant and per way of saving, `keras.callbacks.BackupAndRestore` and a
`.keras` file from `keras.callbacks.ModelCheckpoint` in `model.fit`, and
`BackupAndRestore` in `keras_rprop.fit_full_batch`, and is killed with
SIGKILL inside `fit`, one epoch after the last save. A second child resumes
every run from disk. Each must end with the weights and the optimizer state
(step sizes, signs, iRprop+'s previous loss) of the same training done here
without interruption, on the backend of this test run.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_rprop

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "resume" / "train_and_crash.py"
# Generous for a 2-core CI machine; a child that hangs fails the test.
TIMEOUT = 300


def _load_child_module():
    spec = importlib.util.spec_from_file_location("train_and_crash", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(phase, workdir):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = keras.backend.backend()
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return subprocess.Popen(
        [sys.executable, str(CHILD), phase, str(workdir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when_ready(process, ready):
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready.exists():
            if process.poll() is not None:
                log, _ = process.communicate()
                pytest.fail(f"the training child exited early:\n{log[-5000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the training child never reached the crash point")
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_killed_training_resumes_exactly(tmp_path):
    module = _load_child_module()
    _kill_when_ready(_child("crash", tmp_path), tmp_path / "ready")
    # The kill came one epoch after the last save: resuming must redo it.
    for way in ("backup", "engine"):
        metadata = tmp_path / f"{way}_irpropplus" / "training_metadata.json"
        assert metadata.exists()

    resume = _child("resume", tmp_path)
    try:
        log, _ = resume.communicate(timeout=TIMEOUT)
    finally:
        if resume.poll() is None:
            resume.kill()
            resume.communicate()
    assert resume.returncode == 0, log[-5000:]

    for variant in keras_rprop.VARIANTS:
        expected, losses = module.train_uninterrupted(variant)
        for way in module.WAYS:
            _, output = module._paths(str(tmp_path), way, variant)
            got = dict(np.load(output))
            context = f"{way} {variant}"
            # The saves of epochs 0 .. KILL_AFTER were restored, not the
            # lost epoch after them.
            assert got["restored_iterations"] == module.KILL_AFTER + 1
            np.testing.assert_allclose(
                got["restored_previous_loss"],
                losses[module.KILL_AFTER],
                rtol=1e-6,
                err_msg=context,
            )
            for key, value in expected.items():
                if key.endswith("_loss"):
                    # The loss is recomputed by separately compiled code,
                    # which may round its reduction differently; the
                    # weights and the step state must be bit for bit equal.
                    np.testing.assert_allclose(
                        got[key], value, rtol=1e-6, err_msg=context
                    )
                else:
                    np.testing.assert_array_equal(
                        got[key], value, err_msg=f"{context} {key}"
                    )
