"""Training with Rprop from `model.fit`: the loss channel and full batches."""

from keras_rprop.training.callbacks import StepSizeLogger
from keras_rprop.training.fit_loss import enable_loss
from keras_rprop.training.full_batch import fit_full_batch
from keras_rprop.training.minibatch import MiniBatchWarning
from keras_rprop.training.progress import LossGoal

__all__ = [
    "LossGoal",
    "MiniBatchWarning",
    "StepSizeLogger",
    "enable_loss",
    "fit_full_batch",
]
