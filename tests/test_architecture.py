"""The package's dependency rules (pyproject.toml's import-linter contracts) hold for the code as it is."""

from __future__ import annotations

import subprocess
import sys
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
    assert callable(export._load_images) and callable(train._worker_init)  # imported by tests, benchmarks
    assert app.info.name == "covidet" and callable(main)
