"""``--profile`` of ``benchmarks/dicom_ingest.py``: py-spy on covidet's receiver during one run.

py-spy samples every thread of the receiving process (``--threads --idle``: wall-clock samples, so
time blocked in ``fsync`` or in a database commit is seen, not only time on a CPU) and writes the
collapsed stacks (``--format raw``, one ``frame;frame;... count`` line per stack; speedscope.app and
flamegraph.pl read it). :func:`summarise` then charges every sample to its innermost Python frame
("own time") and groups it: pynetdicom transport, validation/decoding, file write+fsync, database,
analysis queue hand-off, analysis/torch, logging, waiting, other.

Limits (py-spy without native frames): a C call (``time.sleep``, ``select``, ``os.fsync``, a sqlite
commit) is charged to the Python function that made it. The polling loops of pynetdicom's DUL and
association threads (``time.sleep`` between checks) are therefore counted as *waiting*; a blocking
``fsync`` appears as the own time of covidet's storage function that calls it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 100

#: (category, path fragments) tried from the innermost frame outwards; the first frame that matches
#: gives the sample its category. Analysis is looked for in the whole stack first (its threads only).
ANALYSIS = (
    "torch/",
    "torchvision/",
    "onnxruntime",
    "openvino",
    "covidet/detection/",
    "covidet/worker/analysis",
)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("file write+fsync", ("covidet/ingest/storage.py",)),
    ("database", ("sqlalchemy/", "sqlite3/", "covidet/store/")),
    ("analysis queue hand-off (Celery/Redis)", ("celery/", "kombu/", "redis/", "covidet/worker/")),
    ("logging", ("logging/",)),
    (
        "validation/decoding",
        (
            "pydicom/",
            "PIL/",
            "numpy/",
            "covidet/ingest/dicom_checks",
            "covidet/imaging/",
            "covidet/ingest/service",
        ),
    ),
    (
        "pynetdicom transport",
        (
            "pynetdicom/",
            "socket.py",
            "ssl.py",
            "covidet/ingest/dicom_scp",
            "covidet/ingest/dicom_association",
        ),
    ),
)
#: Innermost frames that are a thread waiting (a lock, a queue, select, or a polling loop's sleep):
#: (function name without its class, path fragment).
WAITING = (
    ("wait", "threading.py"),
    ("_wait_for_tstate_lock", "threading.py"),
    ("join", "threading.py"),
    ("get", "queue.py"),
    ("select", "selectors.py"),
    ("serve_forever", "socketserver.py"),
    ("run_reactor", "pynetdicom/dul.py"),
    ("run", "pynetdicom/dul.py"),
    ("run_reactor", "pynetdicom/association.py"),
    ("_run_reactor", "pynetdicom/association.py"),
    ("run", "pynetdicom/association.py"),
)


class ProfilerUnavailable(SystemExit):
    """py-spy is missing or may not read the receiver's memory: the message says what to do."""


