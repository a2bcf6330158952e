#!/bin/sh
# The GPU run of issue 31, one command on the GPU machine (Python 3.12, JAX with CUDA, no TensorFlow,
# no network, 64 MiB of copied files, 15 minutes of device time):
#
#   scripts/gpu_check.sh          # there: gpu_training under JAX into $OUT/benchmarks.md (~6-8 min)
#   scripts/gpu_check.sh --cpu    # here or in CI: the same path, tiny, on the CPU (tests/test_gpu_check.py)
#
# Before copying the tree there, once: `python scripts/gpu_wheels.py fetch` (build/gpu-check/: the
# wheels listed in scripts/gpu_wheels.txt and the Street View samples; carry that folder with the tree).
# There it installs only those wheels, and only the ones whose package is missing, into
# build/gpu-check/site (pip --no-index --no-deps), writes the shards with pipeline.local_writer (no Beam,
# no TensorFlow) from the samples at 224 px, all 360 angles, and runs `rotnet-bench gpu_training`
# (python -m tools.bench) under JAX: ResNet50 and MobileNetV3-Small (weights none), mixed_bfloat16 and
# mixed_float16, batch 256, end to end and from one cached batch. The section lands in a copy of
# docs/benchmarks.md in $OUT (default build/gpu-check/out); copy it back over docs/benchmarks.md.
# Time: a configuration starts only within DEADLINE_S (330 s) of the start and the whole run is cut at
# LIMIT_S (470 s), so it ends within 8 minutes, leaving room for one rerun.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$ROOT/build/gpu-check/out}
CARRY=$ROOT/build/gpu-check
MODE=gpu
if [ "${1:-}" = "--cpu" ]; then
  MODE=cpu
elif [ -n "${1:-}" ]; then
  echo "usage: scripts/gpu_check.sh [--cpu]" >&2
  exit 2
fi
started=$(date +%s)
export KERAS_BACKEND=jax
mkdir -p "$OUT"
if [ "$MODE" = gpu ]; then
  "$PYTHON" scripts/gpu_wheels.py install --wheels "$CARRY/wheels" --target "$CARRY/site"
  export PYTHONPATH="$CARRY/site:$ROOT"
  export ROTNET_SHARED_DATA="$CARRY/shared-data"
  export ROTNET_GPU_BENCH_DEADLINE_S=${DEADLINE_S:-330}
  LIMIT_S=${LIMIT_S:-470}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export ROTNET_GPU_BENCH_TINY=1
  LIMIT_S=${LIMIT_S:-300}
fi
"$PYTHON" -c "import jax, keras, cv2, tfrecord_lite, google_crc32c, click" || {
  echo "error: a package the JAX path needs is missing (see the import error above); run scripts/gpu_wheels.py fetch here and carry build/gpu-check" >&2
  exit 1
}
cp docs/benchmarks.md "$OUT/benchmarks.md"
timeout "$LIMIT_S" "$PYTHON" -m tools.bench gpu_training --output "$OUT/benchmarks.md"
echo "gpu_check ($MODE) finished in $(( $(date +%s) - started )) s; the section is in $OUT/benchmarks.md"
