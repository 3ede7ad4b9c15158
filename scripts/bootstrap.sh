#!/usr/bin/env bash
# Set up wsa for use and for its tests, on a fresh machine or in the user's own environment.
#
# * Inside an active virtual environment ($VIRTUAL_ENV) wsa is installed there; otherwise a
#   project-local .venv is created with python3 (override with WSA_PYTHON=/path/to/python).
# * torch: if the environment already has one (any version >= 2.1), it is kept. Otherwise the CPU
#   build is installed, pinned to $WSA_TORCH_SPEC (default torch==2.13.0, the CPU wheel these
#   machines carry locally; an unpinned torch would pull a multi-GB CUDA build).
# * Then wsa itself, editable, with the extras named in $WSA_EXTRAS (default: test).
# * Any arguments are then run as a command inside that environment, e.g.
#     bash scripts/bootstrap.sh wsa demo
#     bash scripts/bootstrap.sh python -m pytest
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  py="$VIRTUAL_ENV/bin/python"
else
  if [[ ! -x .venv/bin/python ]]; then
    "${WSA_PYTHON:-python3}" -m venv .venv
  fi
  py="$PWD/.venv/bin/python"
fi

pip_quiet=(-q --disable-pip-version-check)
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  echo "bootstrap: installing ${WSA_TORCH_SPEC:-torch==2.13.0} (CPU build)" >&2
  "$py" -m pip install "${pip_quiet[@]}" "${WSA_TORCH_SPEC:-torch==2.13.0}"
fi
echo "bootstrap: installing wsa[${WSA_EXTRAS:-test}] into $("$py" -c 'import sys; print(sys.prefix)')" >&2
"$py" -m pip install "${pip_quiet[@]}" -e ".[${WSA_EXTRAS:-test}]" >&2
"$py" -c "import wsa_cli, torch; print(f'bootstrap: wsa {wsa_cli.__version__} with torch {torch.__version__} ready', flush=True)" >&2

if [[ $# -gt 0 ]]; then
  export PATH="$(dirname "$py"):$PATH"
  exec "$@"
fi
