"""The slow tier (``pytest -m slow``): the tests that ``pytest -m "not slow"``, the inner loop,
leaves out, chosen by measured duration.

A test is slow when it needs the full CIFAR-10 copy (the ``cifar10_dir`` fixture: writing it took
19–73 s of the first test that asked for it) or when it took more than ``SLOW_SECONDS`` (setup,
call and teardown) in ``pytest tests/test_x.py --durations=0``, run a file at a time on 2 cores
shared with other jobs (2026-12-03, load average 13–24: the measured durations add up to 58 min
without test_train and test_sweep, against 17–19 min for the whole suite on an idle machine, so
they are about 3–4 times an idle machine's). ``SLOW`` lists each with that time; a ``[...]``
suffix marks one case of a parametrised test, none marks every case. Re-measure and edit this
table when a test moves across the line; ``tests/test_code_shape.py`` checks that every entry
names a test that exists. Five entries (test_folder's FFCV case, test_one_line_errors' truncated
.beton, test_preempt's two, test_security's trained checkpoint) came from `pytest -m "not slow"
--durations=40` on the same machine at load 2-4. The tests marked ``@pytest.mark.slow`` in their
own files were marked so before this table. The four marked "xdist" came from `pytest -m "not slow"
-n auto --dist loadscope --durations=25` on an idle 2-core machine (2026-12-06, two workers sharing
it: about twice an idle serial run's time).
"""

from __future__ import annotations

from typing import Any

