"""The training recipe: the config of ``fastsigclr train``, the dataset presets and methods, and
what a run trains with, built from them (``build``: data, loader, model, loss, probe, optimisers),
with ``resume`` and ``checkpoint_state`` to continue it. Shared by the trainer, the evaluation of a
run and ``fastsigclr bench train``; the optimisation step and the loop live in ``fastsigclr.train``."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastsigclr import checkpoint as ckpt
from fastsigclr import distributed
from fastsigclr.config import ConfigError, FastSigCLRError, check_fields, from_dict, option, to_dict
from fastsigclr.data import DATASETS, LOADERS, AugmentSpec, DatasetInfo, default_data_dir, prepare
from fastsigclr.data.datasets import data_dir_option, data_folder, dataset_option
from fastsigclr.data.loaders import ffcv_dir_option, loader_options
from fastsigclr.data.samples import SampleIndex
from fastsigclr.data.splits import DataSplits, open_splits
from fastsigclr.losses import LOSSES
from fastsigclr.losses.options import LOSS_OPTIONS, check_applicable, method_params, with_loss_options
from fastsigclr.models import ARCHS, SSLModel
from fastsigclr.models.sync_bn import convert_global_bn
from fastsigclr.optim import build_optimizer, param_groups
from fastsigclr.runinfo import device_option, resolve_device

# docs/design.md §9: what `--dataset` chooses; every value can be overridden by its option.
PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {"arch": "resnet18", "proj_dims": (2048, 2048, 64), "batch_size": 512, "epochs": 1000},
    "cifar100": {"arch": "resnet18", "proj_dims": (4096, 4096, 128), "batch_size": 512, "epochs": 1000},
    "tinyimagenet": {"arch": "resnet50", "proj_dims": (4096, 4096, 128), "batch_size": 1024, "epochs": 800},
    "stl10": {"arch": "resnet18", "proj_dims": (4096, 4096, 128), "batch_size": 256, "epochs": 400},
    "imagenet100": {"arch": "resnet18", "proj_dims": (4096, 4096, 128), "batch_size": 256, "epochs": 400},
    # SimCLR's ResNet-50 recipe: 224² crops, batch 4096, one 2048 hidden layer to 128, 100 epochs
    # (its repository's default; the paper's best figures took 1000).
    "imagenet": {"arch": "resnet50", "proj_dims": (2048, 128), "batch_size": 4096, "epochs": 100},
    "folder": {"arch": "resnet18", "proj_dims": (2048, 2048, 128), "batch_size": 256, "epochs": 100},
}
RESUME_MODES = ("no", "yes", "auto")
# The weights are float32: a larger --lr or --bias overflows at the first step (--lr 1e39 stopped in
# the optimiser: "value cannot be converted to type float without overflow").
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@with_loss_options
@dataclass(frozen=True)
class TrainConfig:
    dataset: str = dataset_option("dataset (its preset fills unset options)")
    data_dir: str | None = data_dir_option()
    download: bool = option(True, "download the dataset when it is not in --data-dir")
    loader: str = option("gpu", "data loader backend", choices=tuple(LOADERS))
    image_size: int | None = option(
        None,
        "crop size of the views; unset: the dataset's (32 CIFAR, 64 Tiny-ImageNet, 96 STL-10, 224)",
        ge=8,
    )
    store_size: int | None = option(
        None,
        "images of mixed sizes are decoded (gpu loader, kNN) or written (FFCV) at this size² (shorter "
        "side, centre crop); unset: 8/7 of --image-size",
        ge=8,
    )
    memory_budget: float | None = option(
        None,
        "GiB the gpu loader's decoded images may take; unset: half the free device (or host) memory",
        gt=0,
    )
    max_broken: float = option(
        0.01,
        "largest fraction of images that cannot be decoded to list and skip; above it the run stops",
        ge=0,
        le=1,
    )
    ffcv_dir: str | None = ffcv_dir_option()
    method: str = option(
        "sigclr",
        "objective: " + "; ".join(f"{m}: {s.summary}" for m, s in LOSSES.items()),
        choices=tuple(LOSSES),
    )
    arch: str | None = option(None, "backbone; unset: the dataset preset", choices=tuple(ARCHS))
    width: int = option(64, "channels of the first ResNet stage (64 = standard)", ge=1)
    zero_init_residual: bool = option(False, "start each residual branch at zero")
    proj_dims: tuple[int, ...] | None = option(None, "projector hidden..output sizes; unset: preset", ge=1)
    batch_size: int | None = option(
        None,
        "images per step over all ranks (each gives n_views views), at most the training images; "
        "unset: preset",
        ge=1,
    )
    epochs: int | None = option(None, "training epochs; unset: preset", ge=1)
    n_views: int = option(2, "augmented views per image", ge=2)
    # LARS by default: with b = −10 the first gradients are almost pure positive-pair attraction, and
    # plain SGD stepped straight into collapse (ResNet-18 width 16, batch 128, CPU: loss 6.9 → 98.9 in
    # 4 steps at lr 0.05; at lr 0.5 → 64), where normalisation leaves no gradient to escape. LARS
    # bounds each layer's step and trained stably at both rates (loss 6.9 → 6.2).
    optimizer: str = option("lars", "optimizer", choices=("sgd", "lars"))
    lr: float = option(0.5, "peak learning rate", ge=0, le=FLOAT32_MAX)
    momentum: float = option(0.9, "momentum", ge=0, lt=1)
    weight_decay: float = option(1e-4, "weight decay (not on BN parameters or biases)", ge=0)
    warmup_epochs: float = option(10.0, "linear warm-up length in epochs (capped at the run length)", ge=0)
    use_labels: bool | None = option(
        None, "supcon/tcl: contrast by class labels (default) or, with --no-use-labels, by views only"
    )
    probe_lr: float = option(0.1, "online linear probe learning rate", ge=0)
    knn_every: int = option(
        10, "run the kNN monitor every this many epochs (and at the end; 0: end only)", ge=0
    )
    knn_k: int = option(200, "neighbours in the kNN vote", ge=1)
    knn_temperature: float = option(0.1, "temperature of the kNN vote weights", gt=0)
    compile: bool = option(False, "torch.compile the model")
    sync_bn: bool = option(True, "torchrun runs: batch-norm statistics over the global batch")
    dist_loss: str = option(
        "ring", "torchrun runs: how the sigmoid loss sees other ranks' rows", choices=("ring", "gather")
    )
    # torch's own default is 30 min (gloo) / 10 min (NCCL). The bound also covers collectives, so it
    # must exceed the longest stretch rank 0 works alone while the others wait at a barrier: the
    # FFCV dataset write, the kNN monitor, the checkpoint write.
    dist_timeout: float = option(
        600.0, "torchrun runs: seconds a rank waits to join the run, and at most for any collective", gt=0
    )
    device: str = device_option()
    precision: str = option(
        "auto", "compute dtype; auto: bf16 autocast on CUDA, fp32 on CPU", choices=("auto", "bf16", "fp32")
    )
    seed: int = option(0, "random seed", ge=0)
    limit_train: int | None = option(
        None, "use a class-balanced subset of N training images (the same for every loader)", ge=1
    )
    limit_test: int | None = option(None, "use a class-balanced subset of N test images", ge=1)
    out: str | None = option(None, "run directory; unset: runs/<dataset>-<method>-<time>")
    resume: str = option(
        "no",
        "continue the run in --out from its last checkpoint (yes); auto: continue it when it has "
        "one, else start it (a finished run stays as it is), for restarts by torchrun --max-restarts",
        choices=RESUME_MODES,
        bare="yes",
    )
    log_every: int = option(50, "steps between metrics.jsonl step records", ge=1)
    progress: bool = option(True, "show progress bars")
    tensorboard: bool = option(True, "also log to TensorBoard when it is installed")

    def __post_init__(self) -> None:
        check_fields(self)
        spec = LOSSES[self.method]
        if self.use_labels and not spec.supervised:
            raise ValueError(f"--use-labels: {self.method} cannot use labels; it is self-supervised")
        check_applicable(self, (self.method,))
        if self.resume not in RESUME_MODES:
            raise ValueError(f"--resume must be one of {', '.join(RESUME_MODES)}, got {self.resume!r}")
        if self.resume != "no" and not self.out:
            raise ValueError(f"--resume {self.resume} needs --out DIR: the run directory to continue")

    def resolved(self) -> TrainConfig:
        """Preset values for the options left unset, and a default run directory."""
        preset = PRESETS[self.dataset]
        filled = {k: v for k, v in preset.items() if getattr(self, k) is None}
        if self.image_size is None:
            filled["image_size"] = DATASETS[self.dataset].image_size
        if self.store_size is None:
            filled["store_size"] = round(filled.get("image_size", self.image_size) * 8 / 7)
        filled.update({k: v for k, v in LOSSES[self.method].defaults().items() if getattr(self, k) is None})
        if self.out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            filled["out"] = str(Path("runs") / f"{self.dataset}-{self.method}-{stamp}")
        if self.data_dir is None:
            filled["data_dir"] = str(default_data_dir())
        batch = filled.get("batch_size", self.batch_size)
        if self.limit_train is not None and batch > self.limit_train:
            given = "" if self.batch_size else f" (the {self.dataset} preset)"
            raise ConfigError(
                f"--batch-size {batch}{given} is larger than the {self.limit_train} images of "
                f"--limit-train {self.limit_train}: pass --batch-size {self.limit_train} or less, or a "
                f"larger --limit-train"
            )
        return dataclasses.replace(self, **filled)


def load_data(cfg: TrainConfig, announce: bool = True) -> DataSplits:
    """The run's splits (``data.splits``): what the loader trains on, and the labelled splits of
    the kNN monitor and the probe; an image folder's classes and counts printed (``announce``)."""
    info = DATASETS[cfg.dataset]
    folder = prepare(info, data_folder(cfg.data_dir), download_ok=cfg.download, progress=cfg.progress)
    return open_splits(
        info,
        folder,
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
        store_size=cfg.store_size,
        max_broken=cfg.max_broken,
        announce=announce,
    )


