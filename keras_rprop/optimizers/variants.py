"""`Rprop` fixed to each of its four variants, under the variants' names."""

import keras

from keras_rprop import rule
from keras_rprop import validation
from keras_rprop.optimizers.rprop import Rprop


def _one_variant(class_name, variant, given):
    return validation.one_variant(
        class_name, variant, given, "keras_rprop.Rprop"
    )


@keras.saving.register_keras_serializable(package="keras_rprop")
class RpropPlus(Rprop):
    """Rprop with weight-backtracking (Riedmiller & Braun, 1993).

    `keras_rprop.Rprop` with `variant="rprop+"`; see `Rprop` for the
    arguments.
    """

    def __init__(self, *args, variant=rule.RPROP_PLUS, **kwargs):
        kwargs.setdefault("name", "rprop_plus")
        variant = _one_variant("RpropPlus", rule.RPROP_PLUS, variant)
        super().__init__(variant, *args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_rprop")
class RpropMinus(Rprop):
    """Rprop without weight-backtracking (Riedmiller, 1994).

    `keras_rprop.Rprop` with `variant="rprop-"`; see `Rprop` for the
    arguments.
    """

    def __init__(self, *args, variant=rule.RPROP_MINUS, **kwargs):
        kwargs.setdefault("name", "rprop_minus")
        variant = _one_variant("RpropMinus", rule.RPROP_MINUS, variant)
        super().__init__(variant, *args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_rprop")
class IRpropPlus(Rprop):
    """Improved Rprop with loss-dependent backtracking (Igel & Huesken, 2000).

    `keras_rprop.Rprop` with `variant="irprop+"`; see `Rprop` for the
    arguments.
    """

    def __init__(self, *args, variant=rule.IRPROP_PLUS, **kwargs):
        kwargs.setdefault("name", "irprop_plus")
        variant = _one_variant("IRpropPlus", rule.IRPROP_PLUS, variant)
        super().__init__(variant, *args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_rprop")
class IRpropMinus(Rprop):
    """Improved Rprop without backtracking (Igel & Huesken, 2000).

    `keras_rprop.Rprop` with `variant="irprop-"`; see `Rprop` for the
    arguments.
    """

    def __init__(self, *args, variant=rule.IRPROP_MINUS, **kwargs):
        kwargs.setdefault("name", "irprop_minus")
        variant = _one_variant("IRpropMinus", rule.IRPROP_MINUS, variant)
        super().__init__(variant, *args, **kwargs)
