#!/usr/bin/env bash
# Makes or reuses the project-local virtual environment .venv, installs
# keras-rprop there with all three backends and the test tools, then runs the
# lint and format checks (scripts/lint.sh), then the test suite once per
# backend, each in its own process (Keras reads KERAS_BACKEND once, at
# import), then the fast part of the suite at the lowest versions
# pyproject.toml declares, in .venv-floor (scripts/test_floor.sh). Extra
# arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh || exit 1
python -m pip install --quiet -e ".[all,test]" || exit 1
status=0
echo "=== ruff ==="
bash scripts/lint.sh || status=1
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend python -m pytest "$@" || status=1
done
bash scripts/test_floor.sh "$@" || status=1
exit $status
