"""Did self-supervised pretraining learn anything about the classes? A linear probe on its features.

    python benchmarks/ssl_probe.py --backbone-file runs/ssl-mnv3/backbone.pt \
        --out benchmarks/results/ssl_probe.json

Each image (longer side ``--size``, 384 as the detector) goes through the backbone body (frozen, eval
mode); its last feature map is averaged over space (960 values for MobileNetV3). A class-balanced
logistic regression maps these to covid19 / pneumonia / normal, with the protocol of
``image_head_probe.py``: ``C`` chosen by 5-fold cross-validation on the **train** split grouped by
patient, fitted on all of train, scored once on val, with label stability under down-sampling to 224 px
and back. BatchNorm statistics are re-estimated on every fourth train image first (see
``recalibrate_batchnorm``). The same is done for the body at its from-scratch initialisation (same
seed, no training), the baseline the pretraining must beat: random convolutional features are not
worthless. No labels were used by the pretraining; the probe uses the train labels only.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from _report import model_benchmark_args, write_report  # benchmarks/ is on sys.path when a script runs
from covidet.detection.data import ImageRecord, load_records
from covidet.detection.model import IMAGE_MEAN, IMAGE_STD, build_detector
from covidet.detection.pretrain import load_backbone_weights
from covidet.detection.transforms import resize_image
from covidet.domain import model_id_from_label
from covidet.imaging import read_image
from image_head_probe import fit_probe, probe_images


@torch.inference_mode()
def body_features(
    body: torch.nn.Module, records: list[ImageRecord], size: int, degrade: int | None
) -> np.ndarray:
    """``[N, C]``: the body's last feature map, averaged over space, per image."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    rows = []
    for image in probe_images(records, size, degrade):
        image = (image[None] - mean) / std
        rows.append(list(body(image).values())[-1].mean(dim=(2, 3))[0].numpy())
    return np.stack(rows)


@torch.no_grad()
def recalibrate_batchnorm(body: torch.nn.Module, records: list[ImageRecord], size: int) -> None:
    """Re-estimate every BatchNorm's running statistics on ``records`` at the probe's size (cumulative
    average over images): the from-scratch body has none (mean 0, variance 1 would let activations grow
    layer after layer), and the pretrained one's come from 192-px crops, not 384-px whole images."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    norms = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    body.train()
    for record in tqdm(records, desc="batchnorm statistics", unit="image"):
        pixels = torch.from_numpy(np.ascontiguousarray(read_image(record.path).pixels, np.float32))[None]
        body((resize_image(pixels, size).expand(3, -1, -1)[None] - mean) / std)
    body.eval()


def probe(body: torch.nn.Module, train: list[ImageRecord], val: list[ImageRecord], size: int) -> dict:
    """Choose ``C`` on train (grouped CV), fit on train, score on val; see the module docstring."""
    recalibrate_batchnorm(body, train[::4], size)
    y_train = np.array([model_id_from_label(r.label) - 1 for r in train])
    y_val = np.array([model_id_from_label(r.label) - 1 for r in val])
    x_train = body_features(body, train, size, None)
    x_val = body_features(body, val, size, None)
    x_low = body_features(body, val, size, 224)
    groups = np.array([r.patient_id for r in train])
    return {"features": int(x_train.shape[1])} | fit_probe(
        x_train, y_train, groups, x_val, y_val, x_low, val
    ).report


def main() -> None:
    args, data = model_benchmark_args(
        __doc__,
        "benchmarks/results/ssl_probe.json",
        extra=[
            ("--backbone-file", {"type": Path, "required": True, "help": "backbone.pt of covidet pretrain"}),
            ("--size", {"type": int, "default": 384, "help": "longer image side, pixels"}),
        ],
    )
    saved = torch.load(args.backbone_file, map_location="cpu", weights_only=False)
    train, val = load_records(data, split="train"), load_records(data, split="val")
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "backbone": saved["backbone"],
        "pretraining": {
            "config": saved["config"],
            "epochs": len(saved["history"]),
            "last": saved["history"][-1],
        },
    }
    torch.manual_seed(0)
    scratch = build_detector(backbone=saved["backbone"], norm=saved["norm"])
    report["from_scratch_init"] = probe(scratch.backbone.body, train, val, args.size)
    pretrained = build_detector(backbone=saved["backbone"], norm=saved["norm"])
    load_backbone_weights(pretrained, args.backbone_file, backbone=saved["backbone"], norm=saved["norm"])
    report["self_supervised"] = probe(pretrained.backbone.body, train, val, args.size)
    for name in ("from_scratch_init", "self_supervised"):
        print(name, {k: round(v, 3) for k, v in report[name]["val"].items() if isinstance(v, float)})
    write_report(report, args.out)


if __name__ == "__main__":
    main()
