"""The configuration of ``fastsigclr train``: ``TrainConfig`` (its options, checks and defaults),
the dataset ``PRESETS`` that fill the options left unset, the loss hyper-parameters filled from the
method's spec, and ``saved_config``, which reads a run's config.json, older files included. The
run directory, the recipe, evaluation, export and sweeps all read a run's settings from here."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastsigclr import checkpoint as ckpt
from fastsigclr.config import (
    FLOAT32_MAX,
    SEED_MAX,
    ConfigError,
    FastSigCLRError,
    check_fields,
    from_dict,
    option,
    to_dict,
)
from fastsigclr.data import DATASETS, LOADERS, default_data_dir
from fastsigclr.data.broken import max_broken_option
from fastsigclr.data.datasets import data_dir_option, dataset_option
from fastsigclr.data.info import default_store_size
from fastsigclr.data.loaders import ffcv_dir_option
from fastsigclr.data.order import check_batch
from fastsigclr.filetype import json_loads
from fastsigclr.losses import LOSSES, LossSpec
from fastsigclr.losses.options import LOSS_OPTIONS, check_applicable, renamed_options, with_loss_options
from fastsigclr.losses.plans import as_plans
from fastsigclr.models import ARCHS
from fastsigclr.preempt import PREEMPTED_EXIT, parse_interval
from fastsigclr.runinfo import device_option

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


@with_loss_options
@dataclass(frozen=True)
class TrainConfig:
    dataset: str = dataset_option("dataset (its preset fills unset options)")
    data_dir: str | None = data_dir_option()
    download: bool = option(True, "download the dataset when it is not in --data-dir")
    loader: str = option("gpu", "data loader backend", choices=LOADERS.keys())
    image_size: int | None = option(
        None,
        "crop size of the views; unset: the dataset's (32 CIFAR, 64 Tiny-ImageNet, 96 STL-10, 224)",
        ge=8,
    )
    store_size: int | None = option(
        None,
        "images are decoded (gpu loader, kNN) or written (FFCV) at this size² (shorter side, centre "
        "crop), unless all share one size no larger; unset: 8/7 of --image-size",
        ge=8,
    )
    memory_budget: float | None = option(
        None,
        "GiB the gpu loader's decoded images may take; unset: half the free device (or host) memory",
        gt=0,
    )
    max_broken: float = max_broken_option()
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
    # plain SGD stepped straight into collapse (ResNet-18 width 16, batch 128, CPU, no warm-up: loss
    # 6.9 → 84.3 within 3 steps at lr 0.05, → 116.4 in one at lr 0.5), where normalisation leaves no
    # gradient to escape. LARS bounds each layer's step: 6.7–8.1 at both rates
    # (benchmarks/results/optimizer-cpu.json).
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
    # FFCV dataset write, the checkpoint write.
    dist_timeout: float = option(
        600.0, "torchrun runs: seconds a rank waits to join the run, and at most for any collective", gt=0
    )
    device: str = device_option()
    precision: str = option(
        "auto", "compute dtype; auto: bf16 autocast on CUDA, fp32 on CPU", choices=("auto", "bf16", "fp32")
    )
    seed: int = option(0, "random seed", ge=0, le=SEED_MAX)
    deterministic: bool = option(
        False,
        "bitwise-equal runs and restarts: torch's deterministic algorithms, and the sigmoid kernel summing "
        "in a fixed order with the tile plans recorded in config.json (a resumed run on another GPU "
        "reuses them); off: equal to fp32 rounding, not bitwise, on a GPU",
    )
    limit_train: int | None = option(
        None, "use a class-balanced subset of N training images (the same for every loader)", ge=1
    )
    limit_test: int | None = option(None, "use a class-balanced subset of N test images", ge=1)
    out: str | None = option(None, "run directory; unset: runs/<dataset>-<method>-<time>", path=True)
    resume: str = option(
        "no",
        "continue the run in --out from its last checkpoint (yes); auto: continue it when it has "
        "one, else start it (a finished run stays as it is), for restarts by torchrun --max-restarts",
        choices=RESUME_MODES,
        bare="yes",
    )
    checkpoint_every: str | None = option(
        None,
        "also checkpoint inside epochs, every N steps ('500') or N minutes ('30m'); SIGTERM and SIGUSR1 "
        f"always checkpoint at the next step and exit with status {PREEMPTED_EXIT}",
    )
    log_every: int = option(50, "steps between metrics.jsonl step records", ge=1)
    progress: bool = option(True, "show progress bars")
    tensorboard: bool = option(True, "also log to TensorBoard when it is installed")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.use_labels and not self.loss_spec.supervised:
            raise ValueError(f"--use-labels: {self.method} cannot use labels; it is self-supervised")
        check_applicable(self, (self.method,))
        if self.resume not in RESUME_MODES:
            raise ValueError(f"--resume must be one of {', '.join(RESUME_MODES)}, got {self.resume!r}")
        if self.resume != "no" and not self.out:
            raise ValueError(f"--resume {self.resume} needs --out DIR: the run directory to continue")
        if self.checkpoint_every is not None:
            parse_interval(self.checkpoint_every)

    @property
    def loss_spec(self) -> LossSpec:
        """The method's entry of ``LOSSES`` (method_spec)."""
        return method_spec(self.method)

    def resolved(self) -> TrainConfig:
        """Preset values for the options left unset, the method's loss defaults, and a default run
        directory."""
        preset = PRESETS[self.dataset]
        filled = {k: v for k, v in preset.items() if getattr(self, k) is None}
        if self.image_size is None:
            filled["image_size"] = DATASETS[self.dataset].image_size
        if self.store_size is None:
            filled["store_size"] = default_store_size(filled.get("image_size", self.image_size))
        loss = loss_params(self, self.loss_spec)
        filled.update({k: v for k, v in loss.items() if getattr(self, k) is None})
        if self.out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            filled["out"] = str(Path("runs") / f"{self.dataset}-{self.method}-{stamp}")
        if self.data_dir is None:
            filled["data_dir"] = str(default_data_dir())
        if self.limit_train is not None:
            check_batch(
                filled.get("batch_size", self.batch_size),
                self.limit_train,
                images=f"images of --limit-train {self.limit_train}",
                fix="a larger --limit-train",
                given="" if self.batch_size else f" (the {self.dataset} preset)",
            )
        # Folders are recorded whole: a run resumed, evaluated or exported from another working
        # directory reads the same data, and config.json says where the run was.
        for name in ("out", "data_dir", "ffcv_dir"):
            value = filled.get(name, getattr(self, name))
            if value is not None:
                filled[name] = str(Path(value).expanduser().absolute())
        return dataclasses.replace(self, **filled)


