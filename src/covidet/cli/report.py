"""``covidet report``: the FHIR / DICOM report of an analysed image, optionally forwarded to the PACS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from covidet import DISCLAIMER
from covidet.cli._common import fail, open_database, setup

__all__ = ["report"]


def report(
    image_or_study: Annotated[
        str, typer.Argument(help="image id (digits) or Study Instance UID (its newest analysed image)")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="fhir (R4B DiagnosticReport JSON), dicom (Secondary Capture), sr (TID 1500 DICOM SR of "
            "the AI result) or sr-review (the newest signed review as an SR)",
        ),
    ] = "fhir",
    out: Annotated[Path, typer.Option("--out", help="file to write")] = Path("report.json"),
    forward: Annotated[
        bool, typer.Option("--forward", help="also send the DICOM report to the PACS in settings (C-STORE)")
    ] = False,
) -> None:
    """Write the report of an analysed image: FHIR DiagnosticReport, DICOM Secondary Capture or SR."""
    from covidet.ingest.storage import ImageStore
    from covidet.reports.from_store import (
        ReportNotAvailable,
        forward_report,
        resolve_image_id,
        write_image_report,
    )

    settings = setup()
    if fmt not in {"fhir", "dicom", "sr", "sr-review"}:
        raise fail(f"--format must be fhir, dicom, sr or sr-review, not {fmt!r}")
    db = open_database(settings)
    store = ImageStore(settings.image_store_dir)
    try:
        image_id = resolve_image_id(db, image_or_study)
        path = write_image_report(db, store, image_id, fmt, out)
        if forward:
            if not settings.pacs_host:
                raise fail("--forward needs COVIDET_PACS_HOST, COVIDET_PACS_PORT and COVIDET_PACS_AE_TITLE")
            forward_report(db, store, image_id, settings)
    except ReportNotAvailable as exc:
        raise fail(str(exc)) from exc
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "ForwardError":
            raise fail(str(exc)) from exc
        raise
    typer.echo(json.dumps({"image_id": image_id, "format": fmt, "path": str(path), "disclaimer": DISCLAIMER}))
