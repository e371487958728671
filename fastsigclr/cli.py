"""The ``fastsigclr`` command: one subcommand per entry point, options generated from configs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fastsigclr import __version__
from fastsigclr.cli_args import ArgumentParser, did_you_mean, join_dash_values
from fastsigclr.config import FastSigCLRError, add_arguments, error_text, from_args, typed_fields
from fastsigclr.entry import flush_stdout, interrupted, output_failed


def _cmd_info(args: argparse.Namespace) -> int:
    from fastsigclr.runinfo import install_report

    print("\n".join(install_report(__version__)))
    return 0


def _run_bench(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Run the ``fastsigclr bench`` command of ``args`` with its options: (config, results payload)."""
    import importlib
    from pathlib import Path

    from fastsigclr.checkpoint import writable_folder

    config = args.config()
    cfg = from_args(config, args)
    run = importlib.import_module(config.__module__).run
    writable_folder(Path(cfg.out))  # every benchmark writes there: checked before it measures, not after
    return cfg, run(cfg, command=["fastsigclr", *args.argv])


def _wrote(cfg: Any, payload: dict[str, Any]) -> str:
    return f"wrote {cfg.out}/{payload['benchmark']}-{payload['device']['type']}.json and .png"


def _cmd_bench_loss(args: argparse.Namespace) -> int:
    from fastsigclr.bench.loss import summary_table

    cfg, payload = _run_bench(args)
    print(summary_table(payload))
    print(_wrote(cfg, payload))
    return 0


def _cmd_bench_augment(args: argparse.Namespace) -> int:
    from fastsigclr.bench.augment import summary_table

    cfg, payload = _run_bench(args)
    print(summary_table(payload))
    print(_wrote(cfg, payload))
    return 0


def _cmd_bench_dist(args: argparse.Namespace) -> int:
    cfg, payload = _run_bench(args)
    for r in payload["results"]:
        print(
            f"{r['provider']:<7} 2N={r['rows']:<6} {r['median_ms']:9.3f} ms  "
            f"×{r['overhead_vs_plain']:.2f} of plain"
        )
    print(_wrote(cfg, payload))
    return 0


def _cmd_bench_all(args: argparse.Namespace) -> int:
    cfg, payload = _run_bench(args)
    for row in payload["figures"]:
        print(f"{row['benchmark']:<8} {row['what']:<48} {row['median']:>12.4g} {row['unit']}")
    print(
        f"wrote {cfg.out}/all-{payload['device']['type']}.json "
        f"({len(payload['figures'])} figures) and each benchmark's JSON and PNG"
    )
    return 0


def _cmd_bench_train(args: argparse.Namespace) -> int:
    cfg, payload = _run_bench(args)
    res = payload["results"]
    print(f"(a) full step   {res['full_step']['img_per_s']:10.1f} img/s")
    ratio = payload["full_over_model"]
    print(f"(b) model step  {res['model_step']['img_per_s']:10.1f} img/s   a/b = {ratio:.3f}")
    print(f"(c) augmentation {res['augment']['views_per_s']:9.1f} views/s ({payload['augment_path']})")
    print(_wrote(cfg, payload))
    return 0


