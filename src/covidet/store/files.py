"""Content-addressed image store.

A file is named by the SHA-256 of its bytes, ``<root>/ab/cd/abcd…<suffix>``: the name never comes from
anything a device sent, so no UID, file name or patient string can reach the file system. Writes are
atomic and durable: temporary file in the same folder, ``fsync``, ``rename``, ``fsync`` of the folder.
Storing bytes that are already there is a no-op, so re-sends cost no space.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ImageStore", "StoredFile", "write_file_atomically"]

#: Suffixes by media type; the only part of a name that is not a hash, and it comes from this table.
SUFFIXES = {
    "application/dicom": ".dcm",
    "image/png": ".png",
    "image/jpeg": ".jpg",
}


@dataclass(frozen=True, slots=True)
class StoredFile:
    """Where bytes were stored: ``path`` is relative to the store root (forward slashes)."""

    sha256: str
    path: str
    size_bytes: int
    already_present: bool


def write_file_atomically(target: Path, data: bytes, *, prefix: str | None = None, suffix: str = "") -> None:
    """Write ``data`` to ``target`` so that a reader never sees a half-written file: a temporary file
    in the same folder (which must exist; ``prefix`` defaults to ``.<name>.``), ``fsync``, ``rename``.
    On any failure the temporary file is removed and ``target`` is left as it was."""
    fd, temp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}." if prefix is None else prefix, suffix=suffix
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageStore:
    """Files under ``root``; safe to share between threads and processes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # owner only: patient images

    def relative_path(self, sha256: str, media_type: str) -> str:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a lowercase hex SHA-256 digest")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{SUFFIXES.get(media_type, '.bin')}"

    def put(self, data: bytes, media_type: str, *, sha256: str | None = None) -> StoredFile:
        """Store ``data`` durably; returns once the bytes and their folder entry are on disk.

        ``sha256`` is the hex digest of ``data`` when the caller already computed it (trusted: it
        names the file)."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        relative = self.relative_path(sha256, media_type)
        target = self.root / relative
        if target.is_file() and target.stat().st_size == len(data):
            return StoredFile(sha256, relative, len(data), already_present=True)
        for folder in (target.parent.parent, target.parent):  # owner only, like the root
            folder.mkdir(exist_ok=True, mode=0o700)
        write_file_atomically(target, data, prefix=".tmp-", suffix=".part")
        _fsync_dir(target.parent)
        return StoredFile(sha256, relative, len(data), already_present=False)

    def path(self, relative: str) -> Path:
        """Absolute path of a stored file; refuses anything that would leave the store."""
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root.resolve()):
            raise ValueError(f"path {relative!r} is outside the image store")
        return candidate

    def read(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()
