#!/usr/bin/env bash
# The main job: installs keras-rprop with every backend and the demo extras,
# then runs `keras-rprop compare` with its defaults: the Rprop variants
# against Adam and SGD on the default problems, in about a minute on two CPU
# cores. The table, the loss-curve plot and the raw results go to
# ./compare-results/. Extra arguments go to `keras-rprop compare`, e.g.
#   bash scripts/demo.sh --problems two-spirals,digits --backend jax
set -euo pipefail
cd "$(dirname "$0")/.."
# Pinned, as in scripts/test.sh: an unpinned torch can pull a multi-GB CUDA
# build.
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[all]"
keras-rprop compare --output compare-results "$@"
