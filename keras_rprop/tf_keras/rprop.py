"""The `Rprop` optimizer for `tf_keras` (Keras 2)."""

import contextlib
import threading
import types

import tensorflow as tf
import tf_keras

from keras_rprop import bookkeeping
from keras_rprop import compat
from keras_rprop import rule
from keras_rprop import validation

# The operations `rule.apply` and the bookkeeping compute with: TensorFlow's
# own, so that the update does not depend on the backend Keras 3 runs in
# this process.
TF_OPS = types.SimpleNamespace(
    sign=tf.math.sign,
    where=tf.where,
    zeros_like=tf.zeros_like,
    cast=tf.cast,
    convert_to_tensor=tf.convert_to_tensor,
    isnan=tf.math.is_nan,
    greater=tf.greater,
    stop_gradient=tf.stop_gradient,
    copy=tf.identity,
    clip=tf.clip_by_value,
    convert_to_numpy=lambda tensor: tensor.numpy(),
)

_AGGREGATIONS = {
    bookkeeping.SUM: tf.VariableAggregation.SUM,
    bookkeeping.ONCE: tf.VariableAggregation.ONLY_FIRST_REPLICA,
}


@tf_keras.saving.register_keras_serializable(package="keras_rprop")
class Rprop(bookkeeping.RpropBookkeeping, tf_keras.optimizers.Optimizer):
    """Optimizer that implements the Rprop family, for `tf_keras` (Keras 2).

    The same optimizer as `keras_rprop.Rprop`, with the same arguments,
    defaults and update, for models built with `tf_keras`. Every weight has
    its own step size, which grows by `eta_plus` (up to `max_step`) while
    the sign of the weight's gradient holds and shrinks by `eta_minus`
    (down to `min_step`) when it flips; the weight moves by its step size
    against the sign of its gradient. Rprop needs the *full-batch*
    gradient: train with `batch_size=len(x)`.

    The four variants differ in what happens to a weight whose gradient
    changed sign: `"rprop+"` reverts its previous move, `"rprop-"` moves by
    the shrunk step, `"irprop-"` does not move, and `"irprop+"` reverts the
    previous move only if the loss rose since the previous step. In all but
    `"rprop-"` the gradient is then forgotten, so the next step neither
    grows nor shrinks the step size.

    `"irprop+"` needs the loss. `minimize` (which `model.fit` calls) hands it
    over; a custom training loop passes it as
    `optimizer.apply_gradients(grads_and_vars, loss=loss)`. Under a
    distribution strategy each replica passes its own share of the loss
    (the loss it takes the gradient of), and the optimizer adds them up.
    Under mixed precision, call `keras_rprop.tf_keras.enable_loss(model)`
    after `model.compile(...)`.

    `learning_rate` multiplies every applied move, a reverted one included;
    the default 1.0 is the papers' rule. The state is two tensors per
    weight: the step sizes (in the weight's float dtype, at least float32)
    and the signs of the stored gradients (`int8`).

    Args:
        variant: One of `"rprop+"`, `"rprop-"`, `"irprop+"`, `"irprop-"`.
            Defaults to `"irprop-"`.
        initial_step, eta_minus, eta_plus, min_step, max_step: The step
            sizes' start, factors and bounds, with the meaning, range and
            default they have in `keras_rprop.Rprop`; an initializer for
            `initial_step` is a `tf_keras` one (an instance, or its name or
            config).
        learning_rate: A float, a
            `tf_keras.optimizers.schedules.LearningRateSchedule` or a
            callable that takes no arguments and returns the value to use.
            Multiplies every applied move. Defaults to `1.0`.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
        ema_momentum, ema_overwrite_frequency, jit_compile, name: The
            arguments of every `tf_keras.optimizers.Optimizer`, with the same
            meaning and defaults.

    References:
        - [Riedmiller & Braun, 1993](https://doi.org/10.1109/ICNN.1993.298623)
          (Rprop+).
        - [Riedmiller, 1994](https://doi.org/10.1016/0920-5489(94)90017-5)
          (Rprop-).
        - Igel & Huesken, 2000: "Improving the Rprop learning algorithm",
          Proc. NC 2000, pp. 115-121 (iRprop+ and iRprop-).
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
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        jit_compile=True,
        name="rprop",
        **kwargs,
    ):
        rule.check_variant(variant)
        learning_rate = validation.float_learning_rate(learning_rate)
        super().__init__(
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            jit_compile=jit_compile,
            **kwargs,
        )
        compat.tf_keras_learning_rate(self, learning_rate)
        # Made here, not in `build`, so that their place among the saved
        # variables does not depend on the model.
        with tf.init_scope():
            self._init_bookkeeping(
                variant, initial_step, eta_minus, eta_plus, min_step, max_step
            )
        # How many `loss_recorded` blocks are open: the loss of their step
        # reached the optimizer before `apply_gradients`. Under a
        # MirroredStrategy every replica opens one, in a thread of its own.
        self._loss_blocks = compat.tf_untracked(self, [0])
        self._loss_lock = compat.tf_untracked(self, threading.Lock())

    def build(self, var_list):
        """Initializes the step sizes and stored signs.

        Args:
            var_list: list of model variables to build Rprop variables on.
        """
        super().build(var_list)
        if compat.tf_keras_is_built(self):
            return
        self._build_slots(var_list)
        compat.tf_keras_set_built(self)

    # -- The loss channel ------------------------------------------------

    def minimize(self, loss, var_list, tape=None):
        """Minimizes `loss` by updating `var_list`, handing the loss over.

        `model.fit` calls it with the loss of each step, so iRprop+ needs
        nothing more there.

        Args:
            loss: A scalar tensor, or a callable without arguments that
                returns it.
            var_list: The variables to update, or a callable returning them.
            tape: The `tf.GradientTape` that computed `loss`, if a tensor.
        """
        if callable(loss):
            tape = tf.GradientTape() if tape is None else tape
            with tape:
                loss = loss()
        grads_and_vars = self.compute_gradients(loss, var_list, tape)
        return self.apply_gradients(grads_and_vars, loss=loss)

    def apply_gradients(
        self,
        grads_and_vars,
        name=None,
        skip_gradients_aggregation=False,
        loss=None,
        **kwargs,
    ):
        """Applies gradients to variables.

        Args:
            grads_and_vars: List of `(gradient, variable)` pairs.
            name: The name scope of the variables made on the first call.
            skip_gradients_aggregation: Whether the gradients were summed
                over the replicas already.
            loss: Optional scalar, the loss at the current weights (the
                evaluation that produced the gradients), before any loss
                scaling. Required by the `"irprop+"` variant; the other
                variants accept and ignore it.

        Returns:
            The `iterations` variable, incremented.
        """
        grads_and_vars = list(grads_and_vars)
        validation.check_gradient_shapes(
            (
                tuple(tf.TensorShape(grad.shape).as_list()),
                tuple(variable.shape.as_list()),
                variable.name,
            )
            for grad, variable in grads_and_vars
            if grad is not None
        )
        if loss is not None or not self._loss_blocks[0]:
            loss = self._check_loss(loss)
            if loss is not None:
                self.record_loss(loss)
        self._forget_step()
        iteration = super().apply_gradients(
            grads_and_vars,
            name=name,
            skip_gradients_aggregation=skip_gradients_aggregation,
            **kwargs,
        )
        self._forget_step()
        self._finish_step(self.learning_rate)
        return iteration

    def record_loss(self, loss):
        """Sets the loss of the step that the next update applies.

        Args:
            loss: A scalar; this replica's share under a distribution
                strategy.
        """
        self._record_loss(loss)

    @contextlib.contextmanager
    def loss_recorded(self, loss):
        """Records `loss` for the `apply_gradients` calls inside the block.

        For a wrapper, such as `LossScaleOptimizer`, that calls
        `apply_gradients` without the loss. A step the wrapper skips leaves
        the comparison of the losses untouched.
        """
        loss = self._check_loss(loss)
        if loss is not None:
            self.record_loss(loss)
        if loss is None:
            yield
            return
        with self._loss_lock:
            self._loss_blocks[0] += 1
        try:
            yield
        finally:
            with self._loss_lock:
                self._loss_blocks[0] -= 1

    # -- The update --------------------------------------------------------

    def update_step(self, gradient, variable):
        """Update step given gradient and the associated model variable."""
        index = compat.tf_keras_variable_index(self, variable)
        step_variable = self._steps[index]
        sign_variable = self._signs[index]
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        step = tf.convert_to_tensor(step_variable)
        new_value, new_sign, new_step = rule.apply(
            self._rule_config(step.dtype, like=gradient),
            gradient,
            step,
            tf.convert_to_tensor(sign_variable),
            weight=tf.convert_to_tensor(variable),
            ops=TF_OPS,
            **self._rule_arguments(self.learning_rate, step.dtype),
        )
        variable.assign(new_value)
        step_variable.assign(new_step)
        sign_variable.assign(new_sign)

    def load_own_variables(self, store):
        """Loads the state, then clips the step sizes to the bounds."""
        super().load_own_variables(store)
        self._clip_steps()

    def set_weights(self, weights):
        """Sets the state, then clips the step sizes to the bounds."""
        super().set_weights(weights)
        self._clip_steps()

    def get_config(self):
        config = super().get_config()
        config["learning_rate"] = compat.tf_keras_serialized_learning_rate(self)
        config.update(self._config_items())
        return config

    # -- What `RpropBookkeeping` needs of tf_keras ------------------------

    ops = TF_OPS

    def _new_scalar(self, name, value, aggregation):
        variable = tf.Variable(
            value,
            name=name,
            dtype=tf.float32,
            trainable=False,
            aggregation=_AGGREGATIONS[aggregation],
        )
        return compat.tf_keras_track_variable(self, variable)

    def _new_rule_parameters(self, values):
        variable = tf.Variable(values, name="rule_parameters", trainable=False)
        return compat.tf_untracked(self, variable)

    def _new_slot(self, variable, name, initializer, dtype):
        strategy = tf.distribute.get_strategy()
        with strategy.extended.colocate_vars_with(variable):
            slot = tf.Variable(
                initializer(variable.shape, dtype=dtype),
                name=f"{name}/{variable.name.split(':')[0]}",
                trainable=False,
            )
        return compat.tf_keras_track_variable(self, slot)

    def _slot_info(self, variable):
        dtype = getattr(variable, "true_dtype", variable.dtype)
        return variable.name, dtype.name, True

    @staticmethod
    def _constant_initializer(value):
        def initializer(shape, dtype):
            return tf.fill(shape, tf.constant(value, dtype))

        return initializer

    @staticmethod
    def _initial_values(initializer, shape, dtype):
        with tf.init_scope():
            return initializer(shape, dtype=dtype)

    @staticmethod
    def _is_traced(tensor):
        return not tf.executing_eagerly()

    @staticmethod
    def _trace_scope():
        return (
            tf.compat.v1.get_default_graph(),
            tf.distribute.get_replica_context(),
        )

    @staticmethod
    def _rule_parameters_dtype():
        return "float64"

    @staticmethod
    def _sign_dtype():
        return "int8"

    _get_initializer = staticmethod(tf_keras.initializers.get)
    _serialize_initializer = staticmethod(tf_keras.initializers.serialize)

    def _is_built(self):
        return compat.tf_keras_is_built(self)

    _HOW_TO_PASS_THE_LOSS = (
        "Pass it as `optimizer.apply_gradients(grads_and_vars, loss=loss)` "
        "or call `optimizer.minimize(loss, variables, tape)`; `model.fit` "
        "does so, and under mixed precision needs "
        "`keras_rprop.tf_keras.enable_loss(model)` after "
        "`model.compile(...)`."
    )


def _one_variant(class_name, variant, given):
    return validation.one_variant(
        class_name, variant, given, "keras_rprop.tf_keras.Rprop"
    )


@tf_keras.saving.register_keras_serializable(package="keras_rprop")
class RpropPlus(Rprop):
    """Rprop with weight-backtracking (Riedmiller & Braun, 1993).

    `keras_rprop.tf_keras.Rprop` with `variant="rprop+"`; see `Rprop` for
    the arguments.
    """

    def __init__(self, *args, variant=rule.RPROP_PLUS, **kwargs):
        kwargs.setdefault("name", "rprop_plus")
        variant = _one_variant("RpropPlus", rule.RPROP_PLUS, variant)
        super().__init__(variant, *args, **kwargs)


@tf_keras.saving.register_keras_serializable(package="keras_rprop")
class RpropMinus(Rprop):
    """Rprop without weight-backtracking (Riedmiller, 1994).

    `keras_rprop.tf_keras.Rprop` with `variant="rprop-"`; see `Rprop` for
    the arguments.
    """

    def __init__(self, *args, variant=rule.RPROP_MINUS, **kwargs):
        kwargs.setdefault("name", "rprop_minus")
        variant = _one_variant("RpropMinus", rule.RPROP_MINUS, variant)
        super().__init__(variant, *args, **kwargs)


@tf_keras.saving.register_keras_serializable(package="keras_rprop")
class IRpropPlus(Rprop):
    """Improved Rprop with loss-dependent backtracking (Igel & Huesken, 2000).

    `keras_rprop.tf_keras.Rprop` with `variant="irprop+"`; see `Rprop` for
    the arguments.
    """

    def __init__(self, *args, variant=rule.IRPROP_PLUS, **kwargs):
        kwargs.setdefault("name", "irprop_plus")
        variant = _one_variant("IRpropPlus", rule.IRPROP_PLUS, variant)
        super().__init__(variant, *args, **kwargs)


@tf_keras.saving.register_keras_serializable(package="keras_rprop")
class IRpropMinus(Rprop):
    """Improved Rprop without backtracking (Igel & Huesken, 2000).

    `keras_rprop.tf_keras.Rprop` with `variant="irprop-"`; see `Rprop` for
    the arguments.
    """

    def __init__(self, *args, variant=rule.IRPROP_MINUS, **kwargs):
        kwargs.setdefault("name", "irprop_minus")
        variant = _one_variant("IRpropMinus", rule.IRPROP_MINUS, variant)
        super().__init__(variant, *args, **kwargs)
