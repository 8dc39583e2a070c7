"""L-BFGS and Levenberg-Marquardt from SciPy on a Keras model's weights.

What a user with a small network and a full training set would pick instead
of Rprop: `scipy.optimize.minimize(method="L-BFGS-B")` and
`scipy.optimize.least_squares(method="lm")` (MINPACK's Levenberg-Marquardt).
SciPy works on one float64 vector; `autodiff` gives the loss, its gradient,
the residuals and their Jacobian as functions of it, from the Keras model on
the current backend.

Both record, like the Keras optimizers' runs (`recording`), a point per
iteration: the training loss, the number of loss and gradient (or Jacobian)
evaluations made so far, and the seconds since the start.
"""

import time

import numpy as np

from keras_rprop.compare.recording import Curve


def minimize_lbfgs(function, x0, max_iterations, start=None):
    """Runs SciPy's L-BFGS-B from `x0`, recording a point per iteration.

    Args:
        function: `vector -> (loss, gradient)`, as made by
            `loss_and_gradient_function`.
        x0: Initial float64 weight vector.
        max_iterations: Budget: at most this many iterations and
            (checked by SciPy at iteration ends) evaluations.
        start: `time.perf_counter()` value the times count from; defaults
            to now.

    Returns:
        A tuple `(result, curve)`: SciPy's `OptimizeResult` and the `Curve`
        (the loss at `x0` and after every iteration).
    """
    from scipy import optimize

    start = time.perf_counter() if start is None else start
    curve = Curve()
    calls = [0]

    def counted(vector):
        calls[0] += 1
        value, grads = function(vector)
        if calls[0] == 1:
            # SciPy evaluates `x0` first: the curve's starting point.
            curve.add(value, 1, 1, time.perf_counter() - start)
        return value, grads

    def callback(intermediate_result):
        curve.add(
            intermediate_result.fun,
            calls[0],
            calls[0],
            time.perf_counter() - start,
        )

    result = optimize.minimize(
        counted,
        x0,
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={"maxiter": max_iterations, "maxfun": max_iterations},
    )
    return result, curve


def least_squares_lm(residuals, jacobian, x0, max_evaluations, start=None):
    """Runs MINPACK's Levenberg-Marquardt from `x0`, recording its iterates.

    SciPy's `least_squares(method="lm")` takes no callback. MINPACK evaluates
    the Jacobian once at every iterate it accepts, just after the residuals
    there, so each Jacobian call adds a point with the loss (mean squared
    residual) at that iterate; the final iterate is added at the end.

    Args:
        residuals: `vector -> residual vector`.
        jacobian: `vector -> (residuals, weights) matrix`.
        x0: Initial float64 weight vector.
        max_evaluations: Budget of residual evaluations (`max_nfev`).
        start: `time.perf_counter()` value the times count from; defaults
            to now.

    Returns:
        A tuple `(result, curve)`: SciPy's `OptimizeResult` and the `Curve`,
        whose evaluation counts are the calls of `residuals` (loss
        evaluations) and of `jacobian` (gradient evaluations).
    """
    from scipy import optimize

    start = time.perf_counter() if start is None else start
    curve = Curve()
    counts = {"fun": 0, "jac": 0}
    losses = {}

    def counted_residuals(vector):
        counts["fun"] += 1
        value = residuals(vector)
        losses[vector.tobytes()] = float(np.mean(value**2))
        return value

    def counted_jacobian(vector):
        counts["jac"] += 1
        value = jacobian(vector)
        loss = losses.get(vector.tobytes())
        if loss is not None and (not curve.losses or curve.losses[-1] != loss):
            curve.add(
                loss, counts["fun"], counts["jac"], time.perf_counter() - start
            )
        return value

    result = optimize.least_squares(
        counted_residuals,
        x0,
        jac=counted_jacobian,
        method="lm",
        max_nfev=max_evaluations,
    )
    final = float(np.mean(result.fun**2))
    if curve.losses[-1] != final:
        curve.add(
            final, counts["fun"], counts["jac"], time.perf_counter() - start
        )
    return result, curve
