"""`fit_full_batch`: exact full-batch training, fast for data in memory."""

import inspect

import keras

from keras_rprop import compat
from keras_rprop.training import distributed
from keras_rprop.training import engine
from keras_rprop.training import train_steps
from keras_rprop.training.chunked import ApplyAccumulated
from keras_rprop.training.chunked import GradientAccumulator
from keras_rprop.training.data_checks import check_fit_data
from keras_rprop.training.fit_loss import bound_train_step
from keras_rprop.training.minibatch import num_samples

# Arguments of `fit` that `fit_full_batch` sets itself.
_OWN_FIT_ARGUMENTS = ("batch_size", "steps_per_epoch")

# Arguments of `fit` that the engine for data in memory takes; with any
# other, the data goes through `model.fit`.
_ENGINE_ARGUMENTS = {
    "callbacks",
    "verbose",
    "validation_split",
    "validation_data",
    "validation_freq",
    "validation_batch_size",
    "sample_weight",
    "initial_epoch",
    "shuffle",
}


@distributed.across_processes
def fit_full_batch(
    model,
    x=None,
    y=None,
    *,
    epochs=1,
    steps_per_epoch=1,
    chunk_size=None,
    chunks_per_epoch=None,
    check_finite=True,
    **fit_kwargs,
):
    """Trains `model` with the gradient of the whole training set per step.

    Rprop needs the full-batch gradient. `fit_full_batch` is `model.fit`
    with every optimizer step taken on the whole training set, and with the
    loss of every step handed to the optimizer (as `enable_loss` does, for
    the duration of the call):

    ```python
    model.compile(optimizer=keras_rprop.Rprop("irprop+"), loss="mse")
    history = keras_rprop.fit_full_batch(model, x, y, epochs=500)
    ```

    **Data in memory** (NumPy arrays, tensors, or nests of them): one batch
    of all samples (after `validation_split`), one optimizer step per epoch
    by default. With `steps_per_epoch=k`, each epoch runs `k` optimizer
    steps in one compiled call, which removes Keras's per-epoch overhead;
    callbacks, History and the progress bar then count epochs of `k` steps,
    and the logged metrics are those of the epoch's last step (the loss at
    the weights it started from). `epochs=100, steps_per_epoch=10` trains
    the same weights as `epochs=1000`.

    **Data that does not fit in one batch**: a `tf.data.Dataset`, a
    `keras.utils.PyDataset`, a generator or a `torch.utils.data.DataLoader`
    yielding chunks, or arrays with `chunk_size=`. Each epoch is one pass
    over the chunks and one optimizer step with the exact full-data
    gradient: the chunks' gradients and losses are summed, weighted by
    their number of samples (a short last chunk counts for what it holds),
    and the step is applied after the last chunk, before validation and the
    epoch-end callbacks. The logged loss is the loss of the whole data set
    at the weights the step started from. This is exact for losses that
    average over the samples (Keras's default reduction); layers whose
    training-mode output depends on the batch (`BatchNormalization`) see
    chunks, not the full batch. A generator has no end: pass
    `chunks_per_epoch`, the number of chunks in one pass over the data.

    Args:
        model: A compiled `keras.Model`.
        x: Input data, as for `model.fit`.
        y: Target data, as for `model.fit` (`None` for datasets).
        epochs: Number of epochs (entries of the History).
        steps_per_epoch: Optimizer steps per epoch, for data in memory.
            Defaults to 1.
        chunk_size: For data in memory: compute the full-batch gradient
            from chunks of this many samples, to bound memory use.
        chunks_per_epoch: Number of chunks in one pass over the data, for a
            generator or a dataset of unknown length.
        check_finite: Whether to check, once before training, that the
            arrays (`x`, `y`, `sample_weight`, `validation_data`) hold no
            NaN or infinity, which would make the weights NaN at the first
            step: a `ValueError` names the array and the first bad value.
            One pass over the data; datasets and generators are not
            checked. Arrays of different lengths are refused either way.
            Defaults to True.
        **fit_kwargs: Other arguments of `model.fit` (`callbacks`,
            `validation_data`, `sample_weight`, `verbose`, ...), except
            `batch_size` and `steps_per_epoch`.

    Returns:
        The `History` returned by `model.fit`.
    """
    _check_arguments(
        model, epochs, steps_per_epoch, chunk_size, chunks_per_epoch
    )
    check_fit_data(
        x,
        y,
        fit_kwargs.get("sample_weight"),
        fit_kwargs.get("validation_data"),
        check_finite=check_finite,
    )
    for name in _OWN_FIT_ARGUMENTS:
        if name in fit_kwargs:
            raise ValueError(
                f"`fit_full_batch` sets the `fit` argument `{name}` itself; "
                "use `chunk_size` to bound the memory of a step and "
                "`steps_per_epoch` for optimizer steps per epoch. "
                f"Received: {name}={fit_kwargs[name]!r}"
            )
    fit_kwargs.setdefault("shuffle", False)
    samples = num_samples(x)
    fit = type(model).fit
    if samples is not None and chunk_size is None:
        if chunks_per_epoch is not None:
            raise ValueError(
                "Argument `chunks_per_epoch` is for data that comes in "
                "chunks; arrays are one batch (use `chunk_size` to split "
                f"them). Received: chunks_per_epoch={chunks_per_epoch!r}"
            )
        if _engine_runs(model, fit_kwargs):
            fit_kwargs.pop("shuffle", None)
            return engine.fit_in_memory(
                model,
                x,
                y,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                **fit_kwargs,
            )
        kwargs = {} if steps_per_epoch == 1 else {"steps": steps_per_epoch}
        with bound_train_step(
            model, train_steps.TRAIN_STEPS, reuse=True, **kwargs
        ):
            return fit(
                model, x, y, batch_size=samples, epochs=epochs, **fit_kwargs
            )

    if steps_per_epoch != 1:
        raise ValueError(
            "Argument `steps_per_epoch` must be 1 for data in chunks: each "
            "epoch is one pass over the chunks and one optimizer step. "
            f"Received: steps_per_epoch={steps_per_epoch!r}"
        )
    if (
        samples is not None
        and -(-samples // chunk_size) <= engine.MAX_CHUNKS
        and _engine_runs(model, fit_kwargs)
    ):
        # All chunks of an epoch in the engine's compiled step.
        fit_kwargs.pop("shuffle", None)
        return engine.fit_in_memory(
            model, x, y, epochs=epochs, chunk_size=chunk_size, **fit_kwargs
        )
    if chunks_per_epoch is None and (
        inspect.isgenerator(x)
        or (hasattr(x, "__next__") and not hasattr(x, "__len__"))
    ):
        raise ValueError(
            "A generator has no end, so `fit_full_batch` needs to know "
            "where one pass over the data ends: pass `chunks_per_epoch`, "
            "the number of chunks the generator yields per pass. "
            "Received: chunks_per_epoch=None"
        )
    if not model.built:
        raise ValueError(
            "Argument `model` must be built before training on chunks (the "
            "gradient sums take the shapes of its weights): call it on a "
            "batch of data or call `model.build(input_shape)` first. "
            f"Received: model={model.name!r} (not built)"
        )
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    accumulator = GradientAccumulator(model.trainable_variables)
    callbacks = [ApplyAccumulated(accumulator)]
    callbacks += list(fit_kwargs.pop("callbacks", None) or [])
    with (
        compat.tracked_metric(model, accumulator),
        bound_train_step(
            model, train_steps.ACCUMULATE_STEPS, accumulator=accumulator
        ),
    ):
        return fit(
            model,
            x,
            y,
            batch_size=chunk_size,
            epochs=epochs,
            steps_per_epoch=chunks_per_epoch,
            callbacks=callbacks,
            **fit_kwargs,
        )


def _engine_runs(model, fit_kwargs):
    """Whether the engine for data in memory keeps `fit`'s meaning here."""
    if not set(fit_kwargs) <= _ENGINE_ARGUMENTS:
        return False
    # Shuffling one batch only reorders the sums of its samples.
    if fit_kwargs.get("shuffle") or model.run_eagerly:
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy() or (
            model.distribute_strategy is not tf.distribute.get_strategy()
        ):
            # Keras's `fit` fails under `MultiWorkerMirroredStrategy`.
            return distributed.tf_multi_worker_strategy(model) is not None
    if keras.distribution.distribution() is not None:
        return False
    return backend in ("tensorflow", "jax", "torch")


def _check_arguments(model, epochs, steps_per_epoch, chunk_size, chunks):
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model`. "
            f"Received: model={model!r}"
        )
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "Argument `model` must be compiled with an optimizer before "
            "`fit_full_batch`. "
            f"Received: model={model.name!r} (not compiled)"
        )
    for name, value in (
        ("epochs", epochs),
        ("steps_per_epoch", steps_per_epoch),
    ):
        if not _is_positive_int(value):
            raise ValueError(
                f"Argument `{name}` must be a positive integer. "
                f"Received: {name}={value!r}"
            )
    for name, value in (
        ("chunk_size", chunk_size),
        ("chunks_per_epoch", chunks),
    ):
        if value is not None and not _is_positive_int(value):
            raise ValueError(
                f"Argument `{name}` must be a positive integer or None. "
                f"Received: {name}={value!r}"
            )


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
