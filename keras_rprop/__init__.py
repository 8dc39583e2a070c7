"""Rprop (resilient backpropagation) optimizers for Keras 3.

Importing the package registers its classes for Keras serialization under
the package name `keras_rprop`, so `keras.models.load_model` can restore a
model compiled with one of them. The training functions and callbacks
(`fit_full_batch`, `enable_loss`, ...) are imported on first use, so that
the optimizers alone import no training code.
"""

from keras_rprop.optimizers import IRpropMinus
from keras_rprop.optimizers import IRpropPlus
from keras_rprop.optimizers import Rprop
from keras_rprop.optimizers import RpropMinus
from keras_rprop.optimizers import RpropPlus
from keras_rprop.rule import VARIANTS
from keras_rprop.rule import RpropConfig
from keras_rprop.rule import rprop_update

__version__ = "0.1.0"

__all__ = [
    "IRpropMinus",
    "IRpropPlus",
    "LossGoal",
    "MiniBatchWarning",
    "Rprop",
    "RpropConfig",
    "RpropMinus",
    "RpropPlus",
    "StepSizeLogger",
    "StopOnGeneralizationLoss",
    "StopOnProgressQuotient",
    "StopOnValidationIncreases",
    "VARIANTS",
    "enable_loss",
    "fit_full_batch",
    "rprop_update",
]

# Imported by `__getattr__` on first use.
_TRAINING_EXPORTS = (
    "LossGoal",
    "MiniBatchWarning",
    "StepSizeLogger",
    "StopOnGeneralizationLoss",
    "StopOnProgressQuotient",
    "StopOnValidationIncreases",
    "enable_loss",
    "fit_full_batch",
)


def __getattr__(name):
    if name in _TRAINING_EXPORTS:
        from keras_rprop import training

        return getattr(training, name)
    raise AttributeError(f"module 'keras_rprop' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
