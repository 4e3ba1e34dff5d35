"""The deployment under test of ``benchmarks/load.py``: set up with the ``covidet`` CLI as a user
would, run as one ``covidet serve`` process beside a private Mosquitto, watched, stopped, and checked
for loss afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from covidet.app.broker import Mosquitto, start_mosquitto
from covidet.app.processes import free_port, wait_for_port
from covidet.imaging.dicom_writer import dicom_bytes
from covidet.simulate.modality import load_cases

__all__ = [
    "Deployment",
    "check_loss",
    "prepare_images",
    "probe_api",
    "recover_readings",
    "start_deployment",
    "stop_deployment",
    "wait_for_drain",
    "warm_up",
]

CALLING_AE = "LOADSCU"
INGEST_USER = "covidet-ingest"
READER = "load-reader"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def prepare_images(data: Path, pool: int, folder: Path) -> tuple[list[Path], list[str]]:
    """``pool`` val-split X-rays as DX DICOM files (the simulator's conversion), and their patients."""
    folder.mkdir(parents=True)
    cases = load_cases(data, split="val", limit=pool)
    paths = []
    for index, case in enumerate(cases):
        path = folder / f"{index:04d}.dcm"
        path.write_bytes(dicom_bytes(case.to_dataset()))
        paths.append(path)
    return paths, sorted({case.patient_key for case in cases})


def covidet_command() -> list[str]:
    """The ``covidet`` command of this interpreter's environment (the console script, as users run it)."""
    script = Path(sys.executable).parent / "covidet"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "covidet.cli"]


@dataclass
class Deployment:
    """A running ``covidet serve`` with its broker and the credentials the generators use."""

    home: Path
    env: dict[str, str]
    broker: Mosquitto
    process: subprocess.Popen[bytes]
    log_path: Path
    http_port: int
    dicom_port: int
    sensors: list[dict[str, Any]]
    token: str
    images: list[Path]
    patient_keys: list[str]
    called_ae: str = "COVIDET"
    calling_ae: str = CALLING_AE
    closed: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def database(self) -> Path:
        return self.home / "covidet.db"

    def _proc(self) -> tuple[dict[str, int], float]:
        """(VmRSS / VmHWM in kB, CPU seconds) of the server process."""
        status = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                status[key] = int(value.split()[0])
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return status, (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def sample_server(self, until: float) -> dict[str, Any]:
        """Sample the server's RSS every 0.5 s until the wall time ``until``; its CPU use over that."""
        status, cpu_before = self._proc()
        rss = []
        while time.time() < until:
            with contextlib.suppress(OSError):
                rss.append(self._proc()[0]["VmRSS"])
            time.sleep(0.5)
        _status, cpu_after = self._proc()
        return {
            "rss_before_load_mib": round(status["VmRSS"] / 1024, 1),
            "rss_max_sampled_mib": round(max(rss, default=0) / 1024, 1),
            "cpu_seconds": round(cpu_after - cpu_before, 1),
        }

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.broker.stop()


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [*covidet_command(), *args], env=env, input=stdin, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"covidet {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def start_deployment(scratch: Path, sensors: int, images: list[Path], patient_keys: list[str]) -> Deployment:
    """Register the devices and the reader with the CLI, start Mosquitto and ``covidet serve``."""
    home = scratch / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIDET_")}
    env |= {
        "COVIDET_HOME": str(home),
        "COVIDET_MQTT_BROKER_HOST": "127.0.0.1",
        "COVIDET_MQTT_USERNAME": INGEST_USER,
        "COVIDET_MQTT_PASSWORD": secrets.token_urlsafe(18),
        "COVIDET_MOSQUITTO_DIR": str(scratch / "mosquitto-files"),
    }
    _cli(env, "devices", "add", "load-modality", "--kind", "modality", "--ae-title", CALLING_AE)
    credentials = [
        json.loads(_cli(env, "devices", "add", f"load-sensor-{i}", "--kind", "sensor"))
        for i in range(sensors)
    ]
    _cli(env, "users", "add", READER, "--role", "radiologist", stdin=secrets.token_urlsafe(18) + "\n")
    token = json.loads(_cli(env, "api-token", "create", READER, "--name", "load-test"))["access_token"]
    broker = start_mosquitto(lambda files_dir: _cli(env, "mqtt-broker-files", "--dir", str(files_dir)))
    http_port, dicom_port = free_port(), free_port()
    env["COVIDET_MQTT_BROKER_PORT"] = str(broker.port)
    log_path = scratch / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *covidet_command(),
                "serve",
                "--port",
                str(http_port),
                "--dicom-port",
                str(dicom_port),
                "--mqtt",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deployment = Deployment(
        home, env, broker, process, log_path, http_port, dicom_port, credentials, token, images, patient_keys
    )
    try:
        for port, timeout in ((http_port, 300), (dicom_port, 60)):
            if not wait_for_port(port, timeout=timeout, process=process):
                raise RuntimeError(f"covidet serve does not listen on port {port}")
        deadline = time.monotonic() + 60
        while f"u'{INGEST_USER}'" not in broker.log():  # the subscriber's CONNECT, in the broker's log
            if time.monotonic() > deadline:
                raise RuntimeError("the covidet subscriber did not connect to Mosquitto")
            time.sleep(0.2)
        with urllib.request.urlopen(f"{deployment.base_url}/api/v1/health", timeout=30) as response:
            if json.load(response)["status"] != "ok":
                raise RuntimeError("covidet serve is not healthy")
    except BaseException:
        deployment.close()
        print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    return deployment


def warm_up(deployment: Deployment, data: Path, timeout: float) -> dict[str, Any]:
    """Send one X-ray with the device simulator and wait until it is assessed, so that the model is
    loaded (lazily, at the first image) before the load starts, as in a server that has been running."""
    from covidet.simulate.modality import ModalitySimulator

    t0 = time.monotonic()
    report = ModalitySimulator(
        "127.0.0.1", deployment.dicom_port, called_ae=deployment.called_ae, calling_ae=CALLING_AE
    ).send(load_cases(data, split="val", limit=1))
    if report.acknowledged != 1:
        raise RuntimeError(f"the warm-up image was not stored: {report.to_json()}")
    while time.monotonic() - t0 < timeout:
        with contextlib.closing(sqlite3.connect(f"file:{deployment.database}?mode=ro", uri=True)) as conn:
            if conn.execute("SELECT count(*) FROM inferences").fetchone()[0]:
                break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"the warm-up image was not assessed within {timeout} s")
    return {"images": 1, "seconds_to_first_assessment": round(time.monotonic() - t0, 1)}


