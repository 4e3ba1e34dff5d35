"""Throughput of the in-process analysis worker on a backlog: one image per detector call against batches.

    python benchmarks/worker_batch.py --images 24 --batch-sizes 1 4 8 --repeat 2 \
        --out benchmarks/results/worker_batch.json

A backlog is what a worker meets after an outage or a burst (a modality that sends a whole study, a
restart with images still queued). For each image set and each ``COVIDET_ANALYSIS_BATCH_SIZE`` value,
``--images`` real val-split X-rays are accepted into a fresh SQLite database with no worker running;
then a runtime with the shipped model (already loaded, so loading is not timed) starts, re-queues the
whole backlog at once (as a restarted process does) and works it off with one analysis thread. The
figure is wall time from the start of that runtime to the last image analysed (inference, triage and
all database writes included), as images per second.

Two image sets, because only images of the same size share a forward pass (see
``Predictor.predict``): ``one_size``, val images that all have the most common size in val (what one
modality sends), and ``mixed``, the first val images as they come (sizes vary; batches split by shape).
Settings are interleaved over ``--repeat`` rounds so a slow moment of the machine hits each alike.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from sqlalchemy import func, select  # noqa: E402

from covidet.config import get_settings  # noqa: E402
from covidet.detection.predictor import Predictor  # noqa: E402
from covidet.imaging import read_image  # noqa: E402
from covidet.ingest.service import ImageIngest  # noqa: E402
from covidet.ingest.storage import ImageStore  # noqa: E402
from covidet.store import Database, Image  # noqa: E402
from covidet.worker.queue import InProcessQueue  # noqa: E402
from covidet.worker.runtime import build_runtime  # noqa: E402


def _dataset_root() -> Path:
    env = os.environ.get("COVIDET_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cxr"


def _image_sets(root: Path, count: int) -> dict[str, list[Path]]:
    with open(root / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"]
    common = Counter((r["width"], r["height"]) for r in rows).most_common(1)[0][0]
    one_size = [root / r["image"] for r in rows if (r["width"], r["height"]) == common][:count]
    if len(one_size) < count:
        raise SystemExit(f"only {len(one_size)} val images share the most common size {common}")
    return {"one_size": one_size, "mixed": [root / r["image"] for r in rows[:count]]}


def _work_off_backlog(predictor: Predictor, images: list[Path], batch_size: int, home: Path) -> dict:
    settings = get_settings(home=home, analysis_workers=1, analysis_batch_size=batch_size)
    db = Database.from_settings(settings)
    ingest = ImageIngest(  # nobody analyses yet: the images wait as `queued`
        db,
        ImageStore(settings.image_store_dir),
        InProcessQueue(),
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )
    for index, path in enumerate(images):
        ingest.accept(path.read_bytes(), channel="upload", device_id=None, patient_key=f"BATCH-{index:03d}")
    started = time.perf_counter()
    runtime = build_runtime(settings, db=db, predictor=predictor)  # re-queues the backlog at once
    try:
        deadline = time.monotonic() + 60 * 30
        while True:
            with db.session() as session:
                left = session.scalar(select(func.count()).select_from(Image).where(Image.status == "queued"))
            if not left and runtime.queue.processed == len(images):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"backlog not worked off in 30 minutes (batch size {batch_size})")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        with db.session() as session:
            analysed = session.scalar(
                select(func.count()).select_from(Image).where(Image.status == "analysed")
            )
        if analysed != len(images):
            raise SystemExit(f"{len(images) - analysed} image(s) not analysed (batch size {batch_size})")
        return {"seconds": seconds, "batches": list(runtime.queue.batch_sizes)}
    finally:
        runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=24, help="backlog size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds per setting")
    parser.add_argument("--backend", default="torch", help="auto | torch | onnxruntime | openvino")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/worker_batch.json")
    args = parser.parse_args()

    sets = _image_sets(_dataset_root(), args.images)
    predictor = Predictor.from_bundle(backend=args.backend)
    for images in sets.values():  # warm-up: the first call per input shape and batch size is slower
        for batch_size in args.batch_sizes:
            predictor.predict([read_image(p) for p in images[:batch_size]], batch_size=batch_size)
    work = Path(tempfile.mkdtemp(prefix="covidet-batch-"))
    seconds: dict[str, dict[int, list[float]]] = {name: {b: [] for b in args.batch_sizes} for name in sets}
    batches: dict[str, dict[int, list[int]]] = {name: {} for name in sets}
    for round_index in range(args.repeat):
        for name, images in sets.items():
            for batch_size in args.batch_sizes:
                home = work / f"{name}-{batch_size}-{round_index}"
                run = _work_off_backlog(predictor, images, batch_size, home)
                seconds[name][batch_size].append(run["seconds"])
                batches[name][batch_size] = run["batches"]
                print(
                    f"round {round_index + 1}/{args.repeat} {name:8s} batch {batch_size}: "
                    f"{len(images) / run['seconds']:.2f} images/s",
                    file=sys.stderr,
                )

    results = {}
    for name, images in sets.items():
        baseline = statistics.median(seconds[name][1]) if 1 in seconds[name] else None
        results[name] = {
            str(b): {
                "median_s": round(statistics.median(values), 3),
                "images_per_s": round(len(images) / statistics.median(values), 3),
                "speedup_vs_batch_1": round(baseline / statistics.median(values), 3) if baseline else None,
                "runs_s": [round(v, 3) for v in values],
                "batches_last_run": batches[name][b],
            }
            for b, values in seconds[name].items()
        }
    result = {
        "benchmark": "worker_batch",
        "command": "python benchmarks/worker_batch.py " + " ".join(sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
        "model": {"name": predictor.name, "version": predictor.version, "backend": predictor.backend},
        "images": args.images,
        "image_sizes": {  # "WxH": count, per image set
            name: dict(Counter("{}x{}".format(*read_image(p).pixels.shape[::-1]) for p in images))
            for name, images in sets.items()
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
