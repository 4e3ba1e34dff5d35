"""C-STORE throughput of covidet's DICOM receiver against Orthanc and dcmtk's storescp.

    .venv/bin/python benchmarks/dicom_ingest.py --out benchmarks/results/dicom_ingest.json
    .venv/bin/python benchmarks/dicom_ingest.py --n 50 --repeat 1 --targets covidet --out /tmp/d.json
    .venv/bin/python benchmarks/dicom_ingest.py --n 100 --repeat 1 --targets covidet,covidet-worker \
        --encodings uncompressed --profile /tmp/prof --out /tmp/d.json

What is measured: dcmtk's ``storescu`` sends ``--n`` real chest X-rays (the first rows of the dataset
manifest, ``$COVIDET_DATA`` or ``../shared/data/cxr``, converted once to DX DICOM with
``xray_to_dicom``) in **one association**, and the wall time of that storescu run gives images/s.
Two encodings: uncompressed (Explicit VR Little Endian) and JPEG baseline (the same files encoded
with ``dcmcjpeg +eb`` and sent with ``storescu -xy``). Each target gets a fresh, empty store for every
run; the median of ``--repeat`` runs is reported, with every run in the JSON.

Targets, all on loopback, started by this script on free ports:

- ``covidet``: ``covidet dicom-scp`` as users run it (its own process, SQLite database, fsync of
  every file and ``synchronous=FULL`` commits before each acknowledgement, INFO logging), with its
  in-process analysis: the shipped model analyses while the receiver receives, on the same cores.
- ``covidet-worker``: the same receiver with analysis out of process (``COVIDET_QUEUE=celery``, a
  private Redis): every accepted image becomes a job in Redis, and no ``covidet worker`` runs during
  the measurement, so the figure is the receiver's alone (the run records the jobs waiting in Redis).
- ``orthanc``: the Debian Orthanc with a generated configuration (own storage folder, no plugins,
  any calling AE, ``SyncStorageArea`` on: fsync like covidet), with ``TCP_NODELAY=1``.
- ``orthanc-default-env``: the same Orthanc without ``TCP_NODELAY`` in its environment, as its
  Debian service runs: dcmtk inside it leaves Nagle's algorithm on.
- ``storescp``: dcmtk's storescp writing files only (no database, no fsync): the protocol ceiling.
- ``pynetdicom-noop``: pynetdicom in this process with covidet's contexts, PDU size and TCP_NODELAY,
  acknowledging without storing anything: the ceiling of any pynetdicom-based receiver.

storescu and storescp always run with ``TCP_NODELAY=1``: without it dcmtk (3.6.7) leaves Nagle's
algorithm on and every association stalls on delayed ACKs. covidet sets TCP_NODELAY on its own
sockets.

``--profile DIR`` adds one run per covidet target and encoding, not counted in the figures, under
py-spy (``benchmarks/dicom_ingest_profile.py``): DIR gets the raw stacks and a "where the time goes"
summary (text and JSON), also printed, and the report a ``profiles`` section.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from covidet.imaging.dicom_writer import dicom_bytes, xray_to_dicom
from dicom_ingest_profile import render, start_recording, summarise  # benchmarks/ is on sys.path
from dicom_ingest_targets import CALLING_AE, REPO, STARTERS, binary, dcmtk_env

SUCCESS_LINE = "Received Store Response (Success)"
COVIDET_TARGETS = ("covidet", "covidet-worker")
OTHERS = ("orthanc", "orthanc-default-env", "storescp", "pynetdicom-noop")


# ------------------------------------------------------------------------------------ the images


@dataclass
class Corpus:
    uncompressed: list[Path]
    jpeg: list[Path]
    distinct_images: int
    sources: list[str]

    def describe(self) -> dict[str, object]:
        def mean_kib(files: list[Path]) -> float:
            return round(sum(f.stat().st_size for f in files) / len(files) / 1024, 1)

        return {
            "images": len(self.uncompressed),
            "distinct_images": self.distinct_images,
            "mean_kib_uncompressed": mean_kib(self.uncompressed),
            "mean_kib_jpeg": mean_kib(self.jpeg),
            "first_source": self.sources[0],
            "last_source": self.sources[-1],
        }


def dataset_root() -> Path:
    env = os.environ.get("COVIDET_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data" / "cxr"
    if not (root / "manifest.csv").is_file():
        raise SystemExit(f"chest X-ray dataset not found at {root}: set COVIDET_DATA")
    return root


def prepare(n: int, folder: Path) -> Corpus:
    """``n`` dataset images as uncompressed DX DICOM, and the same as JPEG baseline (dcmcjpeg)."""
    root = dataset_root()
    with (root / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    if len(rows) < n:
        raise SystemExit(f"the dataset has only {len(rows)} images")
    (folder / "raw").mkdir(parents=True)
    (folder / "jpeg").mkdir()
    digests = set()
    uncompressed = []
    for index, row in enumerate(rows):
        source = root / row["image"]
        digests.add(hashlib.sha256(source.read_bytes()).hexdigest())
        ds = xray_to_dicom(source, patient_id=f"bench-{row['patient_id']}")
        path = folder / "raw" / f"{index:04d}.dcm"
        path.write_bytes(dicom_bytes(ds))
        uncompressed.append(path)
    dcmcjpeg = binary("/usr/bin/dcmcjpeg", "dcmtk")
    jpeg = [folder / "jpeg" / f.name for f in uncompressed]

    def encode(pair: tuple[Path, Path]) -> None:
        subprocess.run([dcmcjpeg, "+eb", str(pair[0]), str(pair[1])], check=True, capture_output=True)

    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(encode, zip(uncompressed, jpeg, strict=True)))
    return Corpus(uncompressed, jpeg, len(digests), [r["image"] for r in rows])


# ------------------------------------------------------------------------------------ the sender


@dataclass
class SendResult:
    seconds: float
    acknowledged: int
    transfer_syntaxes: list[str]


def send(port: int, called_ae: str, files: list[Path], jpeg: bool) -> SendResult:
    """One storescu association with all ``files``; wall time from start to exit."""
    storescu = binary("/usr/bin/storescu", "dcmtk")
    command = [storescu, "-v", *(["-xy"] if jpeg else []), "-aet", CALLING_AE, "-aec", called_ae]
    command += ["127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dcmtk_env(), timeout=900)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}):\n{output[-3000:]}")
    syntaxes = sorted(set(re.findall(r"Converting transfer syntax: .* -> (.+)", output)))
    return SendResult(seconds, output.count(SUCCESS_LINE), syntaxes)


# ------------------------------------------------------------------------------------ driver


def run(
    target_name: str, corpus: Corpus, jpeg: bool, scratch: Path, profile: Path | None = None
) -> dict[str, object]:
    """One fresh target, one storescu association; ``profile``: record py-spy's raw stacks of the
    receiving process there, from just before the first image to the last acknowledgement."""
    folder = Path(tempfile.mkdtemp(prefix=f"{target_name}-", dir=scratch))
    files = corpus.jpeg if jpeg else corpus.uncompressed
    target = STARTERS[target_name](folder)
    after: dict[str, object] = {}
    try:
        recording = None
        if profile is not None:
            if target.pid is None:
                raise SystemExit(f"--profile: {target_name} has no process of its own to profile")
            recording = start_recording(target.pid, profile)
        try:
            result = send(target.port, target.called_ae, files, jpeg)
        finally:
            if recording is not None:
                recording.stop()
        stored = target.count()
        if target.after is not None:
            after = target.after()
    finally:
        target.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if result.acknowledged != len(files) or stored != len(files):
        raise RuntimeError(
            f"{target_name}: {result.acknowledged} acknowledged, {stored} stored of {len(files)}"
        )
    return {
        "seconds": round(result.seconds, 3),
        "images_per_s": round(len(files) / result.seconds, 1),
        "acknowledged": result.acknowledged,
        "stored": stored,
        "transfer_syntax": result.transfer_syntaxes,
        **target.details,
        **after,
    }


def profile_run(
    target_name: str, encoding: str, corpus: Corpus, scratch: Path, folder: Path
) -> dict[str, object]:
    """An extra run of a covidet target under py-spy (not counted: sampling slows it); writes the
    raw stacks and the summary (text, JSON) into ``folder`` and prints the text."""
    stem = folder / f"{target_name}-{encoding}"
    raw = stem.with_suffix(".pyspy.txt")
    measured = run(target_name, corpus, encoding == "jpeg", scratch, profile=raw)
    summary = summarise(raw)
    text = render(f"{target_name}, {encoding}, {measured['images_per_s']} images/s under py-spy", summary)
    stem.with_suffix(".summary.txt").write_text(text)
    stem.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text, file=sys.stderr)
    return {"raw": str(raw), "images_per_s_while_profiled": measured["images_per_s"], "summary": summary}


def ratios_of(results: dict[str, dict[str, dict[str, object]]]) -> dict[str, float]:
    """covidet's figures over the others' (and the worker configuration over the in-process one)."""
    ratios = {}
    for encoding, by_target in results.items():
        for ours in COVIDET_TARGETS:
            mine = by_target.get(ours, {}).get("images_per_s_median")
            others = OTHERS + (("covidet",) if ours == "covidet-worker" else ())
            for other in others:
                theirs = by_target.get(other, {}).get("images_per_s_median")
                if mine and theirs:
                    ratios[f"{encoding}: {ours}/{other}"] = round(float(mine) / float(theirs), 2)  # type: ignore[arg-type]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images per run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per target and encoding (median reported)"
    )
    parser.add_argument(
        "--targets",
        default=",".join(COVIDET_TARGETS + OTHERS),
        help="comma-separated, of: " + ", ".join(STARTERS),
    )
    parser.add_argument("--encodings", default="uncompressed,jpeg", help="comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dicom_ingest.json")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also run each covidet target once per encoding under py-spy (not counted) and write "
        "where its time goes into DIR",
    )
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(STARTERS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(STARTERS)}")
    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]

    scratch = Path(tempfile.mkdtemp(prefix="covidet-dicom-bench-"))
    try:
        corpus = prepare(args.n, scratch / "corpus")
        results: dict[str, dict[str, object]] = {}
        for encoding in encodings:
            for target_name in targets:
                runs = [run(target_name, corpus, encoding == "jpeg", scratch) for _ in range(args.repeat)]
                rates = [float(r["images_per_s"]) for r in runs]  # type: ignore[arg-type]
                summary = {"images_per_s_median": round(statistics.median(rates), 1), "runs": runs}
                results.setdefault(encoding, {})[target_name] = summary
                print(
                    f"{encoding:>12} {target_name:>19}: {summary['images_per_s_median']:7.1f} images/s",
                    file=sys.stderr,
                )
        ratios = ratios_of(results)
        profiles: dict[str, dict[str, object]] = {}
        if args.profile is not None:
            for encoding in encodings:
                for target_name in (t for t in targets if t in COVIDET_TARGETS):
                    profiles.setdefault(encoding, {})[target_name] = profile_run(
                        target_name, encoding, corpus, scratch, args.profile
                    )
        report = {
            "benchmark": "DICOM C-STORE ingest throughput, one association, loopback",
            "command": "python benchmarks/dicom_ingest.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            "sender": "dcmtk storescu "
            + subprocess.run(
                ["/usr/bin/storescu", "--version"], capture_output=True, text=True
            ).stdout.split()[2],
            "environment": {
                "TCP_NODELAY": "1 for storescu, storescp and 'orthanc'; unset for 'orthanc-default-env'"
            },
            "corpus": corpus.describe(),
            "repeat": args.repeat,
            "results": results,
            "ratios": ratios,
            **({"profiles": profiles} if profiles else {}),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(
            json.dumps(
                {
                    "results": {
                        e: {t: v["images_per_s_median"] for t, v in r.items()} for e, r in results.items()
                    },
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
