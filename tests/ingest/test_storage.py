"""The content-addressed image store: names from hashes only, atomic and idempotent writes."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from covidet.ingest.storage import ImageStore


def test_put_names_the_file_by_its_sha256_and_is_idempotent(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    data = b"\x89PNG fake but bytes are bytes" * 100
    digest = hashlib.sha256(data).hexdigest()
    first = store.put(data, "image/png")
    assert first.sha256 == digest
    assert first.path == f"{digest[:2]}/{digest[2:4]}/{digest}.png"
    assert store.read(first.path) == data and not first.already_present
    second = store.put(data, "image/png")
    assert second.already_present and second.path == first.path
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [f"{digest}.png"]


def test_unknown_media_types_get_a_neutral_suffix_never_one_from_the_sender(tmp_path: Path) -> None:
    stored = ImageStore(tmp_path).put(b"abc", "../../etc/passwd")
    assert stored.path.endswith(".bin") and ".." not in stored.path


def test_paths_outside_the_store_are_refused(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    (tmp_path / "secret").write_text("no")
    with pytest.raises(ValueError, match="outside the image store"):
        store.path("../secret")
    with pytest.raises(ValueError, match="SHA-256"):
        store.relative_path("../../x", "image/png")


def test_concurrent_writers_of_the_same_bytes_leave_one_complete_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    data = bytes(range(256)) * 4096  # 1 MiB
    threads = [threading.Thread(target=store.put, args=(data, "application/dicom")) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1, "temporary files must not be left behind"
    assert files[0].read_bytes() == data
