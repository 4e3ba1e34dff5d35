"""Hostile and malformed DICOMweb requests get a precise 4xx (or an empty match), never a 500, and
never reach a file outside the archive; STOW parts that are too large or not DICOM are failed one by one
with their FailureReason while the request still answers (tests/dicomweb/test_stow.py)."""

from __future__ import annotations

import io

import httpx
from PIL import Image as PILImage

from tests.dicomweb.conftest import Archive

#: Bulk data paths that name nothing: traversal attempts, a non-binary element, a bad item path.
BULK_PATHS = (
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2fsecret_key",
    "00080016",
    "7FE00010/0",
    "zz",
    "00540016/0/00181078",
)
FRAME_LISTS = (
    ("0", 400),
    ("1,,2", 400),
    ("-1", 400),
    (",".join(["1"] * 1001), 400),
    ("99999999999999999999", 404),
)
BAD_QUERIES = (
    {"limit": "100000"},
    {"offset": "x"},
    {"includefield": "NoSuchKeyword"},
    {"fuzzymatching": "maybe"},
    {"StudyDate": "20041301"},
    {"SOPInstanceUID": "1.2,abc"},
)


def test_bulkdata_paths_and_frame_lists(archive: Archive) -> None:
    base = archive.xray_path
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers, timeout=60) as http:
        for path in (
            "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "..%2f..%2fsecret_key",
            "00080016",
            "7FE00010/0",
            "zz",
            "00540016/0/00181078",
        ):
            answer = http.get(f"{base}/bulkdata/{path}")
            assert answer.status_code == 404, (path, answer.text)
        for frames, code in (
            ("0", 400),
            ("1,,2", 400),
            ("-1", 400),
            (",".join(["1"] * 1001), 400),
            ("99999999999999999999", 404),
        ):
            answer = http.get(f"{base}/frames/{frames}")
            assert answer.status_code == code, (frames[:20], answer.text)
        for uid in ("1.2.3%00", "' OR 1=1 --", "*", "%25"):
            assert http.get(f"/studies/{uid}/metadata").status_code == 404, uid
        huge = http.get(f"{base}/rendered", params={"viewport": "8192,8192"})
    assert huge.status_code == 200
    assert PILImage.open(io.BytesIO(huge.content)).size == (1841, 1955)  # never enlarged


def test_queries_with_sql_and_wildcard_characters(archive: Archive) -> None:
    with httpx.Client(base_url=archive.dicomweb, headers=archive.headers, timeout=60) as http:
        for value in ("%", "_RG1", "9RG_", "'; DROP TABLE studies; --", "\\", "9RG1\x00"):
            answer = http.get("/studies", params={"PatientID": value})
            assert answer.status_code == 200 and answer.json() == [], value
        assert http.get("/studies", params={"PatientID": "9RG?"}).json()[0]["00100020"]["Value"] == ["9RG1"]
        for params in (
            {"limit": "100000"},
            {"offset": "x"},
            {"includefield": "NoSuchKeyword"},
            {"fuzzymatching": "maybe"},
            {"StudyDate": "20041301"},
            {"SOPInstanceUID": "1.2,abc"},
        ):
            answer = http.get("/instances", params=params)
            assert answer.status_code == 400, (params, answer.text)
        assert http.get("/studies", params={"StudyDate": "20041231-20040101"}).json() == []
