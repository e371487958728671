"""Evaluation of a backbone: the weighted kNN vote (``fastsigclr.knn``) and the offline linear
probe (frozen features extracted once, SGD with a cosine schedule). The settings and their
defaults are EvalConfig's."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastsigclr import distributed
from fastsigclr.checkpoint import WriteError, json_text, write_text_atomic
from fastsigclr.config import FLOAT32_MAX, SEED_MAX, FastSigCLRError, check_fields, option, option_from
from fastsigclr.data.datasets import data_dir_option
from fastsigclr.data.gpu_loader import normalized
from fastsigclr.data.splits import DataSplits
from fastsigclr.distributed import Context
from fastsigclr.filetype import not_a_file
from fastsigclr.knn import knn_accuracy
from fastsigclr.optim import sgd_decay_limit
from fastsigclr.runconfig import TrainConfig
from fastsigclr.runfiles import check_run_dir
from fastsigclr.runinfo import device_option
from fastsigclr.runmodel import load_run_model

PROBE_MOMENTUM = 0.9  # the linear probe's SGD
FEATURE_BATCH = 512  # images per forward pass when features are extracted


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    mean,
    std,
    device: torch.device,
    *,
    batch_size: int = 512,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """Backbone features (N, F) in fp32 of un-augmented uint8 (N, H, W, 3) images, in eval mode."""
    batches = ((images[start : start + batch_size], None) for start in range(0, len(images), batch_size))
    total = math.ceil(len(images) / batch_size)
    feats, _ = batch_features(
        backbone, batches, mean, std, device, len(images), autocast_dtype=autocast_dtype, progress=progress,
        desc=desc, total=total,
    )  # fmt: skip
    return feats


@torch.no_grad()
def batch_features(
    backbone: torch.nn.Module,
    batches: Iterable[tuple[np.ndarray | torch.Tensor, np.ndarray | None]],
    mean,
    std,
    device: torch.device,
    rows: int,
    *,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "features",
    total: int | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backbone features (N, F) in fp32, in eval mode, of uint8 (n, H, W, 3) batches, and their
    labels (N,) on ``device`` (None for batches without labels): a split held in memory or one
    decoded as it streams (``DataSplits.batches``). The batches fill one buffer of ``rows`` ≥ N
    (a list of batches joined at the end would hold the features twice at that moment: 21 GB for
    ImageNet's 1.28 M ResNet-50 features). No batch at all is an error unless ``width`` (F) is
    given: then (0, F) features and no labels (a rank's empty share of a small split)."""
    was_training = backbone.training
    backbone.eval()
    out, labels, filled = None, [], 0
    try:
        for images, y in tqdm(batches, desc=desc, total=total, disable=not progress, leave=False):
            x = normalized(torch.as_tensor(images).to(device), mean, std, torch.float32)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                f = backbone(x).float()
            if out is None:
                out = f.new_empty((rows, f.shape[1]))
            out[filled : filled + len(f)] = f  # raises past ``rows``
            filled += len(f)
            if y is not None:
                labels.append(torch.as_tensor(y))
    finally:
        backbone.train(was_training)
    if out is None and width is None:
        raise ValueError("no images to extract features from")
    if out is None:
        out = torch.empty((0, width), device=device)
    return out[:filled], torch.cat(labels).to(device) if labels else None


