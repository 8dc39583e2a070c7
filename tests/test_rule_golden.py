"""Hand-computed single steps and the worked example of the issue.

Every expected number here was computed by hand from the pseudo-code; the
same numbers are checked against the NumPy reference, the pure rule and the
optimizer on the active backend.
"""

import keras
import numpy as np
import pytest
from keras import ops
from reference import VARIANTS
from reference import ReferenceRprop

import keras_rprop
from keras_rprop import rule

# One weight, initial step 0.1, eta- = 0.5, eta+ = 1.2.
EXAMPLE_GRADIENTS = [1.0, 1.0, 1.0, -1.0, 1.0]
EXAMPLE_LOSSES = [4.0, 3.0, 2.0, 2.5, 1.0]
EXAMPLE_MOVES = {
    "rprop+": [-0.1, -0.12, -0.144, 0.144, -0.072],
    "rprop-": [-0.1, -0.12, -0.144, 0.072, -0.036],
    "irprop+": [-0.1, -0.12, -0.144, 0.144, -0.072],
    "irprop-": [-0.1, -0.12, -0.144, 0.0, -0.072],
}
# iRprop+ when the loss did not rise at the sign change: no move; the next
# step starts from the shrunk step 0.072.
EXAMPLE_LOSSES_FALLING = [4.0, 3.0, 2.0, 1.5, 1.0]
EXAMPLE_MOVES_IRPROP_PLUS_FALLING = [-0.1, -0.12, -0.144, 0.0, -0.072]

# A six-weight tensor through three steps. min_step 0.05 and max_step 0.13
# are hit; the learning rate is 0.5 for steps 1-2 and 0.25 for step 3, so the
# backtrack at step 3 must revert a move made at learning rate 0.5.
#   w0: sign holds, the step grows into max_step (0.144 -> 0.13).
#   w1: sign holds, then flips at step 3 (backtracks a 0.5-rate move).
#   w2: zero gradient first (no move, sign forgotten), then sign holds.
#   w3, w4: flip at step 2 (step shrinks to min_step exactly); at step 3
#       Rprop- flips again and the step stays clamped at min_step.
#   w5: zero gradient at step 2 (no move), then moves with the kept step.
TENSOR_HYPERPARAMETERS = dict(
    initial_step=0.1, eta_minus=0.5, eta_plus=1.2, min_step=0.05, max_step=0.13
)
TENSOR_START = [1.0, -2.0, 0.5, 3.0, -1.0, 0.25]
TENSOR_GRADIENTS = [
    [2.0, -3.0, 0.0, 1.0, -1.0, 0.5],
    [1.0, -1.0, 4.0, -2.0, 1.0, 0.0],
    [1.0, 1.0, 1.0, 1.0, -1.0, -1.0],
]
TENSOR_LEARNING_RATES = [0.5, 0.5, 0.25]
STEP_1 = [-0.05, 0.05, 0.0, -0.05, 0.05, -0.05]
STEP_3_COMMON = {0: -0.0325, 2: -0.03, 3: -0.0125, 4: 0.0125, 5: 0.025}


def _step3(w1_move):
    """Step 3 differs between the variants only at w1, the sign change."""
    return [STEP_3_COMMON.get(i, w1_move) for i in range(6)]


# case -> (losses or None, expected moves of the three steps); the case name
# starts with the variant.
TENSOR_CASES = {
    "rprop+": (
        None,
        [STEP_1, [-0.06, 0.06, -0.05, 0.05, -0.05, 0.0], _step3(-0.06)],
    ),
    "rprop-": (
        None,
        [STEP_1, [-0.06, 0.06, -0.05, 0.025, -0.025, 0.0], _step3(-0.015)],
    ),
    "irprop-": (
        None,
        [STEP_1, [-0.06, 0.06, -0.05, 0.0, 0.0, 0.0], _step3(0.0)],
    ),
    # Loss rises at step 2 (backtrack), falls at step 3 (no move).
    "irprop+ rise-fall": (
        [5.0, 6.0, 4.0],
        [STEP_1, [-0.06, 0.06, -0.05, 0.05, -0.05, 0.0], _step3(0.0)],
    ),
    # Loss equal at step 2 (strict test: no move), rises at step 3.
    "irprop+ equal-rise": (
        [5.0, 5.0, 7.0],
        [STEP_1, [-0.06, 0.06, -0.05, 0.0, 0.0, 0.0], _step3(-0.06)],
    ),
}
TENSOR_FINAL_STEPS = [0.13, 0.06, 0.12, 0.05, 0.05, 0.1]
TENSOR_FINAL_SIGNS = {
    "rprop+": [1, 0, 1, 1, -1, -1],
    "rprop-": [1, 1, 1, 1, -1, -1],
    "irprop-": [1, 0, 1, 1, -1, -1],
    "irprop+ rise-fall": [1, 0, 1, 1, -1, -1],
    "irprop+ equal-rise": [1, 0, 1, 1, -1, -1],
}


