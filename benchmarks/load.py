"""Load test of covidet's ingest and API: every channel at once against one ``covidet serve``.

    .venv/bin/python benchmarks/load.py --seconds 60 --out benchmarks/results/load.json
    .venv/bin/python benchmarks/load.py --seconds 15 --associations 4 --mqtt-messages 500 \\
        --sensors 2 --api-readers 5 --out /tmp/load.json

Set-up, as a user would: a fresh ``COVIDET_HOME`` (embedded SQLite, in-process analysis with the
shipped model); ``covidet devices add`` for one modality and ``--sensors`` sensors, ``covidet users
add`` and ``covidet api-token create`` for a radiologist; a private Mosquitto (covidet.app.broker)
whose password file and ACL ``covidet mqtt-broker-files`` writes; then one ``covidet serve --mqtt
--dicom-port`` process. ``--pool`` val-split chest X-rays of ``$COVIDET_DATA`` are converted once to
DX DICOM the way the device simulator does (:meth:`covidet.simulate.modality.XRayCase.to_dataset`).

Then, for ``--seconds`` on loopback, all at once (benchmarks/load_clients.py, one process per channel):

- ``--associations`` pynetdicom modalities, each sending associations of
  ``--images-per-association`` C-STOREs (every one a new SOP Instance UID in a new study);
- the port-scan pattern on the DICOM port: ``--scan-rate`` connections per second opened and closed
  without a byte, and ``--idle-connections`` silent connections held until the server drops them;
- ``--mqtt-messages`` vital-sign readings with QoS 1 from ``--sensors`` paho clients, each with its
  own device credentials, spread evenly over the run (at most ``--mqtt-window`` unacknowledged each);
- ``--api-readers`` closed-loop httpx readers (bearer token) on the worklist, studies, image and
  thumbnail endpoints.

Afterwards it waits for the subscriber to store what the broker acknowledged, reads the server's
peak RSS (VmHWM), stops the server, and checks the loss: every acknowledged SOP Instance UID and
every acknowledged reading (device, time) must be in the database; ``covidet stats --json`` is kept
too. Report: JSON (``--out``) and a table on stdout. See docs/load.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _report import write_report  # benchmarks/ is on sys.path when a script runs
from covidet import __version__
from load_clients import run_api_readers, run_dicom_senders, run_mqtt_sensors
from load_scan import run_port_scan
from load_server import (
    Deployment,
    check_loss,
    prepare_images,
    probe_api,
    recover_readings,
    start_deployment,
    stop_deployment,
    wait_for_drain,
    warm_up,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load is driven")
    parser.add_argument("--associations", type=int, default=32, help="parallel DICOM associations")
    parser.add_argument("--images-per-association", type=int, default=20, help="C-STOREs per association")
    parser.add_argument("--dicom-processes", type=int, default=4, help="sender processes (threads split)")
    parser.add_argument("--pool", type=int, default=64, help="distinct val-split X-rays converted to DICOM")
    parser.add_argument("--scan-rate", type=float, default=20.0, help="port-scan connections per second")
    parser.add_argument("--idle-connections", type=int, default=16, help="silent connections held open")
    parser.add_argument("--mqtt-messages", type=int, default=20_000, help="vital-sign readings in all")
    parser.add_argument("--sensors", type=int, default=8, help="MQTT sensors, own credentials each")
    parser.add_argument("--mqtt-window", type=int, default=20, help="unacknowledged readings per sensor")
    parser.add_argument("--api-readers", type=int, default=50, help="concurrent API readers")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="longest wait for storing")
    parser.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before the load, send one X-ray and wait for its assessment (the model loads lazily)",
    )
    parser.add_argument(
        "--recovery-timeout",
        type=float,
        default=300.0,
        help="longest run of covidet mqtt-ingest for readings left in the broker",
    )
    parser.add_argument("--server-log", type=Path, default=None, help="keep covidet serve's log here")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "load.json")
    args = parser.parse_args()
    for name in ("seconds", "associations", "images_per_association", "dicom_processes", "pool", "sensors"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max in milliseconds (``None`` without values)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


def throughput(ok_at: list[float], seconds: float, bucket: float = 5.0) -> dict[str, float]:
    """Mean rate over the run, and the lowest and median rate of its whole ``bucket``-second windows
    (the rate that was *held*, not just reached)."""
    windows = max(1, int(seconds // bucket))
    counts = [0] * windows
    for t in ok_at:
        if 0 <= t < windows * bucket:
            counts[int(t // bucket)] += 1
    rates = sorted(c / bucket for c in counts)
    return {
        "per_s": round(sum(1 for t in ok_at if t < seconds) / seconds, 1),
        "min_5s_window_per_s": round(rates[0], 1),
        "median_5s_window_per_s": round(rates[len(rates) // 2], 1),
    }


def drive(args: argparse.Namespace, deployment: Deployment) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the generators, release them together, sample the server; return their results and the
    server samples."""
    context = multiprocessing.get_context("spawn")
    start, start_at = context.Event(), context.Value("d", 0.0)
    common = {"seconds": args.seconds}
    processes = max(1, min(args.dicom_processes, args.associations))
    jobs: list[tuple[str, Any, dict[str, Any]]] = []
    for p in range(processes):
        threads = args.associations // processes + (1 if p < args.associations % processes else 0)
        jobs.append(
            (
                f"dicom-{p}",
                run_dicom_senders,
                common
                | {
                    "associations": threads,
                    "files": [str(f) for f in deployment.images[p::processes]] or [str(deployment.images[0])],
                    "port": deployment.dicom_port,
                    "called_ae": deployment.called_ae,
                    "calling_ae": deployment.calling_ae,
                    "images_per_association": args.images_per_association,
                },
            )
        )
    jobs.append(
        (
            "port_scan",
            run_port_scan,
            common
            | {
                "port": deployment.dicom_port,
                "scan_rate": args.scan_rate,
                "idle_connections": args.idle_connections,
            },
        )
    )
    if args.mqtt_messages > 0:
        jobs.append(
            (
                "mqtt",
                run_mqtt_sensors,
                common
                | {
                    "port": deployment.broker.port,
                    "messages": args.mqtt_messages,
                    "sensors": args.sensors,
                    "rate": args.mqtt_messages / args.seconds,
                    "window": args.mqtt_window,
                    "sensor_credentials": deployment.sensors,
                    "patients": deployment.patient_keys,
                },
            )
        )
    if args.api_readers > 0:
        jobs.append(
            (
                "api",
                run_api_readers,
                common
                | {"readers": args.api_readers, "token": deployment.token, "base_url": deployment.base_url},
            )
        )
    started = []
    for name, target, config in jobs:
        queue = context.Queue()
        process = context.Process(
            target=target, args=(config, start, start_at, queue), name=name, daemon=True
        )
        process.start()
        started.append((name, process, queue))
    for name, _process, queue in started:
        if queue.get(timeout=300) != "ready":
            raise RuntimeError(f"{name} did not get ready")
    start_at.value = time.time() + 1.0
    start.set()
    samples = deployment.sample_server(until=start_at.value + args.seconds)
    results: dict[str, Any] = {}
    for name, process, queue in started:
        results[name] = queue.get(timeout=args.seconds + 300)
        process.join(30)
    return results, samples