def _probe_fix(lr: float, weight_decay: float, momentum: float) -> str:
    """Which option to lower: past ``sgd_decay_limit`` SGD diverges on the weight decay alone,
    whatever the gradients; else the learning rate."""
    if lr * weight_decay >= (limit := sgd_decay_limit(momentum)):
        return (
            f"at --linear-lr {lr:g} and --linear-weight-decay {weight_decay:g}: their product, "
            f"{lr * weight_decay:g}, is past {limit:g}, from which SGD diverges on the weight decay "
            f"alone; lower either, e.g. --linear-weight-decay 0"
        )
    return f"at --linear-lr {lr:g}: lower it, e.g. --linear-lr {lr / 10:g}"


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: bool = False,
) -> dict[str, float]:
    """Train a linear classifier on frozen features; returns train and test top-1 accuracy."""
    device = train_feats.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    head = torch.nn.Linear(train_feats.shape[1], num_classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=PROBE_MOMENTUM, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_feats) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    y = train_labels.to(device)
    for epoch in tqdm(range(epochs), desc="linear probe", unit="epoch", disable=not progress, leave=False):
        perm = torch.randperm(len(train_feats), generator=gen).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(head(train_feats[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if not math.isfinite(value := loss.item()):  # once an epoch: a diverged head scores nothing
            fix = _probe_fix(lr, weight_decay, PROBE_MOMENTUM)
            raise FastSigCLRError(f"the linear probe diverged (loss {value} in epoch {epoch + 1}) {fix}")
    if not all(bool(t.isfinite().all()) for t in head.parameters()):  # the last update's
        raise FastSigCLRError(
            f"the linear probe diverged (its weights are not finite after {epochs} epochs) "
            f"{_probe_fix(lr, weight_decay, PROBE_MOMENTUM)}"
        )
    with torch.no_grad():
        # counts over sizes, not a float32 mean: 0.2405, where the mean gave 0.24050000309944153
        train_acc = int((head(train_feats).argmax(1) == y).sum()) / len(y)
        test_acc = int((head(test_feats).argmax(1) == test_labels.to(device)).sum()) / len(test_labels)
    return {"train_acc": train_acc, "test_acc": test_acc}


@dataclass(frozen=True)
class EvalConfig:
    protocol: str = option("knn", "evaluation protocol", choices=("knn", "linear"))
    run: str | None = option(None, "run directory written by `fastsigclr train` (required)", path=True)
    data_dir: str | None = data_dir_option("the run's --data-dir")
    device: str = device_option()
    knn_k: int | None = option_from(TrainConfig, "knn_k", None, unset="the run's --knn-k")
    knn_temperature: float | None = option_from(
        TrainConfig, "knn_temperature", None, unset="the run's --knn-temperature"
    )
    linear_epochs: int = option(100, "linear probe epochs", ge=1)
    linear_batch_size: int = option(256, "linear probe batch size", ge=1)
    linear_lr: float = option(0.2, "linear probe learning rate (cosine schedule)", ge=0, le=FLOAT32_MAX)
    linear_weight_decay: float = option(0.0, "linear probe weight decay", ge=0, le=FLOAT32_MAX)
    seed: int = option(0, "seed of the linear probe's shuffling", ge=0, le=SEED_MAX)
    max_broken: float | None = option_from(TrainConfig, "max_broken", None, unset="the run's --max-broken")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("--run DIR is required: the directory of a `fastsigclr train` run")
        check_fields(self)
        # Refused before any feature is extracted: with few steps the weights grew to 1e15 and
        # stayed finite, and a chance-level accuracy was reported as the probe's.
        lr, decay = self.linear_lr, self.linear_weight_decay
        if self.protocol == "linear" and lr * decay >= sgd_decay_limit(PROBE_MOMENTUM):
            raise ValueError(f"the linear probe would diverge {_probe_fix(lr, decay, PROBE_MOMENTUM)}")

    def for_run(self, run: TrainConfig) -> EvalConfig:
        """The kNN settings left unset taken from the run's: eval then scores what its monitor
        scored (with k = 200 where the run had trained with --knn-k 20, they differed)."""
        k = run.knn_k if self.knn_k is None else self.knn_k
        temperature = run.knn_temperature if self.knn_temperature is None else self.knn_temperature
        return dataclasses.replace(self, knn_k=k, knn_temperature=temperature)


class MonitorStopped(Exception):
    """The kNN monitor gave way to a preemption signal (``monitor_accuracy``'s ``stop``)."""


def _until(batches: Iterable[Any], stop: Callable[[], bool]) -> Iterator[Any]:
    for batch in batches:
        if stop():
            raise MonitorStopped
        yield batch


def data_features(
    backbone: torch.nn.Module,
    data: DataSplits,
    split: str,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str | None = None,
    part: tuple[int, int] = (0, 1),
    stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) fp32, labels (N,)) on ``device`` of one of ``data``'s splits, read held
    or streamed (``DataSplits.batches``): un-augmented images through the backbone in eval mode.
    ``part`` (rank, ranks): that rank's share of the split alone, which may hold no image (its
    features are then (0, ``backbone.out_dim``)). ``stop``, asked before each batch: when it
    says True, MonitorStopped is raised."""
    width = getattr(backbone, "out_dim", None) if part[1] > 1 else None
    batches = data.batches(split, batch=FEATURE_BATCH, part=part)
    batches = batches if stop is None else _until(batches, stop)
    lo, hi = data.part_range(split, *part)
    rows = hi - lo  # the share's images; a stream leaves out those that do not decode
    mean, std = data.info.mean, data.info.std
    feats, labels = batch_features(backbone, batches, mean, std, device, rows,
                                   autocast_dtype=autocast_dtype, progress=progress, desc=desc or split,
                                   total=math.ceil(rows / FEATURE_BATCH), width=width)  # fmt: skip
    # Every split's batches come with labels (-1: none); an empty share has no batch.
    return feats, labels if labels is not None else torch.empty(0, dtype=torch.int64, device=device)


def monitor_accuracy(
    backbone: torch.nn.Module,
    data: DataSplits,
    ctx: Context,
    num_classes: int,
    *,
    k: int,
    temperature: float,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
) -> float:
    """The kNN monitor's accuracy: the test split's features voted on by the train split's. Under
    torchrun every rank reads and embeds its share of both splits (``DataSplits.part_batches``),
    the ranks check the files none of them could decode against --max-broken together, and they
    share the vote (``knn_accuracy``): every rank returns the same accuracy. A bar shows a
    split's decoding (rank 0's share) when it streams. ``stop`` (a preemption's flag) is asked
    before each batch in one process, and before each split under torchrun, where it must be a
    collective that every rank calls at the same point (the ranks' shares may differ by a batch):
    when it says True, the monitor raises MonitorStopped."""
    part, features = (ctx.rank, ctx.world_size), []
    for split in ("train", "test"):
        if stop is not None and ctx.distributed and stop():
            raise MonitorStopped
        bar = progress and ctx.is_main and not data.kept(split)
        features += data_features(backbone, data, split, ctx.device, autocast_dtype=autocast_dtype,
                                  progress=bar, desc=f"kNN {split}", part=part,
                                  stop=None if ctx.distributed else stop)  # fmt: skip
        if ctx.distributed:
            data.check_left_out(split, distributed.union(ctx, data.left_out(split)), announce=ctx.is_main)
    return knn_accuracy(*features, num_classes, k=k, temperature=temperature, ctx=ctx)


def split_features(
    loaded: dict[str, Any], split: str, *, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) fp32, labels (N,)) of one split of a run loaded by ``load_run_model``, both
    on its device: un-augmented images through the backbone in eval mode."""
    feats, labels = data_features(
        loaded["backbone"],
        loaded["data"],
        loaded["sources"][split],
        loaded["device"],
        autocast_dtype=loaded["autocast"],
        progress=progress,
        desc=split,
    )
    if bad := int((~torch.isfinite(feats).all(1)).sum()):
        raise FastSigCLRError(
            f"the backbone gives non-finite features (NaN or inf) for {bad} of the {len(feats)} {split} "
            f"images: the run's checkpoint ({loaded['trained']['label']}) holds a diverged model; retrain "
            f"it (e.g. with a lower --lr) or evaluate another run"
        )
    return feats, labels


def score(
    cfg: EvalConfig,
    protocol: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
) -> dict[str, Any]:
    """One protocol on (features, labels) of both splits, with ``cfg``'s settings: the accuracy
    and what it was measured with."""
    if protocol == "knn":
        if cfg.knn_k is None or cfg.knn_temperature is None:
            raise ValueError("score needs the kNN settings: EvalConfig.for_run(the run's config) fills them")
        accuracy = knn_accuracy(*train, *test, num_classes, k=cfg.knn_k, temperature=cfg.knn_temperature)
        # the k the vote took: at most the bank (knn.nearest; --knn-k 1000 on 256 images took 256)
        k = min(cfg.knn_k, len(train[1]))
        return {"k": k, "temperature": cfg.knn_temperature, "accuracy": accuracy}
    probe = linear_probe(
        *train,
        *test,
        num_classes,
        epochs=cfg.linear_epochs,
        batch_size=cfg.linear_batch_size,
        lr=cfg.linear_lr,
        weight_decay=cfg.linear_weight_decay,
        seed=cfg.seed,
        progress=cfg.progress,
    )
    settings = {
        name: getattr(cfg, f"linear_{name}") for name in ("epochs", "batch_size", "lr", "weight_decay")
    }
    # every setting of the probe beside its accuracy: two files of one run can be told apart
    return {**settings, "seed": cfg.seed, "accuracy": probe["test_acc"], "train_accuracy": probe["train_acc"]}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate a run's last checkpoint; prints nothing, writes eval-<protocol>.json in the run.
    When that file cannot be written (a read-only run), the result has ``path`` None and
    ``write_error``, the one-line reason: the accuracy is not lost with the file."""
    run_dir = Path(cfg.run or "")
    check_run_dir(run_dir)
    out = run_dir / f"eval-{cfg.protocol}.json"
    # found before the features are computed, not after; a link, FIFO or device is never replaced
    if (what := not_a_file(out)) is not None:
        raise FastSigCLRError(f"{out} is {what}, where eval writes its result: remove or rename it")
    loaded = load_run_model(run_dir, cfg.device, cfg.data_dir, max_broken=cfg.max_broken)
    cfg = cfg.for_run(loaded["config"])
    train = split_features(loaded, "train", progress=cfg.progress)
    test = split_features(loaded, "test", progress=cfg.progress)
    result: dict[str, Any] = {
        "protocol": cfg.protocol,
        "run": str(run_dir.absolute()),  # the file may be read from elsewhere: not the path as typed
        **{key: loaded["trained"][key] for key in ("epoch", "step", "epoch_batches")},
        "trained": loaded["trained"]["label"],
        "data_dir": loaded["data_dir"],
        "train_images": len(train[1]),
        "test_images": len(test[1]),
        **score(cfg, cfg.protocol, train, test, loaded["info"].num_classes),
    }
    fix = "the accuracy above was not saved: make the run directory writable and run eval again"
    try:
        write_text_atomic(out, json_text(result, indent=2) + "\n", fix)
    except WriteError as err:
        return {**result, "path": None, "write_error": str(err)}
    result["path"] = str(out)
    return result
