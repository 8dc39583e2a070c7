"""The benchmark problems of `keras-rprop compare`.

Each problem fixes its data, network, loss, target loss and epoch budget, so
that every optimizer faces exactly the same task. The classic Rprop
benchmarks (encoder, parity, two spirals) are generated; the real data sets
ship with scikit-learn. Nothing is downloaded.

Adding a problem is one `register(Problem(...))` call at the end of this
module, next to the others.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np

BINARY = "binary"
MULTICLASS = "multiclass"
REGRESSION = "regression"
TASKS = (BINARY, MULTICLASS, REGRESSION)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Training and test arrays of one problem.

    `x_*` are float32. `y_*` are float32 targets of shape `(n, outputs)` for
    binary and regression problems and int32 class labels of shape `(n,)` for
    multi-class problems. `y_scale` converts a root mean squared error on the
    (standardized) regression targets back to the original units.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Problem:
    """A benchmark: data, network, loss, target loss and epoch budget.

    The network is a multi-layer perceptron: `Dense` layers of the sizes in
    `hidden` with `activation`, then a `Dense` output layer with
    `output_activation`. Its initial weights depend only on the seed (see
    `initial_weights`), never on the backend.

    Attributes:
        name: Short name used on the command line.
        summary: One line that says what the problem is and where it is from.
        load: Function without arguments returning the `Dataset`. The data
            do not depend on the seed: seeds only change the initial weights,
            as in the papers' comparisons.
        hidden: Sizes of the hidden layers.
        activation: Activation of the hidden layers.
        output_activation: Activation of the output layer.
        loss: Class name of a `keras.losses` loss (averaged over the
            training set).
        from_logits: Whether the loss takes logits; the output layer is
            then linear. Cross-entropy on logits stays exact when the
            network is very sure, where a loss on probabilities clips them
            and loses the gradient of a confidently wrong output.
        target_loss: The training loss at which the problem counts as
            learned; "epochs to target" is the first epoch whose loss is at
            or below it.
        epochs: Default epoch budget (full-batch steps).
        mini_batch_epochs: Epoch budget of the mini-batch optimizers, for
            problems where a pass over the training set is many steps and
            `epochs` passes would take far longer than every other run;
            `None` gives them `epochs` too.
        task: One of `"binary"` (test accuracy over all output bits),
            `"multiclass"` (test accuracy of the arg-max) and `"regression"`
            (test root mean squared error in the target's units).
    """

    name: str
    summary: str
    load: Callable[[], Dataset]
    hidden: tuple
    activation: str
    output_activation: str
    loss: str
    target_loss: float
    epochs: int
    task: str
    from_logits: bool = False
    mini_batch_epochs: int | None = None

    @property
    def loss_label(self):
        """The loss as written in tables and plots."""
        return self.loss + ("(from_logits=True)" if self.from_logits else "")

    def make_loss(self):
        """Returns a new instance of the problem's Keras loss."""
        import keras

        loss_class = getattr(keras.losses, self.loss)
        if self.from_logits:
            return loss_class(from_logits=True)
        return loss_class()

    @property
    def metric_name(self):
        """Name of the test metric, e.g. for a table header."""
        return "test RMSE" if self.task == REGRESSION else "test accuracy"

    @property
    def higher_is_better(self):
        return self.task != REGRESSION

    def epoch_budget(self, mini_batch=False):
        """The default budget: `epochs`, or `mini_batch_epochs` if set.

        Args:
            mini_batch: Whether the optimizer trains on mini-batches.
        """
        if mini_batch and self.mini_batch_epochs is not None:
            return self.mini_batch_epochs
        return self.epochs

    def output_units(self, data):
        if self.task == MULTICLASS:
            return int(max(data.y_train.max(), data.y_test.max())) + 1
        return data.y_train.shape[1]

    def build_model(self, data, seed):
        """Builds the network with the initial weights of `seed`.

        Args:
            data: The problem's `Dataset` (gives the input and output sizes).
            seed: Integer seed of the initial weights.

        Returns:
            An uncompiled `keras.Sequential` model.
        """
        import keras

        # The weights are set from NumPy below; zeros skip Keras's random
        # initializers, which JAX would compile for every shape.
        dense = functools.partial(
            keras.layers.Dense, kernel_initializer="zeros"
        )
        layers = [keras.Input((data.x_train.shape[1],))]
        for units in self.hidden:
            layers.append(dense(units, self.activation))
        layers.append(dense(self.output_units(data), self.output_activation))
        model = keras.Sequential(layers, name=self.name.replace("-", "_"))
        model.set_weights(
            initial_weights([w.shape for w in model.weights], seed)
        )
        return model

    def test_metric(self, data, predictions):
        """Accuracy or error of `predictions` on the test set."""
        predictions = np.asarray(predictions, dtype="float64")
        if self.task == BINARY:
            threshold = 0.0 if self.from_logits else 0.5
            positive = predictions > threshold
            return float(np.mean(positive == (data.y_test > 0.5)))
        if self.task == MULTICLASS:
            return float(np.mean(predictions.argmax(axis=-1) == data.y_test))
        error = predictions - data.y_test
        return float(np.sqrt(np.mean(error**2)) * data.y_scale)


def initial_weights(shapes, seed):
    """Glorot-uniform kernels and zero biases from NumPy, for any backend.

    Keras's own initializers draw different numbers on each backend; drawing
    them with NumPy gives the same network on TensorFlow, JAX and PyTorch.

    Args:
        shapes: Shapes of the weights, in `model.weights` order.
        seed: Integer seed.

    Returns:
        A list of float32 arrays of the given shapes.
    """
    rng = np.random.default_rng(seed)
    weights = []
    for shape in shapes:
        shape = tuple(shape)
        if len(shape) == 2:
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            weights.append(rng.uniform(-limit, limit, shape).astype("float32"))
        else:
            weights.append(np.zeros(shape, "float32"))
    return weights


# -- Data ----------------------------------------------------------------------


def encoder_data(n):
    """The N-M-N encoder: n one-hot patterns that the network reproduces.

    There is nothing to generalize to, so the test set is the training set.
    """
    patterns = np.eye(n, dtype="float32")
    return Dataset(patterns, patterns, patterns, patterns)


def parity_data(bits):
    """All 2**bits bit patterns (as -1/+1) with their parity as target.

    All patterns are in the training set, so the test set is the training set.
    """
    codes = np.arange(2**bits)
    binary = (codes[:, None] >> np.arange(bits)) & 1
    x = (2.0 * binary - 1.0).astype("float32")
    y = (binary.sum(axis=1, keepdims=True) % 2).astype("float32")
    return Dataset(x, y, x, y)


def two_spirals_data(points_per_spiral=97):
    """Lang & Witbrock's two interlocking spirals (1988), 194 points.

    The test set lies on the same spirals halfway between the training
    points, so test accuracy measures whether the network learned the spirals
    or the points.
    """

    def spirals(index):
        angle = index * math.pi / 16.0
        radius = 6.5 * (104.0 - index) / 104.0
        first = np.stack([radius * np.sin(angle), radius * np.cos(angle)], 1)
        x = np.concatenate([first, -first]) / 6.5
        y = np.concatenate([np.ones(len(index)), np.zeros(len(index))])
        return x.astype("float32"), y[:, None].astype("float32")

    index = np.arange(points_per_spiral, dtype="float64")
    x_train, y_train = spirals(index)
    x_test, y_test = spirals(index[:-1] + 0.5)
    return Dataset(x_train, y_train, x_test, y_test)


def sinc_data(points=2000):
    """The curve `sinc(10 x) = sin(10 pi x) / (10 pi x)` on `[-1, 1]`.

    The training inputs are `points` evenly spaced values from -1 to 1; the
    test inputs lie halfway between them. The targets are exact: a smooth
    least-squares fit with nothing to generalize but the curve itself.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(
            "Argument `points` must be an integer of at least 2. "
            f"Received: points={points!r}"
        )
    x_train = np.linspace(-1.0, 1.0, points)
    x_test = (x_train[:-1] + x_train[1:]) / 2.0

    def column(values):
        return values[:, None].astype("float32")

    return Dataset(
        column(x_train),
        column(np.sinc(10.0 * x_train)),
        column(x_test),
        column(np.sinc(10.0 * x_test)),
    )


def sklearn_data(loader, task, test_fraction=0.3):
    """A data set bundled with scikit-learn, split 70/30 and standardized.

    The split is stratified for classification and fixed (random state 0),
    and the inputs (and regression targets) are standardized with the
    training set's mean and deviation.
    """
    from sklearn.model_selection import train_test_split

    x, y = loader(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        y,
        test_size=test_fraction,
        random_state=0,
        stratify=None if task == REGRESSION else y,
    )
    mean, deviation = x_train.mean(axis=0), x_train.std(axis=0)
    deviation[deviation == 0] = 1.0
    x_train = ((x_train - mean) / deviation).astype("float32")
    x_test = ((x_test - mean) / deviation).astype("float32")
    y_scale = 1.0
    if task == MULTICLASS:
        y_train, y_test = y_train.astype("int32"), y_test.astype("int32")
    else:
        if task == REGRESSION:
            y_mean, y_scale = float(y_train.mean()), float(y_train.std())
            y_train, y_test = (
                (y_train - y_mean) / y_scale,
                (y_test - y_mean) / y_scale,
            )
        y_train = y_train.reshape(-1, 1).astype("float32")
        y_test = y_test.reshape(-1, 1).astype("float32")
    return Dataset(x_train, y_train, x_test, y_test, y_scale)


def sklearn_loader(name, task):
    """Returns a `Problem.load` for `sklearn.datasets.load_<name>`."""

    def load():
        from sklearn import datasets

        return sklearn_data(getattr(datasets, f"load_{name}"), task)

    return load


# -- The problems --------------------------------------------------------------

PROBLEMS = {}


def register(problem):
    """Adds `problem` to `PROBLEMS` under its name and returns it."""
    if problem.task not in TASKS:
        raise ValueError(
            f"Argument `task` must be one of {TASKS}. "
            f"Received: task={problem.task!r}"
        )
    budget = problem.mini_batch_epochs
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
    ):
        raise ValueError(
            "Argument `mini_batch_epochs` must be a positive integer or "
            f"None. Received: mini_batch_epochs={budget!r}"
        )
    PROBLEMS[problem.name] = problem
    return problem


def get_problem(name):
    """Returns the registered problem called `name`."""
    if name not in PROBLEMS:
        raise ValueError(
            f"Argument `problems` must name problems among {list(PROBLEMS)}. "
            f"Received: {name!r}"
        )
    return PROBLEMS[name]


register(
    Problem(
        name="encoder",
        summary="10-5-10 encoder: pass 10 one-hot patterns through 5 hidden "
        "units (Riedmiller & Braun 1993 benchmark)",
        load=lambda: encoder_data(10),
        hidden=(5,),
        activation="sigmoid",
        output_activation="linear",
        loss="BinaryCrossentropy",
        from_logits=True,
        target_loss=0.01,
        epochs=300,
        task=BINARY,
    )
)

register(
    Problem(
        name="parity",
        summary="4-bit parity: all 16 patterns, 4-8-1 network (a classic "
        "hard problem for gradient descent)",
        load=lambda: parity_data(4),
        hidden=(8,),
        activation="tanh",
        output_activation="linear",
        loss="BinaryCrossentropy",
        from_logits=True,
        target_loss=0.01,
        epochs=500,
        task=BINARY,
    )
)

register(
    Problem(
        name="two-spirals",
        summary="Two spirals (Lang & Witbrock 1988): 194 points, 2-20-20-1 "
        "tanh network; test on points between the training points",
        load=two_spirals_data,
        hidden=(20, 20),
        activation="tanh",
        output_activation="linear",
        loss="BinaryCrossentropy",
        from_logits=True,
        target_loss=0.05,
        epochs=2000,
        task=BINARY,
    )
)

register(
    Problem(
        name="breast-cancer",
        summary="Wisconsin diagnostic breast cancer (scikit-learn): 569 x 30, "
        "2 classes, 30-8-1 network",
        load=sklearn_loader("breast_cancer", BINARY),
        hidden=(8,),
        activation="tanh",
        output_activation="linear",
        loss="BinaryCrossentropy",
        from_logits=True,
        target_loss=0.05,
        epochs=100,
        task=BINARY,
    )
)

register(
    Problem(
        name="wine",
        summary="Wine (scikit-learn): 178 x 13, 3 classes, 13-8-3 network",
        load=sklearn_loader("wine", MULTICLASS),
        hidden=(8,),
        activation="tanh",
        output_activation="linear",
        loss="SparseCategoricalCrossentropy",
        from_logits=True,
        target_loss=0.01,
        epochs=300,
        task=MULTICLASS,
    )
)

register(
    Problem(
        name="digits",
        summary="Digits (scikit-learn): 1797 8x8 images, 10 classes, "
        "64-32-10 network",
        load=sklearn_loader("digits", MULTICLASS),
        hidden=(32,),
        activation="tanh",
        output_activation="linear",
        loss="SparseCategoricalCrossentropy",
        from_logits=True,
        target_loss=0.01,
        epochs=300,
        task=MULTICLASS,
    )
)

register(
    Problem(
        name="diabetes",
        summary="Diabetes progression (scikit-learn): 442 x 10 regression, "
        "10-16-1 network, standardized target",
        load=sklearn_loader("diabetes", REGRESSION),
        hidden=(16,),
        activation="tanh",
        output_activation="linear",
        loss="MeanSquaredError",
        target_loss=0.4,
        epochs=100,
        task=REGRESSION,
    )
)

register(
    Problem(
        name="sinc",
        summary="Curve fit: sinc(10x) = sin(10 pi x) / (10 pi x) on 1000 "
        "evenly spaced points of [-1, 1], 1-20-1 tanh network (61 weights); "
        "test on the points halfway between",
        load=lambda: sinc_data(1000),
        hidden=(20,),
        activation="tanh",
        output_activation="linear",
        loss="MeanSquaredError",
        # An RMS error of 0.01 on a curve whose peak is 1.
        target_loss=1e-4,
        epochs=1000,
        # 32 steps per pass: 1000 passes would be the longest run of all.
        mini_batch_epochs=50,
        task=REGRESSION,
    )
)

# The problems that run when none is named: a classic benchmark, a real
# classification, a real regression and a smooth curve fit, the last two
# where Levenberg-Marquardt applies.
DEFAULT_PROBLEMS = ("encoder", "breast-cancer", "diabetes", "sinc")
