"""Lung boxes for images that have only an image label (``covidet propose-boxes``).

Most normal X-rays of the dataset (and some others) carry no lung boxes, so a detector trained on the
boxes never sees a labelled normal lung. A class-agnostic lung detector (``covidet train --task
lungs``: every box of the boxed training images is one class) proposes them:

* per image, the detections scoring at least ``min_score`` are split by the side of the image their
  centre lies on; the best of each side becomes that lung's box (``right_lung`` = the patient's right
  = the image's left, as in ``boxes.csv``), so an image gets 0, 1 or 2 boxes;
* every proposed box takes its **image's** label (the image label is the ground truth; the proposal
  only says where the lungs are) and keeps its origin: ``box_source = model_proposed`` and ``score``;
* :func:`check_proposals` measures the proposals against human boxes of images the lung detector did
  not train on (the val split), as if those images had none; :func:`contact_sheet` draws them.

Boxes are ``[x1, y1, x2, y2]`` in pixels of the stored image, like ``boxes.csv``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from covidet.detection.data import ImageRecord
from covidet.detection.transforms import resize_image
from covidet.domain import Label
from covidet.imaging import read_image

__all__ = [
    "BOX_SOURCE",
    "HUMAN_BOX_SOURCES",
    "IoUSummary",
    "ProposalCheck",
    "ProposedBox",
    "check_proposals",
    "choose_lung_boxes",
    "contact_sheet",
    "proposal_counts",
    "propose_lung_boxes",
    "write_boxes_csv",
]

logger = logging.getLogger(__name__)

BOX_SOURCE = "model_proposed"
# The dataset's box sources that people drew (directly, or as lung masks): the check's ground truth.
HUMAN_BOX_SOURCES = ("imageannotation_ai_human_bbox", "v7labs_human_lung_mask")
CSV_COLUMNS = ("image", "label", "part", "x1", "y1", "x2", "y2", "box_source", "score")

#: IoUs of human boxes with their proposals: the count and, when there is at least one box, the median
#: and mean IoU and the shares at IoU >= 0.5, >= 0.75 and without a proposal (IoU 0).
IoUSummary = TypedDict(
    "IoUSummary",
    {
        "n_boxes": int,
        "median_iou": float,
        "mean_iou": float,
        "share_iou_ge_0.5": float,
        "share_iou_ge_0.75": float,
        "share_missing": float,
    },
    total=False,
)


class ProposalCheck(IoUSummary, total=False):
    """:func:`check_proposals`: images checked, the score cut, the overall :data:`IoUSummary` and one
    per image label."""

    n_images: int
    min_score: float
    per_label: dict[str, IoUSummary]


@dataclass(frozen=True)
class ProposedBox:
    """One proposed lung box: ``box`` is ``[x1, y1, x2, y2]`` in pixels of the stored image."""

    image: str
    label: Label
    part: str
    box: tuple[float, float, float, float]
    score: float


def choose_lung_boxes(
    boxes: np.ndarray, scores: np.ndarray, *, width: float, min_score: float
) -> list[tuple[str, np.ndarray, float]]:
    """``(part, box, score)`` for at most one box per image half, best score first within a half.

    ``boxes`` float ``[N, 4]`` in image pixels, ``scores`` ``[N]``; a box belongs to the half its centre
    lies in; ``right_lung`` is the image's left half (the patient's right, radiological convention).
    """
    chosen = []
    centres = (boxes[:, 0] + boxes[:, 2]) / 2 if len(boxes) else np.zeros(0)
    for part, in_half in (("right_lung", centres < width / 2), ("left_lung", centres >= width / 2)):
        candidates = np.flatnonzero(in_half & (scores >= min_score))
        if len(candidates):
            best = candidates[np.argmax(scores[candidates])]
            chosen.append((part, boxes[best].astype(np.float64), float(scores[best])))
    return chosen


@torch.inference_mode()
def _detect(model: torch.nn.Module, record: ImageRecord, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """All detections of ``model`` on ``record``'s image: boxes in stored-image pixels, scores, width."""
    xray = read_image(record.path)
    pixels = torch.from_numpy(np.ascontiguousarray(xray.pixels, np.float32))[None]
    resized = resize_image(pixels, size)
    output = model([resized.expand(3, -1, -1)])[0]
    scale = torch.tensor(
        [xray.width / resized.shape[-1], xray.height / resized.shape[-2]] * 2, dtype=torch.float32
    )
    boxes = (output["boxes"].float() * scale).numpy()
    return boxes, output["scores"].float().numpy(), xray.width


def propose_lung_boxes(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    *,
    size: int,
    min_score: float = 0.5,
    show_progress: bool = True,
) -> list[ProposedBox]:
    """Propose lung boxes for every record in ``records`` (callers pass the box-less ones).

    ``model`` is a lung detector (``purpose: lungs`` bundle) in eval mode; ``size`` its input size.
    """
    model.eval()
    proposals = []
    for record in tqdm(records, desc="propose lung boxes", disable=not show_progress, unit="image"):
        boxes, scores, width = _detect(model, record, size)
        for part, box, score in choose_lung_boxes(boxes, scores, width=width, min_score=min_score):
            proposals.append(
                ProposedBox(record.image, record.label, part, tuple(float(c) for c in box), score)
            )
    return proposals