def py_spy() -> str:
    """Path of py-spy: next to this interpreter (the virtualenv), else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    found = str(local) if local.is_file() else shutil.which("py-spy")
    if not found:
        raise ProfilerUnavailable("--profile needs py-spy: .venv/bin/pip install 'py-spy>=0.3'")
    return found


def _can_attach(binary: str, pid: int, extra: list[str]) -> str | None:
    """``None`` if ``py-spy dump`` reads ``pid`` with ``extra`` options, else its error output."""
    result = subprocess.run(
        [binary, "dump", "--pid", str(pid), *extra], capture_output=True, text=True, timeout=60
    )
    if result.returncode == 0:
        return None
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    # py-spy's reason is its "Error: ..." line; a Rust backtrace may follow it
    return next((line for line in lines if line.startswith("Error")), lines[0] if lines else "no output")


@dataclass
class Recording:
    """A running ``py-spy record``; :meth:`stop` ends it and waits for its file."""

    process: subprocess.Popen[bytes]
    output: Path
    log: Path
    options: list[str]

    def stop(self) -> Path:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not self.output.is_file():
            raise RuntimeError(f"py-spy wrote no profile:\n{self.log.read_text()[-2000:]}")
        return self.output


def start_recording(pid: int, output: Path) -> Recording:
    """Attach py-spy to ``pid``. Root (or CAP_SYS_PTRACE, or ``kernel.yama.ptrace_scope=0`` for a
    child of this user) lets it pause the process for each sample; where that is refused (containers
    without SYS_PTRACE) it tries ``--nonblocking`` (no pause, slightly torn stacks) before giving up."""
    binary = py_spy()
    options: list[str] = []
    error = _can_attach(binary, pid, options)
    if error is not None:
        options = ["--nonblocking"]
        second = _can_attach(binary, pid, options)
        if second is not None:
            raise ProfilerUnavailable(
                f"py-spy cannot read process {pid} ({error}; with --nonblocking: {second}). "
                "It needs ptrace permission over the receiver: run the benchmark as root, or give the "
                "container CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE), or set "
                "kernel.yama.ptrace_scope=0 (sysctl)."
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    log = output.with_suffix(".log")
    command = [binary, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw"]
    command += ["--nolineno", "--threads", "--idle", *options, "--output", str(output)]
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=handle, start_new_session=True)
    return Recording(process, output, log, options)


# ------------------------------------------------------------------------------------ the summary


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return stack.split(";"), int(count)


def categorise(frames: list[str]) -> str:
    """The category of one sample (``frames`` outermost first, the thread first)."""
    name, _, path = frames[-1].partition(" (")
    function = name.rsplit(".", 1)[-1]  # py-spy writes methods as Class.method
    if any(function == wanted and path.endswith(f"{fragment})") for wanted, fragment in WAITING):
        return "waiting (idle, locks, polling sleeps)"
    if any(fragment in frame for frame in frames for fragment in ANALYSIS):
        return "analysis/torch"
    for frame in reversed(frames[1:]):
        for category, fragments in CATEGORIES:
            if any(fragment in frame for fragment in fragments):
                return category
    return "other"


#: The threads of an association (pynetdicom 2 and 3 names): the reactor that runs the C-STORE handler
#: and sends the acknowledgement, and the DUL thread that reads the socket and decodes the PDUs.
THREADS = {
    "association thread (handler + acknowledgement)": ("Association.run_reactor (", "Association.run ("),
    "DUL thread (socket reader)": ("DULServiceProvider.run_reactor (", "DULServiceProvider.run ("),
}


def _thread_role(frames: list[str]) -> str | None:
    for role, roots in THREADS.items():
        if any(frame.startswith(root) for frame in frames[:6] for root in roots):
            return role
    return None


def _short(frame: str) -> str:
    """``name (…/site-packages/pkg/mod.py)`` -> ``name (pkg/mod.py)``."""
    name, _, path = frame.partition(" (")
    path = path.rstrip(")")
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarise(raw: Path, top: int = 15) -> dict[str, object]:
    """Own-time shares from a ``--format raw`` recording: by category for every thread and for the
    receiver's threads alone (waiting included: wall-clock), and the ``top`` busiest functions."""
    by_category: Counter[str] = Counter()
    roles: dict[str, Counter[str]] = {role: Counter() for role in THREADS}
    functions: Counter[tuple[str, str]] = Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        category = categorise(frames)
        by_category[category] += count
        role = _thread_role(frames)
        if role is not None:
            roles[role][category] += count
        if not category.startswith("waiting"):
            functions[(_short(frames[-1]), category)] += count
    total = sum(by_category.values())
    busy = total - sum(v for k, v in by_category.items() if k.startswith("waiting"))

    def shares(counter: Counter[str], whole: int) -> dict[str, float]:
        return {k: round(100 * v / whole, 1) for k, v in counter.most_common()} if whole else {}

    return {
        "samples": total,
        "rate_hz": RATE_HZ,
        "busy_samples": busy,
        "all_threads_busy_percent": shares(
            Counter({k: v for k, v in by_category.items() if not k.startswith("waiting")}), busy
        ),
        "threads_wall_percent": {role: shares(c, sum(c.values())) for role, c in roles.items()},
        "top_functions_own_busy_percent": [
            {"function": f, "category": c, "percent": round(100 * n / busy, 1)}
            for (f, c), n in functions.most_common(top)
        ]
        if busy
        else [],
    }


def render(title: str, summary: dict[str, object]) -> str:
    """The summary as a short text table."""
    lines = [f"where the time goes: {title} ({summary['samples']} samples at {summary['rate_hz']} Hz)"]
    for role, shares in summary["threads_wall_percent"].items():  # type: ignore[union-attr]
        lines.append(f"  {role}, share of its wall-clock samples:")
        for category, percent in shares.items():
            lines.append(f"    {percent:5.1f}%  {category}")
    lines.append("  all threads, share of busy samples (waiting left out):")
    for category, percent in summary["all_threads_busy_percent"].items():  # type: ignore[union-attr]
        lines.append(f"    {percent:5.1f}%  {category}")
    lines.append("  top functions by own time (busy samples):")
    for row in summary["top_functions_own_busy_percent"]:  # type: ignore[union-attr]
        lines.append(f"    {row['percent']:5.1f}%  {row['function']}  [{row['category']}]")
    return "\n".join(lines) + os.linesep
