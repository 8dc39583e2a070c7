"""`keras-rprop compare` end to end: a tiny run and its files."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from keras_rprop import cli
from keras_rprop.compare import problems
from keras_rprop.compare import runner
from tests import reference

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = 2
OPTIMIZERS = list(runner.OPTIMIZERS)
KERAS_OPTIMIZERS = [n for n, s in runner.OPTIMIZERS.items() if not s.method]
# Diabetes: a tanh hidden layer, a linear output and the mean squared error,
# the network of `tests/reference.py`; every optimizer applies to it.
PROBLEM = "diabetes"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("compare")
    capture = pytest.MonkeyPatch()
    lines = []
    capture.setattr(
        "builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a)))
    )
    try:
        status = cli.main(
            [
                "compare",
                "--problems",
                PROBLEM,
                "--seeds",
                "1",
                "--epochs",
                str(EPOCHS),
                "--plot-x",
                "seconds",
                "--output",
                str(output),
            ]
        )
    finally:
        capture.undo()
    return status, output, "\n".join(lines)


def test_exit_status_and_progress(tiny_run):
    status, _, printed = tiny_run
    assert status == 0
    # One progress line per run: 9 optimizers x 1 seed.
    assert f"[9/9] {PROBLEM} lm " in printed


def _table(text, problem):
    section = text.split(f"## {problem}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows]


def test_table_has_a_row_per_optimizer(tiny_run):
    _, output, printed = tiny_run
    table = (output / "table.md").read_text()
    for text in (table, printed):
        header, *rows = _table(text, PROBLEM)
        assert [row[0] for row in rows] == OPTIMIZERS
        assert header[2:5] == [
            "epochs to loss 0.4, median (min-max)",
            "gradient evaluations to 0.4, median",
            "seconds to 0.4, median",
        ]


def test_png_is_a_valid_image(tiny_run):
    import matplotlib.image

    path = tiny_run[1] / "loss_curves.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200


def _runs(output):
    document = json.loads((output / "results.json").read_text())
    return document, {r["optimizer"]: r for r in document["runs"]}


def test_csv_and_json(tiny_run):
    output = tiny_run[1]
    with open(output / "runs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["optimizer"] for r in rows] == OPTIMIZERS
    assert {r["backend"] for r in rows} == {keras.backend.backend()}
    document, runs = _runs(output)
    assert document["metadata"]["backend"] == keras.backend.backend()
    assert len(document["runs"]) == len(document["summary"]) == 9
    for name in KERAS_OPTIMIZERS:
        run = runs[name]
        assert len(run["losses"]) == EPOCHS + 1
        assert run["epochs"] == EPOCHS and run["seed"] == 0
    rows_by_run = {(r["problem"], r["optimizer"]): r for r in rows}
    for run in document["runs"]:
        row = rows_by_run[run["problem"], run["optimizer"]]
        assert float(row["final_loss"]) == pytest.approx(run["losses"][-1])
        lengths = {
            len(run[key])
            for key in (
                "losses",
                "loss_evaluations",
                "gradient_evaluations",
                "times",
            )
        }
        assert len(lengths) == 1
        assert np.all(np.diff(run["times"]) >= 0)


def test_evaluation_counts_of_keras_optimizers(tiny_run):
    _, runs = _runs(tiny_run[1])
    for name in KERAS_OPTIMIZERS:
        run = runs[name]
        if name == "adam-mb32":
            # The loss before training is measured, not computed by Adam;
            # then one pass over the training set per epoch.
            assert run["gradient_evaluations"] == [0, 1, 2]
            assert run["loss_evaluations"] == [0, 1, 2]
        else:
            # Epoch k's step evaluates the loss and gradient at the weights
            # after k - 1 steps; the last loss is one more evaluation.
            assert run["gradient_evaluations"] == [1, 2, 2]
            assert run["loss_evaluations"] == [1, 2, 3]


def test_first_epoch_is_one_full_batch_step_from_the_same_weights(tiny_run):
    """Checks the curves against the float64 NumPy network of the tests."""
    _, runs = _runs(tiny_run[1])
    problem = problems.PROBLEMS[PROBLEM]
    data = problem.load()
    x, y = data.x_train.astype("float64"), data.y_train.astype("float64")
    weights = problem.build_model(data, seed=0).get_weights()
    loss0, grads = reference.mlp_loss_and_grads(weights, x, y)
    for name in OPTIMIZERS:
        assert runs[name]["losses"][0] == pytest.approx(loss0, rel=1e-5), name
    # Every Rprop variant starts by moving each weight 0.1 against the sign
    # of its full-batch gradient.
    moved = [w - 0.1 * np.sign(g) for w, g in zip(weights, grads)]
    rprop_loss1, _ = reference.mlp_loss_and_grads(moved, x, y)
    for variant in ("rprop+", "rprop-", "irprop+", "irprop-"):
        assert runs[variant]["losses"][1] == pytest.approx(
            rprop_loss1, rel=1e-4
        )
    # Plain SGD with Keras's default learning rate 0.01.
    moved = [w - 0.01 * g for w, g in zip(weights, grads)]
    sgd_loss1, _ = reference.mlp_loss_and_grads(moved, x, y)
    assert runs["sgd"]["losses"][1] == pytest.approx(sgd_loss1, rel=1e-5)


def test_unknown_problem_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["compare", "--problems", "encoder,nope"])
    assert raised.value.code == 2
    assert "`problems`" in capsys.readouterr().err


def test_learning_rate_for_scipy_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["compare", "--optimizers", "lbfgs:0.1"])
    assert raised.value.code == 2
    assert "lbfgs has no learning rate" in capsys.readouterr().err


def test_list(capsys):
    assert cli.main(["compare", "--list"]) == 0
    printed = capsys.readouterr().out
    assert f"Keras backend: {keras.backend.backend()}" in printed
    for name in list(problems.PROBLEMS) + OPTIMIZERS:
        assert f"  {name} " in printed


def test_another_backend_runs_in_a_new_process(monkeypatch):
    calls = []
    monkeypatch.setattr(
        cli.subprocess, "call", lambda *a, **k: calls.append((a, k)) or 0
    )
    other = "jax" if keras.backend.backend() != "jax" else "torch"
    argv = ["compare", "--backend", other, "--seeds", "2"]
    assert cli.main(argv) == 0
    (command,), options = calls[0]
    assert command[1:] == ["-m", "keras_rprop_cli", *argv]
    assert options["env"]["KERAS_BACKEND"] == other
    # The same backend needs no new process.
    argv = ["compare", "--backend", keras.backend.backend(), "--list"]
    assert cli.main(argv) == 0 and len(calls) == 1


def test_version_is_printed_without_backend_start_up_lines():
    import subprocess
    import sys

    import keras_rprop

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, KERAS_BACKEND="tensorflow")
    environment["PYTHONPATH"] = os.pathsep.join(
        [root, environment.get("PYTHONPATH", "")]
    )
    result = subprocess.run(
        [sys.executable, "-m", "keras_rprop_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"keras-rprop {keras_rprop.__version__}\n"
    # TensorFlow writes several lines there when it is loaded.
    assert result.stderr == ""