def compute_dtypes(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the views, autocast dtype or None)."""
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return (torch.bfloat16, torch.bfloat16) if precision == "bf16" else (torch.float32, None)


def build_model(cfg: TrainConfig, info, device: torch.device):
    model = SSLModel(cfg.arch or "resnet18", cfg.width, cfg.proj_dims or (), cfg.zero_init_residual)
    model = model.to(device, memory_format=torch.channels_last)
    criterion = LOSSES[cfg.method].build(n_views=cfg.n_views, **method_params(cfg, cfg.method))
    criterion = criterion.to(device)
    probe = torch.nn.Linear(model.backbone.out_dim, max(info.num_classes, 1)).to(device)  # 0: unlabeled
    return model, criterion, probe


@dataclass
class Setup:
    """What a run trains with, all made from its config by ``build``."""

    cfg: TrainConfig
    info: DatasetInfo
    data: DataSplits  # the loader's split, and the kNN monitor's labelled ones
    loader: Any  # one of LOADERS: ``epoch(e)`` yields (views, labels), ``len`` steps per epoch
    model: torch.nn.Module  # SSLModel: backbone f, projector g
    criterion: torch.nn.Module
    probe: torch.nn.Module
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer
    autocast_dtype: torch.dtype | None


def build(cfg: TrainConfig, ctx: distributed.Context, data: DataSplits | None = None) -> Setup:
    """Data (``load_data``, or ``data`` given), loader, model, loss, online probe and their
    optimisers, on ``ctx.device``; seeded by ``cfg.seed``."""
    device = ctx.device
    view_dtype, autocast_dtype = compute_dtypes(cfg, device)
    if data is None:
        data = load_data(dataclasses.replace(cfg, progress=cfg.progress and ctx.is_main), ctx.is_main)
    info = data.info
    torch.manual_seed(cfg.seed)
    spec = AugmentSpec.simclr(cfg.image_size or info.image_size, info.mean, info.std, n_views=cfg.n_views)
    loader = LOADERS[cfg.loader](
        data.pretrain,
        None,
        spec,
        cfg.batch_size or 1,  # global: each rank takes batch_size / world_size
        device,
        view_dtype,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        **_loader_options(cfg, info, data.pretrain, ctx),
    )
    if loader.samples.decoded:
        data.adopt(loader.samples)
    model, criterion, probe = build_model(cfg, info, device)
    if ctx.distributed and cfg.sync_bn:
        model = convert_global_bn(model)
    optimizer = build_optimizer(
        cfg.optimizer, param_groups([model, criterion], cfg.weight_decay), cfg.lr, cfg.momentum
    )
    probe_opt = torch.optim.SGD(probe.parameters(), lr=cfg.probe_lr, momentum=0.9)
    return Setup(
        cfg,
        info,
        data,
        loader,
        model,
        criterion,
        probe,
        optimizer,
        probe_opt,
        autocast_dtype,
    )


def _loader_options(
    cfg: TrainConfig, info: DatasetInfo, samples: SampleIndex, ctx: distributed.Context
) -> dict:
    """Backend arguments; rank 0 writes a missing FFCV dataset while the others wait for it."""
    kw = dict(
        ffcv_dir=cfg.ffcv_dir,
        store_size=cfg.store_size,
        budget=None if cfg.memory_budget is None else int(cfg.memory_budget * (1 << 30)),
        max_broken=cfg.max_broken,
    )
    data_dir = data_folder(cfg.data_dir)
    if cfg.loader == "ffcv" and ctx.is_main:
        loader_options(cfg.loader, info, data_dir, samples, cfg.limit_train, progress=cfg.progress, **kw)
    distributed.barrier(ctx)
    return loader_options(cfg.loader, info, data_dir, samples, cfg.limit_train, progress=False, **kw)


def resume(setup: Setup, state: dict[str, Any] | None) -> tuple[int, int]:
    """Load a checkpoint written by ``checkpoint_state`` (None: a new run): weights, optimiser
    states and RNG. Returns the (epoch, step) to continue from."""
    if state is None:
        return 0, 0
    setup.model.load_state_dict(state["model"])
    setup.criterion.load_state_dict(state["criterion"])
    setup.probe.load_state_dict(state["probe"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.probe_optimizer.load_state_dict(state["probe_optimizer"])
    ckpt.set_rng_state(state["rng"])
    return state["epoch"], state["step"]


def checkpoint_state(setup: Setup, epoch: int, step: int) -> dict[str, Any]:
    """What ``resume`` needs to continue after ``epoch`` epochs and ``step`` steps."""
    return {
        "model": setup.model.state_dict(),
        "criterion": setup.criterion.state_dict(),
        "probe": setup.probe.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "probe_optimizer": setup.probe_optimizer.state_dict(),
        "rng": ckpt.rng_state(),
        "epoch": epoch,
        "step": step,
        "config": to_dict(setup.cfg),
    }


def uses_labels(cfg: TrainConfig) -> bool:
    return LOSSES[cfg.method].supervised if cfg.use_labels is None else cfg.use_labels


def loss_scalars(criterion: torch.nn.Module) -> dict[str, float]:
    """The loss's scalars for the logs, named apart: sigclr's logit_scale and bias, the softmax
    losses' temperature."""
    return criterion.log_values()


