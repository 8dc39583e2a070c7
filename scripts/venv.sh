# Sourced by scripts/test.sh and scripts/demo.sh: makes (once) and activates
# a project-local virtual environment in .venv, so the system Python is left
# alone. KERAS_RPROP_VENV names another folder.
venv="${KERAS_RPROP_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || return 1
  "$venv/bin/python" -m pip install --quiet --upgrade pip || return 1
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
# Pinned: an unpinned torch pulls a multi-GB CUDA build; this one is CPU-only.
python -m pip install --quiet torch==2.13.0 || return 1
