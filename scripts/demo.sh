#!/usr/bin/env bash
# The main job: makes or reuses the project-local virtual environment .venv,
# installs keras-rprop there with every backend and the demo extras, then runs
# `keras-rprop compare` with its defaults: the Rprop variants against the
# baselines on the default problems, in several minutes on two CPU cores. The
# table, the loss-curve plot and the raw results go to ./compare-results/.
# Extra arguments go to `keras-rprop compare`, e.g.
#   bash scripts/demo.sh --problems two-spirals,digits --backend jax
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
python -m pip install --quiet -e ".[all]"
keras-rprop compare --output compare-results "$@"
