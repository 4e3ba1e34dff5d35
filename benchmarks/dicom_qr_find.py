"""Benchmark the refusal of an over-broad C-FIND: counted in the database vs every study loaded first.

    python benchmarks/dicom_qr_find.py --studies 20000 --out benchmarks/results/dicom_qr_find.json

A SQLite archive of ``--studies`` studies (one patient and one CR image row each, no files: C-FIND
reads none) in a temporary folder; a Study Root STUDY-level query without keys and the default
bound (``dicom_qr_max_matches`` 1000). Timed, median of ``--repeat`` runs, each in a fresh session:

- ``count_first``: :func:`covidet.ingest.qr.matches.find_matches` with the bound, as the C-FIND
  handler calls it (``archive_queries.count_studies``, then the refusal);
- ``load_all``: :func:`covidet.store.archive_queries.search_studies` for the same keys, which the
  handler ran in full before counting until the count was added.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import insert
from sqlalchemy.orm import Session

from _report import write_report  # benchmarks/ is on sys.path when a script runs
from covidet.ingest.qr.keys import STUDY_ROOT, QueryKeys
from covidet.ingest.qr.matches import TooManyMatches, find_matches
from covidet.store.archive_queries import StudyQuery, search_studies
from covidet.store.db import Database
from covidet.store.models import Image, Patient, Study


def fill(db: Database, count: int) -> None:
    """``count`` patients with one study and one CR image row each (bulk inserts)."""
    now = datetime.now(UTC)
    with db.session(write=True) as session:
        session.execute(
            insert(Patient), [{"id": i + 1, "patient_key": f"P{i}", "name": f"N^{i}"} for i in range(count)]
        )
        session.execute(
            insert(Study),
            [
                {
                    "id": i + 1,
                    "study_instance_uid": generate_uid(),
                    "patient_id": i + 1,
                    "study_datetime": now,
                }
                for i in range(count)
            ],
        )
        session.execute(
            insert(Image),
            [
                {
                    "sop_instance_uid": generate_uid(),
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
                    "series_instance_uid": generate_uid(),
                    "content_sha256": f"{i:064x}",
                    "path": f"none/{i}.dcm",
                    "size_bytes": 1,
                    "media_type": "application/dicom",
                    "modality": "CR",
                    "study_id": i + 1,
                    "received_at": now,
                }
                for i in range(count)
            ],
        )


def timed(db: Database, run: Callable[[Session], object], repeat: int) -> list[float]:
    """Seconds of each of ``repeat`` runs of ``run`` (a refusal counts as done)."""
    seconds = []
    for _ in range(repeat):
        with db.session() as session:
            start = time.perf_counter()
            with contextlib.suppress(TooManyMatches):
                run(session)
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=1000, help="dicom_qr_max_matches")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dicom_qr_find.json"))
    args = parser.parse_args()
    keys = QueryKeys(level="STUDY", root=STUDY_ROOT, study=StudyQuery())
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{Path(folder) / 'covidet.db'}")
        fill(db, args.studies)
        runs: dict[str, Any] = {
            "count_first": timed(db, lambda s: find_matches(s, keys, limit=args.limit), args.repeat),
            "load_all": timed(db, lambda s: search_studies(s, keys.study), args.repeat),
        }
        db.dispose()
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": platform.platform(),
        "studies": args.studies,
        "limit": args.limit,
        "median_ms": {name: round(statistics.median(s) * 1000, 1) for name, s in runs.items()},
        "runs_ms": {name: [round(x * 1000, 1) for x in s] for name, s in runs.items()},
    }
    for name, value in report["median_ms"].items():
        print(f"{args.studies} studies, {name}: median {value} ms")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
