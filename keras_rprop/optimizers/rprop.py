"""The `Rprop` optimizer: the four Rprop variants as one Keras 3 optimizer."""

import math

import keras
from keras import ops

from keras_rprop import rule
from keras_rprop.optimizers import backend_compat
from keras_rprop.optimizers import ordering
from keras_rprop.validation import check_fused
from keras_rprop.validation import check_hyperparameters
from keras_rprop.validation import check_variant

# Riedmiller & Braun (1993) and Riedmiller (1994) start every step size at 0.1
# and call the choice "rather uncritical"; SNNS, FANN and Encog use it too.
DEFAULT_INITIAL_STEP = 0.1

SIGN_DTYPE = "int8"


@keras.saving.register_keras_serializable(package="keras_rprop")
class Rprop(keras.optimizers.Optimizer):
    """Optimizer that implements the Rprop family (resilient backpropagation).

    Rprop gives every weight its own step size and adapts it from the *sign*
    of that weight's gradient only: while the sign holds, the step grows by
    `eta_plus` (up to `max_step`); when it flips, the step shrinks by
    `eta_minus` (down to `min_step`). Each weight then moves by its step
    against the sign of its gradient. The magnitude of the gradient is never
    used, which makes Rprop robust to badly scaled error surfaces but also
    means it needs the *full-batch* gradient: with noisy mini-batch gradients
    the signs flip at random and the steps collapse.

    The four published variants differ only in what happens to a weight whose
    gradient changed sign (the step size shrinks in all of them):

    - `"rprop+"` (Riedmiller & Braun, 1993): revert the weight's previous move
      (weight-backtracking) and forget the gradient.
    - `"rprop-"` (Riedmiller, 1994): move by the shrunk step, no backtracking.
    - `"irprop-"` (Igel & Huesken, 2000): do not move and forget the gradient,
      so the next step neither grows nor shrinks.
    - `"irprop+"` (Igel & Huesken, 2000): revert the previous move only if the
      loss rose since the previous step, else do not move; forget the
      gradient. It needs the loss: pass it as
      `optimizer.apply(grads, variables, loss=loss)` (or to
      `stateless_apply`), or train with `model.fit` after
      `keras_rprop.enable_loss(model)`.

    "Forget the gradient" means the stored sign is set to zero, so the next
    step takes the step size as it is. This follows the published
    pseudo-code, as do `torch.optim.Rprop` and `optax.rprop` for `"irprop-"`;
    the authors' own C++ library (Shark) instead still moves by the shrunk
    step on a sign change in iRprop-.

    `learning_rate` multiplies every applied move, including a reverted one;
    the default 1.0 is exactly the papers' rule. The step sizes themselves
    adapt independently of it, and backtracking reverts the move that was
    actually made even if the learning rate changed in between. A schedule or
    `keras.callbacks.ReduceLROnPlateau` therefore scales the moves down
    without disturbing the adaptation.

    Clipping (`clipnorm`, `clipvalue`, `global_clipnorm`) rescales gradients
    but never changes their sign, so it has no effect on Rprop other than
    turning gradients whose magnitude underflows to zero into "no move".
    Decoupled `weight_decay` shrinks the weights by
    `learning_rate * weight_decay` before each step, as in other Keras
    optimizers.

    The state is two tensors per weight: the step sizes (in the weight's
    float dtype, at least float32) and the sign of the stored gradient as
    `int8`, i.e. 5 bytes per float32 weight for every variant, against 8 for
    Adam.

    Args:
        variant: One of `"rprop+"`, `"rprop-"`, `"irprop+"`, `"irprop-"`.
            Defaults to `"irprop-"`, which needs no loss and is the most robust
            in Igel & Huesken's comparison after iRprop+.
        initial_step: Initial step size of every weight (Delta_0). Defaults to
            `0.1`, the value of Riedmiller & Braun (1993).
        eta_minus: Factor in (0, 1) by which a step size shrinks after a sign
            change. Defaults to `0.5`.
        eta_plus: Factor > 1 by which a step size grows while the sign holds.
            Defaults to `1.2`.
        min_step: Lower bound (>= 0) of the step sizes. Defaults to `1e-6`.
        max_step: Upper bound of the step sizes. Defaults to `50.0`.
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Multiplies every applied move. Defaults to `1.0` (the papers).
        fused: On the PyTorch backend, whether the update runs as one kernel
            compiled by `torch.compile` (one pass over memory, several
            times faster than eager PyTorch; compiling takes a few seconds
            once per process). `None` (default) compiles it for models of
            at least 2**20 parameters on the CPU, `True` always, `False`
            never. On a GPU the eager update is a few kernels per step
            already, and `None` keeps it. To update many small variables in
            one pass, the compiled update moves their weights, step sizes
            and signs into one tensor each on its first step: every
            variable keeps its tensor object and its value, which becomes
            a view of its part (a weight that is itself a view of a
            larger tensor is left where it is). Other backends compile the
            update with XLA anyway and ignore it.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
        ema_momentum, ema_overwrite_frequency, loss_scale_factor,
        gradient_accumulation_steps, name: The arguments of every
            `keras.optimizers.Optimizer`, with the same meaning and defaults.

    References:
        - [Riedmiller & Braun, 1993](https://doi.org/10.1109/ICNN.1993.298623):
          "A direct adaptive method for faster backpropagation learning: the
          RPROP algorithm" (Rprop+).
        - [Riedmiller, 1994](https://doi.org/10.1016/0920-5489(94)90017-5):
          "Advanced supervised learning in multi-layer perceptrons - from
          backpropagation to adaptive learning algorithms" (Rprop-).
        - Igel & Huesken, 2000: "Improving the Rprop learning algorithm",
          Proc. NC 2000, pp. 115-121 (iRprop+ and iRprop-).
        - [Igel & Huesken, 2003](https://doi.org/10.1016/S0925-2312(01)00700-7):
          "Empirical evaluation of the improved Rprop learning algorithms".
    """

    def __init__(
        self,
        variant=rule.IRPROP_MINUS,
        initial_step=DEFAULT_INITIAL_STEP,
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
        name=None,
        **kwargs,
    ):
        variant = check_variant(variant)
        (
            initial_step,
            eta_minus,
            eta_plus,
            min_step,
            max_step,
        ) = check_hyperparameters(
            initial_step, eta_minus, eta_plus, min_step, max_step
        )
        if isinstance(learning_rate, int) and not isinstance(
            learning_rate, bool
        ):
            # Keras rejects ints; `learning_rate=1` is a natural thing to
            # write for a multiplier that defaults to 1.0.
            learning_rate = float(learning_rate)
        super().__init__(
            learning_rate=learning_rate,
            name=name or _DEFAULT_NAMES.get(type(self).__name__, "rprop"),
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
        self.variant = variant
        self.initial_step = initial_step
        self.eta_minus = eta_minus
        self.eta_plus = eta_plus
        self.min_step = min_step
        self.max_step = max_step
        self.fused = check_fused(fused)

        # Global scalars. They are created here, not in `build`, so that their
        # place in a checkpoint does not depend on the model. Every variant
        # has the same variables, so the checkpoint layout is the same.
        with keras.name_scope(self.name, caller=self):
            # The loss of the step being applied. Under tf.distribute each
            # replica holds its share of the loss, so "sum" makes the
            # assignment hold the global loss.
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
            # Sum of the losses of the accumulated mini-batches, so that
            # iRprop+ compares the losses of whole accumulated batches.
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
            if not backend_compat.is_float_dtype(variable.dtype):
                # A move of a fraction of a step would be truncated away
                # (or be meaningless for booleans) without any error.
                raise ValueError(
                    "Rprop can only train floating-point variables. "
                    "Received: variable "
                    f"{getattr(variable, 'path', variable.name)!r} with dtype "
                    f"{variable.dtype}"
                )
            if self._overwrite_variable_with_gradient(variable):
                self._steps.append(None)
                self._signs.append(None)
                continue
            self._steps.append(
                self._add_slot(
                    variable,
                    "step",
                    backend_compat.step_dtype(variable.dtype),
                    backend_compat.constant_initializer(self.initial_step),
                )
            )
            self._signs.append(
                self._add_slot(
                    variable, "sign", backend_compat.sign_dtype(), "zeros"
                )
            )

    def _add_slot(self, variable, name, dtype, initializer):
        path = getattr(variable, "path", variable.name)
        return self.add_variable(
            shape=variable.shape,
            initializer=initializer,
            dtype=dtype,
            layout=getattr(variable, "_layout", None),
            name=f"{path.replace('/', '_')}_{name}",
        )

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
        self._check_gradient_shapes(grads, trainable_variables)
        if loss is None:
            loss = getattr(self, "_stateless_loss", None)
        loss = self._check_loss(loss)
        if loss is not None:
            self._record_loss(loss)
        return super().apply(grads, trainable_variables)

    def apply_gradients(self, grads_and_vars, loss=None):
        grads, trainable_variables = zip(*grads_and_vars)
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

    def _check_gradient_shapes(self, grads, trainable_variables):
        # Without this check a gradient of shape (1,) would silently
        # broadcast over a variable of shape (3,).
        if trainable_variables is None:
            trainable_variables = getattr(self, "_trainable_variables", None)
            if trainable_variables is None:
                return
        if len(grads) != len(trainable_variables):
            return  # Keras raises its own error for a count mismatch.
        for grad, variable in zip(grads, trainable_variables):
            if grad is None:
                continue
            grad_shape = tuple(grad.shape)
            variable_shape = tuple(variable.shape)
            if grad_shape == variable_shape:
                continue
            if len(grad_shape) != len(variable_shape) or any(
                g is not None and v is not None and g != v
                for g, v in zip(grad_shape, variable_shape)
            ):
                name = getattr(variable, "path", getattr(variable, "name", ""))
                raise ValueError(
                    "Each gradient must have the shape of its variable. "
                    f"Received: gradient of shape {grad_shape} for variable "
                    f"{name!r} of shape {variable_shape}"
                )

    def _check_loss(self, loss):
        if loss is None:
            if self.variant == rule.IRPROP_PLUS:
                raise ValueError(
                    "The 'irprop+' variant compares the loss of consecutive "
                    "steps, but no loss was given. Pass it as "
                    "`optimizer.apply(grads, variables, loss=loss)` or "
                    "`optimizer.stateless_apply(..., loss=loss)`; with "
                    "`model.fit`, call `keras_rprop.enable_loss(model)` "
                    "after `model.compile(...)`. Received: loss=None"
                )
            return None
        if isinstance(loss, (str, bytes, bool)) or loss is ...:
            raise ValueError(
                "Argument `loss` must be a scalar number or tensor. "
                f"Received: loss={loss!r}"
            )
        try:
            tensor = ops.convert_to_tensor(loss)
        except Exception as error:
            raise ValueError(
                "Argument `loss` must be a scalar number or tensor. "
                f"Received: loss={loss!r}"
            ) from error
        if len(tensor.shape) != 0:
            raise ValueError(
                "Argument `loss` must be a scalar (a tensor of shape ()). "
                f"Received: loss with shape {tuple(tensor.shape)}"
            )
        if not backend_compat.is_float_dtype(tensor.dtype):
            tensor = ops.cast(tensor, "float32")
        return ops.cast(ops.stop_gradient(tensor), "float32")

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

    # -- The update --------------------------------------------------------

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fast_update(grads, trainable_variables, learning_rate):
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

    def _fast_update(self, grads, trainable_variables, learning_rate):
        """Runs the backend's own update path; `False` where it cannot.

        PyTorch runs every operation eagerly, so its path updates many
        tensors per call (`multi_tensor`). A plain TensorFlow graph runs each
        operation of the rule as a pass over memory, so its path compiles
        the update with XLA (`xla_update`). JAX compiles the per-variable
        loop of Keras into one program already.
        """
        backend = keras.backend.backend()
        if backend == "torch" and self._use_multi_tensor_path():
            from keras_rprop.optimizers import multi_tensor

            return multi_tensor.update(
                self, grads, trainable_variables, learning_rate
            )
        if backend == "tensorflow":
            from keras_rprop.optimizers import xla_update

            if xla_update.is_supported(grads):
                xla_update.update(
                    self, grads, trainable_variables, learning_rate
                )
                return True
        return False

    def _use_multi_tensor_path(self):
        # Inside a `StatelessScope` the variables must not be written in
        # place.
        return not keras.src.backend.common.stateless_scope.in_stateless_scope()

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        index = self._get_variable_index(variable)
        step_variable = self._steps[index]
        sign_variable = self._signs[index]
        dtype = step_variable.dtype
        gradient = ops.cast(backend_compat.densify(gradient), dtype)
        sign = ops.convert_to_tensor(sign_variable)
        step = ops.convert_to_tensor(step_variable)
        arguments = self._rule_arguments(learning_rate, dtype)
        target = ordering.xla_target(gradient)
        if target is not None:
            # Compiled by XLA, the stored sign is cheaper made in its own
            # dtype; run op by op, from the float sign the move uses.
            arguments["sign_dtype"] = sign_variable.dtype

        def rprop(gradient, sign, step):
            return rule.rprop_update(
                gradient, ops.cast(sign, dtype), step, **arguments
            )

        if target == ordering.CPU and math.prod(variable.shape):
            new_value, new_step, new_sign = self._ordered_update(
                rprop, gradient, sign, step, variable, arguments
            )
        else:
            move, new_sign, new_step = rprop(gradient, sign, step)
            move = backend_compat.propagate_nan(move, gradient)
            new_value = _add(variable, move)
        self.assign(variable, new_value)
        self.assign(step_variable, new_step)
        self.assign(sign_variable, ops.cast(new_sign, sign_variable.dtype))

    def _ordered_update(self, rprop, gradient, sign, step, variable, arguments):
        """The update in the order XLA on the CPU runs best (see `ordering`).

        Returns the new weight, step sizes and signs: the values `rprop`
        gives, bit for bit but for the sign of a zero weight (see
        `rule.move_from_new_state`).
        """

        def sign_after(new_step):
            # The signs are overwritten last: every other loop reads them.
            return rprop(
                ordering.after(gradient, new_step),
                ordering.after(sign, new_step),
                step,
            )[1]

        if self.variant in rule.BACKTRACKING_VARIANTS:
            # Their move on a sign change reverts the old step size, so the
            # weight's loop runs first and the step sizes' loop after it.
            move = backend_compat.propagate_nan(
                rprop(gradient, sign, step)[0], gradient
            )
            new_value = _add(variable, move)
            new_step = rprop(gradient, sign, ordering.after(step, new_value))[2]
            return new_value, new_step, sign_after(new_step)

        # Their move follows from the new state alone: computed from it, the
        # weight's loop reads it back instead of computing the rule a third
        # time, 9 instead of 22 instructions per 8 float32 elements.
        new_step = rprop(gradient, sign, step)[2]
        new_sign = sign_after(new_step)
        if self.variant == rule.RPROP_MINUS:
            # Its move takes the gradient's own sign: the weight's loop need
            # not read the new signs, one input and a byte per parameter
            # less (5% of the step on JAX for 20 x 500,000 parameters).
            move = backend_compat.propagate_nan(
                rule.move_against_gradient(
                    gradient,
                    new_step,
                    learning_rate=arguments["learning_rate"],
                ),
                gradient,
            )
            return _add(variable, move), new_step, new_sign
        move = rule.move_from_new_state(
            gradient,
            ops.cast(new_sign, step.dtype),
            new_step,
            learning_rate=arguments["learning_rate"],
        )
        return _add(variable, move), new_step, new_sign

    def _rule_arguments(self, learning_rate, dtype):
        """The arguments of `rule.rprop_update` shared by all tensors of a step."""
        loss_increased = None
        if self.variant == rule.IRPROP_PLUS:
            loss_increased = ops.greater(
                ops.convert_to_tensor(self._current_loss),
                ops.convert_to_tensor(self._previous_loss),
            )
        return dict(
            variant=self.variant,
            eta_minus=self.eta_minus,
            eta_plus=self.eta_plus,
            min_step=self.min_step,
            max_step=self.max_step,
            learning_rate=ops.cast(learning_rate, dtype),
            previous_learning_rate=ops.cast(
                self._previous_learning_rate, dtype
            ),
            loss_increased=loss_increased,
        )

    def load_own_variables(self, store):
        """Loads the state, then clips the step sizes to this optimizer's bounds.

        A checkpoint written with other `min_step` / `max_step` can hold step
        sizes outside `[min_step, max_step]`; the update rule only clips a
        step size when it grows or shrinks, so they are clipped here.
        """
        super().load_own_variables(store)
        for step in getattr(self, "_steps", ()):
            if step is not None:
                step.assign(ops.clip(step, self.min_step, self.max_step))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "variant": self.variant,
                "initial_step": self.initial_step,
                "eta_minus": self.eta_minus,
                "eta_plus": self.eta_plus,
                "min_step": self.min_step,
                "max_step": self.max_step,
                "fused": self.fused,
            }
        )
        return config


