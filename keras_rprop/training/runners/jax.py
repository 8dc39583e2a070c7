"""The engine's epochs on JAX: one `jax.jit` function over many epochs.

The compiled function is stateless: it takes the values of the model's
variables and returns new ones. Models of the same structure (the same
Keras layers and configuration, compiled with the same loss, metrics and
optimizer configuration) therefore share one compiled function, so that
training several fresh models (seeds, restarts) compiles once.
"""

import numpy as np

from keras_rprop.training import train_steps
from keras_rprop.training.runners import common

_PROGRAMS = common.Programs()


class JaxRunner:
    """Epochs in one `jax.jit` function: a `lax.while_loop` over epochs."""

    validates = True

    def __init__(self, model, steps):
        self.model = model
        self.data = None
        program = _PROGRAMS.get(model, steps, lambda: _Program(model, steps))
        self.program = program
        self.keys = program.keys

    def run(
        self,
        epochs,
        goal=None,
        stop_on_nan=False,
        snapshots=False,
        validation=None,
        validate=None,
    ):
        model = self.model
        program = self.program
        groups = _state_groups(model)
        model.reset_metrics()
        state = tuple([v.value for v in group] for group in groups)
        batches = common.in_loop_batches(validation)
        # The arrays of the logs have a static size: one size per power of
        # two of epochs, never shrinking for a given kind of call, so that
        # calls with fewer epochs (a chunk run again) reuse the program.
        kind = (bool(batches), stop_on_nan, snapshots)
        size = max(
            common.capacity(epochs, validate), program.sizes.get(kind, 1)
        )
        program.sizes[kind] = size
        count, state, train, val, saved = program.function(
            state,
            self.data,
            batches,
            common.mask(validate, size),
            epochs,
            -np.inf if goal is None else goal,
            size=size,
            stop_on_nan=stop_on_nan,
            snapshots=snapshots,
        )
        for group, new_values in zip(groups, state):
            for variable, value in zip(group, new_values):
                variable.assign(value)
        count = int(count)
        return common.Result(
            common.epoch_logs(self.keys, train, val, validate, count),
            common.snapshots_by_epoch(saved, count) if snapshots else None,
        )


class _Program:
    """The compiled epochs of one model structure."""

    def __init__(self, model, steps):
        import jax

        # The model the function is traced with; other models of the same
        # structure pass their variables' values.
        self.model = model
        self.steps = steps
        self.keys = common.log_keys(model)
        self.sizes = {}
        self.function = jax.jit(
            self._epochs,
            static_argnames=("size", "stop_on_nan", "snapshots"),
        )

    def _epochs(
        self,
        state,
        data,
        batches,
        validate,
        epochs,
        goal,
        size,
        stop_on_nan,
        snapshots,
    ):
        import jax
        import jax.numpy as jnp

        model = self.model
        fresh_metrics = state[3]
        weights = _weight_positions(model) if snapshots else []

        def validation(state):
            trainable, non_trainable = state[0], state[1]
            test_state = (trainable, non_trainable, fresh_metrics)
            for batch in batches:
                logs, test_state = model.test_step(test_state, batch)
            return [jnp.asarray(logs[key], "float32") for key in self.keys]

        def body(carry):
            epoch, _, state, train, val, saved = carry
            state = (*state[:3], fresh_metrics)
            state, logs = train_steps.jax_update_steps(
                model, state, data, self.steps
            )
            metrics = state[3]
            train = [
                array.at[epoch].set(jnp.asarray(logs[key], "float32"))
                for array, key in zip(train, self.keys)
            ]
            if batches:
                values = jax.lax.cond(
                    validate[epoch],
                    validation,
                    lambda _: [jnp.float32(jnp.nan) for _ in self.keys],
                    state,
                )
                val = [
                    array.at[epoch].set(value)
                    for array, value in zip(val, values)
                ]
            saved = [
                array.at[epoch].set(state[group][index])
                for array, (group, index) in zip(saved, weights)
            ]
            loss = jnp.asarray(logs["loss"], "float32")
            stop = common.stop_condition(loss, goal, stop_on_nan)
            return epoch + 1, stop, (*state[:3], metrics), train, val, saved

        train = [jnp.zeros((size,), "float32") for _ in self.keys]
        val = [jnp.zeros((size,), "float32") for _ in self.keys]
        val = val if batches else []
        saved = [
            jnp.zeros(
                (size, *state[group][index].shape), state[group][index].dtype
            )
            for group, index in weights
        ]
        count, _, state, train, val, saved = jax.lax.while_loop(
            lambda carry: (carry[0] < epochs) & ~carry[1],
            body,
            (
                jnp.asarray(0),
                jnp.asarray(False),
                tuple(state),
                train,
                val,
                saved,
            ),
        )
        return count, state, train, val, saved


def _state_groups(model):
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )


def _weight_positions(model):
    """Where each of `model.weights` is in the JAX state: (group, index)."""
    positions = {}
    for group, variables in enumerate(_state_groups(model)[:2]):
        for index, variable in enumerate(variables):
            positions.setdefault(id(variable), (group, index))
    return [positions[id(w)] for w in model.weights]