# Keys of config.json files written before the loss registry: sigclr's scale was "temperature".
_OLD_SIGCLR_KEYS = {"temperature": "logit_scale", "learnable_temperature": "learnable_logit_scale"}


def saved_config(saved: dict[str, Any]) -> TrainConfig:
    """The ``config`` of a run's config.json as a TrainConfig, older files read in today's names:
    runs written before ``--resume auto`` saved ``resume`` as true/false (read as yes/no); files
    written before the loss registry (they hold learnable_temperature, and every method's options)
    have sigclr's temperature read as its logit_scale, and options the method never used dropped."""
    resume = saved.get("resume")
    if isinstance(resume, bool):
        saved = {**saved, "resume": RESUME_MODES[int(resume)]}
    if "learnable_temperature" in saved:
        saved = dict(saved)
        spec = LOSSES.get(saved.get("method", "sigclr"))
        if saved.get("method", "sigclr") == "sigclr":
            saved.update({new: saved.pop(old) for old, new in _OLD_SIGCLR_KEYS.items() if old in saved})
        saved.pop("learnable_temperature", None)
        for name in LOSS_OPTIONS:
            if spec is not None and name not in spec.params:
                saved.pop(name, None)
    return from_dict(TrainConfig, saved)


def load_run_model(run_dir: Path, device_name: str = "auto", data_dir: str | None = None) -> dict[str, Any]:
    """A run's backbone (last checkpoint), its data (from ``data_dir`` when given, else where the
    run read it) and settings, for evaluation."""
    saved = json.loads((Path(run_dir) / "config.json").read_text())["config"]
    cfg = saved_config({**saved, **({"data_dir": data_dir} if data_dir else {})})
    info = DATASETS[cfg.dataset]
    where = data_folder(cfg.data_dir)
    if not ((where / info.folder).is_dir() or (info.archive and (where / info.archive).is_file())):
        raise FastSigCLRError(
            f"{info.name} is not in {where} ({'--data-dir' if data_dir else 'where the run read it'}): "
            f"pass --data-dir DIR, the folder that now holds {info.folder}/ (or {info.archive})"
        )
    device = resolve_device(device_name)
    state = ckpt.load(Path(run_dir) / "checkpoints" / "last.pt", map_location=device)
    data = load_data(dataclasses.replace(cfg, download=False, progress=False), announce=False)
    if not data.has_knn:
        raise FastSigCLRError(
            f"{data.info.name} in {where} has no labelled train and test images (a flat folder, or no val/): "
            f"evaluation needs DIR/train/<class>/ and DIR/val/<class>/"
        )
    info, train, test = data.info, data.arrays("train"), data.arrays("test")
    model, _, _ = build_model(cfg, info, device)
    model.load_state_dict(state["model"])
    _, autocast_dtype = compute_dtypes(cfg, device)
    return {
        "backbone": model.backbone,
        "info": info,
        "train": train,
        "test": test,
        "device": device,
        "epoch": state["epoch"],
        "autocast": autocast_dtype,
    }
