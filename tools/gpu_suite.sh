#!/usr/bin/env bash
# Every GPU step of the loss and trainer issues in one call on the GPU machine, results under $OUT:
#   1. the whole test suite with real compilation (gpu-marked tests included)  -> pytest.txt
#   2. every kernel compiled for the device, each autotune candidate           -> compile.json
#   3. the loss benchmark (eager, compiled, chunked, triton; bf16 grid)        -> loss-cuda.json/.png
#   4. train step vs model step vs augmentation, ResNet-18 batch 512           -> train-cuda.json/.png
#   5. a short SigCLR run on real CIFAR-10 with kNN and linear accuracy        -> run-cifar10/
#   6. augmentation views/s: gpu loader vs the PIL DataLoader baseline         -> augment-cuda.json/.png
#      (DALI and FFCV are not installed on the GPU machine: recorded as unavailable)
#   7. distributed sigmoid loss with one rank vs the plain loss                -> dist-cuda.json
#   8. the same on two local ranks through torchrun (NCCL), a 1-epoch smoke    -> run-torchrun/
#
# The GPU machine has no network: carry the CIFAR-10 pack with the repo, e.g.
#   mkdir -p shared-data/tools shared-data/data && cp ../shared/tools/cifar10-from-jpeg shared-data/tools/ &&
#   cp -r ../shared/data/cifar10-jpeg shared-data/data/          (shared-data/ is git-ignored; carry it)
# then run:  OUT=$OUT bash tools/gpu_suite.sh            (--smoke: tiny sizes, runs on a CPU too)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
EPOCHS=${EPOCHS:-20}
mkdir -p "$OUT"
status=0
step() { echo "== $(date -u +%H:%M:%S) $*"; }
run() { "$@" || { echo "!! failed ($?): $*"; status=1; }; }

step "install (no network: no dependencies, no build isolation)"
if ! python -c "import fastsigclr.kernels" 2>/dev/null; then
  pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
    || { echo "(not installable with this setuptools: importing the checkout)"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
python -c "import fastsigclr.kernels" || { echo "!! cannot import the package"; exit 1; }
fastsigclr() { python -m fastsigclr "$@"; }
export FASTSIGCLR_SHARED=${FASTSIGCLR_SHARED:-$PWD/shared-data}
DATA=$(mktemp -d)
step "CIFAR-10 in the official layout from the JPEG pack"
run python "$FASTSIGCLR_SHARED/tools/cifar10-from-jpeg" "$DATA" > /dev/null
python - <<'EOF' > "$OUT/environment.json"
import json, torch
from fastsigclr.runinfo import default_device, run_record
print(json.dumps(run_record(default_device(), ["tools/gpu_suite.sh"]), indent=2))
EOF

if [[ $SMOKE == 1 ]]; then
  PYTEST=(tests/test_gpu.py tests/test_sigmoid_loss.py -k "74 and fp32")
  LOSS=(--sizes 256 --dims 32 --dtypes fp32 --providers eager,chunked,triton --reps 2)
  TRAIN=(--width 8 --batch-size 32 --limit-train 256 --reps 2)
  RUN=(--epochs 1 --width 8 --batch-size 128 --limit-train 1024 --limit-test 500)
  LINEAR=(--linear-epochs 2)
  AUG=(--sizes 32 --images 256 --batch-size 64 --reps 1)
  DIST=(--sizes 256 --dim 32 --reps 2)
else
  PYTEST=(tests)
  LOSS=(--dtypes bf16)
  TRAIN=()
  RUN=(--epochs "$EPOCHS" --warmup-epochs 2 --knn-every 5)
  LINEAR=()
  AUG=()
  DIST=()
fi

step "1. tests, compiled (not interpreted)"
run python -m pytest -q -p no:cacheprovider "${PYTEST[@]}" 2>&1 | tail -n 40 > "$OUT/pytest.txt"
tail -n 3 "$OUT/pytest.txt"
step "2. kernel compilation for this device"
if [[ $SMOKE == 0 ]]; then
  ARCH=$(python -c "import torch; p = torch.cuda.get_device_capability(); print(p[0] * 10 + p[1])")
  run python tools/compile_kernels.py --arch "$ARCH" --all-configs --json "$OUT/compile.json" > /dev/null
fi
step "3. loss benchmark"
run fastsigclr bench loss "${LOSS[@]}" --out "$OUT"
step "4. train step, model step, augmentation"
run fastsigclr bench train --data-dir "$DATA" "${TRAIN[@]}" --out "$OUT"
step "5. short SigCLR run on CIFAR-10"
rm -rf "$OUT/run-cifar10"
run fastsigclr train --dataset cifar10 --data-dir "$DATA" "${RUN[@]}" --no-progress --out "$OUT/run-cifar10"
run fastsigclr eval --run "$OUT/run-cifar10" knn --no-progress
run fastsigclr eval --run "$OUT/run-cifar10" linear "${LINEAR[@]}" --no-progress
rm -rf "$OUT/run-cifar10/checkpoints" "$OUT/run-cifar10/tensorboard"  # keep the record, not the weights
step "6. augmentation throughput"
run fastsigclr bench augment "${AUG[@]}" --out "$OUT"
step "7. distributed loss overhead, world size 1"
run fastsigclr bench dist "${DIST[@]}" --out "$OUT"
if [[ $SMOKE == 0 ]] && [[ $(python -c "import torch; print(torch.cuda.device_count())") -ge 2 ]]; then
  step "8. torchrun, 2 ranks, 1 epoch"
  rm -rf "$OUT/run-torchrun"
  run torchrun --nproc_per_node 2 -m fastsigclr train --dataset cifar10 --data-dir "$DATA" --epochs 1 \
    --no-progress --out "$OUT/run-torchrun"
  rm -rf "$OUT/run-torchrun/checkpoints" "$OUT/run-torchrun/tensorboard"
fi
step "done (status $status)"
exit $status
