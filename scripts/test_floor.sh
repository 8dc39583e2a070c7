#!/usr/bin/env bash
# Runs the tests of the optimizer's results (golden steps, the reference
# MLP, fit_full_batch and `enable_loss` against fit, serialization, the
# private APIs the package reaches for) at the lowest versions that
# pyproject.toml declares, so that a floor that stops working fails the test
# command. The environment is made like .venv by scripts/venv.sh, in a folder
# of its own (.venv-floor, or KERAS_RPROP_FLOOR_VENV), and the pins are read
# from pyproject.toml by scripts/floor_pins.py: Keras at its floor with JAX at
# its floor, then PyTorch at its floor with the Keras that the torch extra
# requires. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
KERAS_RPROP_VENV="${KERAS_RPROP_FLOOR_VENV:-.venv-floor}"
. scripts/venv.sh || exit 1
python -m pip install --quiet -e . "pytest>=7" || exit 1
tests=(
  tests/test_rule_golden.py
  tests/test_reference_mlp.py
  tests/test_full_batch.py
  tests/test_fit_loss.py
  tests/test_serialization.py
  tests/test_compat.py
)
status=0
for backend in jax torch; do
  case $backend in
    jax) packages=(keras jax jaxlib) ;;
    torch) packages=(keras torch) ;;
  esac
  pins=$(python scripts/floor_pins.py --extra "$backend" "${packages[@]}") || {
    status=1
    continue
  }
  echo "=== floors: KERAS_BACKEND=$backend," $pins "==="
  # shellcheck disable=SC2086
  python -m pip install --quiet $pins || {
    status=1
    continue
  }
  KERAS_BACKEND=$backend python -m pytest -m "not performance" \
    "${tests[@]}" "$@" || status=1
done
exit $status
