"""The load generators of ``benchmarks/load.py``, each the body of one spawned process.

Every generator is a plain function ``run_*(config, start, start_at, results)``: it imports
and loads what it needs, puts ``"ready"`` on ``results``, waits for ``start`` (a multiprocessing
event; ``start_at.value`` is then the common wall-clock start), drives its channel until
``start_at + config["seconds"]`` and puts one JSON-able dict on ``results``. Times in the dicts are
seconds; ``ok_at`` lists the completion times (relative to the start) of every acknowledged
operation, from which the driver computes held throughput.

The clients are the ones a hospital's devices would use: pynetdicom Storage SCUs (one AE and one
association at a time per modality thread, TCP_NODELAY like dcmtk with ``TCP_NODELAY=1``), paho-mqtt
MQTT v5 clients with each sensor's own credentials (QoS 1), httpx with a bearer token. The port-scan
pattern is in benchmarks/load_scan.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["run_api_readers", "run_dicom_senders", "run_mqtt_sensors"]


def _begin(start: Any, start_at: Any, results: Any, seconds: float) -> tuple[float, float]:
    """Say ready, wait for the common start; return (start wall time, deadline wall time)."""
    results.put("ready")
    start.wait()
    begin = float(start_at.value)
    delay = begin - time.time()
    if delay > 0:
        time.sleep(delay)
    return begin, begin + seconds


# ------------------------------------------------------------------------------------------ DICOM


def _sender(
    config: dict[str, Any], files: list[str], begin_deadline: list[float], out: dict[str, Any]
) -> None:
    """One modality: associations of ``images_per_association`` C-STOREs each, until the deadline."""
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
    from pynetdicom import AE, evt
    from pynetdicom.status import code_to_category

    from covidet.imaging.dicom_writer import DX_FOR_PRESENTATION
    from covidet.ingest.dicom_scp import set_tcp_nodelay

    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title=config["calling_ae"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(DX_FOR_PRESENTATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    handlers = [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]
    begin, deadline = begin_deadline
    index = 0
    while time.time() < deadline:
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", config["port"], ae_title=config["called_ae"], evt_handlers=handlers)
        if not assoc.is_established:
            primitive = getattr(assoc.acceptor, "primitive", None)
            if assoc.is_rejected and primitive is not None:
                reason = (
                    f"association rejected: {primitive.result_str}, {primitive.source_str}, "
                    f"{primitive.reason_str}"
                )
            else:
                reason = "association aborted or failed"
            out["refusals"][reason] += 1
            time.sleep(0.5)  # as a modality would: retry a little later
            continue
        out["associate_s"].append(time.perf_counter() - t0)
        for _ in range(config["images_per_association"]):
            if time.time() >= deadline or not assoc.is_established:
                break
            ds = datasets[index % len(datasets)]
            index += 1
            # Every C-STORE a new instance in a new study, so that each acknowledgement is checkable.
            uid = generate_uid()
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
            out["sent"] += 1
            t1 = time.perf_counter()
            try:
                response = assoc.send_c_store(ds)
            except (RuntimeError, ValueError) as exc:
                out["refusals"][f"send failed: {exc}"] += 1
                break
            elapsed = time.perf_counter() - t1
            code = response.get("Status") if response else None
            if code is None:
                out["refusals"]["no C-STORE response (association aborted or timed out)"] += 1
                break
            if code_to_category(int(code)) in ("Success", "Warning"):
                out["acked"].append(uid)
                out["latency_s"].append(elapsed)
                out["ok_at"].append(time.time() - begin)
            else:
                comment = str(response.get("ErrorComment") or "")
                out["refusals"][f"status 0x{int(code):04X} {comment}".strip()] += 1
        if assoc.is_established:
            assoc.release()


def run_dicom_senders(config: dict[str, Any], start: Any, start_at: Any, results: Any) -> None:
    """``config["associations"]`` modality threads sending ``config["files"]`` (each thread its own
    slice of them, loaded once); reports acks, C-STORE and association latencies, refusals."""
    import pynetdicom  # noqa: F401  (imported before the start: its import is not load)

    threads_n = config["associations"]
    files = config["files"]
    outs = [
        {"sent": 0, "acked": [], "latency_s": [], "associate_s": [], "ok_at": [], "refusals": Counter()}
        for _ in range(threads_n)
    ]
    begin_deadline: list[float] = []
    threads = []
    for k in range(threads_n):
        mine = files[k::threads_n] or [files[k % len(files)]]
        threads.append(
            threading.Thread(target=_sender, args=(config, mine[:4], begin_deadline, outs[k]), daemon=True)
        )
    begin_deadline.extend(_begin(start, start_at, results, config["seconds"]))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(config["seconds"] + 120)
    merged: dict[str, Any] = {"sent": 0, "acked": [], "latency_s": [], "associate_s": [], "ok_at": []}
    refusals: Counter[str] = Counter()
    for out in outs:
        merged["sent"] += out["sent"]
        for key in ("acked", "latency_s", "associate_s", "ok_at"):
            merged[key].extend(out[key])
        refusals.update(out["refusals"])
    merged["refusals"] = dict(refusals)
    merged["threads_unfinished"] = sum(t.is_alive() for t in threads)
    results.put(merged)


# ------------------------------------------------------------------------------------------- MQTT


def _sensor(
    config: dict[str, Any],
    sensor: dict[str, Any],
    share: int,
    begin_deadline: list[float],
    out: dict[str, Any],
) -> None:
    """One bedside sensor: ``share`` readings with QoS 1, paced at its part of the rate, at most
    ``window`` unacknowledged; latency = publish call to PUBACK."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=sensor["mqtt_username"], protocol=mqtt.MQTTv5
    )
    client.username_pw_set(sensor["mqtt_username"], sensor["mqtt_password"])
    client.max_inflight_messages_set(config["window"])
    window = threading.Semaphore(config["window"])
    lock = threading.Lock()
    pending: dict[int, tuple[float, str]] = {}
    early: dict[int, tuple[float, Any]] = {}
    connected = threading.Event()
    begin, deadline = begin_deadline[0], begin_deadline[1]

    def settle(t0: float, stamp: str, acked_at: float, reason: Any) -> None:
        if reason.is_failure:
            out["refusals"][f"PUBACK {reason}"] += 1
        else:
            out["acked"].append(stamp)
            out["latency_s"].append(acked_at - t0)
            out["ok_at"].append(time.time() - begin)
        window.release()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        now = time.perf_counter()
        with lock:  # never held while calling into paho (paho calls this under its own lock)
            entry = pending.pop(mid, None)
            if entry is None:
                early[mid] = (now, reason)
                return
        settle(entry[0], entry[1], now, reason)

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            out["refusals"][f"CONNACK {reason}"] += 1
        else:
            connected.set()

    client.on_publish = on_publish
    client.on_connect = on_connect
    client.connect("127.0.0.1", config["port"])
    client.loop_start()
    if not connected.wait(60):
        out["refusals"]["not connected within 60 s"] += share
        client.loop_stop()
        return
    interval = config["sensors"] / config["rate"] if config["rate"] > 0 else 0.0
    patients = config["patients"]
    base = datetime.now(UTC)
    last = base - timedelta(seconds=1)
    next_at = begin
    for i in range(share):
        if time.time() >= deadline:
            out["not_sent"] += share - i
            break
        if interval:
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
        if not window.acquire(timeout=max(0.0, deadline - time.time())):
            out["not_sent"] += share - i
            break
        # measured_at: the publish time, strictly increasing per sensor (the (device, patient, time)
        # triple is the reading's identity), so each acknowledged reading is checkable afterwards.
        last = max(datetime.now(UTC), last + timedelta(milliseconds=1))
        stamp = last.isoformat()
        payload = {
            "patient_id": patients[i % len(patients)],
            "timestamp": stamp,
            "spo2": 90 + i % 10,
            "temperature": 36.5 + (i % 20) / 10,
            "heart_rate": 60 + i % 60,
            "respiratory_rate": 12 + i % 10,
        }
        t0 = time.perf_counter()
        info = client.publish(sensor["vitals_topic"], json.dumps(payload).encode(), qos=1)
        out["sent"] += 1
        with lock:
            got = early.pop(info.mid, None)
            if got is None:
                pending[info.mid] = (t0, stamp)
        if got is not None:
            settle(t0, stamp, got[0], got[1])
    # Wait for the last acknowledgements (bounded), then leave cleanly.
    give_up = time.time() + 30
    while time.time() < give_up:
        with lock:
            if not pending:
                break
        time.sleep(0.05)
    with lock:
        if pending:
            out["refusals"]["no PUBACK within 30 s of the end"] += len(pending)
    client.disconnect()
    client.loop_stop()


