"""Rprop (resilient backpropagation) optimizers for Keras 3.

Importing the package registers its classes for Keras serialization under
the package name `keras_rprop`, so `keras.models.load_model` can restore a
model compiled with one of them.
"""

from keras_rprop.optimizers import IRpropMinus
from keras_rprop.optimizers import IRpropPlus
from keras_rprop.optimizers import Rprop
from keras_rprop.optimizers import RpropMinus
from keras_rprop.optimizers import RpropPlus
from keras_rprop.rule import VARIANTS
from keras_rprop.rule import RpropConfig
from keras_rprop.rule import rprop_update
from keras_rprop.training import LossGoal
from keras_rprop.training import MiniBatchWarning
from keras_rprop.training import StepSizeLogger
from keras_rprop.training import StopOnGeneralizationLoss
from keras_rprop.training import StopOnProgressQuotient
from keras_rprop.training import StopOnValidationIncreases
from keras_rprop.training import enable_loss
from keras_rprop.training import fit_full_batch

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
