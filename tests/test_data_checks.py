"""`fit_full_batch` refuses bad arrays before it trains.

NaN and infinite values, and arrays of different lengths, raise a
`ValueError` that names the array; the model and its optimizer are left as
they were, and the next correct call trains as if the refused one never
came. The matrix is in `docs/robustness.md`.
"""

import re

import keras
import numpy as np
import pytest

import keras_rprop
from keras_rprop.training import data_checks
from tests import helpers
from tests.test_bad_input import assert_same_state
from tests.test_bad_input import state

SAMPLES = 24
BAD_VALUES = [np.nan, np.inf, -np.inf]


def compiled_model(variant="irprop+"):
    model = helpers.tanh_model()
    model.compile(optimizer=keras_rprop.Rprop(variant), loss="mse")
    return model


def model_state(model):
    weights = [(f"weight {i}", w) for i, w in enumerate(model.get_weights())]
    return weights + state(model.optimizer)


def clean_arguments():
    """Training and validation arrays, every one of them finite."""
    x, y = helpers.sine_data(SAMPLES)
    weights = np.linspace(0.5, 1.5, SAMPLES).astype("float32")
    return {
        "x": x,
        "y": y,
        "sample_weight": weights,
        "validation_data": (x[:8] + 0.5, y[:8], weights[:8]),
    }


# Where each case puts its bad value: the argument and the part of it, the
# name the error gives that part, and the index.
BAD_PLACES = [
    ("x", None, "`x`", (5, 2)),
    ("y", None, "`y`", (7, 0)),
    ("sample_weight", None, "`sample_weight`", (4,)),
    ("validation_data", 0, "`validation_data` inputs", (3, 1)),
    ("validation_data", 1, "`validation_data` targets", (2, 0)),
    ("validation_data", 2, "`validation_data` sample weights", (6,)),
]


def with_bad_value(arguments, argument, part, index, value):
    arguments = dict(arguments)
    if part is None:
        arguments[argument] = arguments[argument].copy()
        arguments[argument][index] = value
    else:
        parts = [a.copy() for a in arguments[argument]]
        parts[part][index] = value
        arguments[argument] = tuple(parts)
    return arguments


def message(argument, name, value, index):
    return (
        rf"Argument `{argument}` must hold finite values only.*"
        rf"Received: {re.escape(name)} with 1 non-finite value: "
        rf"{re.escape(str(value))} at index {re.escape(str(index))} "
        rf"\(shape .*, dtype float32\)"
    )


def fit(model, arguments, epochs=3, **kwargs):
    arguments = dict(arguments)
    return keras_rprop.fit_full_batch(
        model,
        arguments.pop("x"),
        arguments.pop("y"),
        epochs=epochs,
        verbose=0,
        **arguments,
        **kwargs,
    )


def assert_trains_as_a_fresh_model(model, arguments, epochs_before):
    """`model`, trained `epochs_before` epochs, goes on as a fresh one does.

    The fresh model trains on the same clean data for all the epochs, with
    the refused calls left out.
    """
    fit(model, arguments)
    expected = compiled_model()
    fit(expected, arguments, epochs=epochs_before + 3)
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert_same_state(state(expected.optimizer), state(model.optimizer))


def test_each_non_finite_value_in_each_array_is_refused():
    arguments = clean_arguments()
    model = compiled_model()
    fit(model, arguments)
    before = model_state(model)
    for argument, part, name, index in BAD_PLACES:
        for value in BAD_VALUES:
            bad = with_bad_value(arguments, argument, part, index, value)
            with pytest.raises(
                ValueError, match=message(argument, name, value, index)
            ):
                fit(model, bad)
    assert_same_state(before, model_state(model))
    assert_trains_as_a_fresh_model(model, arguments, epochs_before=3)


def test_every_bad_value_is_counted_and_the_first_one_named():
    x, y = helpers.sine_data(SAMPLES)
    x[[3, 3, 20], [2, 0, 1]] = [np.inf, -np.inf, np.nan]
    with pytest.raises(
        ValueError, match=r"`x` with 3 non-finite values, the first -inf at "
    ) as error:
        keras_rprop.fit_full_batch(compiled_model(), x, y, verbose=0)
    # Row-major order, as NumPy lists them.
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
    assert first == (3, 0)
    assert f"at index {first} (shape (24, 3), dtype float32)" in str(
        error.value
    )


def test_bad_values_are_found_in_every_block(monkeypatch):
    """Large arrays are scanned in blocks; a bad value in any is found."""
    monkeypatch.setattr(data_checks, "_BLOCK_ELEMENTS", 6)
    x, y = helpers.sine_data(SAMPLES)
    for rows in ([22], [9, 23], [0, 1, 2, 13]):
        bad = x.copy()
        bad[rows, 1] = np.nan
        expected = np.argwhere(np.isnan(bad))
        with pytest.raises(
            ValueError,
            match=rf"with {len(expected)} non-finite values?\W+(the first )?"
            rf"nan at index \({expected[0][0]}, 1\)",
        ):
            data_checks.check_fit_data(bad, y)


