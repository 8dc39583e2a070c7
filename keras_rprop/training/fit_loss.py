"""`enable_loss`: hands the training loss of every `fit` step to Rprop.

Keras's built-in `train_step` calls `optimizer.apply(grads, variables)` (or
`stateless_apply` on JAX) without the loss, but iRprop+ decides whether to
revert a move by comparing the loss of consecutive steps. `enable_loss`
gives one model a `train_step` that is the same computation plus the loss.
"""

import contextlib
import functools
import types

import keras

from keras_rprop import compat
from keras_rprop.optimizers.loss_check import train_step_owner
from keras_rprop.training import distributed
from keras_rprop.training import minibatch
from keras_rprop.training import train_steps
from keras_rprop.training.loss_channel import rprop_inside


def enable_loss(model):
    """Makes `model.fit` pass the loss of every step to the Rprop optimizer.

    Call it once, after `model.compile(...)`:

    ```python
    model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    keras_rprop.enable_loss(model)
    model.fit(x, y, batch_size=len(x), epochs=100)
    ```

    The loss handed over is the full training loss of the step: the compiled
    loss plus every regularization and `add_loss` term, before loss scaling.
    Under `tf.distribute` each replica hands over its own share (Keras
    divides each replica's loss by the number of replicas); the optimizer
    sums the shares into the global loss. When mixed precision wraps the
    optimizer in a `keras.optimizers.LossScaleOptimizer`, the loss reaches
    the inner Rprop optimizer, and steps skipped for non-finite gradients
    skip the loss too.

    Only the `"irprop+"` variant uses the loss; the other variants ignore
    it, so `enable_loss` is harmless with them. It works for Sequential,
    Functional and subclassed models on the TensorFlow, JAX and PyTorch
    backends, compiled or with `run_eagerly=True`. It binds a new
    `train_step` method to this model instance only, so the model's class,
    config and saved files are unchanged: a model loaded from disk or made by
    `keras.models.clone_model` needs its own `enable_loss` call.

    `enable_loss` also makes `fit` warn, once, when it is called with
    mini-batches that the optimizer would apply one by one (see
    `keras_rprop.MiniBatchWarning`): Rprop needs full-batch gradients.

    Across processes (`torch.distributed`, multi-process JAX), each process
    calls `fit` on its own shard with one batch per epoch: the step sums
    the gradients, the loss and the logged metrics of all the shards, and
    on PyTorch `fit` first copies process 0's weights to the others (see
    `docs/distributed.md`).

    A model whose class overrides `train_step` has its own training step,
    which `enable_loss` cannot change: pass the loss there instead, as
    `self.optimizer.apply(grads, variables, loss=loss)` (TensorFlow, PyTorch)
    or `self.optimizer.stateless_apply(..., loss=loss)` (JAX).

    Args:
        model: A compiled `keras.Model` whose optimizer is a
            `keras_rprop.Rprop` (or a `LossScaleOptimizer` wrapping one).

    Returns:
        The same `model`, for chaining.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model`. "
            f"Received: model={model!r}"
        )
    if not getattr(model, "compiled", False):
        raise ValueError(
            "Argument `model` must be compiled before `enable_loss` is "
            "called: call `model.compile(optimizer=keras_rprop.Rprop(...), "
            f"...)` first. Received: model={model.name!r} (not compiled)"
        )
    if rprop_inside(model.optimizer) is None:
        raise ValueError(
            "`enable_loss` hands the loss to a `keras_rprop.Rprop` "
            "optimizer, but the model was compiled with another one. "
            f"Received: optimizer={model.optimizer!r}"
        )
    owner = train_step_owner(model)
    if not owner.__module__.startswith("keras."):
        raise ValueError(
            f"`{owner.__name__}` overrides `train_step`, so `enable_loss` "
            "cannot change how it calls the optimizer. Pass the loss in "
            "your `train_step` instead: "
            "`self.optimizer.apply(grads, variables, loss=loss)` "
            "(TensorFlow, PyTorch) or "
            "`self.optimizer.stateless_apply(..., loss=loss)` (JAX). "
            f"Received: model of class {type(model).__name__}"
        )
    if keras.backend.backend() == "jax" and compat.is_nnx_enabled():
        raise ValueError(
            "`enable_loss` does not support Keras's Flax NNX mode, which "
            "calls the class's `train_step` directly. Override `train_step` "
            "and pass `loss=` to `stateless_apply` instead. Received: "
            "keras.config.is_nnx_enabled()=True"
        )
    bind_train_step(model, train_steps.TRAIN_STEPS)
    model.fit = types.MethodType(_fit_checking_batches, model)
    return model


def bind_train_step(model, steps_by_backend, **kwargs):
    """Binds this backend's step from `steps_by_backend` as `train_step`."""
    backend = keras.backend.backend()
    if backend not in steps_by_backend:
        raise ValueError(
            "keras_rprop's training steps support the TensorFlow, JAX and "
            f"PyTorch backends. Received: backend={backend!r}"
        )
    step = steps_by_backend[backend]
    if kwargs:
        step = functools.partial(step, **kwargs)
    model.train_step = types.MethodType(step, model)
    # A train function made before this call closes over the old step.
    model.train_function = None


# Train functions compiled for a lent training step are kept on the model,
# by step, so that calling `fit_full_batch` again does not compile again.
# (They refer to the model, so a cache outside it would keep it alive.)
_CACHE_ATTRIBUTE = "_keras_rprop_train_functions"


@contextlib.contextmanager
def bound_train_step(model, steps_by_backend, reuse=False, **kwargs):
    """Binds a training step for the duration of the block only.

    Args:
        model: The model.
        steps_by_backend: Dict from backend name to step function.
        reuse: Whether to keep the train function compiled in the block for
            the next block that binds the same step to the same compiled
            model (it refers to nothing but the model and `kwargs`).
        **kwargs: Keyword arguments bound to the step function.
    """
    previous_step = model.__dict__.get("train_step")
    previous_function = model.train_function
    key = (id(steps_by_backend), tuple(sorted(kwargs.items())))
    cache = model.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = {}
        # Past Keras's attribute tracking: this is no state of the model.
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)
    cached = cache.get(key) if reuse else None
    if cached is not None and cached[1:] == _compile_identity(model):
        model.train_step, model.train_function = cached[0]
    else:
        bind_train_step(model, steps_by_backend, **kwargs)
    try:
        yield
    finally:
        if reuse and model.train_function is not None:
            cache[key] = (
                (model.train_step, model.train_function),
                *_compile_identity(model),
            )
        if previous_step is None:
            del model.train_step
        else:
            model.train_step = previous_step
        model.train_function = previous_function


def _compile_identity(model):
    """What a compiled train function depends on besides the step."""
    return (
        model.optimizer,
        compat.loss_tracker(model),
        model.run_eagerly,
        model.jit_compile,
        model.steps_per_execution,
    )


def _fit_checking_batches(self, x=None, y=None, batch_size=None, **kwargs):
    minibatch.check_full_batch(
        self,
        x,
        batch_size=batch_size,
        steps_per_epoch=kwargs.get("steps_per_epoch"),
        validation_split=kwargs.get("validation_split", 0.0),
    )
    # Across processes (PyTorch), every process starts from process 0's
    # state, as with `fit_full_batch`.
    with distributed.collective_errors(self):
        if self.built:
            distributed.broadcast_state(self)
        return type(self).fit(self, x, y, batch_size=batch_size, **kwargs)
