#!/usr/bin/env bash
# The GPU suite in five stages of at most 8 minutes each (25 in all), one stage per call of the
# `run` tool; tools/gpu_suite.py defines them, tools/stage_runner.py runs them.
#
#   bash tools/gpu_suite.sh list      the stages, their time limits and expected durations
#
# Each stage writes $OUT/stage-K.json before its first step and after every step (commit, driver,
# GPU clocks, device, versions, date, command; each step's status, exit code, seconds and last line),
# logs and results under $OUT/stage-K/, and exits 1 when a step fails or runs out of time.
#
# Before the first call, put the CIFAR-10 pack into the git-ignored shared-data/ (53 MiB: the repo
# and it stay under the 64 MiB a call may carry), from the checkout's root:
#   mkdir -p shared-data/tools shared-data/data && cp ../shared/tools/cifar10-from-jpeg shared-data/tools/ &&
#   cp -r ../shared/data/cifar10-jpeg shared-data/data/
# Then one `run` call per stage (timeout_s: the stage's limit + 90 s for the record and start-up),
# with carry ["shared-data"] and <sha> = `git rev-parse HEAD` of the
# checkout (.git does not travel), in this order (stage 1 first: it is the short correctness check):
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 1", carry=["shared-data"], timeout_s=510)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 2", carry=["shared-data"], timeout_s=390)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 3", carry=["shared-data"], timeout_s=390)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 4", carry=["shared-data"], timeout_s=300)
#   run(command="OUT=$OUT COMMIT=<sha> bash tools/gpu_suite.sh 5", carry=["shared-data"], timeout_s=360)
# and copy what each brings back (files_at) into benchmarks/results/ as needed. Stage 5's length:
# EPOCHS=<n> before `bash` (default 10). On a CPU, `bash tools/gpu_suite.sh --smoke all` runs every
# step at tiny sizes in a few minutes (tests/test_gpu_suite.py does, in CI).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
if [[ -z "$PY" ]]; then
  echo "gpu_suite: neither python3 nor python is on PATH; set PYTHON=/path/to/python" >&2
  exit 2
fi
exec "$PY" tools/gpu_suite.py "$@"
