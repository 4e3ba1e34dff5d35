"""The OpenAPI document describes the whole API, and the API keeps to it.

The property-based part runs schemathesis against a real uvicorn server with an admin's bearer token:
for every operation, generated valid and invalid inputs must never produce a 5xx, and every answer
must be documented (status code, content type and body schema). It is bounded (a few examples per
operation and mode, derandomized) to finish in seconds; for a deeper run set
``COVIDET_FUZZ_EXAMPLES=60 COVIDET_FUZZ_RANDOM=1``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from covidet.store import queries
from covidet.store.models import Alert, TriageRecord
from tests.api.conftest import ApiEnv, dataset_jpegs, hours_ago, make_env, seed_image, serve

API = "/api/v1"
PUBLIC = {("post", f"{API}/auth/token"), ("post", f"{API}/auth/login"), ("get", f"{API}/health")}
#: Operations that would end the fuzzing admin's own credential (logout revokes the token, a token id
#: or a new password of user 1 may be the admin's): tested by name in test_auth and test_security.
NOT_FUZZED = (
    ("POST", f"{API}/auth/logout"),
    ("DELETE", f"{API}/auth/tokens/{{token_id}}"),
    ("PATCH", f"{API}/users/{{user_id}}"),
)


def test_the_document_describes_every_route_and_its_security(sqlite_env: ApiEnv) -> None:
    spec = sqlite_env.app.openapi()
    assert spec["openapi"].startswith("3.")
    operations = [(method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 30
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerToken"]["flows"]["password"]["tokenUrl"] == f"{API}/auth/token"
    assert schemes["SessionCookie"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": "covidet_session",
        "description": schemes["SessionCookie"]["description"],
    }
    assert schemes["DeviceApiKey"]["name"] == "X-API-Key"
    for method, path, op in operations:
        if (method, path) in PUBLIC:
            assert "security" not in op, path
            continue
        assert op.get("security"), (method, path)
        assert "401" in op["responses"], (method, path)
        if op["security"] != [{"DeviceApiKey": []}]:
            assert op["security"] == [{"BearerToken": []}, {"SessionCookie": []}], (method, path)
            assert {"401", "403", "422"} <= set(op["responses"]), (method, path)
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")):
                body = response["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorPublic"}, (method, path, code)


def test_openapi_and_docs_are_at_the_root(sqlite_env: ApiEnv) -> None:
    with serve(sqlite_env.app) as base_url:
        spec = httpx.get(f"{base_url}/openapi.json")
        assert spec.status_code == 200 and f"{API}/worklist" in spec.json()["paths"]
        docs = httpx.get(f"{base_url}/docs")
        assert docs.status_code == 200 and "/openapi.json" in docs.text
        assert httpx.get(f"{base_url}{API}/openapi.json").status_code == 404
        assert httpx.get(f"{base_url}{API}/docs").status_code == 404


# ------------------------------------------------------------------------------------- schemathesis


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory, data_root: Path, postgres_server
) -> Iterator[tuple[str, str]]:
    """A served app over PostgreSQL (stricter than SQLite: 32-bit integers, no NUL in text), with data
    behind the small ids the generator tries first, and an admin's token: (base URL, token)."""
    import psycopg

    tmp_path = tmp_path_factory.mktemp("fuzz")
    with psycopg.connect(
        postgres_server.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as c:
        c.execute('CREATE DATABASE "fuzz_api"')
    env = make_env(tmp_path, postgres_server.url.rsplit("/", 1)[0] + "/fuzz_api")
    jpegs = [p.read_bytes() for p in dataset_jpegs(data_root, 2)]
    boxes = [("covid19", 0.9, (10.0, 10.0, 100.0, 100.0)), ("pneumonia", 0.4, (5.0, 5.0, 50.0, 50.0))]
    first = seed_image(env, jpegs[0], patient_key="F-1", priority="urgent", findings=boxes)
    seed_image(env, jpegs[1], patient_key="F-2", label=None)
    with env.db.session(write=True) as session:
        triage = session.scalar(select(TriageRecord).where(TriageRecord.image_id == first.image_id))
        session.add(
            Alert(
                image_id=first.image_id,
                patient_id=first.patient_id,
                triage_id=triage.id,
                priority="urgent",
                reasons=["seeded"],
            )
        )
        queries.add_vital_signs(
            session,
            [
                {
                    "patient_id": first.patient_id,
                    "measured_at": hours_ago(1),
                    "spo2_percent": 95.0,
                    "temperature_c": 37.0,
                }
            ],
        )
    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(serve(env.app))
        client = stack.enter_context(httpx.Client(base_url=base_url, timeout=60))
        token = env.token(client, "admin")["Authorization"]
        rad = env.token(client, "rad")
        client.post(f"{API}/reviews", json={"image_id": first.image_id, "label": "covid19"}, headers=rad)
        yield base_url, token
    env.ingest.queue.close()  # type: ignore[attr-defined]
    env.db.dispose()


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, base_url: str, token: str) -> bool:
    """Send a few generated requests of ``mode`` to ``operation`` and check every answer; whether any
    answer was a success (2xx)."""
    succeeded = False

    @hypothesis.settings(
        max_examples=int(os.environ.get("COVIDET_FUZZ_EXAMPLES", "6")),
        derandomize=not os.environ.get("COVIDET_FUZZ_RANDOM"),
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: fast
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal succeeded
        answer = case.call_and_validate(
            base_url=base_url,
            headers={"Authorization": token},
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )
        succeeded = succeeded or answer.status_code < 300

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # nothing invalid to say (an operation without parameters)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return succeeded


def test_no_server_errors_and_every_answer_documented(fuzz_target: tuple[str, str]) -> None:
    """Each operation gets a few valid and a few invalid generated requests (deterministic)."""
    base_url, token = fuzz_target
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    tested = []
    succeeded: set[str] = set()  # operations that answered 2xx at least once: the token works
    # One loop rather than schemathesis' pytest parametrization, whose lazy (fixture) loader does not
    # run on pytest 9.2 (it reads a private attribute that pytest renamed).
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if _fuzz(operation, mode, base_url, token):
                succeeded.add(operation.label)
        tested.append(operation.label)
    assert len(tested) >= 27, tested
    assert len(succeeded) >= 20, sorted(set(tested) - succeeded)


# ------------------------------------------------------------------------ conformance (schemathesis CLI)

#: Refusals the OpenAPI document cannot express, allowed for the one operation each (schemathesis'
#: documented tuning): the password policy (covidet.api.passwords), "since must not be after until",
#: a review's finding actions, checked against the image's AI result and the image's size, and signing a
#: draft that has no label yet.
CONFORMANCE_CONFIG = """
[[operations]]
include-name = "POST /api/v1/reviews"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-name = "PATCH /api/v1/reviews/{review_id}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-name = "POST /api/v1/reviews/{review_id}/sign"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-name = "POST /api/v1/users"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-name = "GET /api/v1/patients/{patient_id}/vitals"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"""


def test_schemathesis_conformance_checks_find_nothing(fuzz_target: tuple[str, str], tmp_path: Path) -> None:
    """Every check of ``st run --checks all`` (schema-violating data refused, valid data accepted,
    ``Allow`` on 405, missing auth refused, ...) over all phases, a bounded number of examples, with a
    fixed seed. Response times are not checked (benchmarks/ measure speed)."""
    base_url, token = fuzz_target
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFORMANCE_CONFIG, encoding="utf-8")
    excluded = [arg for method, path in NOT_FUZZED for arg in ("--exclude-path", path) if method != "GET"]
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file", str(config),
            "run", f"{base_url}/openapi.json",
            "-H", f"Authorization: {token}",
            "--checks", "all",
            "--max-examples", os.environ.get("COVIDET_FUZZ_EXAMPLES", "5"),
            "--seed", "20261203",
            "--no-shrink",
            "--workers", "1",
            "--no-color",
            *excluded,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its cache folder (.schemathesis) goes there, not into the checkout
    )  # fmt: skip
    summary = done.stdout[done.stdout.rfind("SUMMARY") :] if "SUMMARY" in done.stdout else done.stdout[-3000:]
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-2000:]
    assert "Tested: " in summary and "failures" not in summary.split("Test cases:")[-1], summary