def test_values_in_the_validation_split_are_refused_as_part_of_x():
    arguments = clean_arguments()
    del arguments["validation_data"]
    bad = with_bad_value(arguments, "x", None, (SAMPLES - 1, 0), np.inf)
    with pytest.raises(ValueError, match=r"Received: `x` with 1 .* inf at"):
        fit(compiled_model(), bad, validation_split=0.25)


def nested_model(inputs):
    keras.utils.set_random_seed(2)
    a = keras.Input((2,), name="a")
    b = keras.Input((1,), name="b")
    outputs = keras.layers.Dense(1)(keras.layers.Concatenate()([a, b]))
    model = keras.Model(
        {"a": a, "b": b} if inputs == "dict" else [a, b], outputs
    )
    model.compile(optimizer=keras_rprop.Rprop("irprop-"), loss="mse")
    return model


@pytest.mark.parametrize("inputs", ["dict", "list"])
def test_nested_inputs_are_named_by_their_key_or_index(inputs):
    x, y = helpers.sine_data(SAMPLES)
    a, b = x[:, :2], x[:, 2:].copy()
    b[11, 0] = np.nan
    nest = {"a": a, "b": b} if inputs == "dict" else [a, b]
    name = "`x['b']`" if inputs == "dict" else "`x[1]`"
    model = nested_model(inputs)
    before = model_state(model)
    with pytest.raises(
        ValueError, match=rf"Received: {re.escape(name)} with .* \(11, 0\)"
    ):
        keras_rprop.fit_full_batch(model, nest, y, verbose=0)
    clean = {"a": a, "b": x[:, 2:]} if inputs == "dict" else [a, x[:, 2:]]
    key = "['b']" if inputs == "dict" else "[1]"
    with pytest.raises(
        ValueError,
        match=rf"`validation_data` inputs `{re.escape(key)}` with 1 non-finite",
    ):
        keras_rprop.fit_full_batch(
            model, clean, y, verbose=0, validation_data=(nest, y)
        )
    assert_same_state(before, model_state(model))


LIBRARIES = ["numpy", "tensorflow", "jax", "torch"]


def tensor(library, array):
    if library == "numpy":
        return array
    # The backends' libraries are extras; the CI installs all three.
    module = pytest.importorskip(library)
    if library == "tensorflow":
        return module.constant(array)
    if library == "jax":
        return module.numpy.asarray(array)
    return module.from_numpy(array)


@pytest.mark.parametrize("library", LIBRARIES)
def test_tensors_of_each_library_are_checked(library):
    """Whatever the backend, since Keras takes every library's tensors."""
    x, y = helpers.sine_data(SAMPLES)
    x[9, 1] = -np.inf
    model = compiled_model()
    with pytest.raises(ValueError, match=message("x", "`x`", -np.inf, (9, 1))):
        keras_rprop.fit_full_batch(model, tensor(library, x), y, verbose=0)
    with pytest.raises(ValueError, match="Data cardinality is ambiguous"):
        keras_rprop.fit_full_batch(model, tensor(library, x[:-1]), y, verbose=0)


@pytest.mark.parametrize("library", ["tensorflow", "jax", "torch"])
def test_each_library_reduces_its_own_tensors(library):
    """The reduction used for tensors outside CPU memory (GPUs), here run on
    CPU tensors; NumPy is the reference."""
    rng = np.random.default_rng(1)
    for dtype in ("float32", "float16"):
        for value in [None] + BAD_VALUES:
            array = rng.normal(size=(5, 4)).astype(dtype)
            if value is not None:
                array[3, 2] = value
            assert data_checks._tensor_all_finite(
                tensor(library, array)
            ) == bool(np.isfinite(array).all())


def test_bfloat16_torch_tensor_is_checked():
    torch = pytest.importorskip("torch")
    x, y = helpers.sine_data(SAMPLES)
    bad = torch.from_numpy(x).to(torch.bfloat16)
    bad[2, 2] = float("inf")
    with pytest.raises(
        ValueError, match=r"inf at index \(2, 2\) \(shape \(24, 3\), dtype bfl"
    ):
        data_checks.check_fit_data(bad, y)


def test_integer_arrays_are_accepted_and_train_as_floats():
    """Keras casts integer data to the inputs' float dtype."""
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=(SAMPLES, 3)).astype("int32")
    y = rng.integers(0, 2, size=(SAMPLES, 1)).astype("int64")
    weights = rng.integers(1, 3, size=SAMPLES).astype("int32")
    model = compiled_model()
    keras_rprop.fit_full_batch(
        model, x, y, sample_weight=weights, epochs=3, verbose=0
    )
    expected = compiled_model()
    keras_rprop.fit_full_batch(
        expected,
        x.astype("float32"),
        y.astype("float32"),
        sample_weight=weights.astype("float32"),
        epochs=3,
        verbose=0,
    )
    for got, want in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_arrays_without_a_float_dtype_have_nothing_to_check():
    data_checks.check_fit_data(
        {"words": np.array(["nan", "inf"]), "flags": np.array([True, False])},
        np.array([1, 2], "int8"),
        validation_data=(np.array([b"x"]), np.array([7], "uint16")),
    )


