"""`keras-rprop compare` end to end: a tiny run and its files."""

import csv
import json

import keras
import numpy as np
import pytest

from keras_rprop import cli
from keras_rprop.compare import problems
from keras_rprop.compare import runner
from keras_rprop.compare import trainers

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPOCHS = 2
OPTIMIZERS = list(runner.OPTIMIZERS)


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
                "encoder",
                "--seeds",
                "1",
                "--epochs",
                str(EPOCHS),
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
    # One progress line per run: 7 optimizers x 1 seed.
    assert "[7/7] encoder adam-mb32" in printed


def _table_rows(text, problem):
    section = text.split(f"## {problem}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [row.split("|")[1].strip() for row in rows[1:]]


def test_table_has_a_row_per_optimizer(tiny_run):
    _, output, printed = tiny_run
    table = (output / "table.md").read_text()
    for text in (table, printed):
        assert _table_rows(text, "encoder") == OPTIMIZERS


def test_png_is_a_valid_image(tiny_run):
    import matplotlib.image

    path = tiny_run[1] / "loss_curves.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200


def test_csv_and_json(tiny_run):
    output = tiny_run[1]
    with open(output / "runs.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["optimizer"] for r in rows] == OPTIMIZERS
    assert {r["backend"] for r in rows} == {keras.backend.backend()}
    document = json.loads((output / "results.json").read_text())
    assert document["metadata"]["backend"] == keras.backend.backend()
    assert len(document["runs"]) == len(document["summary"]) == 7
    for run in document["runs"]:
        assert len(run["losses"]) == EPOCHS + 1
        assert run["epochs"] == EPOCHS and run["seed"] == 0
    rows_by_run = {(r["problem"], r["optimizer"]): r for r in rows}
    for run in document["runs"]:
        row = rows_by_run[run["problem"], run["optimizer"]]
        assert float(row["final_loss"]) == pytest.approx(run["losses"][-1])


def _encoder_gradient(weights, x, y):
    """Loss and gradients of the encoder network, in float64 NumPy."""
    w1, b1, w2, b2 = (np.asarray(w, "float64") for w in weights)
    hidden = 1 / (1 + np.exp(-(x @ w1 + b1)))
    output = 1 / (1 + np.exp(-(hidden @ w2 + b2)))
    loss = -np.mean(y * np.log(output) + (1 - y) * np.log(1 - output))
    # Sigmoid and binary cross-entropy: d loss / d logit = (p - y) / size.
    d_output = (output - y) / y.size
    d_hidden = d_output @ w2.T * hidden * (1 - hidden)
    grads = [
        x.T @ d_hidden,
        d_hidden.sum(0),
        hidden.T @ d_output,
        d_output.sum(0),
    ]
    return loss, grads


def test_first_epoch_is_one_full_batch_step_from_the_same_weights(tiny_run):
    """Checks the curves against a NumPy network: same start, full batch."""
    document = json.loads((tiny_run[1] / "results.json").read_text())
    runs = {
        r["optimizer"]: r["losses"]
        for r in document["runs"]
        if r["problem"] == "encoder"
    }
    problem = problems.PROBLEMS["encoder"]
    data = problem.load()
    x, y = data.x_train.astype("float64"), data.y_train.astype("float64")
    weights = problem.build_model(data, seed=0).get_weights()
    loss0, grads = _encoder_gradient(weights, x, y)
    for name in OPTIMIZERS:
        assert runs[name][0] == pytest.approx(loss0, rel=1e-5), name
    # Every Rprop variant starts by moving each weight 0.1 against the sign
    # of its full-batch gradient.
    moved = [w - 0.1 * np.sign(g) for w, g in zip(weights, grads)]
    rprop_loss1, _ = _encoder_gradient(moved, x, y)
    for variant in ("rprop+", "rprop-", "irprop+", "irprop-"):
        assert runs[variant][1] == pytest.approx(rprop_loss1, rel=1e-4)
    # Plain SGD with Keras's default learning rate 0.01.
    moved = [w - 0.01 * g for w, g in zip(weights, grads)]
    sgd_loss1, _ = _encoder_gradient(moved, x, y)
    assert runs["sgd"][1] == pytest.approx(sgd_loss1, rel=1e-5)
    # Ten patterns: a mini-batch of 32 holds them all.
    np.testing.assert_allclose(runs["adam-mb32"], runs["adam"], rtol=1e-5)


def test_unknown_problem_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["compare", "--problems", "encoder,nope"])
    assert raised.value.code == 2
    assert "`problems`" in capsys.readouterr().err


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
    assert command[1:] == ["-m", "keras_rprop.cli", *argv]
    assert options["env"]["KERAS_BACKEND"] == other
    # The same backend needs no new process.
    argv = ["compare", "--backend", keras.backend.backend(), "--list"]
    assert cli.main(argv) == 0 and len(calls) == 1


def _torch_threads():
    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.get_num_threads()


def test_mini_batches_cover_the_training_set_every_epoch():
    problem = problems.PROBLEMS["wine"]
    data = problem.load()
    model = problem.build_model(data, seed=0)
    optimizer = keras.optimizers.Adam()
    trainer = trainers.make_trainer(model, optimizer, problem.make_loss())
    threads = _torch_threads()
    losses = trainer.train(data.x_train, data.y_train, 2, batch_size=32)
    # PyTorch trains on one thread, then gets its thread count back.
    assert _torch_threads() == threads
    # 124 samples: 3 batches of 32 and one of 28 per epoch.
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 8
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]
    logits = keras.ops.convert_to_numpy(model(data.x_train)).astype("float64")
    log_probabilities = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(log_probabilities[np.arange(len(logits)), data.y_train])
    assert losses[-1] == pytest.approx(expected, rel=1e-4)


def test_seeds_share_a_compiled_step_without_sharing_state():
    """A reset trainer gives the same run as a fresh one."""
    shared = list(runner.run_seeds("encoder", "irprop+", [0, 1], epochs=6))
    fresh = list(runner.run_seeds("encoder", "irprop+", [1], epochs=6))
    np.testing.assert_allclose(shared[1].losses, fresh[0].losses, rtol=1e-6)
    assert not np.allclose(shared[0].losses, shared[1].losses)


@pytest.mark.parametrize("optimizer", ["irprop+", "adam"])
def test_fit_engine_trains_the_same_weights(optimizer):
    """`fit_full_batch` and the compiled loop agree step by step."""
    loop = next(runner.run_seeds("encoder", optimizer, [2], epochs=5))
    fit = next(
        runner.run_seeds("encoder", optimizer, [2], epochs=5, engine="fit")
    )
    np.testing.assert_allclose(fit.losses, loop.losses, rtol=1e-5)