def test_schema_types_are_strict(sqlite_env: ApiEnv) -> None:
    """What the document calls boolean, integer or date-time is refused in any other form (pydantic's
    lax mode took 0, "no", "5" and 0.5 for them)."""
    with sqlite_env.client() as client:
        admin = sqlite_env.token(client, "admin")
        rad_id = sqlite_env.users["rad"]
        for value in (0, 1, "no", "false", "true", "yes"):
            answer = client.patch(f"{API}/users/{rad_id}", json={"active": value}, headers=admin)
            assert answer.status_code == 422, (value, answer.text)
        assert client.get(f"{API}/users", headers=admin).json()["items"][1]["active"] is True
        assert (
            client.patch(f"{API}/users/{rad_id}", json={"active": False}, headers=admin).json()["active"]
            is False
        )
        for query in ("until=0.5", "since=1700000000", "until=abc"):
            for path in ("/audit", "/exports/training-manifest"):
                assert client.get(f"{API}{path}?{query}", headers=admin).status_code == 422, (path, query)
        assert client.get(f"{API}/audit?since=2026-11-28", headers=admin).status_code == 200
        assert client.get(f"{API}/audit?until=2026-11-28T09:30:00Z", headers=admin).status_code == 200
        for body in ({"name": "ci", "days": "5"}, {"name": "ci", "days": 5.5}, {"name": "ci", "days": True}):
            assert client.post(f"{API}/auth/tokens", json=body, headers=admin).status_code == 422, body
        for body in ({"image_id": "1"}, {"image_id": 1.5}, {"image_id": True}):
            assert client.post(f"{API}/reviews", json=body, headers=admin).status_code == 422, body
