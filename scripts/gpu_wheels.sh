#!/usr/bin/env bash
# Wheels for a lent GPU machine (device tool), which reaches no package index: the pure-Python
# packages `python -m bench.gpu_train_bench` needs beyond that machine's image (torch 2.11,
# torchvision, numpy, pyarrow, yaml, tqdm are there), for its Python 3.12, into .whl/ (ignored by
# git, carried by the call). Run here once, then on the machine (one `run` call, carry [".whl"]):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && OUT=$OUT bash scripts/gpu_issue15.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-.venv/bin/pip}"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude # a git pattern (noqa: machine-path)
rm -rf .whl && mkdir -p .whl
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  hydra-core==1.3.8 omegaconf==2.3.1
# sdists only on PyPI: built here (pure Python; sam2 without its optional CUDA extension)
"$PIP" wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 iopath==0.1.10
SAM2_BUILD_CUDA=0 "$PIP" wheel -q --no-deps --no-build-isolation -w .whl sam2==1.1.0
ls -la .whl && du -sh .whl
