"""The detector can learn: it overfits a few real chest X-rays from scratch.

This is a capacity check of the model, losses and training step, not an accuracy claim: it trains
and tests on the same two images on purpose.
"""

import random

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from covidet.detection.data import DetectionDataset, collate_detection, load_records
from covidet.detection.engine import train_one_epoch
from covidet.detection.model import build_detector
from covidet.detection.transforms import Compose, ResizeLongerSide

SIZE = 224
STEPS = 120
#: The summed loss must fall at least this much (last 10 steps vs first 10).
LOSS_FALL_FACTOR = 3.0


def test_overfits_two_real_images(data_root) -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    records = [r for r in load_records(data_root, tier="tiny") if len(r.boxes) == 2][:2]
    assert len(records) == 2
    dataset = DetectionDataset(records, Compose([ResizeLongerSide(SIZE)]))
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    model = build_detector(backbone="mobilenet_v3_large", min_size=SIZE, max_size=SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses: list[float] = []
    for step in range(STEPS):
        result = train_one_epoch(
            model, optimizer, [(images, targets)], epoch=step, device=torch.device("cpu"), show_progress=False
        )
        losses.append(result["loss"])
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert first / last >= LOSS_FALL_FACTOR, f"loss fell only from {first:.3f} to {last:.3f}"

    model.eval()
    with torch.inference_mode():
        outputs = model(images)
    for output, target in zip(outputs, targets, strict=True):
        for gt_box, gt_label in zip(target["boxes"], target["labels"], strict=True):
            same_class = output["labels"] == gt_label
            assert same_class.any(), "no detection of the right class"
            ious = box_iou(gt_box[None], output["boxes"][same_class])[0]
            best = int(ious.argmax())
            assert float(ious[best]) >= 0.5, f"best IoU {float(ious[best]):.2f} < 0.5"
            assert float(output["scores"][same_class][best]) >= 0.5
