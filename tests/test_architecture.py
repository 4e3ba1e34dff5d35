"""The package's dependency rules (pyproject.toml's import-linter contracts) hold for the code as it is."""

from __future__ import annotations

import ast
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "KEPT" in result.stdout


def test_moved_modules_keep_their_old_import_paths() -> None:
    """The restructuring (issue 20) moved code, not promises: every old import path still works and
    gives the same objects as the new home."""
    import covidet.assessment.triage as triage
    import covidet.detection.export as export
    import covidet.detection.train as train
    import covidet.ingest.forward as old_forward
    from covidet.assessment import result, thresholds
    from covidet.cli import app, main
    from covidet.domain import AnalysisQueue
    from covidet.pacs import forward
    from covidet.worker.queue import AnalysisQueue as WorkerQueuePort

    assert old_forward.forward_to_pacs is forward.forward_to_pacs
    assert old_forward.ForwardError is forward.ForwardError
    assert WorkerQueuePort is AnalysisQueue
    assert triage.TriageResult is result.TriageResult
    assert triage.TriageThresholds is thresholds.TriageThresholds
    for module in (triage, export, train):
        assert all(hasattr(module, name) for name in module.__all__), module.__name__

    # Moved out of worker / web / the top level so that no two packages import each other.
    import covidet.app.runner as app_runner
    import covidet.assessment.reports as old_reports
    import covidet.ingest.storage as old_storage
    import covidet.runner as old_runner
    import covidet.web.events as old_events
    import covidet.worker.reporting as old_reporting
    from covidet.api.routes import events
    from covidet.pacs.send import send_to_pacs
    from covidet.reports import from_store, writer
    from covidet.store import files

    assert old_runner.run_services is app_runner.run_services
    assert old_runner.start_services is app_runner.start_services
    assert old_reporting.send_to_pacs is send_to_pacs
    assert old_reporting.forward_report is from_store.forward_report
    assert old_reports.write_report is writer.write_report
    assert old_storage.ImageStore is files.ImageStore
    assert old_events.router is events.router
    for module in (old_runner, old_reporting, old_reports, old_storage, old_events):
        assert all(hasattr(module, name) for name in module.__all__), module.__name__
    assert callable(export._load_images) and callable(train._worker_init)  # imported by tests, benchmarks
    assert app.info.name == "covidet" and callable(main)


# ------------------------------------------------------------------------------ layout (issue 20)

SRC = REPO_ROOT / "src" / "covidet"
MAX_MODULE_LINES = 400


def _source_files() -> list[Path]:
    """covidet's Python modules (not the viewer's node_modules, which `make viewer` fetches)."""
    return sorted(p for p in SRC.rglob("*.py") if "node_modules" not in p.parts)


def _package_of(module: str) -> str:
    """``covidet.store.files`` -> ``store``; top-level modules (``covidet.config``) are their own."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def test_no_import_cycle_between_packages() -> None:
    """covidet's packages (``store``, ``api``, ``web``, ...; top-level modules count as one each)
    import each other along a graph without cycles, so each can be read, tested and replaced from
    the bottom up. A cycle's message names one import of each edge."""
    import grimp

    graph = grimp.build_graph("covidet")
    edges: dict[str, dict[str, tuple[str, str]]] = {}
    for module in graph.modules:
        if module == "covidet":
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == "covidet":
                continue
            source, target = _package_of(module), _package_of(imported)
            if source != target:
                edges.setdefault(source, {}).setdefault(target, (module, imported))

    # Depth-first search for a back edge; the path on the stack is the cycle.
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(package: str) -> list[str] | None:
        state[package] = "open"
        stack.append(package)
        for target in sorted(edges.get(package, {})):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[package] = "done"
        return None

    for package in sorted(edges):
        if package not in state and (cycle := visit(package)):
            shown = [f"{a} -> {b} ({edges[a][b][0]} imports {edges[a][b][1]})" for a, b in pairwise(cycle)]
            raise AssertionError("package cycle:\n" + "\n".join(shown))


def test_no_module_over_the_size_limit() -> None:
    """A module does one thing and stays under 400 lines."""
    too_long = {
        str(p.relative_to(SRC)): n
        for p in _source_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}, too_long


#: SQLAlchemy query constructors, and the Session methods that read or write rows.
_SQL_CONSTRUCTORS = {"select", "insert", "update", "delete", "text", "func", "and_", "or_", "exists"}
_SESSION_METHODS = {
    *("execute", "scalar", "scalars", "get", "add", "add_all", "query", "delete", "merge", "flush"),
}


def _sql_outside_store(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            names = sorted(a.name for a in node.names if a.name in _SQL_CONSTRUCTORS)
            if names:
                found.append(f"line {node.lineno}: imports {', '.join(names)} from {node.module}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _SESSION_METHODS
        ):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if "session" in name.lower():
                found.append(f"line {node.lineno}: {name}.{node.func.attr}(...)")
    return found


def test_sql_lives_only_in_the_store() -> None:
    """Every query is a function of ``covidet.store`` (typed, tested in tests/store); other packages
    open a session and call those functions, they build no SQL and use no Session methods."""
    offences = {
        str(p.relative_to(SRC)): hits
        for p in _source_files()
        if p.relative_to(SRC).parts[0] != "store" and (hits := _sql_outside_store(p))
    }
    assert offences == {}, offences


def test_the_sql_check_sees_sql() -> None:
    """The check above is not blind: it flags a query built outside the store."""
    sample = "from sqlalchemy import select\n\ndef f(session):\n    return session.scalars(select(X))\n"
    probe = REPO_ROOT / "tests" / "_sql_probe_tmp.py"
    try:
        probe.write_text(sample)
        assert len(_sql_outside_store(probe)) == 2
    finally:
        probe.unlink(missing_ok=True)
