"""The statistics that `benchmarks/step_speed.py` prints its ratios with."""

import importlib.util
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "step_speed.py"


@pytest.fixture(scope="module")
def step_speed():
    spec = importlib.util.spec_from_file_location("step_speed", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_ratio_cancels_load_that_changes_between_rounds(step_speed):
    # Both rows slow down alike in loaded rounds (x1 to x3), and one costs
    # 1.1 times the other in every round, up to 1% of jitter of its own.
    rng = np.random.default_rng(3)
    load = rng.uniform(1.0, 3.0, 40)
    adam = 0.010 * load
    rprop = 1.1 * adam * rng.uniform(0.99, 1.01, 40)
    median, low, high = step_speed._paired_ratio(list(rprop), list(adam))
    assert median == pytest.approx(np.median(rprop / adam))
    assert 1.09 < low <= median <= high < 1.11
    # Paired with other rounds' times, the same data give an interval
    # wider by the load's spread: the pairing is what resolves 1%.
    _, shuffled_low, shuffled_high = step_speed._paired_ratio(
        list(rprop[rng.permutation(40)]), list(adam)
    )
    assert shuffled_high - shuffled_low > 10 * (high - low)


def test_adam_row_of_each_row(step_speed):
    assert step_speed._adam_for("keras-rprop irprop- (jit)") == (
        "keras Adam (jit)"
    )
    assert step_speed._adam_for("keras-rprop rprop+ (graph)") == (
        "keras Adam (graph)"
    )
    assert step_speed._adam_for("keras-rprop irprop- (fused=False)") == (
        "keras Adam"
    )
    assert step_speed._adam_for("optax.rprop") == "keras Adam"
