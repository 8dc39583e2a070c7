import os

# Torch must be imported before TensorFlow in one process, or TensorFlow's
# and torch's bundled libraries can crash each other.
try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    pass

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {BACKEND}"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Without the full garbage collection, which costs about a second per
    # test once TensorFlow or JAX are loaded.
    keras.utils.clear_session(free_memory=False)
    keras.config.set_floatx("float32")
    keras.mixed_precision.set_global_policy("float32")
    np.random.seed(0)
    yield
    keras.config.set_floatx("float32")
    keras.mixed_precision.set_global_policy("float32")
