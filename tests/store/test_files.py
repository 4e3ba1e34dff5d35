"""The atomic file write that the image store and the report writers share."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidet.store.files import ImageStore, write_file_atomically


def test_write_file_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    write_file_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_file_atomically(target, "not bytes", prefix=".tmp-", suffix=".part")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_image_store_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    first = store.put(b"\x89PNG data", "image/png")
    again = store.put(b"\x89PNG data", "image/png")
    assert (first.already_present, again.already_present) == (False, True)
    assert first.path.endswith(".png") and store.read(first.path) == b"\x89PNG data"
    assert not [p for p in (tmp_path / "images").rglob("*") if p.name.startswith(".tmp-")]