def check_proposals(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    *,
    size: int,
    min_score: float = 0.5,
    show_progress: bool = True,
) -> ProposalCheck:
    """Propose boxes for ``records`` as if they had none and compare with their human boxes.

    Each human box (sources :data:`HUMAN_BOX_SOURCES`) is paired with the proposal of its image half;
    a missing proposal counts as IoU 0. Returns counts, median/mean IoU and the shares of human boxes
    matched at IoU >= 0.5 and >= 0.75, overall and per image label.
    """
    human = [r for r in records if any(s in HUMAN_BOX_SOURCES for s in r.box_sources)]
    proposals = propose_lung_boxes(model, human, size=size, min_score=min_score, show_progress=show_progress)
    by_image: dict[str, list[ProposedBox]] = {}
    for proposal in proposals:
        by_image.setdefault(proposal.image, []).append(proposal)
    ious: list[float] = []
    per_label: dict[str, list[float]] = {}
    for record in human:
        width = float(read_image(record.path).width)
        for box, source in zip(record.boxes, record.box_sources, strict=True):
            if source not in HUMAN_BOX_SOURCES:
                continue
            part = "right_lung" if (box[0] + box[2]) / 2 < width / 2 else "left_lung"
            match = [p for p in by_image.get(record.image, []) if p.part == part]
            iou = (
                float(box_iou(torch.tensor([match[0].box]), torch.tensor([box.tolist()]))[0, 0])
                if match
                else 0.0
            )
            ious.append(iou)
            per_label.setdefault(record.label.value, []).append(iou)

    def summary(values: list[float]) -> IoUSummary:
        array = np.asarray(values, np.float64)
        if not len(array):
            return {"n_boxes": 0}
        return {
            "n_boxes": len(array),
            "median_iou": float(np.median(array)),
            "mean_iou": float(array.mean()),
            "share_iou_ge_0.5": float((array >= 0.5).mean()),
            "share_iou_ge_0.75": float((array >= 0.75).mean()),
            "share_missing": float((array == 0).mean()),
        }

    return {
        "n_images": len(human),
        "min_score": min_score,
        **summary(ious),
        "per_label": {label: summary(values) for label, values in sorted(per_label.items())},
    }


def write_boxes_csv(proposals: Sequence[ProposedBox], path: str | os.PathLike) -> Path:
    """Write proposals in ``boxes.csv``'s columns plus ``score`` (read by ``covidet train --extra-boxes``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for p in proposals:
            writer.writerow(
                [p.image, p.label.value, p.part, *(f"{c:.1f}" for c in p.box), BOX_SOURCE, f"{p.score:.4f}"]
            )
    temporary.replace(path)
    return path


def contact_sheet(
    records: Sequence[ImageRecord],
    proposals: Sequence[ProposedBox],
    path: str | os.PathLike,
    *,
    count: int = 24,
    thumb: int = 200,
    columns: int = 6,
) -> Path:
    """A PNG grid of ``count`` images with their proposed boxes (and scores), spread over the labels.

    Images are taken in a fixed order (round-robin over labels, then manifest order), so the sheet is
    reproducible; images that got no proposal are included too, marked "no box".
    """
    from PIL import Image, ImageDraw

    by_image: dict[str, list[ProposedBox]] = {}
    for proposal in proposals:
        by_image.setdefault(proposal.image, []).append(proposal)
    queues: dict[Label, list[ImageRecord]] = {}
    for record in records:
        queues.setdefault(record.label, []).append(record)
    picked: list[ImageRecord] = []
    while len(picked) < count and any(queues.values()):
        for label in sorted(queues, key=lambda lab: lab.value):
            if queues[label] and len(picked) < count:
                queue = queues[label]
                # Spread the picks over the whole list, not its first rows (one source often comes first).
                step = max(1, len(queue) // max(1, count // len(queues)))
                picked.append(queue.pop(min(len(queue) - 1, step - 1)))
    rows = math.ceil(len(picked) / columns) or 1
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + 14)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    colours = {"right_lung": (0, 220, 255), "left_lung": (255, 200, 0)}
    for position, record in enumerate(picked):
        xray = read_image(record.path)
        image = Image.fromarray(xray.to_uint8()).convert("RGB")
        factor = thumb / max(image.size)
        image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))))
        x0, y0 = (position % columns) * thumb, (position // columns) * (thumb + 14)
        sheet.paste(image, (x0, y0))
        found = by_image.get(record.image, [])
        for proposal in found:
            x1, y1, x2, y2 = (c * factor for c in proposal.box)
            draw.rectangle([x0 + x1, y0 + y1, x0 + x2, y0 + y2], outline=colours[proposal.part], width=2)
            draw.text((x0 + x1 + 2, y0 + y1 + 1), f"{proposal.score:.2f}", fill=colours[proposal.part])
        caption = f"{record.label.value} {record.source}" + ("" if found else " - no box")
        draw.text((x0 + 2, y0 + thumb + 1), caption[:34], fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def proposal_counts(
    records: Sequence[ImageRecord], proposals: Sequence[ProposedBox]
) -> dict[str, dict[str, int]]:
    """How many of ``records`` got 0, 1 or 2 boxes, per image label."""
    boxes_per_image = Counter(p.image for p in proposals)
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        entry = counts.setdefault(record.label.value, {"images": 0, "two_boxes": 0, "one_box": 0, "none": 0})
        entry["images"] += 1
        entry[{2: "two_boxes", 1: "one_box"}.get(boxes_per_image[record.image], "none")] += 1
    return counts
