"""Training driver: data, model, optimiser, the epoch loop, validation, checkpoints, bundle.

Run one process (``covidet train``) or several with
``torchrun --standalone --nproc_per_node N -m covidet.cli train``
(DDP: NCCL on GPUs, gloo on CPU). Only rank 0 validates, writes checkpoints, the metrics log and the
bundle. A checkpoint is a dict with named keys: ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``,
``config``, ``best_metric``, ``best_epoch``, ``history``, ``stale_validations``, ``rng``.

The parts, so that :func:`train` reads as the loop it is (as torchvision's detection references and
detectron2's hooks do): :mod:`~covidet.detection.train_config` (the options),
:mod:`~covidet.detection.train_data` (records, sampling, cache, loaders),
:mod:`~covidet.detection.train_hooks` (resume, validation and best checkpoint, end of epoch, final
bundle) and :mod:`~covidet.detection._seeding`. The names below are importable from here as before.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from covidet.detection._seeding import seed_everything, worker_init
from covidet.detection.bundle import BundleError, load_weights_into
from covidet.detection.card import Architecture, detector_args
from covidet.detection.data import dataset_hash
from covidet.detection.engine import train_one_epoch
from covidet.detection.model import build_detector
from covidet.detection.pretrain import load_backbone_weights
from covidet.detection.train_config import MetricsRow, TrainConfig, TrainResult
from covidet.detection.train_data import (
    LUNG_CLASS,
    BalancedSampler,
    CommonScaleCache,
    build_loaders,
    training_records,
)
from covidet.detection.train_hooks import (
    TrainState,
    end_epoch,
    resume,
    validate,
    write_final_bundle,
)

__all__ = [
    "LUNG_CLASS",
    "BalancedSampler",
    "CommonScaleCache",
    "TrainConfig",
    "TrainResult",
    "cpu_supports_bf16",
    "train",
]

logger = logging.getLogger(__name__)

#: The old private name of :func:`covidet.detection._seeding.worker_init` (benchmarks import it).
_worker_init = worker_init


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); initialises the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _architecture(config: TrainConfig) -> Architecture:
    """The card's ``architecture`` for ``config``: the :func:`build_detector` arguments of the run."""
    architecture: Architecture = {
        "backbone": config.backbone,
        "norm": config.norm,
        "min_size": config.size,
        "max_size": config.size,
        "num_classes": 4,
        "anchor_aspect_ratios": [0.5, 1.0, 2.0],
    }
    if config.image_head and config.task == "assess":
        architecture |= {
            "image_head": True,
            "image_loss_weight": config.image_loss_weight,
            "image_head_pool": config.image_head_pool,
        }
    return architecture


def _build_model(
    config: TrainConfig, architecture: Architecture, device: torch.device, world_size: int
) -> torch.nn.Module:
    """The detector of ``architecture`` on ``device`` (channels-last), started from ``init_backbone``
    or ``init_model`` unless resuming; BatchNorm synchronised across GPUs under DDP."""
    model = build_detector(**detector_args(architecture))
    if config.init_backbone is not None and config.resume is None:
        pretrained = load_backbone_weights(
            model, config.init_backbone, backbone=config.backbone, norm=config.norm
        )
        logger.info(
            "backbone body from %s (self-supervised, %d epochs, final NT-Xent loss %.3f)",
            config.init_backbone,
            len(pretrained["history"]),
            pretrained["history"][-1]["loss"] if pretrained["history"] else math.nan,
        )
    if config.init_model is not None and config.resume is None:
        if config.init_backbone is not None:
            raise BundleError("--init-model and --init-backbone exclude each other: choose one start")
        started_from = load_weights_into(model, config.init_model, architecture)
        logger.info(
            "weights from %s (%s %s)", config.init_model, started_from["name"], started_from["version"]
        )
    if device.type == "cuda" and world_size > 1 and config.norm == "batch":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    # channels_last on CPU too: oneDNN's convolutions (forward and backward) are faster in that layout
    # (benchmarks/train_step.py: MobileNetV3 at 384 px, batch 4, 0.99 -> 0.85 s per step).
    model = model.to(memory_format=torch.channels_last)
    return model


