#!/usr/bin/env bash
# Checks the code with ruff (configured in pyproject.toml): the lint rules,
# then the formatting. Extra arguments (paths) narrow the check.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh || exit 1
status=0
python -m ruff check "$@" || status=1
python -m ruff format --check "$@" || status=1
exit $status
