"""Rprop for Keras 2 code: the optimizers for `tf_keras`.

Keras 2 lives on as the `tf_keras` package (used by `tf.keras` when
`TF_USE_LEGACY_KERAS=1`). Its models only take `tf_keras` optimizers, so this
module offers the same Rprop optimizers, with the same arguments, defaults
and update, as subclasses of `tf_keras.optimizers.Optimizer`.

Importing it registers the classes for `tf_keras` serialization under the
package name `keras_rprop`, so `tf_keras.models.load_model` can restore a
model compiled with one of them. `import keras_rprop` alone does not import
`tf_keras`.
"""

try:
    import tf_keras  # noqa: F401
except ImportError as error:
    raise ImportError(
        "`keras_rprop.tf_keras` needs the `tf_keras` package (Keras 2), "
        "which is not installed. Install it with "
        "`pip install keras-rprop[tf-keras]`."
    ) from error

from keras_rprop.tf_keras.fit_loss import enable_loss
from keras_rprop.tf_keras.rprop import IRpropMinus
from keras_rprop.tf_keras.rprop import IRpropPlus
from keras_rprop.tf_keras.rprop import Rprop
from keras_rprop.tf_keras.rprop import RpropMinus
from keras_rprop.tf_keras.rprop import RpropPlus

__all__ = [
    "IRpropMinus",
    "IRpropPlus",
    "Rprop",
    "RpropMinus",
    "RpropPlus",
    "enable_loss",
]
