#!/usr/bin/env bash
# Every GPU figure of the "fast on accelerators" goals, side by side with PyTorch in the
# same run on the same GPU, each part under its own time limit; logs and a summary
# (summary.md) under $OUT.
#
# Prepare on a machine with a network (the GPU machines have JAX, Flax, Optax, NumPy and
# PyTorch + torchvision, but no ml-collections, pytorchvideo, TensorFlow or network):
#   bash ../shared/gpu/prepare_wheels.sh        # writes .whl/ (carry it along)
# Then on the GPU machine, from the project root, in two calls of at most 10 minutes
# (the second on the same, still warm machine, so part 2 finds part 1's cache):
#   OUT=/tmp/out PARTS="1 2 3" bash tools/gpu_check.sh     # limits add up to 510 s
#   OUT=/tmp/out PARTS="4 5" bash tools/gpu_check.sh       # 330 s (BIG=... sets part 4's batch)
# On a CPU, a quick check that every part runs (the default config's tiny models):
#   OUT=/tmp/out GPU_CHECK_SMALL=1 bash tools/gpu_check.sh  # about 4 minutes on 2 cores
#
# Parts: 1 cold start (empty compilation cache) and the dual-teacher step at batch 8
# with PyTorch's; 2 the same again with the cache warm (the warm start); 3 each model's
# forward alone with MFU, JAX vs PyTorch, XLA's native convolutions vs the CPU form
# (depthwise as shift-and-multiply); 4 the step at a larger batch with peak memory, JAX
# vs PyTorch; 5 the conversion parity tests and the convolution forms on this device
# (if pytest is there).
set -uo pipefail
OUT=${OUT:-/tmp/vkd_gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/vkd_site .whl/*.whl
  export PYTHONPATH=/tmp/vkd_site:$PWD
fi
export VKD_COMPILATION_CACHE=${VKD_COMPILATION_CACHE:-/tmp/vkd_gpu_check_cache}
PARTS=${PARTS:-1 2 3 4 5}
case " $PARTS " in *" 1 "*) rm -rf "$VKD_COMPILATION_CACHE" ;; esac  # Part 1: a cold start.

# The paper's setting: X3D-S student, X3D-M and MViTv2-S teachers, 16x224x224, bf16,
# the dual_teacher configs' loss (DATW + SDD + RKD).
MODELS=(--config configs/dual_teacher/kinetics400.py)
BIG=${BIG:-64}  # Part 4's global batch (PyTorch's step took 3.6 GB at 8 on an H200).
if [ -n "${GPU_CHECK_SMALL:-}" ]; then
  MODELS=(--config configs/default.py)
  BIG=16
fi

summary="$OUT/summary.md"
{
  echo "# gpu_check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" 2>&1 \
    | tail -1
} >> "$summary"

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  {
    echo
    echo "## $name (rc $rc, $((SECONDS - start)) s; limit $limit s)"
    echo '```'
    echo "$*"
    grep -E '^\||clips/s|Cold start|unavailable|Error|error:|passed|failed|skipped' \
      "$OUT/$name.log" | tail -n 40
    echo '```'
  } >> "$summary"
}

want() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
want 1 && part 1_cold_step_b8 240 python3 tools/benchmark.py "${MODELS[@]}" --batch 8 \
  --steps 10 --warmup 2 --torch
want 2 && part 2_warm_step_b8 90 python3 tools/benchmark.py "${MODELS[@]}" --batch 8 \
  --steps 10 --warmup 2
want 3 && part 3_forward 180 python3 tools/benchmark.py "${MODELS[@]}" --forward --torch \
  --batch 16 --steps 10 --warmup 2 --convolutions native,cpu
want 4 && part 4_step_big 150 python3 tools/benchmark.py "${MODELS[@]}" --batch "$BIG" \
  --steps 5 --warmup 1 --torch
if want 5 && python3 -c "import pytest" > /dev/null 2>&1; then
  part 5_parity 180 python3 -m pytest -q -x tests/test_convert_x3d.py \
    tests/test_convert_mvit.py tests/test_layers.py tests/test_convolutions.py
fi
cat "$summary"
