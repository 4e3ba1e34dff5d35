"""Page timings of the reading room in Debian's Chromium (issue 22): sign-in to a filled worklist, and
opening a case (worklist click to the X-ray drawn), at 1440x900.

The deployment is covidet's app on uvicorn over a fresh SQLite database with real dataset X-rays
accepted through the upload path and AI results, triage and alerts written as the worker writes them
(tests/web/seed.py): the three studies of the browser tests plus ``--studies`` more, one image each.
Each repeat is a new browser context (cold session, no cache). Wall-clock times from the click to the
condition, measured in this process with ``time.perf_counter``.

    python -m benchmarks.web_timings [--studies 40] [--repeats 5] [--out benchmarks/results/web_timings.json]

Not a test: nothing is asserted. The numbers depend on the machine and its load (see ``machine``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api
from tests.api.conftest import PASSWORDS, dataset_jpegs, hours_ago, make_env, seed_image, serve
from tests.web.browser import CHROMIUM_ARGS, chromium_path
from tests.web.seed import seed_room

from benchmarks._report import write_report
from covidet import __version__

REPO_ROOT = Path(__file__).resolve().parents[1]

PRIORITIES = ("urgent", "high", "routine", None)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=40, help="studies besides the three seeded ones")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "web_timings.json")
    args = parser.parse_args()
    data = Path(os.environ.get("COVIDET_DATA", REPO_ROOT.parent / "shared" / "data" / "cxr"))
    if not (data / "manifest.csv").is_file():
        sys.exit("set COVIDET_DATA to the chest X-ray dataset folder")

    with tempfile.TemporaryDirectory(prefix="covidet-web-timings-") as tmp:
        env = make_env(Path(tmp), f"sqlite:///{Path(tmp) / 'covidet.db'}")
        seed_room(env, data)
        for index, path in enumerate(dataset_jpegs(data, args.studies + 4)[4:]):
            seed_image(
                env,
                path.read_bytes(),
                patient_key=f"BENCH-{index:03d}",
                priority=PRIORITIES[index % len(PRIORITIES)],
                received_at=hours_ago(index / 10),
                label="covid19" if index % 2 else "normal",
                findings=[("covid19", 0.7, (40.0, 60.0, 200.0, 300.0))] if index % 2 else [],
                reasons=["seeded for the benchmark"],
            )
        rows_shown: list[float] = []
        sign_in: list[float] = []
        worklist_thumbs: list[float] = []
        open_case: list[float] = []
        with serve(env.app) as base, playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            for _ in range(args.repeats):
                context = browser.new_context(viewport={"width": 1440, "height": 900}, base_url=base)
                page = context.new_page()
                page.goto("/login?next=/worklist")
                page.get_by_label("Username").fill("rad")
                page.get_by_label("Password").fill(PASSWORDS["rad"])
                started = time.perf_counter()
                page.get_by_role("button", name="Sign in").click()
                # Rows of either worklist (by study, or the image worklist before issue 22).
                page.wait_for_selector("#worklist tbody tr[data-image-id]")
                rows_shown.append(time.perf_counter() - started)
                page.wait_for_load_state("load")
                sign_in.append(time.perf_counter() - started)
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('#worklist tbody tr ul.thumbs img'))"
                    ".filter(i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete)"
                )
                worklist_thumbs.append(time.perf_counter() - started)
                page.wait_for_load_state("networkidle")  # the case is opened from a settled worklist
                started = time.perf_counter()
                page.locator("#worklist tbody tr a.open").first.click()
                page.wait_for_selector("canvas#xray[data-loaded='true']", timeout=60_000)
                open_case.append(time.perf_counter() - started)
                context.close()
            browser.close()
        env.ingest.queue.close()  # type: ignore[attr-defined]
        env.db.dispose()

    report: dict[str, Any] = {
        "benchmark": "web_timings",
        "command": "python -m benchmarks.web_timings " + " ".join(sys.argv[1:]),
        "covidet_version": __version__,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "studies": args.studies + 3,
        "repeats": args.repeats,
        "viewport": "1440x900",
        "sign_in_to_rows": _summary(rows_shown)
        | {"what": "Sign in clicked -> the first worklist row in the DOM"},
        "sign_in_to_worklist": _summary(sign_in)
        | {"what": "Sign in clicked -> worklist rows shown and the page's load event"},
        "sign_in_to_visible_thumbnails": _summary(worklist_thumbs)
        | {"what": "Sign in clicked -> every thumbnail above the fold decoded"},
        "open_case": _summary(open_case)
        | {"what": "(worklist settled) first study's link clicked -> the X-ray drawn on the viewer's canvas"},
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
