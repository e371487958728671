"""The training recipe: what a run trains with, built from its resolved config
(``fastsigclr.runconfig``): ``build`` makes the data, loader, model, loss, probe and optimisers,
``resume`` and ``checkpoint_state`` continue it, and ``load_run_model`` reads a finished run's
backbone. Shared by the trainer, the evaluation of a run and ``fastsigclr bench train``; the
optimisation step and the loop live in ``fastsigclr.train``."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any

import torch

from fastsigclr import determinism, distributed
from fastsigclr.config import ConfigError, FastSigCLRError, alike, to_dict
from fastsigclr.data import DATASETS, LOADERS, AugmentSpec, DatasetInfo, prepare
from fastsigclr.data.base import LoaderSource
from fastsigclr.data.broken import RECORDED_IDS, recorded_ids
from fastsigclr.data.datasets import data_folder
from fastsigclr.data.info import default_store_size
from fastsigclr.data.samples import SampleIndex
from fastsigclr.data.splits import SPLITS, DataSplits, open_splits
from fastsigclr.losses import LossSpec
from fastsigclr.models import SSLModel
from fastsigclr.models.resnet import memory_format
from fastsigclr.models.sync_bn import convert_global_bn
from fastsigclr.optim import build_optimizer, param_groups
from fastsigclr.runconfig import TrainConfig, loss_params, uses_labels
from fastsigclr.runinfo import available_memory_bytes
from fastsigclr.runweights import load_weights


def load_data(cfg: TrainConfig, announce: bool = True, reads: tuple[str, ...] = SPLITS) -> DataSplits:
    """The run's splits (``data.splits``): what the loader trains on, and the labelled splits of
    the kNN monitor and the probe; an image folder's classes and counts printed (``announce``);
    ``reads``: the splits the caller reads (``open_splits``)."""
    info = DATASETS[cfg.dataset]
    folder = prepare(info, data_folder(cfg.data_dir), download_ok=cfg.download, progress=cfg.progress)
    limits = {"limit_train": cfg.limit_train, "limit_test": cfg.limit_test, "max_broken": cfg.max_broken}
    data = open_splits(info, folder, store_size=cfg.store_size, announce=announce, reads=reads, **limits)
    note = store_size_note(data, cfg.store_size, cfg.image_size)
    if note and announce:
        print(note, file=sys.stderr)
    return data


def store_size_note(data: DataSplits, store_size: int | None, image_size: int | None) -> str | None:
    """A line when images are stored (``SampleIndex.resized``) smaller than the views cut from
    them: every view and every kNN image is then upsampled (legal: a memory trade some runs make
    on purpose); or when images of one size, kept as they are, are smaller than the views."""
    if image_size is None:
        return None
    splits = [s for s in (data.pretrain, data.train, data.test) if s is not None and not s.decoded]
    resized = [s for s in splits if s.resized(store_size) is not None]
    kept = [hw for s in splits if s not in resized and (hw := s.uniform_size)]
    if small := next((hw for hw in kept if min(hw) < image_size), None):
        return (
            f"note: the images are {small[0]}×{small[1]} (height × width), smaller than --image-size "
            f"{image_size}: they are kept as they are and every view is upsampled from them"
        )
    if store_size is None or store_size >= image_size:
        return _upsampled_note(resized[0], image_size, store_size) if resized else None
    if not resized:
        return None
    return (
        f"note: --store-size {store_size} is below --image-size {image_size}: the images are kept at "
        f"{store_size}² and every view is upsampled; leave --store-size unset "
        f"({default_store_size(image_size)}, 8/7 of --image-size) to keep their detail"
    )


def _upsampled_note(split: SampleIndex, image_size: int, store_size: int | None) -> str | None:
    """A line when images of mixed sizes stored at ``store_size``² include some whose shorter side
    is below --image-size: stored larger than they are, their views are upsampled (a folder of
    40-90 px images cropped at 224 said nothing)."""
    short = split.sizes.min(axis=1)
    if not len(short) or (below := int((short < image_size).sum())) == 0:
        return None
    h, w = split.sizes[int(short.argmin())]
    side = store_size or default_store_size(image_size)
    return (
        f"note: {below} of the {len(split)} {split.name} images have a shorter side below --image-size "
        f"{image_size} (the smallest: {h}×{w}): they are upsampled to {side}²; an --image-size near "
        f"their size avoids that"
    )


def compute_dtypes(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the views, autocast dtype or None)."""
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return (torch.bfloat16, torch.bfloat16) if precision == "bf16" else (torch.float32, None)