def summarise(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """Per-channel throughput, latencies and refusals from the generators' raw results."""
    seconds = args.seconds
    dicom_parts = [v for k, v in results.items() if k.startswith("dicom-")]
    dicom_refusals: dict[str, int] = {}
    for part in dicom_parts:
        for reason, n in part["refusals"].items():
            dicom_refusals[reason] = dicom_refusals.get(reason, 0) + n
    dicom_ok_at = [t for p in dicom_parts for t in p["ok_at"]]
    dicom = {
        "associations": args.associations,
        "c_store_sent": sum(p["sent"] for p in dicom_parts),
        "acknowledged": sum(len(p["acked"]) for p in dicom_parts),
        "images_per_s": throughput(dicom_ok_at, seconds),
        "c_store_round_trip": percentiles([x for p in dicom_parts for x in p["latency_s"]]),
        "association_setup": percentiles([x for p in dicom_parts for x in p["associate_s"]]),
        "associations_opened": sum(len(p["associate_s"]) for p in dicom_parts),
        "refusals": dicom_refusals,
        "sender_threads_unfinished": sum(p["threads_unfinished"] for p in dicom_parts),
    }
    channels: dict[str, Any] = {"dicom": dicom}
    if "mqtt" in results:
        m = results["mqtt"]
        channels["mqtt"] = {
            "sensors": args.sensors,
            "messages": args.mqtt_messages,
            "offered_per_s": round(args.mqtt_messages / seconds, 1),
            "published": m["sent"],
            "not_published_by_the_end": m["not_sent"],
            "acknowledged": sum(len(v) for v in m["acked_by_sensor"].values()),
            "readings_per_s": throughput(m["ok_at"], seconds),
            "publish_to_puback": percentiles(m["latency_s"]),
            "refusals": m["refusals"],
        }
    if "api" in results:
        a = results["api"]
        codes: dict[str, int] = a["codes"]
        channels["api"] = {
            "readers": args.api_readers,
            "requests": sum(codes.values()),
            "ok": sum(n for k, n in codes.items() if k.endswith(": 200")),
            "requests_per_s": throughput(a["ok_at"], seconds),
            "latency_all": percentiles([x for v in a["latency_s"].values() for x in v]),
            "latency_by_endpoint": {k: percentiles(v) | {"n": len(v)} for k, v in a["latency_s"].items()},
            "codes": dict(sorted(codes.items())),
            "refusals": {k: n for k, n in sorted(codes.items()) if not k.endswith(": 200")},
        }
    scan = results["port_scan"]
    held = scan["idle_closed_by_server_after_s"]
    channels["port_scan"] = {
        "connections_opened_and_closed": scan["scan_connects"],
        "scan_connections_refused": scan["scan_refused"],
        "idle_connections_opened": scan["idle_opened"],
        "idle_connections_refused": scan["idle_refused"],
        "idle_dropped_by_server": len(held),
        "idle_held_by_server_s": percentiles(held),
    }
    return channels


def analysis_backlog(stats: dict[str, Any]) -> dict[str, int]:
    """How far the in-process analysis got: images assessed, failed, still queued at the stop (they
    are queued again at the next start)."""
    done = int(stats["inferences"]) + int(stats["failed_inferences"])
    return {
        "images": int(stats["images"]),
        "assessed": int(stats["inferences"]),
        "failed": int(stats["failed_inferences"]),
        "queued_at_stop": max(0, int(stats["images"]) - done),
    }


def print_table(report: dict[str, Any]) -> None:
    ch = report["channels"]
    rows = [("channel", "acked", "per s", "held (min 5 s)", "p50 ms", "p99 ms", "refusals")]

    def refused(refusals: dict[str, int]) -> str:
        return str(sum(refusals.values()))

    d = ch["dicom"]
    rows.append(
        (f"DICOM C-STORE x{d['associations']}", str(d["acknowledged"]), str(d["images_per_s"]["per_s"]),
         str(d["images_per_s"]["min_5s_window_per_s"]), str(d["c_store_round_trip"]["p50_ms"]),
         str(d["c_store_round_trip"]["p99_ms"]), refused(d["refusals"]))
    )  # fmt: skip
    if "mqtt" in ch:
        m = ch["mqtt"]
        rows.append(
            (f"MQTT QoS 1 x{m['sensors']}", str(m["acknowledged"]), str(m["readings_per_s"]["per_s"]),
             str(m["readings_per_s"]["min_5s_window_per_s"]), str(m["publish_to_puback"]["p50_ms"]),
             str(m["publish_to_puback"]["p99_ms"]), refused(m["refusals"]))
        )  # fmt: skip
    if "api" in ch:
        a = ch["api"]
        rows.append(
            (f"API readers x{a['readers']}", str(a["ok"]), str(a["requests_per_s"]["per_s"]),
             str(a["requests_per_s"]["min_5s_window_per_s"]), str(a["latency_all"]["p50_ms"]),
             str(a["latency_all"]["p99_ms"]), refused(a["refusals"]))
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
    for name in ("dicom", "mqtt", "api"):
        for reason, n in (ch.get(name, {}).get("refusals") or {}).items():
            print(f"  {name} refused {n}x: {reason}")
    s, loss = report["server"], report["loss"]
    seconds = report["config"]["seconds"]
    print(f"server peak RSS {s['peak_rss_mib']} MiB, CPU {s['cpu_seconds']} s in {seconds} s")
    alone = report["api_one_client_alone_p50_ms"]
    print(f"API, one client alone, p50 ms: before {alone['before_load']}, after {alone['after_load']}")
    d, r = report["drain"], report["recovery_after_restart"]
    print(
        f"after the load: {d['readings_in_database']} readings stored within {d['seconds_after_load']} s; "
        f"restart (covidet mqtt-ingest) needed: {r['needed']}, then {r.get('readings_in_database_after')}"
    )
    a = report["analysis"]
    print(f"analysis: {a['assessed']} of {a['images']} images assessed, {a['queued_at_stop']} still queued")
    print(
        f"loss: images {loss['images_lost']} of {loss['images_acknowledged']} acknowledged, "
        f"readings {loss['readings_lost']} of {loss['readings_acknowledged']} acknowledged"
    )


def main() -> None:
    args = parse_args()
    data = Path(os.environ.get("COVIDET_DATA", REPO_ROOT.parent / "shared" / "data" / "cxr"))
    if not (data / "manifest.csv").is_file():
        sys.exit("set COVIDET_DATA to the chest X-ray dataset folder")
    scratch = Path(tempfile.mkdtemp(prefix="covidet-load-"))
    load_before = os.getloadavg()
    deployment = None
    try:
        images, patient_keys = prepare_images(data, args.pool, scratch / "images")
        deployment = start_deployment(scratch, args.sensors, images, patient_keys)
        warm = warm_up(deployment, data, timeout=600) if args.warm_up else {"images": 0}
        idle_before = probe_api(deployment)
        results, samples = drive(args, deployment)
        channels = summarise(args, results)
        drain = wait_for_drain(deployment, results, args.drain_timeout)
        idle_after = probe_api(deployment)
        server = stop_deployment(deployment) | samples
        recovery = recover_readings(deployment, results, args.recovery_timeout)
        loss = check_loss(deployment, results)
        if args.server_log is not None:
            shutil.copyfile(deployment.log_path, args.server_log)
        report = {
            "benchmark": "load test: DICOM, MQTT and API at once against one covidet serve (loopback)",
            "command": "python benchmarks/load.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "covidet": __version__,
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "loadavg_1min_before": round(load_before[0], 2),
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
                "note": "generators, broker and server share these CPUs (and any other job on the machine)",
            },
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "warm_up": warm,
            "channels": channels,
            "api_one_client_alone_p50_ms": {"before_load": idle_before, "after_load": idle_after},
            "drain": drain,
            "server": server,
            "recovery_after_restart": recovery,
            "analysis": analysis_backlog(recovery["covidet_stats"]),
            "loss": loss,
        }
        write_report(report, args.out)
        print_table(report)
    finally:
        if deployment is not None:
            deployment.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