def _add(variable, move):
    """The variable's new value."""
    # `+`, not `ops.add`: on TensorFlow `ops.add` turns into a `BiasAdd` for
    # some shapes, which rejects empty variables.
    return ops.convert_to_tensor(variable) + ops.cast(move, variable.dtype)


def _scalar(name, value, aggregation):
    """A float32 scalar of the optimizer's state."""
    return keras.Variable(
        value,
        name=name,
        dtype="float32",
        trainable=False,
        aggregation=aggregation,
    )


_DEFAULT_NAMES = {
    "Rprop": "rprop",
    "RpropPlus": "rprop_plus",
    "RpropMinus": "rprop_minus",
    "IRpropPlus": "irprop_plus",
    "IRpropMinus": "irprop_minus",
}


def _named_variant(class_name, variant, summary):
    """Makes a subclass of `Rprop` with its variant fixed."""

    def __init__(self, *args, **kwargs):
        given = kwargs.pop("variant", variant)
        if check_variant(given) != variant:
            raise ValueError(
                f"`{class_name}` is the {variant!r} variant; use "
                f"`keras_rprop.Rprop(variant={given!r})` for another one. "
                f"Received: variant={given!r}"
            )
        Rprop.__init__(self, variant, *args, **kwargs)

    cls = type(
        class_name,
        (Rprop,),
        {
            "__init__": __init__,
            "__doc__": f"{summary}\n\n`keras_rprop.Rprop` with "
            f"`variant={variant!r}`; see `Rprop` for the arguments.",
            "__module__": __name__,
        },
    )
    return keras.saving.register_keras_serializable(package="keras_rprop")(cls)


RpropPlus = _named_variant(
    "RpropPlus",
    rule.RPROP_PLUS,
    "Rprop with weight-backtracking (Riedmiller & Braun, 1993).",
)
RpropMinus = _named_variant(
    "RpropMinus",
    rule.RPROP_MINUS,
    "Rprop without weight-backtracking (Riedmiller, 1994).",
)
IRpropPlus = _named_variant(
    "IRpropPlus",
    rule.IRPROP_PLUS,
    "Improved Rprop with loss-dependent backtracking (Igel & Huesken, 2000).",
)
IRpropMinus = _named_variant(
    "IRpropMinus",
    rule.IRPROP_MINUS,
    "Improved Rprop without backtracking (Igel & Huesken, 2000).",
)
