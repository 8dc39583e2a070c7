"""The `Rprop` optimizer and its four variants under their own names."""

import dataclasses
import math

import keras
from keras import ops

from keras_rprop import rule
from keras_rprop import validation
from keras_rprop.optimizers import backend_compat
from keras_rprop.optimizers import fast_paths


@validation.expose_config
@keras.saving.register_keras_serializable(package="keras_rprop")
class Rprop(keras.optimizers.Optimizer):
    """Optimizer that implements Rprop (resilient backpropagation).

    Rprop gives every weight its own step size and adapts it from the sign
    of that weight's gradient only: while the sign holds, the step grows by
    `eta_plus` (up to `max_step`); when it flips, the step shrinks by
    `eta_minus` (down to `min_step`). Each weight then moves by its step
    against the sign of its gradient. The magnitude of the gradient is never
    used, which makes Rprop robust to badly scaled error surfaces, but it
    needs the full-batch gradient: with noisy mini-batch gradients the signs
    flip at random and the steps collapse.

    The four published variants differ only in what happens to a weight
    whose gradient changed sign (its step size shrinks in all of them):

    - `"rprop+"` (Riedmiller & Braun, 1993): revert the weight's previous
      move and forget the gradient.
    - `"rprop-"` (Riedmiller, 1994): move by the shrunk step.
    - `"irprop-"` (Igel & Huesken, 2000): do not move, and forget the
      gradient, so that the next step neither grows nor shrinks.
    - `"irprop+"` (Igel & Huesken, 2000): revert the previous move only if
      the loss rose since the previous step, else do not move; forget the
      gradient. It needs the loss: pass it as
      `optimizer.apply(grads, variables, loss=loss)`, or train with
      `model.fit` after `keras_rprop.enable_loss(model)`.

    `learning_rate` multiplies every applied move, a reverted one included;
    the default 1.0 is the papers' rule. The step sizes adapt independently
    of it, so a schedule or `keras.callbacks.ReduceLROnPlateau` scales the
    moves without disturbing the adaptation.

    Args:
        variant: One of `"rprop+"`, `"rprop-"`, `"irprop+"`, `"irprop-"`.
            Defaults to `"irprop-"`, which needs no loss.
        initial_step: Float, the initial step size of every weight
            (Delta_0), > 0 and within `[min_step, max_step]`. Defaults to
            `0.1` (Riedmiller & Braun, 1993, who call the choice "rather
            uncritical").
        eta_minus: Float in (0, 1), the factor by which a step size shrinks
            after its gradient changed sign. Defaults to `0.5`.
        eta_plus: Float > 1, the factor by which a step size grows while
            the sign holds. Defaults to `1.2`.
        min_step: Float >= 0, the lower bound of the step sizes. Defaults
            to `1e-6`.
        max_step: Float > 0, the upper bound of the step sizes. Defaults to
            `50.0`.
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Multiplies every applied move. Defaults to `1.0`.
        fused: Whether the update runs as one compiled program of its
            own: on PyTorch a kernel compiled by `torch.compile` (a few
            seconds once per process), on TensorFlow in a graph that XLA
            does not compile whole (`model.fit`'s default on the CPU) the
            update compiled by XLA (under a second per model). `None`
            (default) compiles it for models of at least 2**20 parameters
            on PyTorch's CPU and 2**17 on TensorFlow, `True` always,
            `False` never. JAX ignores it: XLA compiles its whole step.
        name: String. The name of the optimizer's variables.
        weight_decay: Float. If set, the weights are shrunk by
            `learning_rate * weight_decay` before each step.
        clipnorm: Float. If set, each weight's gradient is clipped to this
            norm. Clipping never changes a gradient's sign.
        clipvalue: Float. If set, each gradient is clipped to this value.
        global_clipnorm: Float. If set, the gradients of all weights are
            clipped to this global norm.
        use_ema: Boolean, defaults to `False`. If `True`, an exponential
            moving average of the weights is kept, and the weights are
            overwritten with it periodically.
        ema_momentum: Float, defaults to 0.99. The momentum of the moving
            average, if `use_ema=True`.
        ema_overwrite_frequency: Int or None, defaults to None. Every this
            many steps the weights are overwritten with their moving average,
            if `use_ema=True`; if None, only by
            `optimizer.finalize_variable_values()` (which `fit` calls).
        loss_scale_factor: Float or `None`. If a float, the loss is
            multiplied by it before computing gradients, and the gradients
            divided by it before the update.
        gradient_accumulation_steps: Int or `None`. If an int, the variables
            are updated every this many steps, from the average of the
            gradients since the last update (and, for `"irprop+"`, the
            average of the losses).

    References:
        - [Riedmiller & Braun, 1993](https://doi.org/10.1109/ICNN.1993.298623)
          (Rprop+).
        - [Riedmiller, 1994](https://doi.org/10.1016/0920-5489(94)90017-5)
          (Rprop-).
        - Igel & Huesken, 2000: "Improving the Rprop learning algorithm",
          Proc. NC 2000, pp. 115-121 (iRprop+ and iRprop-).
        - [Igel & Huesken, 2003](https://doi.org/10.1016/S0925-2312(01)00700-7)
    """

    def __init__(
        self,
        variant=rule.IRPROP_MINUS,
        initial_step=0.1,
        eta_minus=0.5,
        eta_plus=1.2,
        min_step=1e-6,
        max_step=50.0,
        learning_rate=1.0,
        fused=None,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="rprop",
        **kwargs,
    ):
        config = rule.RpropConfig(
            variant=variant,
            initial_step=initial_step,
            eta_minus=eta_minus,
            eta_plus=eta_plus,
            min_step=min_step,
            max_step=max_step,
        )
        super().__init__(
            learning_rate=validation.float_learning_rate(learning_rate),
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.config = config
        self.fused = validation.check_fused(fused)

        # Created here, not in `build`, so that their place in a checkpoint
        # does not depend on the model; every variant has them all.
        with keras.name_scope(self.name, caller=self):
            # The loss of the step being applied. Under tf.distribute each
            # replica holds its share, so "sum" assigns the global loss.
            self._current_loss = _scalar("current_loss", math.inf, "sum")
            # E(t-1) for iRprop+; +inf before the first step, so that the
            # first sign change never counts as a rise of the loss.
            self._previous_loss = _scalar(
                "previous_loss", math.inf, "only_first_replica"
            )
            # Backtracking reverts the move that was made, which was scaled
            # by the learning rate of its own step.
            self._previous_learning_rate = _scalar(
                "previous_learning_rate", 1.0, "only_first_replica"
            )
            # The losses of the accumulated mini-batches, so that iRprop+
            # compares the losses of whole accumulated batches.
            self._accumulated_loss = _scalar("accumulated_loss", 0.0, "sum")

    def build(self, var_list):
        """Initializes the step sizes and stored signs.

        Args:
            var_list: list of model variables to build Rprop variables on.
        """
        if self.built:
            return
        if self.variant == rule.IRPROP_PLUS:
            from keras_rprop.training import loss_channel

            loss_channel.check_fit_passes_loss()
        super().build(var_list)
        self._steps = []
        self._signs = []
        for variable in var_list:
            validation.check_float_variable(
                backend_compat.is_float_dtype(variable.dtype),
                getattr(variable, "path", variable.name),
                variable.dtype,
            )
            if self._overwrite_variable_with_gradient(variable):
                self._steps.append(None)
                self._signs.append(None)
                continue
            self._steps.append(
                self._add_slot(
                    variable,
                    "step",
                    backend_compat.constant_initializer(
                        self.config.initial_step
                    ),
                    backend_compat.step_dtype(variable.dtype),
                )
            )
            self._signs.append(
                self._add_slot(
                    variable,
                    "sign",
                    backend_compat.constant_initializer(0),
                    backend_compat.sign_dtype(),
                )
            )

    def _add_slot(self, variable, name, initializer, dtype):
        """A state variable shaped like `variable`, of its own `dtype`."""
        path = getattr(variable, "path", variable.name)
        return self.add_variable(
            shape=variable.shape,
            initializer=initializer,
            dtype=dtype,
            layout=getattr(variable, "_layout", None),
            name=f"{path.replace('/', '_')}_{name}",
        )

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        index = self._get_variable_index(variable)
        step = self._steps[index]
        sign = self._signs[index]
        gradient = ops.cast(backend_compat.densify(gradient), step.dtype)
        new_step, new_sign, new_value = fast_paths.update_tensor(
            self.config,
            gradient,
            ops.convert_to_tensor(step),
            ops.convert_to_tensor(sign),
            ops.convert_to_tensor(variable),
            self._rule_arguments(learning_rate, step.dtype),
        )
        self.assign(variable, new_value)
        self.assign(step, new_step)
        self.assign(sign, new_sign)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The one step that sees every variable at once: where a backend
        # has a faster way through the whole step, it takes it.
        if not fast_paths.update(
            self, grads, trainable_variables, learning_rate
        ):
            super()._backend_update_step(
                grads, trainable_variables, learning_rate
            )
        # After every variable was updated: the next step compares against
        # this step's loss and reverts moves made with this learning rate.
        # Copies, not the other variables' arrays: on JAX an eager assign
        # would make two variables hold one buffer, which the trainer's
        # donation of the optimizer state then rejects.
        self._previous_loss.assign(
            ops.copy(ops.convert_to_tensor(self._current_loss))
        )
        self._previous_learning_rate.assign(
            ops.copy(ops.cast(learning_rate, "float32"))
        )

    def _rule_arguments(self, learning_rate, dtype):
        """The arguments of `rule.apply` shared by all tensors of a step."""
        loss_increased = None
        if self.config.variant == rule.IRPROP_PLUS:
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

    def load_own_variables(self, store):
        """Loads the state, then clips the step sizes to the bounds.

        A checkpoint written with other `min_step` / `max_step` can hold step
        sizes outside `[min_step, max_step]`; the rule only clips a step size
        when it grows or shrinks, so they are clipped here.
        """
        super().load_own_variables(store)
        validation.clip_step_sizes(
            getattr(self, "_steps", ()), self.config, ops.clip
        )

    def get_config(self):
        config = super().get_config()
        config.update(dataclasses.asdict(self.config))
        config["fused"] = self.fused
        return config

    # -- The loss channel ------------------------------------------------

    def apply(self, grads, trainable_variables=None, loss=None):
        """Updates the variables from their gradients.

        Args:
            grads: List of gradients, one per variable.
            trainable_variables: The variables, on the first call (to build
                the optimizer) or whenever the list differs from the one the
                optimizer was built with.
            loss: Optional scalar, the loss at the current weights (the same
                evaluation that produced `grads`), before any loss scaling.
                Required by the `"irprop+"` variant; the other variants accept
                and ignore it.
        """
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
        _check_gradient_shapes(
            grads,
            trainable_variables or getattr(self, "_trainable_variables", None),
        )
        if loss is None:
            loss = getattr(self, "_stateless_loss", None)
        loss = validation.check_loss(
            loss,
            needs_loss=self.config.variant == rule.IRPROP_PLUS,
            convert_to_tensor=ops.convert_to_tensor,
            how_to_pass=_HOW_TO_PASS_THE_LOSS,
        )
        if loss is not None:
            if "float" not in keras.backend.standardize_dtype(loss.dtype):
                loss = ops.cast(loss, "float32")
            self._record_loss(ops.cast(ops.stop_gradient(loss), "float32"))
        return super().apply(grads, trainable_variables)

    def apply_gradients(self, grads_and_vars, loss=None):
        grads, trainable_variables = zip(*grads_and_vars, strict=True)
        self.apply(grads, trainable_variables, loss=loss)
        return self._iterations

    def stateless_apply(
        self, optimizer_variables, grads, trainable_variables, loss=None
    ):
        """Stateless `apply` (JAX): returns the new variable values.

        Args:
            optimizer_variables: Current values of `optimizer.variables`.
            grads: Gradients, one per trainable variable.
            trainable_variables: Current values of the trainable variables.
            loss: Optional scalar loss, as in `apply`.

        Returns:
            A tuple `(trainable_variables, optimizer_variables)` of new values.
        """
        self._stateless_loss = loss
        try:
            return super().stateless_apply(
                optimizer_variables, grads, trainable_variables
            )
        finally:
            self._stateless_loss = None

    def _record_loss(self, loss):
        # A NaN loss counts as +inf: for iRprop+ it is a rise after a finite
        # loss (revert), and a finite loss after it is not (keep the move).
        loss = ops.where(ops.isnan(loss), math.inf, loss)
        if self.gradient_accumulation_steps:
            steps = self.gradient_accumulation_steps
            is_update_step = (self._iterations + 1) % steps == 0
            # Under tf.distribute each replica holds a share of the loss and
            # the "sum" aggregation adds up the replicas' assignments, so the
            # running total, which every replica reads, enters split evenly
            # between them: the assigned sum is total + the global loss.
            replicas = backend_compat.num_replicas_in_sync()
            total = self._accumulated_loss / replicas + loss
            loss = total / steps
            self._accumulated_loss.assign(
                ops.where(is_update_step, ops.zeros_like(total), total)
            )
        self._current_loss.assign(loss)


_HOW_TO_PASS_THE_LOSS = (
    "Pass it as `optimizer.apply(grads, variables, loss=loss)` or "
    "`optimizer.stateless_apply(..., loss=loss)`; with `model.fit`, call "
    "`keras_rprop.enable_loss(model)` after `model.compile(...)`."
)


def _check_gradient_shapes(grads, trainable_variables):
    if trainable_variables is None or len(grads) != len(trainable_variables):
        return  # Keras raises its own error for a count mismatch.
    validation.check_gradient_shapes(
        (
            tuple(grad.shape),
            tuple(variable.shape),
            getattr(variable, "path", getattr(variable, "name", "")),
        )
        for grad, variable in zip(grads, trainable_variables, strict=True)
        if grad is not None
    )


def _scalar(name, value, aggregation):
    """A float32 scalar of the optimizer's state."""
    return keras.Variable(
        value,
        name=name,
        dtype="float32",
        trainable=False,
        aggregation=aggregation,
    )


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