def probe_api(deployment: Deployment, rounds: int = 5) -> dict[str, float | None]:
    """Median latency (ms) of each reader endpoint for one client alone: the same requests as the
    readers', ``rounds`` times in sequence (what the data alone costs, without contention)."""
    import httpx

    times: dict[str, list[float]] = {}
    headers = {"Authorization": f"Bearer {deployment.token}"}
    with httpx.Client(base_url=deployment.base_url, headers=headers, timeout=120) as client:
        for _ in range(rounds):
            urls = {"worklist": "/api/v1/worklist?limit=50", "studies": "/api/v1/studies?limit=50"}
            image_id = None
            for name, url in urls.items():
                t0 = time.perf_counter()
                response = client.get(url)
                times.setdefault(name, []).append(time.perf_counter() - t0)
                response.raise_for_status()
                if name == "worklist" and response.json()["items"]:
                    image_id = response.json()["items"][0]["image_id"]
            if image_id is None:
                continue
            for name, url in (
                ("image", f"/api/v1/images/{image_id}"),
                ("pixels", f"/api/v1/images/{image_id}/pixels.png?max_size=256"),
            ):
                t0 = time.perf_counter()
                client.get(url).raise_for_status()
                times.setdefault(name, []).append(time.perf_counter() - t0)
    return {k: round(sorted(v)[len(v) // 2] * 1000, 1) for k, v in times.items()}


def _db_counts(database: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as conn:
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        vitals = conn.execute("SELECT count(*) FROM vital_signs").fetchone()[0]
    return int(images), int(vitals)


def _acked(results: dict[str, Any]) -> tuple[int, int]:
    images = sum(len(v["acked"]) for k, v in results.items() if k.startswith("dicom-"))
    readings = sum(len(a) for a in results.get("mqtt", {}).get("acked_by_sensor", {}).values())
    return images, readings


def wait_for_drain(deployment: Deployment, results: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Wait until the database holds at least as many images and readings as were acknowledged (the
    broker acknowledges before covidet stores), or for ``timeout`` s, or 30 s without progress."""
    want_images, want_readings = _acked(results)
    begin = last_change = time.monotonic()
    last = (-1, -1)
    while True:
        counts = _db_counts(deployment.database)
        if counts[0] >= want_images and counts[1] >= want_readings:
            break
        now = time.monotonic()
        if counts != last:
            last, last_change = counts, now
        if now - begin > timeout or now - last_change > 30:
            break
        time.sleep(0.5)
    return {
        "seconds_after_load": round(time.monotonic() - begin, 1),
        "images_in_database": counts[0],
        "readings_in_database": counts[1],
        "caught_up": counts[0] >= want_images and counts[1] >= want_readings,
    }


def _log_summary(text: str) -> dict[str, Any]:
    """WARNING / ERROR lines of the server log, grouped with numbers and UIDs blanked."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for line in text.splitlines():
        for level in ("WARNING", "ERROR", "CRITICAL"):
            if f" {level} " in line or line.startswith(level):
                levels[level] += 1
                message = line.split(f" {level} ", 1)[-1]
                messages[f"{level} " + re.sub(r"\d[\d.:]*", "#", message)[:160]] += 1
    return {
        "levels": dict(levels),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "top_messages": dict(messages.most_common(12)),
    }


def stop_deployment(deployment: Deployment) -> dict[str, Any]:
    """Read the server's peak RSS, stop it with SIGTERM (timed), run ``covidet stats --json``."""
    status, _cpu = deployment._proc()
    t0 = time.monotonic()
    deployment.process.send_signal(signal.SIGTERM)
    try:
        code = deployment.process.wait(120)
    except subprocess.TimeoutExpired:
        deployment.process.kill()
        code = deployment.process.wait()
    shutdown = time.monotonic() - t0
    return {
        "peak_rss_mib": round(status["VmHWM"] / 1024, 1),
        "shutdown_s": round(shutdown, 1),
        "exit_code": code,
        "log": _log_summary(deployment.log_path.read_text(errors="replace")),
    }


def recover_readings(deployment: Deployment, results: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Readings the broker acknowledged but ``covidet serve`` had not stored when it stopped are not
    lost while the broker keeps the subscriber's QoS-1 session: start ``covidet mqtt-ingest`` (same
    user, same client id), as an operator restarting covidet would, until they are stored, the
    ``timeout`` passes, or 60 s pass without progress after its first commit. Then stop it and the
    broker, and run ``covidet stats --json``."""
    _images, want = _acked(results)
    before = _db_counts(deployment.database)[1]
    outcome: dict[str, Any] = {"needed": before < want, "readings_in_database_before": before}
    if before < want:
        log_path = deployment.log_path.with_name("mqtt-ingest.log")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*covidet_command(), "mqtt-ingest"], env=deployment.env, stdout=log, stderr=subprocess.STDOUT
            )
        t0 = time.monotonic()
        last, last_change = before, None
        while (count := _db_counts(deployment.database)[1]) < want and process.poll() is None:
            now = time.monotonic()
            if count != last:
                last, last_change = count, now
            # No progress rule before the first commit: on a starved machine the command alone can
            # take a minute to start (a first version gave up after 30 s and proved nothing).
            if now - t0 > timeout or (last_change is not None and now - last_change > 60):
                break
            time.sleep(0.5)
        outcome["seconds"] = round(time.monotonic() - t0, 1)
        process.send_signal(signal.SIGTERM)
        try:
            outcome["exit_code"] = process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            outcome["exit_code"] = process.wait()
        outcome["readings_in_database_after"] = _db_counts(deployment.database)[1]
    deployment.broker.stop()
    deployment.closed = True
    outcome["covidet_stats"] = json.loads(_cli(deployment.env, "stats", "--json"))
    return outcome


def check_loss(deployment: Deployment, results: dict[str, Any]) -> dict[str, Any]:
    """Every acknowledged SOP Instance UID and reading (device, time) must be in the database."""
    acked_uids = {u for k, v in results.items() if k.startswith("dicom-") for u in v["acked"]}
    acked_readings = {
        (int(device), int(datetime.fromisoformat(stamp).timestamp() * 1_000_000))
        for device, stamps in results.get("mqtt", {}).get("acked_by_sensor", {}).items()
        for stamp in stamps
    }
    with contextlib.closing(sqlite3.connect(f"file:{deployment.database}?mode=ro", uri=True)) as conn:
        stored_uids = {row[0] for row in conn.execute("SELECT sop_instance_uid FROM images")}
        # SQLite keeps the UTC time as text, 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's DateTime).
        stored_readings = set()
        for device, measured in conn.execute("SELECT device_id, measured_at FROM vital_signs"):
            when = datetime.fromisoformat(str(measured) + ("" if "+" in str(measured) else "+00:00"))
            stored_readings.add((int(device), int(when.timestamp() * 1_000_000)))
    lost_uids = acked_uids - stored_uids
    lost_readings = acked_readings - stored_readings
    return {
        "images_acknowledged": len(acked_uids),
        "images_lost": len(lost_uids),
        "images_lost_examples": sorted(lost_uids)[:5],
        "images_stored_without_ack_seen": len(stored_uids - acked_uids),
        "readings_acknowledged": len(acked_readings),
        "readings_lost": len(lost_readings),
        "readings_lost_examples": [list(r) for r in sorted(lost_readings)[:5]],
        "readings_stored_without_ack_seen": len(stored_readings - acked_readings),
    }