def _optimisation(
    config: TrainConfig, model: torch.nn.Module, iterations_per_epoch: int, device: torch.device
) -> tuple[
    torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler | None, torch.dtype | None
]:
    """AdamW, its warm-up + cosine schedule over the run's iterations, and mixed precision: a
    GradScaler for fp16 on CUDA, or bf16 autocast on CPUs that have bf16 instructions."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.max_iterations_per_epoch:
        iterations_per_epoch = min(iterations_per_epoch, config.max_iterations_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(config.warmup_iterations, config.epochs * iterations_per_epoch)
    )
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None
    amp_dtype = None
    if config.amp and device.type == "cpu":
        if cpu_supports_bf16():
            amp_dtype = torch.bfloat16
        else:
            logger.warning("--amp: this CPU has no bf16 instructions; training in fp32")
    return optimizer, scheduler, scaler, amp_dtype


def train(config: TrainConfig) -> TrainResult:
    """Train a detector as ``config`` says; returns where the bundle went and the history.

    Raises ``covidet.detection.engine.NonFiniteLossError`` on a NaN loss and
    ``covidet.detection.data.DatasetError`` on bad data.
    """
    if config.task == "lungs" and (config.monitor != "lung_map50" or config.balance):
        # One class: class balance means nothing and the image-level metrics measure nothing.
        config = config.model_copy(update={"monitor": "lung_map50", "balance": False})
    device = _resolve_device(config.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    rank, world_size = _init_distributed(device)
    is_main = rank == 0
    seed_everything(config.seed + rank)
    out = config.out
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    train_records, val_records = training_records(config)
    sampler, train_loader, val_loader = build_loaders(
        config, train_records, val_records, rank=rank, world_size=world_size, device=device
    )
    architecture = _architecture(config)
    model = _build_model(config, architecture, device, world_size)
    optimizer, scheduler, scaler, amp_dtype = _optimisation(config, model, len(train_loader), device)
    state = TrainState()
    if config.resume is not None:
        state = resume(config.resume, model, optimizer, scheduler)
    train_model: torch.nn.Module = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if world_size > 1
        else model
    )
    if is_main:
        (out / "config.json").write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else None
    data_hash = dataset_hash(train_records) if is_main else ""

    epoch = state.start_epoch - 1
    for epoch in range(state.start_epoch, config.epochs + 1):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        started = time.monotonic()
        losses = train_one_epoch(
            train_model,
            optimizer,
            train_loader,
            epoch=epoch,
            device=device,
            scheduler=scheduler,
            max_iterations=config.max_iterations_per_epoch,
            scaler=scaler,
            amp_dtype=amp_dtype,
            deadline=deadline,
            show_progress=config.show_progress and is_main,
        )
        out_of_time = deadline is not None and time.monotonic() > deadline
        validate_now = epoch % config.val_every == 0 or epoch == config.epochs or out_of_time
        row: MetricsRow = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in losses.items()},
        }
        stop = torch.zeros(1, device=device)  # NCCL broadcasts CUDA tensors only
        if is_main:
            if validate_now:
                # validation hook: val_* metrics into row, best.pt, and the early stop (patience)
                early_stop = validate(
                    model,
                    val_loader,
                    config=config,
                    device=device,
                    epoch=epoch,
                    losses=losses,
                    row=row,
                    state=state,
                )
                if early_stop:
                    stop[0] = 1
            # end-of-epoch hook: metrics.csv, history and last.pt
            end_epoch(
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                config=config,
                epoch=epoch,
                row=row,
                started=started,
                state=state,
            )
        if out_of_time:
            state.stopped_because = f"time budget of {config.max_minutes} min reached"
            stop[0] = 1
        if world_size > 1:
            dist.broadcast(stop, src=0)
        if stop.item():
            break

    bundle = None
    if is_main:
        bundle = write_final_bundle(
            config, model, architecture, data_hash, len(train_records), epoch, state.stopped_because
        )
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(
        bundle=bundle,
        best_epoch=state.best_epoch,
        best_metric=state.best_metric,
        history=state.history,
        stopped_because=state.stopped_because,
    )
