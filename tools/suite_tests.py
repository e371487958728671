"""Which test files the GPU suite's stages run (tools/gpu_suite.py builds the stages from these),
which it leaves to CI and why, and the check that every test file is one or the other."""

from __future__ import annotations

from stage_runner import ROOT, Stage

# Test files by stage (each named once; `list` shows any file left out). The kernel tests run
# Triton kernels: in CI through the interpreter, here compiled for the device.
SIGMOID_TESTS = "tests/test_sigmoid_loss.py tests/test_sigmoid_block.py tests/test_sigmoid_strips.py "
SIGMOID_TESTS += "tests/test_siglip.py tests/test_deterministic.py"
KERNEL_TESTS = "tests/test_contrastive_losses.py tests/test_augment.py tests/test_loss_precision.py "
KERNEL_TESTS += "tests/test_loss_api.py"
TRAIN_TESTS = "tests/test_train.py tests/test_distributed.py"
OTHER_TESTS = (
    "tests/test_models_optim.py tests/test_loss_memory.py tests/test_config_cli.py tests/test_datasets.py "
    "tests/test_ccem.py tests/test_bench_plot.py tests/test_cli_errors.py tests/test_data_errors.py"
)
NOT_THERE_CASES = "not shards_every_loader"  # two torchrun cases with the DALI and FFCV loaders
# Not run by the suite, and why: a GPU image need not have DALI, FFCV, ruff, hadolint,
# pytest-benchmark or safetensors, and some files test CPU-only machinery that CI covers.
NOT_THERE = {
    "tests/test_loaders.py": "DALI and FFCV",
    "tests/test_dali_memory.py": "DALI",
    "tests/test_dali_broken.py": "DALI",
    "tests/test_bench_suite.py": "DALI and FFCV",
    "tests/test_lint.py": "ruff",
    "tests/test_docker.py": "hadolint",
    "tests/test_bench_cases.py": "pytest-benchmark (CPU sizes)",
    "tests/test_export_embed.py": "safetensors",
    "tests/test_kernel_compile.py": "compiles for sm_90 on any host: CI",
    "tests/test_multinode.py": "network namespaces on the CPU: CI",
    "tests/test_sweep.py": "a CPU training grid: CI",
    "tests/test_gpu_suite.py": "this suite on the CPU: CI",
    "tests/test_launches.py": "the launchers' tune switch and launch record, on the CPU: CI",
    "tests/test_code_shape.py": "the source's shape: CI",
    "tests/test_docs.py": "the docs against the code: CI",
    "tests/test_cpu_memory_format.py": "the CPU's oneDNN convolutions: CI",
    "tests/test_significance.py": "statistics on the CPU: CI",
    "tests/test_pace.py": "CPU time estimates: CI",
    "tests/test_cuda_paths_on_cpu.py": "CUDA-only paths, faked on the CPU: CI",
    "tests/test_ffcv_interrupt.py": "FFCV",
}
# Kernel tests written for the interpreter (CPU tensors into launches, its programs reordered, a
# tile override per case): with them stage 1 would JIT 95 variants, 87.5 s of compiling against
# its 82.5 s budget (tools/compile_kernels.py --inventory, 2-core CPU). CI runs them.
# Run directories, faults, signals, preemption, the kNN vote and the CPU trainer's losses and
# loaders: CPU-only (--device cpu) tests that a GPU machine would repeat as they are; CI runs them.
NOT_THERE.update(
    {
        f"tests/test_{name}.py": "CPU-only: CI"
        for name in [
            *("rundir", "elastic", "kill_resume", "preempt", "silent_faults", "one_line_errors", "knn"),
            *("security", "folder", "presets", "plan", "loader_registry", "loss_registry", "dcl"),
            *("data_identity", "unwritable_outputs", "atomic_files", "ffcv_watch", "streamed_splits"),
            *("store_size", "image_files", "dataset_checks", "bench_options", "outputs_kept"),
            "method_settings",
        ]
    }
)


def unplaced_tests(stages: list[Stage]) -> list[str]:
    """tests/test_*.py files that no stage runs and NOT_THERE does not name (new ones, say)."""
    named = {word for st in stages for step in st.steps for word in step.command.split()}
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py"))
    return [f for f in files if f not in named and f not in NOT_THERE]
