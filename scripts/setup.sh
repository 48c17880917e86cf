#!/usr/bin/env bash
# Creates .venv and installs the whole stack. Idempotent: when the venv already matches
# pyproject.toml and this script (same hash), it does nothing and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.auralsam2-setup"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/auralsam2" ]; then
    exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; install Python 3.11 or set PYTHON=" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "setup: installing torch 2.11 + torchvision 0.26 + torchaudio 2.11 (first time: a few minutes)"
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q "torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0" "setuptools>=70.1,<82" wheel

# sam2 ships only as an sdist; build it against the torch above, without the CUDA extension.
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('sam2') == '1.1.0'" 2>/dev/null; then
    echo "setup: building sam2==1.1.0 (SAM2_BUILD_CUDA=0, --no-build-isolation)"
    SAM2_BUILD_CUDA=0 "${pip[@]}" install -q --no-build-isolation "sam2==1.1.0"
fi

echo "setup: installing the project and its dependencies"
"${pip[@]}" install -q -e ".[dev]"
"$VENV/bin/python" -c "import torch, sam2, torchaudio, torchvision; assert torch.__version__.startswith('2.11.0'), torch.__version__"
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
