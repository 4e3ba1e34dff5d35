"""Benchmark the MQTT vitals ingest: readings persisted per second, and readings lost (must be 0).

    python benchmarks/mqtt_ingest.py --out benchmarks/results/mqtt_ingest.json
    python benchmarks/mqtt_ingest.py --messages 5000 --publishers 2 --postgres --out /tmp/m.json

A private Mosquitto (covidet.app.broker: password file, ACL, persistence) on a free loopback port;
``--publishers`` sensor devices registered with ``queries.create_device``, each publishing its share of
``--messages`` distinct readings with QoS 1 (paho-mqtt, MQTT v5, 100 in flight) from its own process,
so that publishers and the subscriber do not share an interpreter lock; the covidet
:class:`~covidet.ingest.mqtt.VitalsSubscriber` in this process writes to SQLite (always, synchronous=FULL)
and PostgreSQL (``--postgres``, a private cluster with fsync off, so that figure is an upper bound).

Measured per backend: ``persisted_per_s`` = rows stored / (last commit - first publish), both wall-clock;
``lost`` = messages the broker acknowledged (PUBACK success) minus rows stored. Results go to JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from sqlalchemy import func, select

from covidet.app.broker import start_mosquitto
from covidet.app.postgres import start_postgres
from covidet.ingest.mqtt import VitalsSubscriber, write_mosquitto_files
from covidet.store import Database, VitalSignRecord, queries

INGEST_USER, INGEST_PASSWORD = "covidet-ingest", "bench-ingest-secret"


def publish(port: int, username: str, password: str, topic: str, count: int, index: int, out: Any) -> None:
    """Publisher process: ``count`` distinct readings with QoS 1; reports first-publish time and acks."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(100)
    client.username_pw_set(username, password)
    acked = failed = 0
    done = threading.Event()
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        connected.set()

    def on_publish(client: Any, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        nonlocal acked, failed
        if reason_code.is_failure:
            failed += 1
        else:
            acked += 1
        if acked + failed == count:
            done.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(30)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    payloads = [
        json.dumps(
            {
                "patient_id": f"bench-{index}-{i % 50}",
                "timestamp": (base + timedelta(milliseconds=10 * i)).isoformat(),
                "spo2": 90 + i % 10,
                "temperature": 36.5 + (i % 20) / 10,
                "heart_rate": 60 + i % 60,
                "respiratory_rate": 12 + i % 10,
            }
        ).encode()
        for i in range(count)
    ]
    started = time.time()
    for payload in payloads:
        client.publish(topic, payload, qos=1)
    done.wait(600)
    finished = time.time()
    client.disconnect()
    client.loop_stop()
    out.put(
        {"index": index, "first_publish": started, "last_puback": finished, "acked": acked, "failed": failed}
    )


def run(backend: str, url: str, messages: int, publishers: int, batch_size: int) -> dict[str, Any]:
    db = Database(url)
    sensors = []
    with db.session(write=True) as session:
        for index in range(publishers):
            sensors.append(queries.create_device(session, f"bench-sensor-{index}", "sensor"))

    def write_files(directory: Path) -> None:
        with db.session() as session:
            write_mosquitto_files(
                session, directory, ingest_username=INGEST_USER, ingest_password=INGEST_PASSWORD
            )

    broker = start_mosquitto(write_files)
    subscriber = VitalsSubscriber(
        db, port=broker.port, username=INGEST_USER, password=INGEST_PASSWORD, batch_size=batch_size
    )
    try:
        subscriber.start()
        if not subscriber.wait_ready(30):
            raise RuntimeError("the subscriber did not connect")
        shares = [messages // publishers + (1 if i < messages % publishers else 0) for i in range(publishers)]
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        processes = [
            context.Process(
                target=publish,
                args=(broker.port, s.mqtt_username, s.mqtt_password, s.vitals_topic, n, i, results),
            )
            for i, (s, n) in enumerate(zip(sensors, shares, strict=True))
        ]
        for process in processes:
            process.start()
        reports = [results.get(timeout=900) for _ in processes]
        for process in processes:
            process.join(60)
        acked = sum(r["acked"] for r in reports)
        # Wait for the subscriber to store everything the broker accepted (or to stall for 30 s).
        last_progress, last_count = time.monotonic(), -1
        while True:
            stats = subscriber.stats()
            count = stats.stored + stats.duplicates
            if count >= acked:
                break
            if count != last_count:
                last_progress, last_count = time.monotonic(), count
            elif time.monotonic() - last_progress > 30:
                break
            time.sleep(0.05)
        stats = subscriber.stats()
    finally:
        subscriber.stop()
        broker.stop()
    with db.session() as session:
        stored = int(session.scalar(select(func.count()).select_from(VitalSignRecord)) or 0)
    db.dispose()
    first_publish = min(r["first_publish"] for r in reports)
    last_puback = max(r["last_puback"] for r in reports)
    assert stats.last_commit_at is not None
    elapsed = stats.last_commit_at - first_publish
    return {
        "backend": backend,
        "messages": messages,
        "publishers": publishers,
        "batch_size": batch_size,
        "acked_by_broker": acked,
        "refused_by_broker": sum(r["failed"] for r in reports),
        "rows_stored": stored,
        "lost": acked - stored,
        "rejected": stats.rejected,
        "seconds_first_publish_to_last_commit": round(elapsed, 3),
        "persisted_per_s": round(stored / elapsed, 1),
        "published_per_s": round(acked / (last_puback - first_publish), 1),
        "transactions": stats.batches,
        "mean_batch": round((stats.stored + stats.duplicates + stats.rejected) / max(stats.batches, 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="readings published in all")
    parser.add_argument("--publishers", type=int, default=4, help="sensor devices, one process each")
    parser.add_argument("--batch-size", type=int, default=500, help="subscriber: messages per transaction")
    parser.add_argument("--postgres", action="store_true", help="also run on a private PostgreSQL")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="covidet-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'covidet.db'}"
        results.append(run("sqlite", url, args.messages, args.publishers, args.batch_size))
        print(json.dumps(results[-1]), file=sys.stderr)
    if args.postgres:
        server = start_postgres()
        try:
            results.append(run("postgresql", server.url, args.messages, args.publishers, args.batch_size))
            print(json.dumps(results[-1]), file=sys.stderr)
        finally:
            server.stop()
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "paho_mqtt": paho.mqtt.__version__,
        "command": " ".join(["benchmarks/mqtt_ingest.py", *sys.argv[1:]]),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