def run_mqtt_sensors(config: dict[str, Any], start: Any, start_at: Any, results: Any) -> None:
    """``config["sensors"]`` sensors (own credentials each) publishing ``config["messages"]`` readings
    in all, spread evenly over ``config["seconds"]`` (``config["rate"]`` per second overall)."""
    sensors = config["sensor_credentials"]
    total = config["messages"]
    shares = [total // len(sensors) + (1 if i < total % len(sensors) else 0) for i in range(len(sensors))]
    outs = [
        {
            "sensor": s["device_id"],
            "sent": 0,
            "not_sent": 0,
            "acked": [],
            "latency_s": [],
            "ok_at": [],
            "refusals": Counter(),
        }
        for s in sensors
    ]
    begin_deadline: list[float] = []
    threads = [
        threading.Thread(target=_sensor, args=(config, s, n, begin_deadline, o), daemon=True)
        for s, n, o in zip(sensors, shares, outs, strict=True)
    ]
    begin_deadline.extend(_begin(start, start_at, results, config["seconds"]))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(config["seconds"] + 120)
    refusals: Counter[str] = Counter()
    for out in outs:
        refusals.update(out.pop("refusals"))
    results.put(
        {
            "sent": sum(o["sent"] for o in outs),
            "not_sent": sum(o["not_sent"] for o in outs),
            "acked_by_sensor": {str(o["sensor"]): o["acked"] for o in outs},
            "latency_s": [x for o in outs for x in o["latency_s"]],
            "ok_at": [x for o in outs for x in o["ok_at"]],
            "refusals": dict(refusals),
        }
    )


# -------------------------------------------------------------------------------------------- API


async def _reader(
    client: Any, deadline: float, begin: float, out: dict[str, Any], rng: random.Random
) -> None:
    """One reader: worklist, studies, an image's details and (every 4th round) its thumbnail."""
    ids: list[int] = []
    round_ = 0

    async def get(name: str, url: str) -> Any:
        t0 = time.perf_counter()
        try:
            response = await client.get(url)
        except Exception as exc:  # a refused or timed-out request is a result, not a crash
            out["codes"][f"{name}: {type(exc).__name__}"] += 1
            return None
        elapsed = time.perf_counter() - t0
        out["codes"][f"{name}: {response.status_code}"] += 1
        if response.status_code == 200:
            out["latency_s"].setdefault(name, []).append(elapsed)
            out["ok_at"].append(time.time() - begin)
            return response
        return None

    while time.time() < deadline:
        round_ += 1
        response = await get("worklist", "/api/v1/worklist?limit=50")
        if response is not None:
            ids = [item["image_id"] for item in response.json()["items"]] or ids
        if time.time() >= deadline:
            break
        await get("studies", "/api/v1/studies?limit=50")
        if ids and time.time() < deadline:
            image_id = rng.choice(ids)
            await get("image", f"/api/v1/images/{image_id}")
            if round_ % 4 == 0 and time.time() < deadline:
                await get("pixels", f"/api/v1/images/{image_id}/pixels.png?max_size=256")


def run_api_readers(config: dict[str, Any], start: Any, start_at: Any, results: Any) -> None:
    """``config["readers"]`` concurrent closed-loop readers (no think time) with one bearer token."""
    import httpx

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {"codes": Counter(), "latency_s": {}, "ok_at": []}
        limits = httpx.Limits(max_connections=config["readers"], max_keepalive_connections=config["readers"])
        headers = {"Authorization": f"Bearer {config['token']}"}
        async with httpx.AsyncClient(
            base_url=config["base_url"], headers=headers, limits=limits, timeout=60.0
        ) as client:
            begin, deadline = await asyncio.to_thread(_begin, start, start_at, results, config["seconds"])
            await asyncio.gather(
                *(_reader(client, deadline, begin, out, random.Random(k)) for k in range(config["readers"]))
            )
        out["codes"] = dict(out["codes"])
        return out

    results.put(asyncio.run(main()))
