"""The restructuring of issue 20 moved code of the worker and the reports, not promises: the old import
paths give the same objects as the new modules, and the Celery task keeps its name (workers and
producers of different versions must agree on it)."""

from __future__ import annotations


def test_worker_analysis_keeps_its_public_names() -> None:
    from covidet.worker import analysis, analysis_retry, analysis_types

    assert analysis.__all__ == [
        "AnalysisError",
        "Analyzer",
        "analyse_batch_with_retries",
        "analyse_with_retries",
    ]
    assert all(hasattr(analysis, name) for name in analysis.__all__)
    assert analysis.AnalysisError is analysis_types.AnalysisError
    assert analysis.analyse_with_retries is analysis_retry.analyse_with_retries
    assert analysis.analyse_batch_with_retries is analysis_retry.analyse_batch_with_retries
    error = analysis.AnalysisError("unreadable", retryable=False)
    assert str(error) == "unreadable" and error.retryable is False


def test_the_decision_rule_of_a_model_card() -> None:
    from covidet.worker.analysis_types import DEFAULT_DECISION_RULE, decision_rule

    assert decision_rule({"decision": {"rule": "image-head-v2", "threshold": 0.4}}) == "image-head-v2"
    assert decision_rule({"decision": {"threshold": 0.4}}) == DEFAULT_DECISION_RULE == "max-score-v1"
    assert decision_rule({}) == DEFAULT_DECISION_RULE


def test_the_celery_task_keeps_its_name() -> None:
    from covidet.worker.celery_app import TASK_NAME, analyse_image_task, make_celery

    app = make_celery("redis://127.0.0.1:1/0")  # no connection is made until a task is sent
    assert TASK_NAME == "covidet.analyse_image"
    assert analyse_image_task(app).name == TASK_NAME


def test_fhir_keeps_its_public_names_and_the_srs_share_its_codes() -> None:
    from covidet.assessment import reports
    from covidet.reports import fhir, fhir_codes, sr_codes

    # The codes moved to fhir_codes.py; fhir.py (and assessment.reports, the older path) re-export them.
    moved = set(fhir.__all__) & set(fhir_codes.__all__)
    assert {"LABEL_CODES", "VITAL_SIGN_CODES", "REPORT_CODE", "LOINC", "SNOMED", "UCUM"} <= moved
    for name in moved:
        assert getattr(fhir, name) is getattr(fhir_codes, name), name
        assert getattr(reports, name) is getattr(fhir_codes, name), name
    assert sr_codes.LABEL_CODES is fhir.LABEL_CODES
    assert all(hasattr(fhir, name) for name in fhir.__all__)
