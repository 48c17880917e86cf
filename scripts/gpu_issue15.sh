#!/usr/bin/env bash
# The prepared GPU check of issue 15, for a lent GPU machine (the device tool runs it from the
# repository root; results land in $OUT). About 4-6 minutes on one H100/H200: Hiera-B+ and Hiera-L
# at 1024^2, 5-frame clips, (a) the released-style loop and (b) ours with 8 clips per step, compiled.
set -euo pipefail
export PYTHONUNBUFFERED=1
python -m bench.gpu_train_bench --configs sam2_hiera_b+,sam2_hiera_l --frames 5 --clips 8 --steps 8 --warmup 3 \
  --compile all "$@"
