"""``fastsigclr train``: SigCLR pre-training, read top to bottom.

loader (uint8 on the device → two augmented views, channels_last) → ResNet f → projector g →
pairwise sigmoid loss (fused kernel on CUDA) → SGD/LARS step; detached features feed an online
linear probe, and a kNN monitor runs on the test split every few epochs. Each epoch ends with an
atomic checkpoint, so ``--resume`` continues exactly where the last finished epoch left off.

Under ``torchrun`` each rank takes its share of every global batch; the loss is the loss of the
global batch (fastsigclr.distributed), batch norm is global (--sync-bn), DDP sums the gradients,
and rank 0 alone logs, evaluates and writes. A run may resume with a different number of ranks.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from fastsigclr import checkpoint as ckpt
from fastsigclr import distributed, rundir
from fastsigclr.config import FastSigCLRError, to_dict
from fastsigclr.data import LOADERS, AugmentSpec
from fastsigclr.data.loaders import loader_options
from fastsigclr.eval import extract_features, knn_accuracy
from fastsigclr.losses import LOSSES, DistributedCriterion
from fastsigclr.models.sync_bn import convert_global_bn
from fastsigclr.optim import build_optimizer, param_groups, warmup_cosine
from fastsigclr.pace import Pace, cpu_notice, format_duration
from fastsigclr.recipe import (
    StepParts,
    TrainConfig,
    build_model,
    compute_dtypes,
    load_data,
    loss_scalars,
    train_step,
    uses_labels,
)
from fastsigclr.runinfo import resolve_device, run_record


def _loader_options(cfg: TrainConfig, info, train, ctx: distributed.Context) -> dict[str, Any]:
    """Backend arguments; rank 0 writes a missing FFCV dataset while the others wait for it."""
    data_dir = Path(cfg.data_dir or "")
    kw = dict(ffcv_dir=cfg.ffcv_dir)
    if cfg.loader == "ffcv" and ctx.is_main:
        loader_options(cfg.loader, info, data_dir, train, cfg.limit_train, progress=cfg.progress, **kw)
    distributed.barrier(ctx)
    return loader_options(cfg.loader, info, data_dir, train, cfg.limit_train, progress=False, **kw)


def train(
    cfg: TrainConfig, command: list[str] | None = None, given: set[str] | None = None
) -> dict[str, Any]:
    """Train, or resume with ``cfg.resume``: ``given`` names the options to take over the run's
    saved ones (those typed on the command line; unset: those that differ from the defaults)."""
    out = cfg.out
    cfg = rundir.settings(cfg, rundir.changed_options(cfg) if given is None else given)
    ctx = distributed.setup(resolve_device(cfg.device), cfg.dist_timeout)
    try:
        if ctx.distributed and out is None:
            raise FastSigCLRError("torchrun runs need --out DIR: every rank must agree on the run directory")
        distributed.check_same_run(ctx, to_dict(cfg))  # before anything writes the run
        with rundir.open_run(cfg, ctx) as run:
            return run.complete if run.complete is not None else _train(run, ctx, command)
    finally:
        distributed.teardown(ctx)


def _train(run: rundir.RunDir, ctx: distributed.Context, command: list[str] | None) -> dict[str, Any]:
    cfg, state = run.cfg, run.state
    device = ctx.device
    main = ctx.is_main
    view_dtype, autocast_dtype = compute_dtypes(cfg, device)
    info, (train_x, train_y), (test_x, test_y) = load_data(
        dataclasses.replace(cfg, progress=cfg.progress and main)
    )
    torch.manual_seed(cfg.seed)

    spec = AugmentSpec.simclr(info.image_size, info.mean, info.std, n_views=cfg.n_views)
    batch_size = cfg.batch_size or 1  # global: each rank takes batch_size / world_size
    loader = LOADERS[cfg.loader](
        train_x,
        train_y,
        spec,
        batch_size,
        device,
        view_dtype,
        seed=cfg.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        **_loader_options(cfg, info, (train_x, train_y), ctx),
    )
    model, criterion, probe = build_model(cfg, info, device)
    if ctx.distributed and cfg.sync_bn:
        model = convert_global_bn(model)
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        probe.load_state_dict(state["probe"])
    optimizer = build_optimizer(
        cfg.optimizer, param_groups([model, criterion], cfg.weight_decay), cfg.lr, cfg.momentum
    )
    probe_opt = torch.optim.SGD(probe.parameters(), lr=cfg.probe_lr, momentum=0.9)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        probe_opt.load_state_dict(state["probe_optimizer"])
        ckpt.set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
    epochs = cfg.epochs or 1
    steps_per_epoch = len(loader)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(min(cfg.warmup_epochs, epochs) * steps_per_epoch)
    forward, loss_fn, probe_fwd = model, criterion, probe
    if ctx.distributed:
        ids = [device.index] if device.type == "cuda" else None
        forward = DDP(model, device_ids=ids, broadcast_buffers=False, **distributed.DDP_OPTIONS)
        forward.register_comm_hook(None, distributed.sum_gradients_hook)
        loss_fn = DistributedCriterion(criterion, LOSSES[cfg.method], cfg.dist_loss)
        # a local loss per rank: DDP's average is right
        probe_fwd = DDP(probe, device_ids=ids, **distributed.DDP_OPTIONS)
    forward = torch.compile(forward) if cfg.compile else forward
    parts = StepParts(forward, loss_fn, probe_fwd, optimizer, probe_opt, autocast_dtype, uses_labels(cfg))
    record = {**run_record(device, command), "world_size": ctx.world_size}
    log = run.begin(record)
    train_images = torch.from_numpy(train_x)
    test_images = torch.from_numpy(test_x)
    test_labels = torch.from_numpy(test_y).to(device)
    train_labels = torch.from_numpy(train_y).to(device)

    def knn_monitor() -> float:
        kw = dict(device=device, autocast_dtype=autocast_dtype)
        bank = extract_features(model.backbone, train_images, info.mean, info.std, **kw)
        queries = extract_features(model.backbone, test_images, info.mean, info.std, **kw)
        return knn_accuracy(bank, train_labels, queries, test_labels, info.num_classes, k=cfg.knn_k)

    knn = None
    run_start = time.perf_counter()
    images_seen = 0
    notice = (
        cpu_notice(device, len(train_x), epochs - start_epoch, cfg.arch or "", cfg.width) if main else None
    )
    if notice:
        print(notice, file=sys.stderr)
    pace = Pace(batch_size, (epochs - start_epoch) * steps_per_epoch, estimate=notice is not None)
    for epoch in range(start_epoch, epochs):
        model.train()
        pace.begin_epoch()
        # The loss value is computed only where it is read: logged steps and each epoch's last step
        # (the fused kernel skips it elsewhere); the epoch's mean loss is over those steps
        # (loss_steps in its record).
        loss_sum = torch.zeros((), device=device)
        loss_steps = 0
        probe_correct = torch.zeros((), device=device)
        bar = tqdm(
            loader.epoch(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{epochs}",
            disable=not (cfg.progress and main),
            leave=False,
            unit="step",
        )
        for index, (views, labels) in enumerate(bar):
            lr = cfg.lr * warmup_cosine(step, total_steps, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logged = (step + 1) % cfg.log_every == 0 or step + 1 == total_steps
            computed = logged or index + 1 == steps_per_epoch
            loss, probe_loss, logits = train_step(parts, views, labels, compute_loss=computed)
            step += 1
            estimate = pace.step()
            if estimate:
                tqdm.write(estimate, file=sys.stderr)
            probe_correct += (logits.argmax(1) == labels.repeat(cfg.n_views)).sum()
            if computed:
                loss_sum += loss.detach()
                loss_steps += 1
            if logged:
                rate = pace.img_per_s()
                rec = {
                    "kind": "step",
                    "epoch": epoch,
                    "step": step,
                    "loss": loss.item(),
                    "lr": lr,
                    "probe_loss": probe_loss.item(),
                    **loss_scalars(criterion),
                    "img_per_s": rate,
                }
                log.write(rec, step)
                # The loss is checked where it is read anyway (logging steps, and the epoch's sum
                # below): a check at every step would cost a GPU synchronisation per step.
                if not math.isfinite(rec["loss"]):
                    raise _diverged(run, f"the loss is {rec['loss']}", step, epoch)
                left = format_duration(pace.run_left())
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}", run_left=left)
        seconds = time.perf_counter() - pace.epoch_start
        images_seen += steps_per_epoch * batch_size
        mean_loss = (loss_sum / loss_steps).item()
        # Before the checkpoint: a diverged epoch must not replace the last good one. The weights
        # too: the loss of a step is computed before its update, so it can still be finite.
        if not math.isfinite(mean_loss) or not _all_finite(model, criterion, probe):
            finite = math.isfinite(mean_loss)
            what = "the weights are not finite" if finite else f"the epoch's mean loss is {mean_loss}"
            raise _diverged(run, what, step, epoch)
        monitor = epoch + 1 == epochs or bool(cfg.knn_every and (epoch + 1) % cfg.knn_every == 0)
        if monitor:
            knn = knn_monitor() if main else None
            distributed.barrier(ctx)
        probe_correct = distributed.all_sum(ctx, probe_correct)
        rec = {
            "kind": "epoch",
            "epoch": epoch,
            "step": step,
            "loss": mean_loss,
            "loss_steps": loss_steps,
            "probe_acc": probe_correct.item() / (steps_per_epoch * batch_size * cfg.n_views),
            "knn_acc": knn if monitor else None,
            "seconds": seconds,
            "img_per_s": steps_per_epoch * batch_size / seconds,
        }
        log.write(rec, step)
        knn_text = f" knn {rec['knn_acc']:.4f}" if rec["knn_acc"] is not None else ""
        if main:
            tqdm.write(
                f"epoch {epoch + 1}/{epochs} loss {rec['loss']:.4f} probe {rec['probe_acc']:.3f}{knn_text} "
                f"{rec['img_per_s']:.0f} img/s",
                nolock=True,
            )
        state = {
            "model": model.state_dict(),
            "criterion": criterion.state_dict(),
            "probe": probe.state_dict(),
            "optimizer": optimizer.state_dict(),
            "probe_optimizer": probe_opt.state_dict(),
            "rng": ckpt.rng_state(),
            "epoch": epoch + 1,
            "step": step,
            "config": to_dict(cfg),
        }
        run.save_checkpoint(state)
        distributed.barrier(ctx)
    if start_epoch == epochs:  # resumed after its last checkpoint but before its summary was written
        knn = knn_monitor() if main else None
        distributed.barrier(ctx)
    elapsed = time.perf_counter() - run_start
    summary = {
        "epochs": epochs,
        "steps": step,
        "knn_acc": knn,
        "train_images": len(train_x),
        "test_images": len(test_x),
        "seconds_this_session": elapsed,
        "img_per_s_this_session": images_seen / elapsed if elapsed else None,
        **{f"final_{name}": value for name, value in loss_scalars(criterion).items()},
        "run_dir": str(run.path),
        "device": record["device"],
        "world_size": ctx.world_size,
    }
    run.finish(summary)
    return summary


def _all_finite(*modules: torch.nn.Module) -> bool:
    """Every floating-point weight and buffer is finite (one synchronisation for all of them)."""
    flags = [t.isfinite().all() for m in modules for t in m.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all())


def _diverged(run: rundir.RunDir, what: str, step: int, epoch: int) -> FastSigCLRError:
    lr = run.cfg.lr
    if (run.path / rundir.CHECKPOINT).exists():
        fix = (
            f"{run.path / rundir.CHECKPOINT} (epoch {epoch}) is kept. --resume keeps the run's --lr: "
            f"start a new run with another --out and a lower --lr than {lr:g} (e.g. --lr {lr / 2:g})"
        )
    else:
        fix = (
            f"no epoch finished: run the same command again with a lower --lr than {lr:g} "
            f"(e.g. --lr {lr / 2:g})"
        )
    return FastSigCLRError(f"training diverged: {what} at step {step} (epoch {epoch + 1}); {fix}")
