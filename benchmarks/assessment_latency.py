"""Latency of the assessment path: from a C-STORE acknowledgement to the stored inference.

    python benchmarks/assessment_latency.py --images 24 --out benchmarks/results/assessment_latency.json

One process runs covidet's DICOM receiver and the in-process analysis worker (the embedded
deployment, SQLite, the shipped model), as ``covidet dicom-scp`` does. dcmtk's ``storescu`` sends
``--images`` real chest X-rays of the dataset's val split (converted to DICOM once), one association
each, waiting for each analysis before the next send so that queueing does not enter the figure.

Per image it records: ``end_to_end_s`` = acknowledgement (storescu returned) → inference row committed
(``finished_at``); and, in the same run on the same images, the bare cost ``bare_s`` = ``read_image``
+ ``Predictor.predict`` called directly. ``overhead_s`` = end_to_end − bare: what the system adds
(queue hand-over, database writes, reading the stored file, triage). Goal: overhead ≤ 0.5 s per image.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from covidet.app.processes import free_port
from covidet.config import get_settings
from covidet.detection.predictor import Predictor
from covidet.imaging import read_image
from covidet.imaging.dicom_writer import xray_to_dicom
from covidet.ingest.dicom_scp import DicomReceiver
from covidet.store import Image, queries
from covidet.store.models import Inference
from covidet.worker.runtime import build_runtime

REPO = Path(__file__).resolve().parents[1]


def _dataset_root() -> Path:
    env = os.environ.get("COVIDET_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cxr"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/assessment_latency.json")
    args = parser.parse_args()

    root = _dataset_root()
    with open(root / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"][: args.images]
    work = Path(tempfile.mkdtemp(prefix="covidet-latency-"))
    files, uids = [], []
    for index, row in enumerate(rows):
        path = work / f"{index:03d}.dcm"
        dataset = xray_to_dicom(root / row["image"], patient_id=f"LAT-{index:03d}")
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(str(dataset.SOPInstanceUID))

    settings = get_settings(home=work / "home", analysis_workers=1)
    predictor = Predictor.from_bundle()
    runtime = build_runtime(settings, predictor=predictor)
    with runtime.db.session(write=True) as session:
        queries.create_device(session, "bench-modality", "modality", ae_title="BENCH")
    port = free_port()
    receiver = DicomReceiver(runtime.db, runtime.ingest, host="127.0.0.1", port=port)
    receiver.start()
    env = {**os.environ, "TCP_NODELAY": "1"}
    records = []
    try:
        for index, path in enumerate(files):
            # Bare cost on the same image in the same process (model already warm after image 0).
            started = time.perf_counter()
            predictor.predict([read_image(path)])
            bare = time.perf_counter() - started
            done = subprocess.run(
                ["/usr/bin/storescu", "-aet", "BENCH", "-aec", "COVIDET", "127.0.0.1", str(port), str(path)],
                env=env,
                capture_output=True,
                text=True,
            )
            acknowledged_at = datetime.now(UTC)
            if done.returncode != 0:
                raise SystemExit(f"storescu failed: {done.stderr}")
            deadline = time.monotonic() + 120
            finished = None
            while time.monotonic() < deadline and finished is None:
                with runtime.db.session() as session:
                    inference = session.scalar(
                        select(Inference)
                        .join(Image, Image.id == Inference.image_id)
                        .where(Image.sop_instance_uid == uids[index], Inference.status == "succeeded")
                    )
                    if inference is not None:
                        finished = inference.finished_at
                        detect, read = inference.detect_seconds, inference.read_seconds
                if finished is None:
                    time.sleep(0.005)
            if finished is None:
                raise SystemExit(f"image {index} was not analysed in 120 s")
            end_to_end = (finished - acknowledged_at).total_seconds()
            records.append(
                {
                    "image": rows[index]["image"],
                    "end_to_end_s": round(end_to_end, 4),
                    "bare_s": round(bare, 4),
                    "overhead_s": round(end_to_end - bare, 4),
                    "worker_read_s": round(read, 4),
                    "worker_detect_s": round(detect, 4),
                }
            )
            print(
                f"{index + 1}/{len(files)} end-to-end {end_to_end:.3f} s, bare {bare:.3f} s", file=sys.stderr
            )
    finally:
        receiver.stop()
        runtime.close()

    measured = records[1:]  # image 0 includes loading the model in the worker
    summary = {
        key: {
            "median": round(statistics.median(r[key] for r in measured), 4),
            "p95": round(_percentile([r[key] for r in measured], 0.95), 4),
        }
        for key in ("end_to_end_s", "bare_s", "overhead_s")
    }
    result = {
        "benchmark": "assessment_latency",
        "command": "python benchmarks/assessment_latency.py " + " ".join(sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
        "model": {"name": predictor.name, "version": predictor.version},
        "images_measured": len(measured),
        "note": "first image excluded (the worker loads the model with it); sequential sends",
        "summary": summary,
        "goal_overhead_s": 0.5,
        "goal_met": summary["overhead_s"]["median"] <= 0.5 and summary["overhead_s"]["p95"] <= 0.5,
        "images": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
