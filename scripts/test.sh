#!/usr/bin/env bash
# Installs keras-rprop with all three backends and the test tools, then runs
# the test suite once per backend, each in its own process (Keras reads
# KERAS_BACKEND once, at import). Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
# Pinned: an unpinned torch pulls a multi-GB CUDA build; this one is CPU-only.
python -m pip install --quiet torch==2.13.0 || exit 1
python -m pip install --quiet -e ".[all,test]" || exit 1
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend python -m pytest "$@" || status=1
done
exit $status
