"""Training with Rprop from `model.fit`: the loss channel and full batches."""

from keras_rprop.training.loss_channel import enable_loss
