#!/usr/bin/env bash
# The GPU suite in five stages, each with its own time limit; tools/gpu_suite.py defines the stages,
# tools/stage_runner.py runs them, and `bash tools/gpu_suite.sh list` prints each stage's steps, limit
# and expected time. Stages are ordered by what they are worth if the GPU time runs out: 1 checks the
# kernels and the CUDA-only paths and times the loss kernel, 2 runs the other tests with CUDA present,
# 3 the loss benchmarks, 4 the data pipeline and training step, 5 a short SigCLR training.
#
# On any machine with an NVIDIA GPU, Python, torch and triton: copy the checkout there, with the
# CIFAR-10 pack (tools/cifar10-from-jpeg and data/cifar10-jpeg/, 53 MiB) in its git-ignored
# shared-data/ folder:
#   mkdir -p shared-data/tools shared-data/data && cp PACK/tools/cifar10-from-jpeg shared-data/tools/ &&
#   cp -r PACK/data/cifar10-jpeg shared-data/data/
# Then run the stages from the checkout's root, one command each, stage 1 first (without .git, set
# COMMIT=<sha>, the copied commit). Each stage ends its steps at its limit; allow a minute more for
# start-up and its record:
#   OUT=results bash tools/gpu_suite.sh 1    # limit 5.5 min
#   OUT=results bash tools/gpu_suite.sh 2    # limit 5.0 min
#   OUT=results bash tools/gpu_suite.sh 3    # limit 6.0 min
#   OUT=results bash tools/gpu_suite.sh 4    # limit 3.5 min
#   OUT=results bash tools/gpu_suite.sh 5    # limit 5.0 min
# Each stage writes $OUT/stage-K.json before its first step and after every step (commit, driver, GPU
# clocks, device, versions, date, command; each step's status, exit code, seconds and last output
# line), its logs and results under $OUT/stage-K/ (loss-cuda.json, train-cuda.json, ... and their
# plots: copy the figures into benchmarks/results/), and exits 1 when a step fails or runs out of
# time. Stage 5 trains EPOCHS=<n> epochs (default 10). CIFAR-10 is converted once per machine, into
# $FASTSIGCLR_SUITE_DATA (default /tmp/fastsigclr-suite/cifar10), by the first step that needs it.
#
# On a CPU, `bash tools/gpu_suite.sh --smoke all` runs every step at tiny sizes in a few minutes
# (tests/test_gpu_suite.py does, in CI). The interpreter: $PYTHON, else python3, else python.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [[ -z "$PY" ]]; then
  echo "gpu_suite: neither python3 nor python is on PATH; set PYTHON=/path/to/python" >&2
  exit 2
fi
exec "$PY" tools/gpu_suite.py "$@"
