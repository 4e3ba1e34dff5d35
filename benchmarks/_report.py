"""What every benchmark does last: write its JSON report (with the command that made it) and say where."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write ``report`` as indented JSON to ``out`` (parents created) and print the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def model_benchmark_args(
    description: str, default_out: str, extra: list[tuple[str, dict[str, Any]]] | None = None
) -> tuple[argparse.Namespace, Path]:
    """Parse ``--model BUNDLE`` (default: the shipped one), ``--out FILE`` and the ``extra`` options
    (``(flag, add_argument keywords)``); return them with the dataset folder (``$COVIDET_DATA`` or
    ``../shared/data/cxr``), exiting with a message when it is absent."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=Path(default_out))
    for flag, options in extra or []:
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    data = Path(
        os.environ.get("COVIDET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr")
    )
    if not (data / "manifest.csv").is_file():
        sys.exit("set COVIDET_DATA to the chest X-ray dataset folder")
    return args, data