def _optimizer_moves(variant, start, gradients, losses, learning_rates, **kw):
    """Runs the optimizer on one variable and returns its moves and itself."""
    variable = keras.Variable(np.asarray(start, "float32"))
    optimizer = keras_rprop.Rprop(variant=variant, **kw)
    moves = []
    before = ops.convert_to_numpy(variable).astype(np.float64)
    for i, gradient in enumerate(gradients):
        optimizer.learning_rate = learning_rates[i]
        optimizer.apply(
            [ops.convert_to_tensor(np.asarray(gradient, "float32"))],
            [variable],
            loss=None if losses is None else losses[i],
        )
        after = ops.convert_to_numpy(variable).astype(np.float64)
        moves.append(after - before)
        before = after
    return moves, optimizer


def _reference_moves(variant, start, gradients, losses, learning_rates, **kw):
    start = np.asarray(start, np.float64)
    rprop = ReferenceRprop(variant, [start.shape], **kw)
    params = [start]
    moves = []
    for i, gradient in enumerate(gradients):
        new = rprop.step(
            params,
            [np.asarray(gradient, np.float64)],
            loss=None if losses is None else losses[i],
            learning_rate=learning_rates[i],
        )
        moves.append(new[0] - params[0])
        params = new
    return moves


def _slot(optimizer, kind):
    """The optimizer's slot variables of one kind ("step" or "sign")."""
    slots = [v for v in optimizer.variables if v.name.endswith(f"_{kind}")]
    assert len(slots) == 1
    return ops.convert_to_numpy(slots[0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_worked_example_reference(variant):
    moves = _reference_moves(
        variant,
        [0.0],
        [[g] for g in EXAMPLE_GRADIENTS],
        EXAMPLE_LOSSES,
        [1.0] * 5,
    )
    np.testing.assert_allclose(
        np.concatenate(moves), EXAMPLE_MOVES[variant], rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_worked_example_optimizer(variant):
    moves, _ = _optimizer_moves(
        variant,
        [0.0],
        [[g] for g in EXAMPLE_GRADIENTS],
        EXAMPLE_LOSSES,
        [1.0] * 5,
    )
    np.testing.assert_allclose(
        np.concatenate(moves), EXAMPLE_MOVES[variant], rtol=1e-5, atol=1e-7
    )


def test_worked_example_irprop_plus_loss_not_rising():
    gradients = [[g] for g in EXAMPLE_GRADIENTS]
    expected = EXAMPLE_MOVES_IRPROP_PLUS_FALLING
    reference = _reference_moves(
        "irprop+", [0.0], gradients, EXAMPLE_LOSSES_FALLING, [1.0] * 5
    )
    np.testing.assert_allclose(np.concatenate(reference), expected, atol=1e-15)
    moves, _ = _optimizer_moves(
        "irprop+", [0.0], gradients, EXAMPLE_LOSSES_FALLING, [1.0] * 5
    )
    np.testing.assert_allclose(np.concatenate(moves), expected, atol=1e-7)
    # A loss equal to the previous one is not a rise either (strict test).
    equal = [4.0, 3.0, 2.0, 2.0, 1.0]
    moves, _ = _optimizer_moves("irprop+", [0.0], gradients, equal, [1.0] * 5)
    np.testing.assert_allclose(np.concatenate(moves), expected, atol=1e-7)


def test_worked_example_pure_rule():
    """`keras_rprop.rprop_update` alone, state threaded by hand."""
    for variant in VARIANTS:
        sign = ops.zeros((1,))
        step = ops.full((1,), 0.1)
        previous_loss = np.inf
        moves = []
        for gradient, loss in zip(EXAMPLE_GRADIENTS, EXAMPLE_LOSSES):
            move, sign, step = keras_rprop.rprop_update(
                ops.full((1,), gradient),
                sign,
                step,
                variant=variant,
                eta_minus=0.5,
                eta_plus=1.2,
                min_step=1e-6,
                max_step=50.0,
                loss_increased=ops.convert_to_tensor(loss > previous_loss),
            )
            previous_loss = loss
            moves.append(float(ops.convert_to_numpy(move)[0]))
        np.testing.assert_allclose(
            moves, EXAMPLE_MOVES[variant], atol=1e-7, err_msg=variant
        )


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_golden_tensor_steps(case):
    variant = case.split()[0]
    losses, expected = TENSOR_CASES[case]
    args = (
        variant,
        TENSOR_START,
        TENSOR_GRADIENTS,
        losses,
        TENSOR_LEARNING_RATES,
    )

    reference = _reference_moves(*args, **TENSOR_HYPERPARAMETERS)
    for step, (got, want) in enumerate(zip(reference, expected)):
        np.testing.assert_allclose(
            got, want, atol=1e-15, err_msg=f"reference {case} step {step + 1}"
        )

    moves, optimizer = _optimizer_moves(*args, **TENSOR_HYPERPARAMETERS)
    for step, (got, want) in enumerate(zip(moves, expected)):
        np.testing.assert_allclose(
            got, want, atol=1e-6, err_msg=f"{case} step {step + 1}"
        )
    np.testing.assert_allclose(
        _slot(optimizer, "step"), TENSOR_FINAL_STEPS, rtol=1e-6
    )
    np.testing.assert_array_equal(
        _slot(optimizer, "sign"), TENSOR_FINAL_SIGNS[case]
    )


def test_pure_rule_single_step_all_cases():
    """One step from a given state: grow, shrink, keep, clamp, backtrack."""
    gradient = ops.convert_to_tensor([3.0, -0.5, 2.0, -1.0, 0.0, 1.0])
    previous_sign = ops.convert_to_tensor([1.0, -1.0, -1.0, 1.0, 1.0, 0.0])
    step = ops.convert_to_tensor([0.5, 45.0, 0.4, 1e-6, 0.3, 0.2])
    common = dict(
        eta_minus=0.5,
        eta_plus=1.2,
        min_step=1e-6,
        max_step=50.0,
        learning_rate=2.0,
        previous_learning_rate=0.5,
    )
    # grow 0.6; grow clamped 54 -> 50; shrink 0.2; shrink clamped at 1e-6;
    # zero gradient keeps 0.3; no stored sign keeps 0.2.
    expected_step = [0.6, 50.0, 0.2, 1e-6, 0.3, 0.2]
    regular = [-1.2, 100.0, None, None, 0.0, -0.4]
    on_flip = {
        # w2: g=+2 after -1, w3: g=-1 after +1.
        "rprop-": ([-0.4, 2e-6], [1, -1]),
        "irprop-": ([0.0, 0.0], [0, 0]),
        # Revert -previous_sign * step * previous_learning_rate.
        "rprop+": ([-0.4 * 0.5, 1e-6 * 0.5], [0, 0]),
        "irprop+": ([-0.4 * 0.5, 1e-6 * 0.5], [0, 0]),
    }
    for variant in VARIANTS:
        move, new_sign, new_step = keras_rprop.rprop_update(
            gradient,
            previous_sign,
            step,
            variant=variant,
            loss_increased=ops.convert_to_tensor(True),
            **common,
        )
        flip_moves, flip_signs = on_flip[variant]
        expected_move = list(regular)
        expected_move[2:4] = flip_moves
        expected_sign = [1, -1] + flip_signs + [0, 1]
        np.testing.assert_allclose(
            ops.convert_to_numpy(move),
            expected_move,
            rtol=1e-6,
            atol=1e-9,
            err_msg=variant,
        )
        np.testing.assert_array_equal(
            ops.convert_to_numpy(new_sign), expected_sign
        )
        np.testing.assert_allclose(
            ops.convert_to_numpy(new_step), expected_step, rtol=1e-6
        )
    # iRprop+ without a rise of the loss: no move on the flips.
    move, _, _ = keras_rprop.rprop_update(
        gradient,
        previous_sign,
        step,
        variant="irprop+",
        loss_increased=ops.convert_to_tensor(False),
        **common,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(move),
        [-1.2, 100.0, 0.0, 0.0, 0.0, -0.4],
        rtol=1e-6,
    )


def test_irprop_plus_without_loss_raises():
    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = keras_rprop.Rprop(variant="irprop+")
    with pytest.raises(ValueError, match="loss=None"):
        optimizer.apply([ops.ones((2,))], [variable])
    # Nothing moved: no silent fallback to another variant.
    np.testing.assert_array_equal(ops.convert_to_numpy(variable), [0.0, 0.0])
    with pytest.raises(ValueError, match="loss"):
        keras_rprop.rprop_update(
            ops.ones((2,)),
            ops.zeros((2,)),
            ops.ones((2,)),
            variant="irprop+",
            eta_minus=0.5,
            eta_plus=1.2,
            min_step=1e-6,
            max_step=50.0,
        )


@pytest.mark.parametrize("variant", ["rprop+", "rprop-", "irprop-"])
def test_other_variants_ignore_the_loss(variant):
    gradients = [[g] for g in EXAMPLE_GRADIENTS]
    with_loss, _ = _optimizer_moves(
        variant, [0.0], gradients, [9.0, 1.0, 7.0, 2.0, 8.0], [1.0] * 5
    )
    without, _ = _optimizer_moves(variant, [0.0], gradients, None, [1.0] * 5)
    np.testing.assert_allclose(
        np.concatenate(with_loss), EXAMPLE_MOVES[variant], atol=1e-7
    )
    np.testing.assert_allclose(
        np.concatenate(without), EXAMPLE_MOVES[variant], atol=1e-7
    )


@pytest.mark.parametrize("sign_dtype", [None, "int8"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_pure_rule_special_gradients_every_stored_sign(variant, sign_dtype):
    """Grow, shrink or keep is decided by the signs alone, for every value.

    The rule compares `gradient * previous_sign` with 0; this checks that it
    classifies zeros of both signs, values near the smallest normal float32,
    huge values, infinities and NaN as their signs do, after each stored
    sign. (Subnormal gradients count as zero on TensorFlow and JAX, whose
    CPU kernels flush them to zero, and as their sign on PyTorch.) With a
    `sign_dtype`, the new signs come in that dtype, 0 for NaN.
    """
    specials = [0.0, -0.0, 2e-38, -2e-38, 3e38, -3e38, np.inf, -np.inf, np.nan]
    gradient = np.repeat(np.array(specials, "float32"), 3)
    previous_sign = np.tile(
        np.array([-1.0, 0.0, 1.0], "float32"), len(specials)
    )
    step = np.full_like(gradient, 0.25)
    hyperparameters = dict(
        eta_minus=0.5, eta_plus=1.2, min_step=1e-6, max_step=50.0
    )
    move, new_sign, new_step = keras_rprop.rprop_update(
        ops.convert_to_tensor(gradient),
        ops.convert_to_tensor(previous_sign),
        ops.convert_to_tensor(step),
        variant=variant,
        loss_increased=ops.convert_to_tensor(True),
        learning_rate=1.0,
        previous_learning_rate=1.0,
        sign_dtype=sign_dtype,
        **hyperparameters,
    )
    # np.sign(nan) is nan and nan compares false, as the rule's NaN must.
    signs = np.sign(gradient.astype("float64")) * previous_sign
    grow, flip = signs > 0, signs < 0
    expected_step = np.where(grow, 0.3, np.where(flip, 0.125, 0.25))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(new_step), expected_step.astype("float32")
    )
    got_sign = ops.convert_to_numpy(new_sign)
    finite = ~np.isnan(gradient)
    expected_sign = np.sign(gradient)
    if variant != "rprop-":
        expected_sign = np.where(flip, 0.0, expected_sign)
    np.testing.assert_array_equal(got_sign[finite], expected_sign[finite])
    if sign_dtype is not None:
        assert keras.backend.standardize_dtype(new_sign.dtype) == sign_dtype
        np.testing.assert_array_equal(got_sign[~finite], 0)
    # The moves of the flips: none, a revert, or the shrunk step.
    got_move = ops.convert_to_numpy(move)[finite & flip]
    expected_flip_move = {
        "rprop-": -np.sign(gradient) * 0.125,
        "irprop-": np.zeros_like(gradient),
        "rprop+": previous_sign * 0.25,
        "irprop+": previous_sign * 0.25,
    }[variant][finite & flip]
    np.testing.assert_array_equal(got_move, expected_flip_move)
    assert (finite & flip).sum() == 6 and (finite & grow).sum() == 6


def _check_moves_from_new_state(variant, move, learning_rate):
    """Checks `move(gradient, new_sign, new_step)` against the reference.

    Six float64 reference steps with sign flips and zero gradients; after
    each, `move` gets the step's gradient and the state the reference
    stored (in float32) and must give the reference's move.
    """
    rng = np.random.default_rng(3)
    reference = ReferenceRprop(variant, [(400,)])
    weights = [np.zeros(400)]
    for _ in range(6):
        gradient = rng.standard_normal(400)
        gradient[rng.random(400) < 0.1] = 0.0
        weights = reference.step(
            weights, [gradient], learning_rate=learning_rate
        )
        got = move(
            ops.convert_to_tensor(gradient, "float32"),
            ops.convert_to_tensor(
                np.sign(reference.previous_gradient[0]), "float32"
            ),
            ops.convert_to_tensor(reference.delta[0], "float32"),
        )
        # float32 inputs: the step sizes round once, the product twice.
        np.testing.assert_allclose(
            ops.convert_to_numpy(got),
            reference.previous_change[0],
            rtol=3e-7,
            atol=0,
        )
    assert reference.sign_changes > 0


@pytest.mark.parametrize(
    "variant",
    [
        name
        for name, variant in rule.VARIANT_TABLE.items()
        if variant.move_follows_from_new_state
    ],
)
def test_move_from_new_state_is_the_papers_move(variant):
    """Without backtracking, the move follows from the state stored for it.

    The compiled XLA update of these variants reads the new step sizes and
    signs back to move the weights; this checks, against the float64
    reference over steps with sign flips, zero gradients and a learning
    rate below 1, that the identity holds, and that a NaN gradient (stored
    sign 0) still gives a NaN move.
    """
    learning_rate = 0.75
    _check_moves_from_new_state(
        variant,
        lambda gradient, new_sign, new_step: rule.move_from_new_state(
            gradient, new_sign, new_step, learning_rate=learning_rate
        ),
        learning_rate,
    )

    move = rule.move_from_new_state(
        ops.convert_to_tensor([np.nan, 1.0, -1.0], "float32"),
        ops.convert_to_tensor([0.0, 1.0, 0.0], "float32"),
        ops.convert_to_tensor([0.5, 0.5, 0.5], "float32"),
        learning_rate=learning_rate,
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(move), [np.nan, -0.375, 0.0]
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_table_says_what_the_reference_does(variant):
    """Every fact of the variant table, against the float64 reference.

    The optimizers and the compiled paths take from the table whether a
    variant reverts moves, forgets the sign, needs the loss and moves by
    its new state: each is checked here on reference steps with sign
    flips and a loss that rises and falls, so that a wrong row fails.
    """
    table = rule.VARIANT_TABLE[variant]
    rng = np.random.default_rng(5)
    reference = ReferenceRprop(variant, [(300,)])
    weights = [np.zeros(300)]
    moves_by_new_state = keeps_sign = True
    any_revert = False
    for loss in [1.0, 2.0, 3.0, 1.0, 4.0, 5.0]:
        gradient = rng.standard_normal(300)
        previous = reference.previous_gradient[0].copy()
        previous_change = reference.previous_change[0].copy()
        weights = reference.step(weights, [gradient], loss=loss)
        flip = previous * gradient < 0
        change = reference.previous_change[0]
        stored = reference.previous_gradient[0]
        moves_by_new_state &= np.array_equal(
            change, -np.sign(stored) * reference.delta[0]
        )
        keeps_sign &= np.array_equal(
            np.sign(stored[flip]), np.sign(gradient[flip])
        )
        reverted = flip & (change == -previous_change) & (change != 0)
        any_revert |= bool(reverted.any())
    assert reference.sign_changes > 0
    assert table.backtracks == any_revert
    assert table.move_follows_from_new_state == moves_by_new_state
    assert table.forgets_sign == (not keeps_sign)
    gradient = [rng.standard_normal(300)]
    if table.needs_loss:
        with pytest.raises(ValueError, match="needs the loss"):
            reference.step(weights, gradient)
    else:
        reference.step(weights, gradient)