def check_trainable(cfg: TrainConfig) -> TrainConfig:
    """``cfg``, or a ConfigError for settings a new run cannot train with (a run begun with them
    earlier resumes, reports itself complete and is read back as it was): a batch without a negative
    (one image: NT-Xent's and SupCon's loss was exactly 0 at every step, and the run ended "done";
    a loss may need more, its spec's ``min_images``), and a learnable logit scale under plain SGD."""
    fewest = max(2, cfg.loss_spec.min_images)
    if cfg.batch_size is not None and cfg.batch_size < fewest:
        raise ConfigError(
            f"--method {cfg.method} needs at least {fewest} images per batch, got --batch-size "
            f"{cfg.batch_size}: with fewer, no row has a negative; pass a larger one"
        )
    if cfg.optimizer == "sgd" and getattr(cfg, "learnable_logit_scale", None):
        raise ConfigError(
            "--learnable-logit-scale takes LARS's layer-wise steps: pass --optimizer lars (under plain SGD "
            "at --lr 0.5 the scale fell from 10 to 0.44 in 3 steps and to 3e-15 in 16, and the loss then "
            "ignores the features)"
        )
    return cfg


def method_spec(method: str) -> LossSpec | None:
    """The entry of ``LOSSES`` for ``method``, None for a name it does not hold: the one place a
    run's method is looked up (its config, and the saved configs read by saved_config)."""
    return LOSSES.get(method)


def loss_params(config: Any, spec: LossSpec) -> dict[str, Any]:
    """The hyper-parameters of ``spec``'s loss (the one place they are filled): the config's values,
    the spec's defaults where unset. ``config`` is any config with the loss options (``TrainConfig``,
    ``BenchLossConfig``)."""
    values = {name: getattr(config, name, None) for name in spec.params}
    return {name: spec.params[name].default if v is None else v for name, v in values.items()}


def uses_labels(cfg: TrainConfig) -> bool:
    return cfg.loss_spec.supervised if cfg.use_labels is None else cfg.use_labels


