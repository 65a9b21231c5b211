#!/usr/bin/env bash
# Set up retouch in ./.venv. `bash setup.sh` for use, `bash setup.sh test` adds the test tools,
# `bash setup.sh ui` adds the web app. Installs torch==2.13.0 (CPU) first only when no torch is
# importable, so a machine with a CUDA torch keeps it and a CPU machine never pulls CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")"
extra="${1:-}"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup.sh: retouch needs Python 3.11 or later, python3 is $(python3 -V 2>&1)" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
"$py" -m pip install -q --upgrade pip
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where pip's index would give a CUDA build
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
if [ -n "$extra" ]; then
  "$py" -m pip install -q -e ".[$extra]"
else
  "$py" -m pip install -q -e .
fi
