"""Keras optimizers of the Rprop family."""

from keras_rprop.optimizers.rprop import IRpropMinus
from keras_rprop.optimizers.rprop import IRpropPlus
from keras_rprop.optimizers.rprop import Rprop
from keras_rprop.optimizers.rprop import RpropMinus
from keras_rprop.optimizers.rprop import RpropPlus

__all__ = [
    "IRpropMinus",
    "IRpropPlus",
    "Rprop",
    "RpropMinus",
    "RpropPlus",
]