# Keys of config.json files written before the loss registry: sigclr's scale was "temperature".
_OLD_SIGCLR_KEYS = {"temperature": "logit_scale", "learnable_temperature": "learnable_logit_scale"}


def saved_config(saved: dict[str, Any]) -> TrainConfig:
    """The ``config`` of a run's config.json as a TrainConfig, older files read in today's names:
    runs written before ``--resume auto`` saved ``resume`` as true/false (read as yes/no); files
    written before the loss registry (they hold learnable_temperature, and every method's options)
    have sigclr's temperature read as its logit_scale, and options the method never used dropped;
    renamed loss options (sigclr's bias, now logit_bias: LossSpec.renamed) are read under today's;
    files written before configs were resolved (no arch or proj_dims: the preset's then) get the
    preset's model, so that eval, embed, export and a resumed run all rebuild the one trained."""
    saved = renamed_options(saved)
    preset = PRESETS.get(saved.get("dataset"), {}) if isinstance(saved.get("dataset"), str) else {}
    saved = {**saved, **{k: preset[k] for k in ("arch", "proj_dims") if k in preset and saved.get(k) is None}}
    resume = saved.get("resume")
    if isinstance(resume, bool):
        saved = {**saved, "resume": RESUME_MODES[int(resume)]}
    if "learnable_temperature" in saved:
        saved = dict(saved)
        spec = method_spec(saved.get("method", "sigclr"))
        if saved.get("method", "sigclr") == "sigclr":
            saved.update({new: saved.pop(old) for old, new in _OLD_SIGCLR_KEYS.items() if old in saved})
        saved.pop("learnable_temperature", None)
        for name in LOSS_OPTIONS:
            if spec is not None and name not in spec.params:
                saved.pop(name, None)
    return from_dict(TrainConfig, saved)


def read_config(
    run_dir: Path, context: str, fix: str, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The ``config`` of a run's config.json (with ``overrides``) as a TrainConfig, or one line
    ``<context>: ... ; <fix>`` when it is missing, truncated, or holds values of the wrong type."""
    file = Path(run_dir) / "config.json"
    try:
        whole = json_loads(ckpt.read_text(file))
        if not isinstance(whole, dict):  # [1, 2] gave "TypeError list indices must be integers"
            raise ConfigError(f"a JSON {type(whole).__name__}, not an object holding the run's 'config'")
        saved = whole["config"]
        if not isinstance(saved, dict):
            raise ConfigError(f"its 'config' is a {type(saved).__name__}, not an object of options")
        return saved_config({**saved, **(overrides or {})})
    except FileNotFoundError:
        raise FastSigCLRError(f"{context}: config.json (the run's settings) is missing; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # JSON, layout, or values
        reason = err if isinstance(err, ConfigError | json.JSONDecodeError) else f"{type(err).__name__} {err}"
        raise FastSigCLRError(f"{context}: its config.json is unreadable ({reason}); {fix}") from None


# What eval, export and embed say of a run whose config.json cannot be read.
RESTORE_CONFIG = "restore it from a copy of the run: the model cannot be rebuilt without it"


def write_config(run_dir: Path, cfg: TrainConfig, record: dict[str, Any]) -> None:
    """A run's config.json, atomically: its ``config`` and ``record`` (what ran, where, and the
    kernel plans of a --deterministic run: ``kernel_plans``)."""
    text = json.dumps({"config": to_dict(cfg), **record}, indent=2) + "\n"
    ckpt.write_text_atomic(Path(run_dir) / "config.json", text)


def saved_plans(run_dir: Path) -> dict[str, Any]:
    """The tile plans a --deterministic run recorded in its config.json (``kernel_plans``: kind of
    block → the fields of a ``kernels.Plan``), for its resumed run to launch with; {} for files
    written before them or by runs without plans (the torch path, or no --deterministic)."""
    try:
        plans = json_loads(ckpt.read_text(Path(run_dir) / "config.json")).get("kernel_plans") or {}
        as_plans(plans)  # checks them
        return plans
    except (OSError, ValueError, AttributeError) as err:
        raise FastSigCLRError(
            f"cannot resume {run_dir}: the kernel_plans of its config.json are unreadable ({err}); "
            f"remove that entry to let the resumed run pick its plans on this GPU (its sums then run in "
            f"another order than before)"
        ) from None
