"""Answer times of covidet's DICOMweb services on loopback (issue 21): QIDO-RS, WADO-RS metadata,
frames, rendered and Part 10 retrieval, and STOW-RS of a new instance, for pydicom-data's chest X-ray
(RG1_UNCR: 1841 x 1955, 16-bit, 7.2 MB uncompressed).

The deployment is covidet's app on uvicorn in this process over a fresh SQLite database; the client is
httpx with a radiologist's bearer token (a modality key for STOW). Each figure is the median of
``--repeats`` requests, wall clock from request to the whole body received, audit event included.

    python -m benchmarks.dicomweb [--repeats 7] [--out benchmarks/results/dicomweb.json]

Not a test: nothing is asserted. The numbers depend on the machine and its load (see ``machine``).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from tests.api.conftest import make_env, serve

from benchmarks._report import write_report
from covidet import __version__
from covidet.store import queries

REPO_ROOT = Path(__file__).resolve().parents[1]


def _median_ms(call: Callable[[], httpx.Response], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer = call()
        times.append(time.perf_counter() - start)
        if answer.status_code != 200:
            raise SystemExit(f"unexpected {answer.status_code}: {answer.text[:200]}")
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "dicomweb.json")
    args = parser.parse_args()
    source = Path(get_testdata_file("RG1_UNCR.dcm", download=False) or "")
    header = dcmread(source, stop_before_pixels=True)
    folder = Path(tempfile.mkdtemp(prefix="covidet-dicomweb-bench-"))
    env = make_env(folder, f"sqlite:///{folder / 'covidet.db'}")
    env.ingest.accept(source.read_bytes(), channel="dicom", device_id=None)
    with env.db.session(write=True) as session:
        key = queries.create_device(session, "bench-modality", "modality").api_key or ""
    study = f"/dicom-web/studies/{header.StudyInstanceUID}"
    instance = f"{study}/series/{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}"

    def stow() -> httpx.Response:
        dataset = dcmread(source)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n--B--\r\n"
        content_type = 'multipart/related; type="application/dicom"; boundary=B'
        return http.post(
            "/dicom-web/studies", content=body, headers={"X-API-Key": key, "Content-Type": content_type}
        )

    results: dict[str, float] = {}
    with serve(env.app) as url, httpx.Client(base_url=url, timeout=120) as http:
        token = env.token(http, "rad")
        reads = {
            "qido_studies": lambda: http.get("/dicom-web/studies", headers=token),
            "qido_instances_of_study": lambda: http.get(f"{study}/instances", headers=token),
            "metadata_instance": lambda: http.get(f"{instance}/metadata", headers=token),
            "frames_1_uncompressed": lambda: http.get(f"{instance}/frames/1", headers=token),
            "rendered_png_viewport_512": lambda: http.get(
                f"{instance}/rendered", params={"viewport": "512,512"}, headers=token
            ),
            "rendered_png_full_size": lambda: http.get(f"{instance}/rendered", headers=token),
            "retrieve_instance_part10": lambda: http.get(instance, headers=token),
        }
        for name, call in reads.items():
            results[name] = _median_ms(call, args.repeats)
        results["stow_one_new_instance"] = _median_ms(stow, args.repeats)
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()
    shutil.rmtree(folder, ignore_errors=True)
    for name, value in results.items():
        print(f"{name:32s} {value:8.1f} ms")
    write_report(
        {
            "benchmark": "dicomweb",
            "command": "python -m benchmarks.dicomweb " + " ".join(sys.argv[1:]),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "covidet": __version__,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "image": {"file": "pydicom-data RG1_UNCR.dcm", "bytes": source.stat().st_size},
            "repeats": args.repeats,
            "median_ms": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