SLOW_SECONDS = 5.0
NEEDS_CIFAR10 = "cifar10_dir"
# test (file::function, or file::function[case]) -> seconds measured (see the module docstring)
SLOW: dict[str, float] = {
    "test_bench_suite.py::test_bench_all_writes_its_json_and_plots": 15.7,
    "test_config_cli.py::test_bench_loss_compiled_reference": 51.0,
    "test_config_cli.py::test_bench_loss_reports_an_unlaunchable_case": 6.1,  # after the merge, load 10
    "test_config_cli.py::test_bench_train_writes_json_and_plot": 39.6,
    "test_config_cli.py::test_console_script_and_module_entry_points": 9.9,
    "test_contrastive_losses.py::test_nt_xent_kernel_against_float64[blocks1-75-130-3-dtype0-5e-06]": 16.3,
    "test_contrastive_losses.py::test_nt_xent_kernel_against_float64[blocks1-75-130-3-dtype1-0.002]": 14.6,
    "test_contrastive_losses.py::test_nt_xent_kernel_against_float64[blocks1-75-130-3-dtype2-0.015]": 19.9,
    "test_contrastive_losses.py::test_tcl_allocates_nothing_quadratic": 6.3,
    "test_cpu_memory_format.py::test_trainer_model_survives_the_onednn_crash_shape": 46.4,
    "test_data_errors.py::test_bf16_on_the_cpu_trains_and_eval_finds_moved_data": 20.9,
    "test_data_errors.py::test_unwritable_ffcv_folder_says_where_and_how": 10.9,
    "test_datasets.py::test_data_commands_on_real_cifar10": 9.0,
    "test_datasets.py::test_real_cifar10_reads_in_the_official_layout": 26.1,
    "test_dcl.py::test_train_with_dcl": 57.1,
    "test_deterministic.py::test_resumed_run_launches_with_the_recorded_plans[interpreter]": 53.4,
    "test_distributed.py::test_distributed_loss_equals_single_process": 27.1,
    "test_distributed.py::test_global_batch_norm_equals_batch_norm_on_the_whole_batch": 8.9,  # 2026-12-07
    "test_dali_broken.py::test_a_file_both_ranks_meet_counts_once": 15.8,  # idle, 2026-12-06
    "test_dali_broken.py::test_a_resumed_run_leaves_out_the_files_of_every_session": 18.6,  # 2026-12-07
    "test_dali_broken.py::test_two_ranks_check_the_limit_on_their_sum_and_stop_together": 9.3,  # idle
    "test_distributed.py::test_torchrun_matches_one_process": 142.1,
    "test_distributed.py::test_torchrun_needs_an_out_dir_and_a_divisible_batch": 57.4,  # 4 runs, 2026-12-07
    "test_distributed.py::test_torchrun_on_a_locked_run_directory_stops_every_rank": 14.3,
    "test_distributed.py::test_torchrun_shards_every_loader": 96.0,
    "test_elastic.py::test_a_kill_during_a_checkpoint_write_keeps_the_previous_one": 101.2,
    "test_elastic.py::test_a_killed_node_started_again_resumes_the_job": 88.5,
    "test_elastic.py::test_a_killed_rank_is_restarted_and_the_job_ends_as_if_uninterrupted": 124.2,
    "test_export_embed.py::test_embed_matches_extract_features": 23.5,
    "test_export_embed.py::test_export_round_trip": 79.1,
    "test_folder.py::test_real_jpeg_folder_trains_with_each_loader_and_knn_on_val[ffcv-loader]": 12.5,
    "test_gpu_suite.py::test_failed_timed_out_and_unreached_steps_fail_the_stage": 8.4,
    "test_gpu_suite.py::test_smoke_runs_every_stage": 447.2,
    "test_kernel_compile.py::test_an_inventory_variant_compiles_and_is_timed": 16.1,  # xdist
    "test_kernel_compile.py::test_kernels_compile_for_sm90": 285.2,
    "test_kernel_compile.py::test_warp_specialization_is_not_applied_on_sm90": 41.2,  # xdist
    "test_loader_registry.py::test_a_toy_loader_is_one_module_and_one_entry": 51.4,
    "test_loaders.py::test_ffcv_image_kernels_equal_the_reference": 7.6,
    "test_loaders.py::test_ffcv_loader_contract_coverage_and_seed": 33.6,
    "test_loaders.py::test_ffcv_views_are_the_plan_of_the_gpu_loader": 32.5,
    "test_loaders.py::test_train_on_tiny_imagenet": 37.8,
    "test_loaders.py::test_train_runs_with_each_backend": 91.6,
    "test_loss_memory.py::test_torch_path_allocates_nothing_quadratic_at_8192_rows": 13.0,
    "test_loss_registry.py::test_a_real_nan_still_stops_a_run_that_skips_losses": 18.1,
    "test_loss_registry.py::test_loss_value_only_on_the_steps_that_read_it": 215.8,
    "test_models_optim.py::test_backbone_shapes_and_cifar_stem[resnet18-64-512]": 5.4,
    "test_models_optim.py::test_backbone_shapes_and_cifar_stem[resnet50-8-256]": 11.0,
    "test_multinode.py::test_a_rank_that_cannot_join_says_where_within_the_timeout": 24.8,
    "test_multinode.py::test_check_same_run_names_the_ranks_and_what_differs": 26.2,
    "test_multinode.py::test_nodes_with_different_settings_refuse_to_start": 22.9,
    "test_multinode.py::test_rendezvous_that_cannot_complete_ends_within_its_timeout": 20.5,
    "test_multinode.py::test_source_digest_covers_the_kernels_and_not_the_layout": 11.8,
    "test_multinode.py::test_two_nodes_train_like_one_process": 74.0,
    "test_one_line_errors.py::test_a_truncated_beton_says_which_file_and_to_delete_it": 7.1,
    "test_pace.py::test_progress_bar_shows_the_time_left_of_the_run": 35.5,
    "test_pace.py::test_step_img_per_s_counts_steps_without_a_progress_bar": 88.8,
    "test_pace.py::test_the_default_job_on_a_cpu_says_how_long_it_takes": 57.9,
    "test_plan.py::test_draw_costs_a_fixed_number_of_operations[1]": 5.3,
    "test_plan.py::test_pil_baseline_applies_the_plan": 12.1,
    "test_preempt.py::test_killed_mid_epoch_resumes_exactly": 7.9,
    "test_preempt.py::test_sigterm_checkpoints_mid_epoch_and_resume_auto_continues": 20.4,
    # idle, serial, 2026-12-07: 9.9 s for [1] with its fixture's run, 3.3 s for [2]
    "test_preempt.py::test_sigterm_during_the_knn_monitor_checkpoints_and_resumes_exactly": 9.9,
    "test_rundir.py::test_a_diverging_run_keeps_its_last_good_checkpoint": 53.0,
    "test_rundir.py::test_a_finished_run_is_complete_and_can_be_extended": 41.7,
    "test_rundir.py::test_a_loss_that_becomes_nan_stops_the_run": 32.2,
    "test_rundir.py::test_a_read_only_out_is_a_clear_error": 8.9,
    "test_rundir.py::test_an_interrupted_start_can_be_started_again": 79.9,
    "test_rundir.py::test_resume_takes_the_runs_own_settings": 52.6,
    "test_security.py::test_the_trained_checkpoint_loads_under_weights_only": 6.3,
    "test_sigmoid_block.py::test_deterministic_result_does_not_depend_on_program_order": 14.4,  # xdist
    "test_sigmoid_loss.py::test_16bit_gradient_at_8192_rows": 29.3,
    "test_sigmoid_loss.py::test_matches_float64_reference[258-130-2-triton-fp16]": 6.6,
    "test_sigmoid_loss.py::test_matches_float64_reference[258-130-2-triton-fp32]": 7.1,
    "test_sigmoid_loss.py::test_matches_float64_reference[258-130-3-triton-fp16]": 6.6,
    "test_sigmoid_loss.py::test_matches_float64_reference[258-130-3-triton-fp32]": 6.8,
    "test_sigmoid_loss.py::test_triton_bf16_kernel[258-130-2]": 7.0,
    "test_sigmoid_strips.py::test_tiles_that_hold_positives_are_found": 15.0,  # xdist
}


def is_slow(item: Any) -> bool:
    """Whether a collected pytest item belongs to the slow tier."""
    name = f"{item.path.name}::{item.name}"
    return NEEDS_CIFAR10 in item.fixturenames or name in SLOW or name.split("[")[0] in SLOW
