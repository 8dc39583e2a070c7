"""The `Rprop` optimizer and its four variants under their own names."""

import warnings

import keras
from keras import ops

from keras_rprop import bookkeeping
from keras_rprop import compat
from keras_rprop import rule
from keras_rprop import validation
from keras_rprop.optimizers import backend_compat
from keras_rprop.optimizers import fast_paths
from keras_rprop.optimizers import loss_check


@compat.with_whole_step
@keras.saving.register_keras_serializable(package="keras_rprop")
class Rprop(bookkeeping.RpropBookkeeping, keras.optimizers.Optimizer):
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
      `model.fit` after `keras_rprop.enable_loss(model)`. With
      `gradient_accumulation_steps`, it compares the averages of the
      accumulated losses.

    `learning_rate` multiplies every applied move, a reverted one included;
    the default 1.0 is the papers' rule. The step sizes adapt independently
    of it, so a schedule or `keras.callbacks.ReduceLROnPlateau` scales the
    moves without disturbing the adaptation. The hyper-parameters can be
    changed between steps (`optimizer.eta_plus = 1.5`), also once the update
    is compiled; `initial_step` only until the optimizer is built, and
    `variant` only until the update is compiled.

    Args:
        variant: One of `"rprop+"`, `"rprop-"`, `"irprop+"`, `"irprop-"`.
            Defaults to `"irprop-"`, which needs no loss.
        initial_step: The initial step size of every weight (Delta_0), > 0
            and within `[min_step, max_step]`: a float, or a Keras
            initializer (an instance, or its name or config) that gives each
            weight its own, such as
            `keras.initializers.RandomUniform(0.005, 0.02)` as in PROBEN1;
            its values are checked when the optimizer is built. Defaults to
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
        {{base_optimizer_keyword_args}}
    References:
        - [Riedmiller & Braun, 1993](https://doi.org/10.1109/ICNN.1993.298623)
          (Rprop+).
        - [Riedmiller, 1994](https://doi.org/10.1016/0920-5489(94)90017-5)
          (Rprop-).
        - Igel & Huesken, 2000: "Improving the Rprop learning algorithm",
          Proc. NC 2000, pp. 115-121 (iRprop+ and iRprop-).
        - [Igel & Huesken, 2003](https://doi.org/10.1016/S0925-2312(01)00700-7)
    """

    ops = ops

    _HOW_TO_PASS_THE_LOSS = (
        "Pass it as `optimizer.apply(grads, variables, loss=loss)` or "
        "`optimizer.stateless_apply(..., loss=loss)`; with `model.fit`, call "
        "`keras_rprop.enable_loss(model)` after `model.compile(...)`."
    )

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
        rule.check_variant(variant)
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
        self.fused = validation.check_fused(fused)
        # Made here, not in `build`, so that their place in a checkpoint
        # does not depend on the model; every variant has them all.
        with keras.name_scope(self.name, caller=self):
            self._init_bookkeeping(
                variant, initial_step, eta_minus, eta_plus, min_step, max_step
            )

    def build(self, var_list):
        """Initializes the step sizes and stored signs.

        Args:
            var_list: list of model variables to build Rprop variables on.
        """
        if self.built:
            return
        if rule.VARIANT_TABLE[self.config.variant].needs_loss:
            loss_check.check_fit_passes_loss()
        super().build(var_list)
        self._build_slots(var_list)

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        index = compat.variable_index(self, variable)
        step = self._steps[index]
        sign = self._signs[index]
        gradient = ops.cast(backend_compat.densify(gradient), step.dtype)
        new_value, new_sign, new_step = fast_paths.update_tensor(
            self._rule_config(step.dtype, like=gradient),
            gradient,
            ops.convert_to_tensor(step),
            ops.convert_to_tensor(sign),
            ops.convert_to_tensor(variable),
            self._rule_arguments(learning_rate, step.dtype),
        )
        self.assign(variable, new_value)
        self.assign(step, new_step)
        self.assign(sign, new_sign)

    def whole_step(self, grads, trainable_variables, learning_rate, keras_step):
        """Updates every variable, by the backend's fastest way."""
        self._forget_step()
        if not fast_paths.update(
            self, grads, trainable_variables, learning_rate
        ):
            keras_step(grads, trainable_variables, learning_rate)
        self._forget_step()
        self._finish_step(learning_rate)

    def save_own_variables(self, store):
        """Saves the state, without the hyper-parameters `config` holds."""
        for i, variable in enumerate(self._saved_variables()):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        """Loads the state, then clips the step sizes to the bounds.

        A checkpoint written with other `min_step` / `max_step` can hold step
        sizes outside `[min_step, max_step]`; the rule only clips a step size
        when it grows or shrinks, so they are clipped here.
        """
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            warnings.warn(
                f"Skipping variable loading for optimizer '{self.name}', "
                f"because it has {len(variables)} variables whereas the "
                f"saved optimizer has {len(store.keys())} variables.",
                stacklevel=2,
            )
            return
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])
        self._clip_steps()

    def _saved_variables(self):
        return [v for v in self.variables if v is not self._rule_parameters]

    def get_config(self):
        config = super().get_config()
        config.update(self._config_items())
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
            grads, trainable_variables or compat.built_variables(self)
        )
        if loss is None:
            loss = getattr(self, "_stateless_loss", None)
        loss = self._check_loss(loss)
        if loss is not None:
            self._record_loss(loss)
        return super().apply(grads, trainable_variables)

    def apply_gradients(self, grads_and_vars, loss=None):
        grads, trainable_variables = zip(*grads_and_vars, strict=True)
        self.apply(grads, trainable_variables, loss=loss)
        return self.iterations

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

    # -- What `RpropBookkeeping` needs of Keras ---------------------------

    def _new_scalar(self, name, value, aggregation):
        return keras.Variable(
            value,
            name=name,
            dtype="float32",
            trainable=False,
            aggregation=aggregation,
        )

    def _new_rule_parameters(self, values):
        return keras.Variable(
            values,
            name="rule_parameters",
            dtype=values.dtype.name,
            trainable=False,
            aggregation=bookkeeping.ONCE,
        )

    def _new_slot(self, variable, name, initializer, dtype):
        path = getattr(variable, "path", variable.name)
        return self.add_variable(
            shape=variable.shape,
            initializer=initializer,
            dtype=dtype,
            layout=compat.variable_layout(variable),
            name=f"{path.replace('/', '_')}_{name}",
        )

    def _slot_info(self, variable):
        return (
            getattr(variable, "path", variable.name),
            keras.backend.standardize_dtype(variable.dtype),
            not getattr(variable, "overwrite_with_gradient", False),
        )

    _rule_parameters_dtype = staticmethod(backend_compat.widest_float)
    _sign_dtype = staticmethod(backend_compat.sign_dtype)
    _constant_initializer = staticmethod(backend_compat.constant_initializer)
    _initial_values = staticmethod(backend_compat.initial_values)
    _is_traced = staticmethod(backend_compat.is_traced)
    _trace_scope = staticmethod(backend_compat.trace_scope)
    _get_initializer = staticmethod(keras.initializers.get)
    _serialize_initializer = staticmethod(keras.initializers.serialize)
    _num_replicas = staticmethod(backend_compat.num_replicas_in_sync)

    def _apply_count(self):
        return compat.apply_count(self)

    def _is_built(self):
        return self.built


Rprop.__doc__ = Rprop.__doc__.replace(
    "{{base_optimizer_keyword_args}}", compat.BASE_OPTIMIZER_KEYWORD_ARGS
)


def _check_gradient_shapes(grads, trainable_variables):
    if not trainable_variables or len(grads) != len(trainable_variables):
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
