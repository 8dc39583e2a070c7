"""What the Keras 3 and the `tf_keras` optimizers share besides the rule.

`RpropBookkeeping` is a base class of `keras_rprop.Rprop` and
`keras_rprop.tf_keras.Rprop`. It holds the hyper-parameters (`config`, and
a property per field), the state besides the slots (the loss of the step,
the previous loss and learning rate, and the rule's hyper-parameters as a
tensor that compiled updates read), the checks of the loss, of the initial
step sizes and of changed hyper-parameters, and what a step computes
before and after the rule. Each class provides its framework's variables
and operations.
"""

import dataclasses
import math

import keras
import numpy as np

from keras_rprop import rule
from keras_rprop import validation

# Under a distribution strategy each replica assigns its share of the loss,
# which "sum" adds up into the global loss; the other scalars are assigned
# once per step.
SUM = "sum"
ONCE = "only_first_replica"


class RpropBookkeeping:
    """The state and checks shared by the two `Rprop` optimizer classes.

    A subclass calls `_init_bookkeeping` in its `__init__` and
    `_build_slots` in its `build`, calls `_record_loss`, `_rule_config`,
    `_rule_arguments` and `_finish_step` in its update, calls
    `_forget_step` before and after each step, and provides:

    - `ops`: the operations of `rule.apply` (`sign`, `where`, `zeros_like`,
      `cast`, `convert_to_tensor`) and `isnan`, `greater`, `stop_gradient`,
      `copy`, `clip` and `convert_to_numpy`, with the meaning of
      `keras.ops`.
    - `_new_scalar(name, value, aggregation)`: a float32 scalar variable
      of the optimizer's saved state.
    - `_new_rule_parameters(values)`: a variable holding `values`, not
      saved (the config holds them), of `_rule_parameters_dtype()`.
    - `_new_slot(variable, name, initializer, dtype)`: a variable shaped
      like `variable`, saved with the state.
    - `_slot_info(variable)`: `(name, dtype name, has_slots)` of a model
      variable.
    - `_sign_dtype()`, `_constant_initializer(value)`,
      `_initial_values(initializer, shape, dtype)` (the values, computed
      eagerly), `_is_traced(tensor)`, `_trace_scope()` (the objects that
      tell the graphs being built apart, a tuple), `_is_built()`,
      `_get_initializer(identifier)` and
      `_serialize_initializer(initializer)`.
    - `_HOW_TO_PASS_THE_LOSS`: the sentences of the error for a missing
      loss.
    - Where it has `gradient_accumulation_steps`: `_apply_count()`, the
      calls of `apply` so far, and `_num_replicas()`.
    """

    def _init_bookkeeping(
        self, variant, initial_step, eta_minus, eta_plus, min_step, max_step
    ):
        """Checks the hyper-parameters and makes the state besides the slots.

        The variables are made in the order they have in a checkpoint.
        """
        self._rprop_config = rule.RpropConfig(
            variant=variant,
            initial_step=self._initial_step_argument(initial_step),
            eta_minus=eta_minus,
            eta_plus=eta_plus,
            min_step=min_step,
            max_step=max_step,
        )
        # The variant the update was compiled with, once it was, and the
        # hyper-parameters read in the step being compiled.
        self._compiled_variant = None
        self._traced_config = None
        # The loss of the step being applied.
        self._current_loss = self._new_scalar("current_loss", math.inf, SUM)
        # E(t-1) for iRprop+; +inf before the first step, so that the first
        # sign change never counts as a rise of the loss.
        self._previous_loss = self._new_scalar("previous_loss", math.inf, ONCE)
        # Backtracking reverts the move that was made, which was scaled by
        # the learning rate of its own step.
        self._previous_learning_rate = self._new_scalar(
            "previous_learning_rate", 1.0, ONCE
        )
        if hasattr(self, "gradient_accumulation_steps"):
            # The losses of the accumulated mini-batches, so that iRprop+
            # compares the losses of whole accumulated batches.
            self._accumulated_loss = self._new_scalar(
                "accumulated_loss", 0.0, SUM
            )
        # A compiled update reads the hyper-parameters from this variable,
        # so that a change after compilation takes effect.
        self._rule_parameters = self._new_rule_parameters(
            self._rule_parameter_values()
        )

    # -- The hyper-parameters ----------------------------------------------

    @property
    def config(self):
        """The optimizer's `rule.RpropConfig`.

        Setting it (or one of its fields, as `optimizer.eta_plus = 2.0`)
        takes effect from the next step on every path, compiled or not;
        new bounds apply, as in the papers, when a step size next grows or
        shrinks. Two changes raise instead: `initial_step` once the
        optimizer is built (the step sizes exist; new bounds only clip it),
        and `variant` once the update was compiled (a compiled update is
        made for one variant).
        """
        return self._rprop_config

    @config.setter
    def config(self, config):
        old = self._rprop_config
        if not isinstance(config, rule.RpropConfig):
            raise ValueError(
                "Argument `config` must be a `keras_rprop.RpropConfig`. "
                f"Received: config={config!r}"
            )
        if (
            self._is_built()
            and config.initial_step != old.initial_step
            and config.initial_step
            != _clipped_initial_step(
                old.initial_step, config.min_step, config.max_step
            )
        ):
            raise ValueError(
                "Argument `initial_step` sets the step sizes when the "
                "optimizer is built, and it is built already, so a new "
                "value would not be used. Pass it when making the "
                "optimizer. "
                f"Received: initial_step={config.initial_step!r}"
            )
        compiled = self._compiled_variant
        if compiled is not None and config.variant != compiled:
            raise ValueError(
                "Argument `variant` cannot change once the update has been "
                "compiled (by `tf.function`, `jax.jit` or the training "
                "function of `fit` on TensorFlow and JAX), which would go "
                f"on with variant={compiled!r}. Make a new optimizer with "
                f"the variant instead. Received: variant={config.variant!r}"
            )
        self._rprop_config = config
        self._rule_parameters.assign(self._rule_parameter_values())

    def _rule_parameter_values(self):
        return np.array(
            [getattr(self.config, name) for name in rule.RULE_PARAMETERS],
            keras.backend.standardize_dtype(self._rule_parameters_dtype()),
        )

    def _initial_step_argument(self, initial_step):
        """`initial_step`, with an initializer's name or config resolved."""
        if not isinstance(initial_step, (str, dict)):
            return initial_step
        try:
            return self._get_initializer(initial_step)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "Argument `initial_step` must be a real number or an "
                "initializer (an instance, or its name or config). "
                f"Received: initial_step={initial_step!r}"
            ) from error

    def _rule_config(self, dtype, like):
        """The hyper-parameters for `rule.apply` on tensors of `dtype`.

        Args:
            dtype: The dtype of the step sizes.
            like: A tensor of the update, which tells whether it is being
                compiled.

        Returns:
            `config` where the update runs eagerly; while it is compiled, a
            `rule.TensorConfig` of values read from a variable, so that the
            compiled update uses the values of the time it runs.
        """
        if not self._is_traced(like):
            return self.config
        self._compiled_variant = self.config.variant
        # Read once per dtype and graph of a step, not once per tensor.
        scope = (*self._trace_scope(), str(dtype))
        cached = self._traced_config
        if cached is not None and _same(cached[0], scope):
            return cached[1]
        values = self.ops.cast(
            self.ops.convert_to_tensor(self._rule_parameters), dtype
        )
        config = rule.TensorConfig(
            self.config.variant,
            *(values[i] for i in range(len(rule.RULE_PARAMETERS))),
        )
        self._traced_config = (scope, config)
        return config

    def _forget_step(self):
        """Drops the hyper-parameters read while a step was compiled.

        Called before and after each step: they belong to its graph.
        """
        if self._traced_config is not None:
            self._traced_config = None

    def _config_items(self):
        """The fields of `config` as `get_config` writes them."""
        items = {
            field.name: getattr(self.config, field.name)
            for field in dataclasses.fields(rule.RpropConfig)
        }
        if rule.is_initializer(self.config.initial_step):
            items["initial_step"] = self._serialize_initializer(
                self.config.initial_step
            )
        return items

    # -- The slots -----------------------------------------------------------

    def _build_slots(self, var_list):
        """Makes the step sizes and stored signs of every variable."""
        self._steps = []
        self._signs = []
        for variable in var_list:
            name, dtype, has_slots = self._slot_info(variable)
            validation.check_float_variable("float" in dtype, name, dtype)
            if not has_slots:
                self._steps.append(None)
                self._signs.append(None)
                continue
            self._steps.append(
                self._new_slot(
                    variable,
                    "step",
                    self._initial_steps(name),
                    rule.step_dtype(dtype),
                )
            )
            self._signs.append(
                self._new_slot(
                    variable,
                    "sign",
                    self._constant_initializer(0),
                    self._sign_dtype(),
                )
            )

    def _initial_steps(self, name):
        """The initializer of the step sizes of the variable `name`."""
        initial_step = self.config.initial_step
        if not rule.is_initializer(initial_step):
            return self._constant_initializer(initial_step)

        def initializer(shape, dtype=None):
            values = self._initial_values(initial_step, shape, dtype)
            array = np.asarray(self.ops.convert_to_numpy(values), np.float64)
            if array.size:
                self.config.check_initial_steps(
                    float(array.min()),
                    float(array.max()),
                    f" (from {type(initial_step).__name__} for variable "
                    f"{name!r})",
                )
            return values

        return initializer

    def _clip_steps(self):
        """Clips the step sizes to `[min_step, max_step]`.

        A state saved with other bounds can hold step sizes outside them;
        the rule only clips a step size when it grows or shrinks.
        """
        validation.clip_step_sizes(
            getattr(self, "_steps", ()), self.config, self.ops.clip
        )

    # -- The loss and the step -------------------------------------------

    def _check_loss(self, loss):
        """`loss` as a scalar tensor, or None; raises for a bad one."""
        tensor = validation.check_loss(
            loss,
            needs_loss=rule.VARIANT_TABLE[self.config.variant].needs_loss,
            convert_to_tensor=self.ops.convert_to_tensor,
            how_to_pass=self._HOW_TO_PASS_THE_LOSS,
        )
        if tensor is not None:
            dtype = keras.backend.standardize_dtype(tensor.dtype)
            if "float" not in dtype and "int" not in dtype:
                raise validation.not_a_number(loss)
        return tensor

    def _record_loss(self, loss):
        """Sets the loss of the step that the next update applies.

        Args:
            loss: A scalar tensor; this replica's share under a
                distribution strategy.
        """
        ops = self.ops
        loss = ops.cast(ops.stop_gradient(loss), "float32")
        # A NaN loss counts as +inf: for iRprop+ it is a rise after a finite
        # loss (revert), and a finite loss after it is not (keep the move).
        loss = ops.where(ops.isnan(loss), math.inf, loss)
        steps = getattr(self, "gradient_accumulation_steps", None)
        if steps:
            is_update_step = (self._apply_count() + 1) % steps == 0
            # Under tf.distribute each replica holds a share of the loss and
            # the "sum" aggregation adds up the replicas' assignments, so
            # the running total, which every replica reads, enters split
            # evenly between them: the assigned sum is total + the loss.
            total = self._accumulated_loss / self._num_replicas() + loss
            loss = total / steps
            self._accumulated_loss.assign(
                ops.where(is_update_step, ops.zeros_like(total), total)
            )
        self._current_loss.assign(loss)

    def _rule_arguments(self, learning_rate, dtype):
        """The arguments of `rule.apply` shared by all tensors of a step."""
        ops = self.ops
        loss_increased = None
        if rule.VARIANT_TABLE[self.config.variant].needs_loss:
            loss_increased = ops.greater(
                ops.convert_to_tensor(self._current_loss),
                ops.convert_to_tensor(self._previous_loss),
            )
        return dict(
            learning_rate=ops.cast(learning_rate, dtype),
            previous_learning_rate=ops.cast(
                self._previous_learning_rate, dtype
            ),
            loss_increased=loss_increased,
        )

    def _finish_step(self, learning_rate):
        """After every variable was updated: the next step compares against
        this step's loss and reverts moves made with this learning rate."""
        ops = self.ops
        # Copies, not the other variables' arrays: on JAX an eager assign
        # would make two variables hold one buffer, which the trainer's
        # donation of the optimizer state then rejects.
        self._previous_loss.assign(
            ops.copy(ops.convert_to_tensor(self._current_loss))
        )
        self._previous_learning_rate.assign(
            ops.copy(ops.cast(learning_rate, "float32"))
        )


def _same(scope, other):
    return len(scope) == len(other) and all(
        a is b or a == b for a, b in zip(scope, other)
    )


def _clipped_initial_step(initial_step, min_step, max_step):
    """A float `initial_step` clipped to `[min_step, max_step]`.

    Once the optimizer is built, `initial_step` is past use, and new bounds
    that exclude it clip it.
    """
    if rule.is_initializer(initial_step):
        return initial_step
    return min(max(initial_step, min_step), max_step)


def _field_property(name):
    def set_field(self, value):
        changes = {name: value}
        if name == "initial_step":
            changes[name] = self._initial_step_argument(value)
        elif name in ("min_step", "max_step") and self._is_built():
            bounds = {
                "min_step": self.config.min_step,
                "max_step": self.config.max_step,
                name: rule.check_real(name, value),
            }
            changes["initial_step"] = _clipped_initial_step(
                self.config.initial_step, **bounds
            )
        self.config = dataclasses.replace(self.config, **changes)

    return property(
        lambda self: getattr(self.config, name),
        set_field,
        doc=f"The `{name}` of the optimizer's `config`.",
    )


for _field in dataclasses.fields(rule.RpropConfig):
    setattr(RpropBookkeeping, _field.name, _field_property(_field.name))
