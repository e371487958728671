"""``fastsigclr train``: SigCLR pre-training, read top to bottom.

loader (uint8 on the device → two augmented views, channels_last) → ResNet f → projector g →
pairwise sigmoid loss (fused kernel on CUDA) → SGD/LARS step; detached features feed an online
linear probe, and a kNN monitor runs on the test split every few epochs. Each epoch ends with an
atomic checkpoint, so ``--resume`` continues exactly where the last finished epoch left off.

Under ``torchrun`` each rank takes its share of every global batch; the loss is the loss of the
global batch (fastsigclr.distributed), batch norm is global (--sync-bn), DDP sums the gradients,
and rank 0 alone logs, evaluates and writes. A run may resume with a different number of ranks.

The order of this file is the order of a run: ``train`` opens the run directory; ``build``
(fastsigclr.recipe) makes data, loader, model, loss, probe and optimisers from the config, and
``resume`` loads a checkpoint into them; ``step_parts`` wraps the modules for the ranks;
``Epochs.run_epoch`` steps through the loader with ``train_step``, and ``Epochs.end_epoch``
checks, monitors, logs and checkpoints; ``Epochs.finish`` writes the summary.
``fastsigclr bench train`` times the same ``build`` and ``train_step``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from fastsigclr import distributed, divergence, preempt, recipe, rundir
from fastsigclr.config import ConfigError, raising_alike, to_dict
from fastsigclr.data.broken import over_limit
from fastsigclr.determinism import deterministic_torch
from fastsigclr.eval import MonitorStopped, monitor_accuracy
from fastsigclr.losses import DistributedCriterion
from fastsigclr.optim import warmup_cosine
from fastsigclr.pace import Pace, cpu_notice, format_duration
from fastsigclr.recipe import Setup, build, checkpoint_state, kernel_plans, loss_scalars, resume
from fastsigclr.runconfig import TrainConfig, saved_plans, uses_labels, write_config
from fastsigclr.runinfo import resolve_device, run_record


def train(
    cfg: TrainConfig,
    command: list[str] | None = None,
    given: set[str] | None = None,
    again: str | None = None,
) -> dict[str, Any]:
    """Train, or resume with ``cfg.resume``: ``given`` names the options to take over the run's
    saved ones (those typed on the command line; unset: those that differ from the defaults);
    ``again``: how a preempted or interrupted run is continued, if not by its own train command (a
    sweep's command, say)."""
    out = cfg.out
    # Errors alike on every process of a node (config.FastSigCLRError.alike): the command line and
    # the run directory; rank 0's verdict on the run directory, which open_run shares.
    cfg = raising_alike(rundir.settings, cfg, rundir.changed_options(cfg) if given is None else given)
    # --deterministic before CUDA starts (cuBLAS reads its workspace setting as it starts).
    with deterministic_torch(cfg.deterministic):
        ctx = distributed.setup(resolve_device(cfg.device), cfg.dist_timeout)
        try:
            if ctx.distributed and out is None:
                raise ConfigError("torchrun runs need --out DIR: every rank must agree on the run directory")
            distributed.check_same_run(ctx, to_dict(cfg))  # before anything writes the run
            with raising_alike(rundir.open_run, cfg, ctx) as run:
                run.again = again
                return run.complete if run.complete is not None else _train(run, ctx, command, again)
        finally:
            distributed.teardown(ctx)


def _train(
    run: rundir.RunDir, ctx: distributed.Context, command: list[str] | None, again: str | None
) -> dict[str, Any]:
    plans = saved_plans(run.path) if run.state is not None else {}  # a resumed run's recorded ones
    recipe.check_position(run.cfg, ctx.world_size, run.state)  # before a .beton is written
    setup = build(run.cfg, ctx, plans=plans, resumed=run.state)
    recipe.check_rank_data(setup, ctx)  # every rank, before resume checks its own
    start_epoch, step, position = raising_alike(resume, setup, run.state, str(run.path / rundir.CHECKPOINT))
    parts = step_parts(setup, ctx)
    record = {**run_record(ctx.device, command), "world_size": ctx.world_size}
    record.update({"kernel_plans": plans} if plans else {})
    epochs = Epochs(run, ctx, setup, parts, run.begin(record), start_epoch, step)
    epochs.again = again or "the same command with --resume auto continues it"
    with preempt.Preemption() as epochs.stop:
        for epoch in range(start_epoch, epochs.epochs):
            sums = epochs.run_epoch(epoch, position if epoch == start_epoch else None)
            epochs.end_epoch(epoch, *sums)
            if epoch + 1 < epochs.epochs or epochs.knn_skipped:  # a last epoch then has no kNN
                epochs.exit_if_stopped(f"after epoch {epoch + 1}")
        return epochs.finish(record["device"])  # its monitor too gives way to a preemption


@dataclass
class StepParts:
    """What one optimisation step touches (shared by the trainer and `fastsigclr bench train`)."""

    forward: torch.nn.Module
    criterion: torch.nn.Module
    probe: torch.nn.Module
    optimizer: torch.optim.Optimizer
    probe_optimizer: torch.optim.Optimizer
    autocast_dtype: torch.dtype | None
    supervised: bool = False  # the loss takes the labels (SupCon, TCL unless --no-use-labels)


def step_parts(setup: Setup, ctx: distributed.Context) -> StepParts:
    """The modules a step runs: under torchrun the model in DDP (gradients summed, the loss of the
    global batch), then compiled with ``--compile``."""
    cfg = setup.cfg
    forward, loss_fn, probe_fwd = setup.model, setup.criterion, setup.probe
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        forward = DDP(forward, device_ids=ids, **distributed.MODEL_DDP_OPTIONS)
        forward.register_comm_hook(None, distributed.sum_gradients_hook)
        loss_fn = DistributedCriterion(loss_fn, setup.loss_spec, cfg.dist_loss)
        # a local loss per rank: DDP's average is right
        probe_fwd = DDP(probe_fwd, device_ids=ids, **distributed.DDP_OPTIONS)
    forward = torch.compile(forward) if cfg.compile else forward
    opts = (setup.optimizer, setup.probe_optimizer)
    return StepParts(forward, loss_fn, probe_fwd, *opts, setup.autocast_dtype, uses_labels(cfg))


def train_step(parts: StepParts, views: torch.Tensor, labels: torch.Tensor, compute_loss: bool = True):
    """One step on (V·B, 3, S, S) views: SSL loss on the projections, and the online probe on
    detached features with its own optimiser. Returns (loss, probe loss, probe logits).
    compute_loss False: losses that can skip their value (the fused sigmoid kernel) return NaN
    with exact gradients; pass True on the steps whose loss is read."""
    n_views = len(views) // len(labels)
    with torch.autocast(
        views.device.type, dtype=parts.autocast_dtype, enabled=parts.autocast_dtype is not None
    ):
        h, z = parts.forward(views)
        loss = parts.criterion(z, labels if parts.supervised else None, compute_loss=compute_loss)
        logits = parts.probe(h.detach().float())
        # Unlabeled images (label -1: a flat folder, STL-10's unlabeled split) do not train it.
        target = labels.repeat(n_views)
        labelled = target.ne(-1).sum().clamp(min=1)
        probe_loss = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum") / labelled
    parts.optimizer.zero_grad(set_to_none=True)
    parts.probe_optimizer.zero_grad(set_to_none=True)
    (loss + probe_loss).backward()  # the probe sees detached features: separate gradients
    parts.optimizer.step()
    parts.probe_optimizer.step()
    return loss, probe_loss, logits


class Epochs:
    """The epochs of one session of a run (from ``start_epoch``): steps with the learning-rate
    schedule, step and epoch records, the kNN monitor, checkpoints and the summary."""

    def __init__(
        self,
        run: rundir.RunDir,
        ctx: distributed.Context,
        setup: Setup,
        parts: StepParts,
        log: Any,
        start_epoch: int,
        step: int,
    ) -> None:
        cfg = setup.cfg
        self.run, self.ctx, self.setup, self.parts, self.log = run, ctx, setup, parts, log
        self.cfg, self.start_epoch, self.step = cfg, start_epoch, step
        self.epochs, self.batch_size = cfg.epochs, cfg.batch_size  # set: build takes resolved configs only
        self.steps_per_epoch = len(setup.loader)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = int(min(cfg.warmup_epochs, self.epochs) * self.steps_per_epoch)
        self.knn, self.knn_skipped = None, False  # the last kNN monitor's: accuracy, gave way to a preemption
        self.labelled = setup.data.pretrain.labelled  # False: no online probe accuracy to report
        self.images_seen = 0
        self.left_out = 0  # the sum of the ranks' counts of images their loaders left out (DALI)
        left, images = self.epochs - start_epoch, len(setup.data.pretrain)
        self.left_out_ids = set(setup.left_out)  # every session's; the loader keeps them out (build)
        self.run_start = time.perf_counter()
        notice = cpu_notice(ctx.device, images, left, cfg.arch or "", cfg.width, cfg.precision)
        if notice and ctx.is_main:
            print(notice, file=sys.stderr)
        self.pace = Pace(self.batch_size, left * self.steps_per_epoch, estimate=ctx.is_main and bool(notice))
        self.interval = preempt.Interval(cfg.checkpoint_every)  # mid-epoch checkpoints
        self.stop = preempt.Preemption()  # set by _train while its signal handlers are in place
        self.again = ""  # how a preempted run continues: set by _train

    def run_epoch(self, epoch: int, position: dict | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Train one epoch (from ``position``, a mid-epoch checkpoint's, when given); returns the
        sum of its computed losses, how many steps computed one, and the probe's correct
        predictions (device tensors: read once, at the end of the epoch). The loss value is
        computed only where it is read: logged steps and the epoch's last step (the fused kernel
        skips it elsewhere), so the epoch's mean loss is over those steps."""
        cfg, setup = self.cfg, self.setup
        setup.model.train()
        self.pace.begin_epoch()
        start = position["batch"] if position else 0
        loss_sum = torch.tensor(position["loss_sum"] if position else 0.0, device=self.ctx.device)
        loss_steps = position["loss_steps"] if position else 0
        probe_correct = torch.tensor(position["probe_correct"] if position else 0.0, device=self.ctx.device)
        bar = tqdm(setup.loader.epoch(epoch, start), initial=start, total=self.steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{self.epochs}", disable=not (cfg.progress and self.ctx.is_main),
                   leave=False, unit="step")  # fmt: skip
        for index, (views, labels) in enumerate(bar, start):
            lr = cfg.lr * warmup_cosine(self.step, self.total_steps, self.warmup_steps)
            for group in setup.optimizer.param_groups:
                group["lr"] = lr
            logged = (self.step + 1) % cfg.log_every == 0 or self.step + 1 == self.total_steps
            computed = logged or index + 1 == self.steps_per_epoch
            loss, probe_loss, logits = train_step(self.parts, views, labels, compute_loss=computed)
            self.step += 1
            if index == start:
                self._record_plans()
            if estimate := self.pace.step():
                tqdm.write(estimate, file=sys.stderr)
            probe_correct += (logits.argmax(1) == labels.repeat(cfg.n_views)).sum()
            if computed:
                loss_sum += loss.detach()
                loss_steps += 1
            if logged:
                self._log_step(epoch, loss, probe_loss, lr, bar)
            if index + 1 < self.steps_per_epoch:
                self._inside_epoch(epoch, index + 1, (loss_sum, loss_steps, probe_correct))
        if self.ctx.distributed:  # the last step's left-out images, before the kNN monitor reads them
            self._stopping()  # (a stop signal stays set for exit_if_stopped)
        return loss_sum, loss_steps, probe_correct

    def _record_plans(self) -> None:
        """After an epoch's first step, on rank 0: the tile plans the loss's kernel launched with
        that config.json does not hold yet (a --deterministic run's first step on CUDA) go into
        it, for --resume to launch with them on whatever GPU it runs."""
        plans = kernel_plans(self.setup)
        if self.ctx.is_main and plans != self.run.record.get("kernel_plans", {}):
            self.run.record["kernel_plans"] = plans
            write_config(self.run.path, self.cfg, self.run.record)

    def _stopping(self) -> bool:
        """A preemption signal reached this rank, or (torchrun) any rank: all stop at one step. The
        same sum counts the images the ranks' loaders left out (DALI): when it grows, the union of
        their ids (a file two ranks met counts once) is checked against --max-broken on every rank
        at this step (one rank stopping alone would leave the others waiting)."""
        if not self.ctx.distributed:  # no tensor, no device sync per step; the loader checks alone
            return self.stop.signal is not None
        mine = self.setup.loader.left_out()
        flags = torch.tensor([float(self.stop.signal is not None), float(len(mine))], device=self.ctx.device)
        stop, found = distributed.all_sum(self.ctx, flags).tolist()
        if found > self.left_out:  # the same sum on every rank: all take this collective
            self.left_out, split = int(found), self.setup.data.pretrain
            self.left_out_ids |= (union := distributed.union(self.ctx, mine))
            known = len(union) + len(split.broken)
            if error := over_limit(split.name, known, len(split) + len(split.broken), self.cfg.max_broken):
                raise error
        return stop > 0

    def _inside_epoch(self, epoch: int, batch: int, sums: tuple[torch.Tensor, int, torch.Tensor]) -> None:
        """After ``batch`` batches of ``epoch``: a mid-epoch checkpoint when ``--checkpoint-every``
        is due or a preemption signal came (then exit, see ``exit_if_stopped``)."""
        stopping = self._stopping()
        if not (stopping or self.interval.due(self.step)):
            return
        loss_sum, loss_steps, probe_correct = sums
        # As end_epoch: a diverged step replaces no checkpoint (losses are computed on logging steps).
        mean_loss = (loss_sum / loss_steps).item() if loss_steps else None
        divergence.check(self.run, self.setup, mean_loss, "the epoch's mean loss so far", self.step, epoch)
        state = self._checkpoint_state(epoch)
        state["position"] = {
            "batch": batch,  # the sampler's position: the batches of the epoch already trained
            "loss_sum": loss_sum.item(),
            "loss_steps": loss_steps,
            "probe_correct": probe_correct.item(),
            "world_size": self.ctx.world_size,  # FFCV's order inside an epoch depends on it
        }
        self.run.save_checkpoint(state)
        self.interval.reset()
        if stopping:
            self.exit_if_stopped(f"in epoch {epoch + 1} after batch {batch}", checkpointed=True)

    def _checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """``checkpoint_state`` and the ids of the images left out so far, in every session of the
        run (rank 0's: the ranks' union): the summary's train_images leaves them out."""
        left_out = sorted(self.left_out_ids | set(self.setup.loader.left_out()))
        return {**checkpoint_state(self.setup, epoch, self.step), "left_out": left_out}

    def exit_if_stopped(self, where: str, checkpointed: bool = False) -> None:
        """After a preemption signal, with the checkpoint written: exit with PREEMPTED_EXIT."""
        if not (checkpointed or self._stopping()):
            return
        if self.ctx.is_main:
            print(
                f"fastsigclr: preempted: checkpointed {where} (step {self.step}); exiting with status "
                f"{preempt.PREEMPTED_EXIT}: {self.again}",
                file=sys.stderr,
            )
        raise SystemExit(preempt.PREEMPTED_EXIT)

    def _log_step(
        self, epoch: int, loss: torch.Tensor, probe_loss: torch.Tensor, lr: float, bar: tqdm
    ) -> None:
        rate = self.pace.img_per_s()
        rec = {
            "kind": "step",
            "epoch": epoch,
            "step": self.step,
            "loss": loss.item(),
            "lr": lr,
            "probe_loss": probe_loss.item(),
            **loss_scalars(self.setup.criterion),
            "img_per_s": rate,
        }
        self.log.write(rec, self.step)
        # The loss is checked where it is read anyway (logging steps, and the epoch's sum in
        # end_epoch): a check at every step would cost a GPU synchronisation per step.
        if not math.isfinite(rec["loss"]):
            what, updates = f"the loss is {rec['loss']}", self.step - 1  # a step's loss precedes its update
            raise divergence.diverged(self.run, what, self.step, epoch, updates=updates)
        if not math.isfinite(rec["probe_loss"]):  # the probe trains on detached features: its own lr
            what = f"the online linear probe's loss is {rec['probe_loss']}"
            raise divergence.diverged(self.run, what, self.step, epoch, "probe_lr")
        left = format_duration(self.pace.run_left())
        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}", run_left=left)

    def end_epoch(
        self, epoch: int, loss_sum: torch.Tensor, loss_steps: int, probe_correct: torch.Tensor
    ) -> None:
        """Check the epoch, run the kNN monitor when due, write the epoch record and checkpoint."""
        setup, ctx = self.setup, self.ctx
        mean_loss = (loss_sum / loss_steps).item()  # waits for the epoch's queued GPU work: time after
        seconds = time.perf_counter() - self.pace.epoch_start
        images = self.steps_per_epoch * self.batch_size
        self.images_seen += (ran := self.pace.epoch_steps * self.batch_size)  # a resumed epoch: its rest
        # Before the checkpoint: a diverged epoch must not replace the last good one.
        divergence.check(self.run, setup, mean_loss, "the epoch's mean loss", self.step, epoch)
        every = self.cfg.knn_every
        monitor = epoch + 1 == self.epochs or bool(every and (epoch + 1) % every == 0)
        if monitor:
            self.knn_monitor()
        probe_correct = distributed.all_sum(ctx, probe_correct)
        rec = {
            "kind": "epoch",
            "epoch": epoch,
            "step": self.step,
            "loss": mean_loss,
            "loss_steps": loss_steps,
            "probe_acc": probe_correct.item() / (images * self.cfg.n_views) if self.labelled else None,
            "knn_acc": self.knn if monitor else None,
            **({"knn_skipped": "preempted"} if monitor and self.knn_skipped else {}),
            "seconds": seconds,
            "img_per_s": ran / seconds,
        }
        self.log.write(rec, self.step)
        if ctx.is_main:
            knn_text = f" knn {rec['knn_acc']:.4f}" if rec["knn_acc"] is not None else ""
            knn_text += " (kNN monitor skipped: preempted)" if "knn_skipped" in rec else ""
            probe_text = f" probe {rec['probe_acc']:.3f}" if self.labelled else ""
            tqdm.write(
                f"epoch {epoch + 1}/{self.epochs} loss {rec['loss']:.4f}{probe_text}"
                f"{knn_text} {rec['img_per_s']:.0f} img/s",
                nolock=True,
            )
        self.run.save_checkpoint(self._checkpoint_state(epoch + 1))
        distributed.barrier(ctx)

    def knn_monitor(self) -> None:
        """kNN accuracy of the test split against the training split in ``self.knn`` (torchrun: each
        rank embeds its share, the vote shared). A preemption signal stops it (None, ``knn_skipped``):
        the checkpoint first, within the grace period (ImageNet's monitor embeds 1.3 M images)."""
        setup = self.setup
        self.knn, self.knn_skipped = None, False
        if setup.data.has_knn:
            try:
                self.knn = monitor_accuracy(
                    setup.model.backbone, setup.data, self.ctx, setup.info.num_classes, k=self.cfg.knn_k,
                    temperature=self.cfg.knn_temperature, autocast_dtype=setup.autocast_dtype,
                    progress=self.cfg.progress, stop=self._stopping,
                )  # fmt: skip
            except MonitorStopped:
                self.knn_skipped = True
        distributed.barrier(self.ctx)

    def finish(self, device: dict[str, Any]) -> dict[str, Any]:
        """The run's summary (summary.json), written once the last epoch is checkpointed."""
        if self.start_epoch == self.epochs:  # resumed after its last checkpoint, before its summary
            self.knn_monitor()
            if self.knn_skipped:  # a summary needs it: exit for the next session to run it again
                self.exit_if_stopped("after its last epoch")
        elapsed = time.perf_counter() - self.run_start
        left_out = self.left_out_ids | distributed.union(self.ctx, self.setup.loader.left_out())
        summary = {
            "epochs": self.epochs,
            "steps": self.step,
            "knn_acc": self.knn,
            "train_images": len(self.setup.data.pretrain) - len(left_out),
            "test_images": len(self.setup.data.test) if self.setup.data.test is not None else 0,
            "seconds_this_session": elapsed,
            "img_per_s_this_session": self.images_seen / elapsed if elapsed else None,
            **{f"final_{name}": value for name, value in loss_scalars(self.setup.criterion).items()},
            "run_dir": str(self.run.path),
            "device": device,
            "world_size": self.ctx.world_size,
        }
        self.run.finish(summary)
        return summary
