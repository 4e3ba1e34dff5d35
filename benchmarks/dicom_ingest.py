"""C-STORE throughput of covidet's DICOM receiver against Orthanc and dcmtk's storescp.

    .venv/bin/python benchmarks/dicom_ingest.py --out benchmarks/results/dicom_ingest.json
    .venv/bin/python benchmarks/dicom_ingest.py --n 50 --repeat 1 --targets covidet --out /tmp/d.json

What is measured: dcmtk's ``storescu`` sends ``--n`` real chest X-rays (the first rows of the dataset
manifest, ``$COVIDET_DATA`` or ``../shared/data/cxr``, converted once to DX DICOM with
``xray_to_dicom``) in **one association**, and the wall time of that storescu run gives images/s.
Two encodings: uncompressed (Explicit VR Little Endian) and JPEG baseline (the same files encoded
with ``dcmcjpeg +eb`` and sent with ``storescu -xy``). Each target gets a fresh, empty store for every
run; the median of ``--repeat`` runs is reported, with every run in the JSON.

Targets, all on loopback, started by this script on free ports:

- ``covidet``: ``covidet dicom-scp`` as users run it (its own process, SQLite database, fsync of
  every file and ``synchronous=FULL`` commits before each acknowledgement, INFO logging).
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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from covidet.imaging.dicom_writer import dicom_bytes, xray_to_dicom

REPO = Path(__file__).resolve().parents[1]
SUCCESS_LINE = "Received Store Response (Success)"
CALLING_AE = "BENCHSCU"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def binary(path: str, package: str) -> str:
    if not Path(path).is_file():
        raise SystemExit(f"{path} not found: install the Debian package {package!r}")
    return path


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


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


# ------------------------------------------------------------------------------------ the targets


@dataclass
class Target:
    """A started server: where to send, how many objects it holds, how to stop it."""

    port: int
    called_ae: str
    count: Callable[[], int]
    stop: Callable[[], None]
    details: dict[str, object] = field(default_factory=dict)


def _terminate(process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if log is not None and process.returncode not in (0, -15):
        print(log.read_text()[-2000:], file=sys.stderr)


def start_covidet(folder: Path) -> Target:
    home = folder / "home"
    env = {**os.environ, "COVIDET_HOME": str(home), "COVIDET_LOG_LEVEL": "INFO"}
    env.pop("COVIDET_DATABASE_URL", None)
    cli = [sys.executable, "-m", "covidet.cli"]
    subprocess.run(
        [*cli, "devices", "add", "bench-modality", "--kind", "modality", "--ae-title", CALLING_AE],
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = folder / "covidet.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*cli, "dicom-scp", "--port", str(port)], env=env, stdout=handle, stderr=handle
        )
    wait_for_port(port, process)

    def count() -> int:
        import sqlite3

        with sqlite3.connect(home / "covidet.db") as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])

    return Target(port, "COVIDET", count, lambda: _terminate(process, log), {"database": "sqlite"})


def start_orthanc(folder: Path, *, nodelay: bool = True) -> Target:
    """Orthanc with a generated configuration; ``nodelay=False`` runs it as its Debian service does
    (no TCP_NODELAY in the environment: dcmtk inside Orthanc leaves Nagle's algorithm on)."""
    orthanc = binary("/usr/sbin/Orthanc", "orthanc")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "covidet-benchmark",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,  # any calling AE title may store
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": False,
        "SyncStorageArea": True,  # fsync every file, like covidet
        "SaveJobs": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as handle:
        env = dcmtk_env() if nodelay else {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        process = subprocess.Popen([orthanc, str(config_path)], env=env, stdout=handle, stderr=handle)
    wait_for_port(dicom_port, process)
    wait_for_port(http_port, process)

    def count() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as response:
            return int(json.load(response)["CountInstances"])

    version = subprocess.run([orthanc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    details = {"version": version, "TCP_NODELAY": "1" if nodelay else "unset (Nagle on)"}
    return Target(dicom_port, "ORTHANC", count, lambda: _terminate(process, log), details)


def start_storescp(folder: Path) -> Target:
    storescp = binary("/usr/bin/storescp", "dcmtk")
    out = folder / "received"
    out.mkdir()
    port = free_port()
    # +xa: accept every transfer syntax it knows (JPEG arrives as JPEG); files written as received.
    process = subprocess.Popen(
        [storescp, "+xa", "-od", str(out), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return Target(
        port, "STORESCP", lambda: sum(1 for p in out.iterdir() if p.is_file()), lambda: _terminate(process)
    )


def start_pynetdicom_noop(folder: Path) -> Target:
    """pynetdicom with covidet's contexts, PDU size and TCP_NODELAY, acknowledging without storing:
    what the Python DICOM stack itself costs (the ceiling of any pynetdicom receiver)."""
    from pynetdicom import AE, evt

    from covidet.ingest.dicom_scp import ACCEPTED_TRANSFER_SYNTAXES, DEFAULT_MAX_PDU, set_tcp_nodelay
    from covidet.ingest.service import ACCEPTED_SOP_CLASSES

    received = [0]

    def handle_store(event: object) -> int:
        received[0] += 1
        return 0x0000

    ae = AE(ae_title="NOOP")
    ae.maximum_pdu_size = DEFAULT_MAX_PDU
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    handlers = [(evt.EVT_C_STORE, handle_store), (evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    assert server is not None
    return Target(int(server.server_address[1]), "NOOP", lambda: received[0], server.shutdown)


STARTERS: dict[str, Callable[[Path], Target]] = {
    "covidet": start_covidet,
    "orthanc": start_orthanc,
    "orthanc-default-env": lambda folder: start_orthanc(folder, nodelay=False),
    "storescp": start_storescp,
    "pynetdicom-noop": start_pynetdicom_noop,
}


# ------------------------------------------------------------------------------------ driver


def run(target_name: str, corpus: Corpus, jpeg: bool, scratch: Path) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix=f"{target_name}-", dir=scratch))
    files = corpus.jpeg if jpeg else corpus.uncompressed
    target = STARTERS[target_name](folder)
    try:
        result = send(target.port, target.called_ae, files, jpeg)
        stored = target.count()
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images per run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per target and encoding (median reported)"
    )
    parser.add_argument(
        "--targets",
        default="covidet,orthanc,orthanc-default-env,storescp,pynetdicom-noop",
        help="comma-separated",
    )
    parser.add_argument("--encodings", default="uncompressed,jpeg", help="comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dicom_ingest.json")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
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
                    f"{encoding:>12} {target_name:>9}: {summary['images_per_s_median']:7.1f} images/s",
                    file=sys.stderr,
                )
        ratios = {}
        for encoding, by_target in results.items():
            covidet = by_target.get("covidet", {}).get("images_per_s_median")
            for other in ("orthanc", "orthanc-default-env", "storescp", "pynetdicom-noop"):
                theirs = by_target.get(other, {}).get("images_per_s_median")
                if covidet and theirs:
                    ratios[f"{encoding}: covidet/{other}"] = round(float(covidet) / float(theirs), 2)  # type: ignore[arg-type]
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
