#!/usr/bin/env bash
# The GPU suite in five stages of at most 8 minutes each (25 in all), one stage per call of the
# `run` tool (10 minutes per command). tools/gpu_suite.py defines the stages, tools/stage_runner.py
# runs them; `bash tools/gpu_suite.sh list` prints each stage's steps, time limit and expected time.
#
# Each stage writes $OUT/stage-K.json before its first step and after every step (commit, driver, GPU
# clocks, device, versions, date, command; each step's status, exit code, seconds and last output
# line), its logs and results under $OUT/stage-K/, and exits 1 when a step fails or runs out of time.
#
# Once, from the checkout's root: put the CIFAR-10 pack into the git-ignored shared-data/ (53 MiB;
# with the repository it stays under the 64 MiB a call may carry):
#   mkdir -p shared-data/tools shared-data/data && cp ../shared/tools/cifar10-from-jpeg shared-data/tools/ &&
#   cp -r ../shared/data/cifar10-jpeg shared-data/data/
# Then one `run` call per stage, stage 1 (the short correctness check) first; <sha> is the checkout's
# `git rev-parse HEAD` (.git does not travel), timeout_s the stage's limit + 90 s (start-up, record):
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 1", carry=["shared-data"], timeout_s=450)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 2", carry=["shared-data"], timeout_s=390)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 3", carry=["shared-data"], timeout_s=390)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 4", carry=["shared-data"], timeout_s=330)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 5", carry=["shared-data"], timeout_s=390)
# What comes back (files_at) holds stage-K.json and stage-K/ (loss-cuda.json, train-cuda.json, ... and
# their plots): copy the figures into benchmarks/results/. Stage 5 trains EPOCHS=<n> epochs (default
# 10; set it before `bash`). CIFAR-10 is converted once per machine into /tmp/fastsigclr-suite/.
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
