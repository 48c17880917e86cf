#!/usr/bin/env bash
# The prepared GPU check of issue 15, for a lent GPU machine (the device tool runs it from the
# repository root; results land in $OUT, rewritten after each backbone so a run cut short keeps
# what it measured). About 4-6 minutes on one H100/H200: Hiera-B+ and Hiera-L at 1024^2, 5-frame
# clips, (a) the released-style loop and (b) ours with up to 8 clips per step, compiled. (b) halves
# its clips per step when they do not fit (one 5-frame clip keeps ~13 GiB in bf16) and reports the
# number measured. Exit status 1 when a backbone failed (its error is in the table).
set -euo pipefail
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${PYTHON:-python3}" -m bench.gpu_train_bench --configs sam2_hiera_b+,sam2_hiera_l --frames 5 --clips 8 --steps 8 --warmup 3 \
  --compile all "$@"
