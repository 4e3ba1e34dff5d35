"""What training does around the epoch loop (the hooks that keep ``train()`` short): resume from a
checkpoint, validate and keep the best weights (early stop), log the epoch and write ``last.pt``, and
bundle the selected weights at the end. Rank 0 only, except :func:`resume`.

A checkpoint is a dict with named keys: ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``,
``config``, ``best_metric``, ``best_epoch``, ``history``, ``stale_validations``, ``rng`` (``last.pt``);
``best.pt`` holds ``model``, ``epoch``, ``config`` and the validation ``report``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import torch
from torch.utils.data import DataLoader

from covidet.detection.bundle import save_bundle
from covidet.detection.card import Architecture
from covidet.detection.decision import rule_name
from covidet.detection.engine import EvaluationReport, evaluate_detections, run_inference, summary_metrics
from covidet.detection.train_config import MetricsRow, TrainConfig

__all__ = [
    "BestCheckpoint",
    "LastCheckpoint",
    "TrainState",
    "decision_image_weight",
    "end_epoch",
    "resume",
    "validate",
    "write_final_bundle",
    "write_metrics_row",
]

# Records of the run go to the driver's logger, as they did before training was split into modules.
logger = logging.getLogger("covidet.detection.train")


class RandomState(TypedDict):
    """The random state a checkpoint restores: Python's ``random`` and torch's CPU generator."""

    python: tuple[object, ...]
    torch: torch.Tensor


class BestCheckpoint(TypedDict):
    """``best.pt``: the weights of the best validation so far, its epoch, the run's options (JSON) and
    its validation report."""

    model: dict[str, torch.Tensor]
    epoch: int
    config: dict[str, object]
    report: EvaluationReport


class LastCheckpoint(TypedDict):
    """``last.pt``: everything :func:`resume` needs to continue after ``epoch``."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, object]
    lr_scheduler: dict[str, object]
    epoch: int
    config: dict[str, object]
    best_metric: float
    best_epoch: int
    stale_validations: int
    history: list[MetricsRow]
    rng: RandomState


@dataclass
class TrainState:
    """Where the run stands: what ``last.pt`` keeps besides the weights, optimiser and schedule."""

    start_epoch: int = 1
    best_metric: float = -math.inf
    best_epoch: int = 0
    stale: int = 0  # validations in a row without a gain of the monitored metric
    history: list[MetricsRow] = field(default_factory=list)
    stopped_because: str = "max epochs"


def resume(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Load ``last.pt``-style checkpoint ``path`` into the model, optimiser and schedule, restore the
    random state, and return the state to continue from (the epoch after the saved one)."""
    checkpoint: LastCheckpoint = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["lr_scheduler"])
    state = TrainState(
        start_epoch=checkpoint["epoch"] + 1,
        best_metric=checkpoint["best_metric"],
        best_epoch=checkpoint["best_epoch"],
        stale=checkpoint["stale_validations"],
        history=checkpoint["history"],
    )
    random.setstate(checkpoint["rng"]["python"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    logger.info("resumed from %s at epoch %d", path, state.start_epoch)
    return state


def validate(
    model: torch.nn.Module,
    val_loader: DataLoader,
    *,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    losses: dict[str, float],
    row: MetricsRow,
    state: TrainState,
) -> bool:
    """Validate, add the ``val_*`` metrics to ``row``, save ``best.pt`` when the monitored metric
    improved (a NaN never does), and return whether training should stop early (``patience``)."""
    predictions, ground_truth, labels, _ = run_inference(
        model, val_loader, device=device, show_progress=config.show_progress, desc="validate"
    )
    result = evaluate_detections(
        predictions,
        ground_truth,
        labels,
        threshold=config.threshold,
        image_weight=decision_image_weight(config),
    )
    summary = summary_metrics(result.report)
    row |= {f"val_{k}": v for k, v in summary.items()}
    value = summary[config.monitor]
    improved = not math.isnan(value) and value > state.best_metric
    if improved:
        state.best_metric, state.best_epoch, state.stale = value, epoch, 0
        best: BestCheckpoint = {
            "model": model.state_dict(),
            "epoch": epoch,
            "config": config.model_dump(mode="json"),
            "report": result.report,
        }
        torch.save(best, config.out / "best.pt")
    else:
        state.stale += 1
    logger.info(
        "epoch %d: loss %.4f val %s %.4f (best %.4f at epoch %d)",
        epoch,
        losses.get("loss", float("nan")),
        config.monitor,
        value,
        state.best_metric,
        state.best_epoch,
    )
    if state.stale >= config.patience:
        state.stopped_because = f"early stop: no {config.monitor} gain in {config.patience} validations"
        return True
    return False


def end_epoch(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    epoch: int,
    row: MetricsRow,
    started: float,
    state: TrainState,
) -> None:
    """Close the epoch: its duration into ``row``, ``row`` into the history and ``metrics.csv``, and
    the checkpoint ``last.pt`` (weights, optimiser, schedule, state and random state)."""
    row["seconds"] = round(time.monotonic() - started, 1)
    state.history.append(row)
    write_metrics_row(config.out / "metrics.csv", row)
    last: LastCheckpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "config": config.model_dump(mode="json"),
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "stale_validations": state.stale,
        "history": state.history,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    torch.save(last, config.out / "last.pt")


def write_metrics_row(path: Path, row: MetricsRow) -> None:
    """Append ``row`` to the CSV file ``path``, with a header first when the file is new."""
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def decision_image_weight(config: TrainConfig) -> float:
    """The decision rule's ``image_weight``: 0 unless the model has an image head."""
    return config.image_weight if config.image_head and config.task == "assess" else 0.0


def write_final_bundle(
    config: TrainConfig,
    model: torch.nn.Module,
    architecture: Architecture,
    data_hash: str,
    n_train: int,
    last_epoch: int,
    stopped_because: str,
) -> Path:
    """Bundle the best validated checkpoint (or the last weights when none was validated)."""
    best_path = config.out / "best.pt"
    report: EvaluationReport | None = None
    best_epoch = last_epoch
    if best_path.exists():
        best: BestCheckpoint = torch.load(best_path, map_location="cpu", weights_only=False)
        model.load_state_dict(best["model"])
        report, best_epoch = best["report"], best["epoch"]
    model.to("cpu")
    return save_bundle(
        model,
        config.out / "bundle",
        architecture=architecture,
        decision={
            "rule": rule_name(decision_image_weight(config)),
            "threshold": config.threshold,
            "image_weight": decision_image_weight(config),
            "description": "see covidet.detection.decision",
        },
        training={
            "data_hash_sha256": data_hash,
            "n_train_images": n_train,
            "split": config.train_split,
            "tier": config.tier,
            "epochs_run": last_epoch,
            "selected_epoch": best_epoch,
            "selected_by": f"{config.val_split} {config.monitor}",
            "stopped_because": stopped_because,
            "config": json.loads(config.model_dump_json()),
        },
        metrics={config.val_split: report} if report else {},
        name=config.name,
        purpose=config.task,
    )