def test_cardinality_error_names_every_array_and_its_count():
    x, y = helpers.sine_data(SAMPLES)
    weights = np.ones(SAMPLES - 2, "float32")
    model = compiled_model()
    fit(model, clean_arguments())
    before = model_state(model)
    cases = [
        (
            {"x": x, "y": y[:-1]},
            "Received: `x` with 24 samples, `y` with 23 samples$",
        ),
        (
            {"x": x, "y": y, "sample_weight": weights},
            "`x` with 24 samples, `y` with 24 samples, `sample_weight` with "
            "22 samples$",
        ),
        (
            {"x": x, "y": y, "validation_data": (x[:8], y[:7])},
            "in `validation_data`: .* Received: `validation_data` "
            "inputs with 8 samples, `validation_data` targets with 7 "
            "samples$",
        ),
    ]
    for arguments, expected in cases:
        for check_finite in (True, False):
            with pytest.raises(
                ValueError, match=f"Data cardinality is ambiguous.*{expected}"
            ):
                fit(model, arguments, check_finite=check_finite)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Received: `x['a']` with 24 samples, `x['b']` with 23 samples, "
            "`y` with 24 samples"
        ),
    ):
        keras_rprop.fit_full_batch(
            nested_model("dict"), {"a": x[:, :2], "b": x[1:, 2:]}, y
        )
    assert_same_state(before, model_state(model))
    assert_trains_as_a_fresh_model(model, clean_arguments(), epochs_before=3)


def test_arrays_given_in_chunks_are_checked_too():
    arguments = clean_arguments()
    model = compiled_model()
    before = model_state(model)
    bad = with_bad_value(arguments, "y", None, (17, 0), np.nan)
    with pytest.raises(ValueError, match=message("y", "`y`", np.nan, (17, 0))):
        fit(model, bad, chunk_size=5)
    short = dict(arguments, y=arguments["y"][:-3])
    with pytest.raises(ValueError, match="`y` with 21 samples"):
        fit(model, short, chunk_size=5)
    assert_same_state(before, model_state(model))


def test_validation_arrays_beside_a_chunk_source_are_checked():
    """A source of chunks is not read before training; arrays still are."""
    x, y = helpers.sine_data(SAMPLES)

    class Chunks(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]

    bad = y[:8].copy()
    bad[5, 0] = np.inf
    model = compiled_model()
    before = model_state(model)
    with pytest.raises(
        ValueError,
        match=message(
            "validation_data", "`validation_data` targets", np.inf, (5, 0)
        ),
    ):
        keras_rprop.fit_full_batch(
            model, Chunks(), verbose=0, validation_data=(x[:8], bad)
        )
    assert_same_state(before, model_state(model))


def test_sparse_arrays_are_counted_but_not_scanned():
    sparse = pytest.importorskip("scipy.sparse")
    x = sparse.csr_matrix(np.array([[np.nan, 0.0], [0.0, 1.0]], "float32"))
    data_checks.check_fit_data(x, np.zeros((2, 1), "float32"))
    with pytest.raises(ValueError, match="`x` with 2 samples, `y` with 3"):
        data_checks.check_fit_data(x, np.zeros((3, 1), "float32"))


def test_a_library_still_being_imported_is_not_a_failure(monkeypatch):
    """Another thread may be importing TensorFlow, JAX or SciPy meanwhile.

    Their module is then in `sys.modules` without its classes yet; the
    check must still see the NumPy arrays (it once raised AttributeError).
    """
    import sys
    import types

    importing = ("tensorflow", "jax", "jax.experimental.sparse", "scipy.sparse")
    for name in importing:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    arguments = with_bad_value(clean_arguments(), "x", None, (3, 1), np.nan)
    with pytest.raises(ValueError, match=message("x", "`x`", "nan", (3, 1))):
        data_checks.check_fit_data(arguments["x"], arguments["y"])
    clean = clean_arguments()
    data_checks.check_fit_data(clean["x"], clean["y"])


def test_check_finite_false_trains_on_the_bad_data():
    """What the check prevents: the loss is NaN from the first epoch."""
    arguments = with_bad_value(clean_arguments(), "x", None, (0, 0), np.nan)
    history = fit(compiled_model(), arguments, check_finite=False)
    assert np.isnan(history.history["loss"]).all()


def test_check_finite_must_be_a_bool():
    arguments = clean_arguments()
    for value in ["yes", 1, None, np.bool_(True)]:
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"Argument `check_finite` must be True or False. "
                f"Received: check_finite={value!r}"
            ),
        ):
            fit(compiled_model(), arguments, check_finite=value)
