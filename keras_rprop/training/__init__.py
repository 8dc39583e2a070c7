"""Training with Rprop from `model.fit`: the loss channel and full batches."""

from keras_rprop.training.callbacks import StepSizeLogger
from keras_rprop.training.fit_loss import enable_loss
from keras_rprop.training.full_batch import fit_full_batch
from keras_rprop.training.minibatch import MiniBatchWarning
from keras_rprop.training.progress import LossGoal
from keras_rprop.training.stopping import StopOnGeneralizationLoss
from keras_rprop.training.stopping import StopOnProgressQuotient
from keras_rprop.training.stopping import StopOnValidationIncreases

__all__ = [
    "LossGoal",
    "MiniBatchWarning",
    "StepSizeLogger",
    "StopOnGeneralizationLoss",
    "StopOnProgressQuotient",
    "StopOnValidationIncreases",
    "enable_loss",
    "fit_full_batch",
]
