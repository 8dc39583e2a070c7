"""Float64 NumPy references for the tests: the Rprop variants and a tiny MLP.

`ReferenceRprop` is written from the published pseudo-code, independently of
`keras_rprop`: it keeps the previous gradient and the previous weight change
themselves (as the papers do) instead of a sign and a derived move, and it
walks the three cases of the pseudo-code with explicit masks.

`mlp_loss_and_grads` is a two-layer perceptron (tanh hidden layer, linear
output, mean squared error) with hand-written backpropagation, so that the
full-batch gradients of the reference do not come from any framework.
"""

import numpy as np

VARIANTS = ("rprop+", "rprop-", "irprop+", "irprop-")


class ReferenceRprop:
    """The four Rprop variants on a list of float64 arrays.

    Args:
        variant: One of `VARIANTS`.
        shapes: Shapes of the parameter arrays.
        initial_step: Delta_0: a number, or one array per parameter array
            (per-weight initial step sizes).
        eta_minus: Step decrease factor.
        eta_plus: Step increase factor.
        min_step: Delta_min.
        max_step: Delta_max.
    """

    def __init__(
        self,
        variant,
        shapes,
        initial_step=0.1,
        eta_minus=0.5,
        eta_plus=1.2,
        min_step=1e-6,
        max_step=50.0,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}")
        self.variant = variant
        self.eta_minus = eta_minus
        self.eta_plus = eta_plus
        self.min_step = min_step
        self.max_step = max_step
        if not isinstance(initial_step, (list, tuple)):
            initial_step = [np.full(s, initial_step) for s in shapes]
        self.delta = [
            np.array(d, np.float64).reshape(s)
            for d, s in zip(initial_step, shapes, strict=True)
        ]
        self.previous_gradient = [np.zeros(s, np.float64) for s in shapes]
        self.previous_change = [np.zeros(s, np.float64) for s in shapes]
        # E(t-1): +inf before the first step.
        self.previous_loss = np.inf
        # Which branches a run went through, so tests can show they were hit.
        self.sign_changes = 0
        self.sign_change_steps_loss_rose = 0
        self.sign_change_steps_loss_not_rose = 0

    def step(
        self, params, grads, loss=None, learning_rate=1.0, weight_decay=0.0
    ):
        """Applies one step and returns the new parameters.

        Args:
            params: List of float64 arrays, the current weights.
            grads: List of float64 arrays, the full-batch gradients at `params`.
            loss: E(t), the loss at `params` (needed by iRprop+).
            learning_rate: Factor on every applied weight change.
            weight_decay: Decoupled weight decay, applied as
                `w -= w * learning_rate * weight_decay` before the step.

        Returns:
            The list of new parameter arrays.
        """
        if self.variant == "irprop+" and loss is None:
            raise ValueError("irprop+ needs the loss")
        loss_rose = loss is not None and loss > self.previous_loss
        new_params = []
        changes_before = self.sign_changes
        for i, (w, g) in enumerate(zip(params, grads)):
            w = np.array(w, np.float64)
            g = np.array(g, np.float64)
            if weight_decay:
                w = w - w * learning_rate * weight_decay
            delta = self.delta[i]
            g_prev = self.previous_gradient[i]
            change_prev = self.previous_change[i]
            product = g_prev * g
            grow = product > 0
            shrink = product < 0
            keep = product == 0
            self.sign_changes += int(shrink.sum())

            new_delta = delta.copy()
            new_delta[grow] = np.minimum(
                delta[grow] * self.eta_plus, self.max_step
            )
            new_delta[shrink] = np.maximum(
                delta[shrink] * self.eta_minus, self.min_step
            )

            change = np.zeros_like(w)
            stored = g.copy()
            # Cases g(t-1) * g(t) > 0 and == 0: a regular step.
            regular = grow | keep
            change[regular] = (
                -np.sign(g[regular]) * new_delta[regular] * learning_rate
            )
            # Case g(t-1) * g(t) < 0.
            if self.variant == "rprop-":
                change[shrink] = (
                    -np.sign(g[shrink]) * new_delta[shrink] * learning_rate
                )
            elif self.variant == "rprop+":
                change[shrink] = -change_prev[shrink]
                stored[shrink] = 0.0
            elif self.variant == "irprop+":
                if loss_rose:
                    change[shrink] = -change_prev[shrink]
                stored[shrink] = 0.0
            else:  # irprop-
                stored[shrink] = 0.0

            self.delta[i] = new_delta
            self.previous_gradient[i] = stored
            self.previous_change[i] = change
            new_params.append(w + change)
        if self.sign_changes > changes_before:
            if loss_rose:
                self.sign_change_steps_loss_rose += 1
            else:
                self.sign_change_steps_loss_not_rose += 1
        if loss is not None:
            self.previous_loss = loss
        return new_params


def make_regression_data(n=32, features=3, seed=0):
    """Fixed inputs and a smooth nonlinear target, float64."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n, features))
    y = np.sin(2.0 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    return x, y


def make_mlp_params(features=3, hidden=6, outputs=1, seed=1):
    """Initial weights `[W1, b1, W2, b2]` in Keras `Dense` layout."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0.0, 0.6, size=(features, hidden)),
        rng.normal(0.0, 0.1, size=(hidden,)),
        rng.normal(0.0, 0.6, size=(hidden, outputs)),
        rng.normal(0.0, 0.1, size=(outputs,)),
    ]


def mlp_forward(params, x):
    w1, b1, w2, b2 = params
    hidden = np.tanh(x @ w1 + b1)
    return hidden @ w2 + b2, hidden


def mlp_loss_and_grads(params, x, y):
    """Mean squared error of the MLP and its gradients by backpropagation.

    Returns:
        A tuple `(loss, [dW1, db1, dW2, db2])`.
    """
    w1, b1, w2, b2 = params
    prediction, hidden = mlp_forward(params, x)
    error = prediction - y
    loss = np.mean(error**2)
    d_prediction = 2.0 * error / error.size
    d_w2 = hidden.T @ d_prediction
    d_b2 = d_prediction.sum(axis=0)
    d_hidden = (d_prediction @ w2.T) * (1.0 - hidden**2)
    d_w1 = x.T @ d_hidden
    d_b1 = d_hidden.sum(axis=0)
    return loss, [d_w1, d_b1, d_w2, d_b2]


def train_reference(
    variant,
    params,
    x,
    y,
    steps,
    learning_rate=1.0,
    weight_decay=0.0,
    **hyperparameters,
):
    """Runs `steps` full-batch reference steps; returns the weights after each.

    Returns:
        A tuple `(history, losses, rprop)`: the list of parameter lists after
        every step, the loss at the weights each step started from, and the
        `ReferenceRprop` (for its branch counters).
    """
    params = [np.array(p, np.float64) for p in params]
    rprop = ReferenceRprop(
        variant, [p.shape for p in params], **hyperparameters
    )
    history, losses = [], []
    for _ in range(steps):
        loss, grads = mlp_loss_and_grads(params, x, y)
        params = rprop.step(
            params,
            grads,
            loss=loss,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
        )
        history.append(params)
        losses.append(loss)
    return history, losses, rprop