def build_model(cfg: TrainConfig, info, device: torch.device, plans: dict[str, Any] | None = None):
    """Model, loss and probe on ``device``; the loss deterministic with ``--deterministic``, launching
    its kernel with ``plans`` (a resumed run's recorded ones) where its spec takes plans."""
    model = SSLModel(cfg.arch or "resnet18", cfg.width, cfg.proj_dims or (), cfg.zero_init_residual)
    model = model.to(device, memory_format=memory_format(device))
    params = loss_params(cfg, cfg.loss_spec)
    if cfg.loss_spec.kernel_plans:
        params.update(deterministic=cfg.deterministic, plans=plans)
    criterion = cfg.loss_spec.build(n_views=cfg.n_views, **params)
    criterion = criterion.to(device)
    probe = torch.nn.Linear(model.backbone.out_dim, max(info.num_classes, 1)).to(device)  # 0: unlabeled
    return model, criterion, probe


def check_step_memory(cfg: TrainConfig, device: torch.device, images: int, dtype: torch.dtype) -> None:
    """Refuse an --image-size (or --batch-size) whose step cannot fit, before any data is read:
    a lower bound, the step's views and the backbone's largest activation (one tensor, traced on
    the meta device in ~30 ms), against the memory free on ``device``. More, and the process was
    killed by the OS mid-step with no message; the bound never refuses a step that would fit."""
    size = cfg.image_size or DATASETS[cfg.dataset].image_size
    with torch.device("meta"):
        # eval(): batch norm in training mode refuses the one-image trace where a stage is 1×1
        # (--image-size 8), which a real batch trains through
        backbone = SSLModel(cfg.arch or "resnet18", cfg.width, (1,), False).backbone.eval()
    largest = [0]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: largest.append(max(largest.pop(), out.numel())))
        for m in backbone.modules()
        if not list(m.children())
    ]
    backbone(torch.empty(1, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    rows = images * cfg.n_views
    need = rows * (3 * size * size + largest[0]) * dtype.itemsize
    free = available_memory_bytes()
    if device.type == "cuda":  # with what torch's allocator holds unused (an earlier run in a sweep)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        free = torch.cuda.mem_get_info(device)[0] + cached
    if need > free:
        raise FastSigCLRError(
            f"--image-size {size} with {images} images of {cfg.n_views} views per step needs more than "
            f"{need / 2**30:.1f} GiB on {device} (the views and the largest activation alone), and "
            f"{free / 2**30:.1f} GiB are free: lower --image-size or --batch-size"
        )


@dataclass
class Setup:
    """What a run trains with, all made from its config by ``build``."""

    cfg: TrainConfig
    loss_spec: LossSpec  # the method's registry entry (cfg.loss_spec)
    info: DatasetInfo
    data: DataSplits  # the loader's split, and the kNN monitor's labelled ones
    loader: Any  # one of LOADERS: ``epoch(e)`` yields (views, labels), ``len`` steps per epoch
    model: torch.nn.Module  # SSLModel: backbone f, projector g
    criterion: torch.nn.Module
    probe: torch.nn.Module
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer
    autocast_dtype: torch.dtype | None
    data_identity: dict[str, Any] | None = None  # the pre-training split's, as loaded (SampleIndex.identity)
    left_out: frozenset[int] = frozenset()  # what earlier sessions' loader left out as it trained (DALI)


def build(
    cfg: TrainConfig,
    ctx: distributed.Context,
    data: DataSplits | None = None,
    plans: dict | None = None,
    resumed: dict[str, Any] | None = None,
) -> Setup:
    """Data (``load_data``, or ``data`` given), loader, model, loss, online probe and their
    optimisers, on ``ctx.device``; seeded by ``cfg.seed``. ``cfg`` is resolved
    (``TrainConfig.resolved``): its batch size, epochs and loss parameters are set. plans: the
    kernel plans a resumed --deterministic run recorded (``runconfig.saved_plans``); resumed: the
    checkpoint a resumed run continues, whose undecodable images stay out of the loader."""
    if cfg.batch_size is None or cfg.epochs is None:
        raise ValueError("build needs a resolved config (TrainConfig.resolved()): its batch size is unset")
    device = ctx.device
    view_dtype, autocast_dtype = compute_dtypes(cfg, device)
    check_step_memory(cfg, device, cfg.batch_size // ctx.world_size, autocast_dtype or view_dtype)
    if data is None:
        data = load_data(dataclasses.replace(cfg, progress=cfg.progress and ctx.is_main), ctx.is_main)
    info = data.info
    if uses_labels(cfg) and not data.pretrain.labelled:  # else labels of -1 reach the loss mid-step
        given = "--use-labels" if cfg.use_labels else f"--method {cfg.method}"
        raise ConfigError(
            f"{given} contrasts images by their class labels, and the {len(data.pretrain)} {info.name} "
            f"images it would pre-train on have none: pass --no-use-labels (each image its own class), "
            f"or give labelled images (a folder's train/<class>/ folders)"
        )
    identity = data_identity(data, cfg)  # before a loader decodes it (and leaves out broken files)
    kept_out = {key: recorded_ids(resumed, key, len(data.pretrain), ctx.is_main) for key in RECORDED_IDS}
    torch.manual_seed(cfg.seed)
    spec = AugmentSpec.simclr(cfg.image_size or info.image_size, info.mean, info.std, n_views=cfg.n_views)
    loader = LOADERS[cfg.loader].cls(
        data.pretrain,
        None,
        spec,
        cfg.batch_size,  # global: each rank takes batch_size / world_size
        device,
        view_dtype,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        **_loader_options(cfg, info, data.pretrain, ctx, kept_out),
    )
    if loader.samples.decoded:
        data.adopt(loader.samples)
    model, criterion, probe = build_model(cfg, info, device, plans)
    if ctx.distributed and cfg.sync_bn:
        model = convert_global_bn(model)
    optimizer = build_optimizer(
        cfg.optimizer, param_groups([model, criterion], cfg.weight_decay), cfg.lr, cfg.momentum
    )
    probe_opt = torch.optim.SGD(probe.parameters(), lr=cfg.probe_lr, momentum=0.9)
    return Setup(cfg, cfg.loss_spec, info, data, loader, model, criterion, probe, optimizer, probe_opt,
                 autocast_dtype, identity, frozenset(kept_out["left_out"]))  # fmt: skip


def _loader_options(
    cfg: TrainConfig, info: DatasetInfo, samples: SampleIndex, ctx: distributed.Context, kept_out: dict
) -> dict:
    """The backend's own arguments; its preparation (FFCV: writing a missing .beton) runs on rank 0
    while the others wait for it. ``kept_out``: the images earlier sessions left out, by record
    (``RECORDED_IDS``)."""
    entry = LOADERS[cfg.loader]
    budget = None if cfg.memory_budget is None else int(cfg.memory_budget * (1 << 30))
    src = LoaderSource(
        info,
        data_folder(cfg.data_dir),
        samples,
        cfg.limit_train,
        cfg.ffcv_dir,
        cfg.progress,
        store_size=cfg.store_size,
        budget=budget,
        max_broken=cfg.max_broken,
        **{key: tuple(sorted(ids)) for key, ids in kept_out.items()},
    )
    failed: Exception | None = None
    if entry.prepare is not None and ctx.is_main:
        try:
            entry.prepare(src)
        except Exception as err:  # the others learn it below, not from a broken connection
            if not ctx.distributed:
                raise
            failed = err
    # Rank 0's outcome, to every rank (a barrier too): all stop with its line, or all go on.
    said = None if failed is None else str(failed)
    if failed is not None and not isinstance(failed, FastSigCLRError):
        said = (
            f"rank 0 could not prepare the data ({type(failed).__name__}: {failed}); its traceback is above"
        )
    said = distributed.share(ctx, said)
    if failed is not None:
        raise alike(failed)
    if said is not None:
        raise FastSigCLRError(said, alike=True)
    return entry.options(dataclasses.replace(src, progress=False))


def _check_classes(setup: Setup, state: dict[str, Any]) -> None:
    """The probe's classes are the data's: a checkpoint whose probe has another number of them was
    trained on other data (a --data-dir whose train/ holds other class folders), not another model."""
    own, saved = setup.probe.state_dict(), state.get("probe")
    if not isinstance(saved, dict):
        return
    for name, tensor in own.items():
        theirs = saved.get(name)
        matrices = isinstance(theirs, torch.Tensor) and theirs.dim() == tensor.dim() == 2
        if name.endswith("weight") and matrices and theirs.shape[0] != tensor.shape[0]:
            where = f"{setup.info.name} in {setup.cfg.data_dir}"
            # an unlabeled run's probe has one output, as has a one-class one
            before = f"{theirs.shape[0]} classes" if theirs.shape[0] > 1 else "unlabeled images (or 1 class)"
            now = f"{tensor.shape[0]} class{'es' if tensor.shape[0] > 1 else ''}"
            now = now if setup.info.num_classes else "unlabeled images"
            raise FastSigCLRError(
                f"the run was trained on {before} and its data now has {now} ({where}); resume it on the "
                f"data it was trained on (--data-dir), or start a new run"
            )


def data_identity(data: DataSplits, cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records of the images it trains on (``SampleIndex.identity``), and the
    side they are stored at (None: as they are): the pixels a resume must see again."""
    return {**data.pretrain.identity(), "stored": data.pretrain.resized(cfg.store_size)}


def _check_data(setup: Setup, state: dict[str, Any]) -> None:
    """The images are those the checkpoint was trained on (number, labels, files, storage side): other
    ones are neither the run's nor exact. Checkpoints written before the record are trusted."""
    saved, now = state.get("data"), setup.data_identity
    if not isinstance(saved, dict) or now is None:
        return
    then_side, now_side = saved.get("stored", now["stored"]), now["stored"]  # older records hold none
    saved, now = ({k: v for k, v in d.items() if k != "stored"} for d in (saved, now))
    if now == saved:
        if then_side == now_side:
            return
        then, after = ("as they are" if side is None else f"at {side}²" for side in (then_side, now_side))
        raise FastSigCLRError(
            f"the run stored its images {then} and they would now be stored {after} (the storage follows "
            f"the sizes of every labelled split: val/ came, went or holds other sizes); resume it on the "
            f"data it was trained on "
            f"(--data-dir), or start a new run with another --out"
        )
    where = f"{setup.info.name} in {setup.cfg.data_dir}"
    what = (
        f"{saved.get('images')!r:.20} images and {where} now holds {now['images']}"
        if saved.get("images") != now["images"]
        else f"other images than {where} now holds (as many, {now['images']}, but other files, labels "
        f"or sizes)"
    )
    raise FastSigCLRError(
        f"the run was trained on {what}; resume it on the data it was trained on (--data-dir), or "
        f"start a new run with another --out"
    )


def check_rank_data(setup: Setup, ctx: distributed.Context) -> None:
    """Refuse, on every rank, a torchrun run whose ranks read other data: the pre-training split,
    and the kNN monitor's labelled splits, whose shares the ranks embed (a node without val/, or
    with other images there, would take other collectives or embed the wrong shares)."""
    if not ctx.distributed:
        return
    distributed.check_same_data(ctx, setup.data_identity)
    for split in ("train", "test"):
        index = setup.data.index(split)
        if index is not setup.data.pretrain:
            identity = None if index is None else index.identity()
            distributed.check_same_data(ctx, identity, f"{split} images (the kNN monitor's)")


def check_position(cfg: TrainConfig, world_size: int, state: dict[str, Any] | None) -> None:
    """A checkpoint inside an epoch resumes by skipping the epoch's first batches: with a loader
    whose order depends on the rank count, only at the count that wrote it (another trains some
    images of the epoch twice and leaves others out: 92 and 108 of 384, FFCV from 2 ranks to 1).
    Checked before ``build``, whose preparation (FFCV: writing a .beton) can take minutes."""
    position = (state or {}).get("position") or {}
    ranks = position.get("world_size")
    if not LOADERS[cfg.loader].cls.order_by_ranks or ranks in (None, world_size):
        return
    raise ConfigError(
        f"the checkpoint is inside epoch {state['epoch'] + 1} (after batch {position['batch']}), "
        f"written by {ranks} ranks, and --loader {cfg.loader} deals an epoch's images by the "
        f"number of ranks: resume it on {ranks} ranks (torchrun --nproc_per_node, --nnodes); the "
        f"count may change from a checkpoint between epochs"
    )


def resume(
    setup: Setup, state: dict[str, Any] | None, source: str = "the checkpoint"
) -> tuple[int, int, dict[str, Any] | None]:
    """Load a checkpoint written by ``checkpoint_state`` (None: a new run): weights, optimiser
    states and RNG. Returns the (epoch, step) to continue from and, for a checkpoint written inside
    an epoch, its ``position`` (the batches done and the epoch's running sums), else None."""
    if state is None:
        return 0, 0, None
    _check_classes(setup, state)
    _check_data(setup, state)
    for part in ("model", "criterion", "probe", "optimizer", "probe_optimizer"):
        load_weights(getattr(setup, part), state[part], source)
    determinism.set_rng_state(state["rng"])
    return state["epoch"], state["step"], state.get("position")


def checkpoint_state(setup: Setup, epoch: int, step: int) -> dict[str, Any]:
    """What ``resume`` needs to continue after ``epoch`` epochs and ``step`` steps."""
    return {
        "model": setup.model.state_dict(),
        "criterion": setup.criterion.state_dict(),
        "probe": setup.probe.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "probe_optimizer": setup.probe_optimizer.state_dict(),
        "rng": determinism.rng_state(),
        "epoch": epoch,
        "step": step,
        "config": to_dict(setup.cfg),
        "data": setup.data_identity,
        # the ids of the pre-training split a loader could not decode up front (the gpu loader's)
        "undecoded": list(setup.loader.samples.undecoded),
    }


def kernel_plans(setup: Setup) -> dict[str, dict[str, Any]]:
    """The tile plans the loss's kernel has launched with so far (and those it was given), as
    config.json records them: kind of block → the fields of a ``kernels.Plan``; {} for a loss
    without plans."""
    plans = setup.criterion.plans if setup.loss_spec.kernel_plans else {}
    return {
        kind: dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(p) for kind, p in plans.items()
    }


def loss_scalars(criterion: torch.nn.Module) -> dict[str, float]:
    """The loss's scalars for the logs, named apart: sigclr's logit_scale and logit_bias, the softmax
    losses' temperature."""
    return criterion.log_values()
