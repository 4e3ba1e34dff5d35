"""The port-scan pattern of ``benchmarks/load.py`` against the DICOM port, in its own process (same
contract as the generators of benchmarks/load_clients.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from typing import Any

from load_clients import _begin

__all__ = ["run_port_scan"]


def _idle_holder(port: int, deadline: float, out: dict[str, Any]) -> None:
    """Open a connection, send nothing, and note how long the server keeps it; again until the end."""
    while time.time() < deadline:
        t0 = time.perf_counter()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as exc:
            out["idle_refused"][type(exc).__name__] += 1
            time.sleep(0.5)
            continue
        out["idle_opened"] += 1
        with sock:
            sock.settimeout(max(0.1, deadline - time.time()))
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                closed = False  # still open at the end of the run
            except OSError:
                closed = True  # reset by the server
        if closed:
            out["idle_closed_by_server_after_s"].append(time.perf_counter() - t0)


def run_port_scan(config: dict[str, Any], start: Any, start_at: Any, results: Any) -> None:
    """Connections opened and closed at once without a byte (``config["scan_rate"]`` per second), and
    ``config["idle_connections"]`` silent connections held open until the server drops them."""
    out: dict[str, Any] = {
        "scan_connects": 0,
        "scan_refused": Counter(),
        "idle_opened": 0,
        "idle_refused": Counter(),
        "idle_closed_by_server_after_s": [],
    }
    begin, deadline = _begin(start, start_at, results, config["seconds"])
    holders = [
        threading.Thread(target=_idle_holder, args=(config["port"], deadline, out), daemon=True)
        for _ in range(config["idle_connections"])
    ]
    for holder in holders:
        holder.start()
    interval = 1.0 / config["scan_rate"] if config["scan_rate"] > 0 else None
    next_at = begin
    while interval is not None and time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", config["port"]), timeout=5):
                out["scan_connects"] += 1
        except OSError as exc:
            out["scan_refused"][type(exc).__name__] += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.time()))
    for holder in holders:
        holder.join(15)
    out["scan_refused"] = dict(out["scan_refused"])
    out["idle_refused"] = dict(out["idle_refused"])
    results.put(out)