def _cmd_bench_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fastsigclr.bench.plot import plot_file

    for path in args.files:
        png = plot_file(Path(path))
        print(
            f"wrote {png}" if png else f"{path}: a `bench all` summary; its benchmarks' files hold the plots"
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fastsigclr.config import several_ranks
    from fastsigclr.runconfig import TrainConfig
    from fastsigclr.rundir import resumed_method
    from fastsigclr.train import train

    given = typed_fields(TrainConfig, args)
    if args.resume not in (None, "no") and args.method is None:  # its loss options are its method's
        args.method = resumed_method(args.out)
    summary = train(from_args(TrainConfig, args), command=["fastsigclr", *args.argv], given=given)
    if several_ranks() and os.environ.get("RANK", "0") != "0":  # rank 0 says it
        return 0
    knn = summary["knn_acc"]
    epochs = f"{summary['epochs']} epoch{'s' * (summary['epochs'] != 1)}"
    print(f"done: {epochs}, kNN accuracy {knn:.4f}" if knn is not None else "done")
    print(f"run directory: {summary['run_dir']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from fastsigclr.eval import EvalConfig, evaluate

    result = evaluate(from_args(EvalConfig, args))
    print(
        f"{result['protocol']} accuracy {result['accuracy']:.4f} ({result['trained']}, "
        f"{result['test_images']} test images)" + (f"; wrote {result['path']}" if result["path"] else "")
    )
    if result["path"] is None:
        raise FastSigCLRError(result["write_error"])
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fastsigclr.sweep import SweepConfig, run_sweep

    cfg = from_args(SweepConfig, args)
    payload = run_sweep(cfg, command=["fastsigclr", *args.argv])
    failed = [r for r in payload["runs"] if r["status"] == "failed"]
    print(f"wrote {cfg.out}/results.json, results.md and results.png", end="")
    print(f"; {len(failed)} run(s) failed (run the same command again to retry them)" if failed else "")
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fastsigclr.export import ExportConfig, export

    cfg = from_args(ExportConfig, args)
    meta = export(cfg)
    parts = "backbone and projector" if cfg.projector else "backbone"
    print(f"wrote {cfg.out}: {meta['arch']} width {meta['width']} {parts}, {meta['trained']}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from fastsigclr.export import EmbedConfig, embed

    result = embed(from_args(EmbedConfig, args))
    files = f" and {result['files']}" if result["files"] else ""
    print(f"wrote {result['features']} {result['shape']}, {result['labels']}{files}, {result['trained']}")
    return 0


def _split_counts(info, folder) -> str:
    from fastsigclr.data.splits import open_splits

    splits = open_splits(info, folder, announce=False)
    counts = [f"{len(splits.pretrain)} pre-training"] if splits.pretrain is not splits.train else []
    labelled = (("train", splits.train), ("test", splits.test))
    counts += [f"{len(s)} {name}" for name, s in labelled if s is not None]
    return ", ".join(counts) + " images"


def _cmd_data_download(args: argparse.Namespace) -> int:
    from fastsigclr.data.datasets import DATASETS, DataConfig, prepare

    cfg = from_args(DataConfig, args)
    info = DATASETS[cfg.dataset]
    folder = prepare(info, cfg.resolved_dir(), url=cfg.url, progress=cfg.progress)
    print(f"{info.name}: {_split_counts(info, folder)} in {folder}")
    return 0


def _cmd_data_verify(args: argparse.Namespace) -> int:
    from fastsigclr.data.datasets import DATASETS, VerifyConfig, verify
    from fastsigclr.data.verdict import UnofficialData

    cfg = from_args(VerifyConfig, args)
    info = DATASETS[cfg.dataset]
    try:
        sums = verify(info, cfg.resolved_dir(), progress=cfg.progress)
    except UnofficialData as note:  # usable data with other bytes: said, with exit status 1
        print("\n".join(f"{md5}  {name}" for name, md5 in note.sums.items()))
        print(f"fastsigclr: data verify: {note}", file=sys.stderr)
        return 1
    if not info.downloadable:  # an image folder: what was decoded, per split
        print("\n".join(f"{name}: {what}" for name, what in sums.items()))
        return 0
    for name, md5 in sums.items():
        print(f"{md5}  {name}")
    official = (
        f"the {len(info.file_md5)} official md5s match"
        if info.file_md5
        else "no official per-file md5s (the archive's is checked at download)"
    )
    print(f"{official}; layout and counts OK: {_split_counts(info, cfg.resolved_dir() / info.folder)}")
    return 0


def _cmd_data_write_ffcv(args: argparse.Namespace) -> int:
    from fastsigclr.data.loaders import WriteFfcvConfig, stored_note, write_ffcv, written_line

    path, stored, written = write_ffcv(from_args(WriteFfcvConfig, args))
    print(written_line(path, written))
    if stored is not None:  # a run finds it only at this storage size
        print(stored_note(stored))
    return 0


def _cmd_ccem(args: argparse.Namespace) -> int:
    from fastsigclr.ccem import CcemConfig, run

    cfg = from_args(CcemConfig, args)
    payload = run(cfg, command=["fastsigclr", *args.argv])
    print(
        f"{'variant':<8} {'N':>3} {'t':>5} {'b':>5} {'s+':>7} {'s+ pred':>7} {'s-':>7} {'s- pred':>7} regime"
    )
    for r in payload["rows"]:
        print(
            f"{r['variant']:<8} {r['N']:>3} {r['t']:>5g} {r['b']:>5g} {r['s_pos']:>7.3f} "
            f"{r['s_pos_pred']:>7.3f} {r['s_neg']:>7.3f} {r['s_neg_pred']:>7.3f} {r['regime']}"
        )
    print(f"wrote {cfg.out}/results.json, results.csv and heatmap.png")
    return 0


def _lazy(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


Handler = Callable[[argparse.Namespace], int]
Command = tuple[tuple[str, ...], str, Callable[[], type] | None, tuple[str, ...], Handler]
# (subcommand path, help, config class (loaded lazily) or None, positional fields, handler)
COMMANDS: list[Command] = [
    (
        ("train",),
        "pre-train an encoder (SigCLR)",
        _lazy("fastsigclr.runconfig", "TrainConfig"),
        (),
        _cmd_train,
    ),
    (
        ("eval",),
        "evaluate a run: knn or linear",
        _lazy("fastsigclr.eval", "EvalConfig"),
        ("protocol",),
        _cmd_eval,
    ),
    (
        ("sweep",),
        "train and evaluate a grid of settings × seeds; results.json, .md and .png",
        _lazy("fastsigclr.sweep", "SweepConfig"),
        (),
        _cmd_sweep,
    ),
    (
        ("export",),
        "write a run's backbone (and projector) as safetensors, loadable with fastsigclr.export",
        _lazy("fastsigclr.export", "ExportConfig"),
        (),
        _cmd_export,
    ),
    (
        ("embed",),
        "write the backbone features of a dataset split (.npy) and its labels (.labels.npy)",
        _lazy("fastsigclr.export", "EmbedConfig"),
        (),
        _cmd_embed,
    ),
    (
        ("data", "download"),
        "download, verify and extract a dataset",
        _lazy("fastsigclr.data.datasets", "DataConfig"),
        (),
        _cmd_data_download,
    ),
    (
        ("data", "verify"),
        "md5 of each dataset file against the official ones, and a layout and count check",
        _lazy("fastsigclr.data.datasets", "VerifyConfig"),
        (),
        _cmd_data_verify,
    ),
    (
        ("data", "write-ffcv"),
        "write a dataset's training split as an FFCV .beton (for --loader ffcv)",
        _lazy("fastsigclr.data.loaders", "WriteFfcvConfig"),
        (),
        _cmd_data_write_ffcv,
    ),
    (
        ("ccem",),
        "reproduce the CCEM analysis of sigmoid-loss optima",
        _lazy("fastsigclr.ccem", "CcemConfig"),
        (),
        _cmd_ccem,
    ),
    (("info",), "report versions, devices and which backends are usable", None, (), _cmd_info),
    (
        ("bench", "loss"),
        "time each loss's implementations side by side (any --method's loss)",
        _lazy("fastsigclr.bench.loss", "BenchLossConfig"),
        (),
        _cmd_bench_loss,
    ),
    (
        ("bench", "train"),
        "time the training step, the model step alone and the augmentation alone",
        _lazy("fastsigclr.bench.train", "BenchTrainConfig"),
        (),
        _cmd_bench_train,
    ),
    (
        ("bench", "augment"),
        "views/s of the gpu, dali and ffcv loaders and of a PIL DataLoader baseline",
        _lazy("fastsigclr.bench.augment", "BenchAugmentConfig"),
        (),
        _cmd_bench_augment,
    ),
    (
        ("bench", "dist"),
        "overhead of the distributed sigmoid loss with one rank, against the plain loss",
        _lazy("fastsigclr.bench.dist", "BenchDistConfig"),
        (),
        _cmd_bench_dist,
    ),
    (
        ("bench", "all"),
        "every microbenchmark (loss, augment, train, dist) and one summary JSON",
        _lazy("fastsigclr.bench.suite", "BenchAllConfig"),
        (),
        _cmd_bench_all,
    ),
    (("bench", "plot"), "redraw the plot of a benchmark results JSON", None, (), _cmd_bench_plot),
]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="fastsigclr", description="Fast sigmoid contrastive self-supervised learning (SigCLR)."
    )
    parser.add_argument("--version", action="version", version=f"fastsigclr {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND")
    }
    for path, help_text, config, positional, handler in COMMANDS:
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                sub = groups[path[: depth - 1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = sub.add_subparsers(dest=f"command_{depth}", metavar="COMMAND", required=True)
        leaf = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        if config is not None:
            add_arguments(leaf, config(), positional)
        if path == ("bench", "plot"):
            leaf.add_argument("files", nargs="+", help="results JSON files written by fastsigclr bench")
        leaf.set_defaults(handler=handler, config=config, leaf=leaf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(join_dash_values(parser, argv))
    if unknown:
        (getattr(args, "leaf", None) or parser).error(did_you_mean(getattr(args, "leaf", parser), unknown))
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    args.argv = argv
    try:
        code = args.handler(args)
        flush_stdout()  # a closed pipe or a full disk shows here, inside the try, not at exit
        return code
    except FastSigCLRError as err:
        parser.exit(2, error_text(err))
    except KeyboardInterrupt as exc:
        return interrupted(exc)
    except OSError as err:  # stdout's (`info | head`, `> /dev/full`) is a status; another, raised
        return output_failed(err)
