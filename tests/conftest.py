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

if BACKEND == "jax":
    import jax

    # On GPUs, JAX multiplies float32 matrices in TensorFloat-32 by default,
    # with 10-bit mantissas. The tests compare float32 results with float64
    # references and with other computation orders; Rprop follows gradient
    # signs, so such rounding changes whole trajectories. The variable
    # carries the setting into the tests' child processes.
    os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    jax.config.update("jax_default_matmul_precision", "highest")


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
