"""Keras optimizers of the Rprop family."""

from keras_rprop.optimizers.rprop import Rprop
from keras_rprop.optimizers.variants import IRpropMinus
from keras_rprop.optimizers.variants import IRpropPlus
from keras_rprop.optimizers.variants import RpropMinus
from keras_rprop.optimizers.variants import RpropPlus

__all__ = [
    "IRpropMinus",
    "IRpropPlus",
    "Rprop",
    "RpropMinus",
    "RpropPlus",
]
