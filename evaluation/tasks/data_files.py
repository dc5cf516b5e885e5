"""Benchmark files are read only after their sha256 matches the one recorded beside the task: a changed or
truncated file would change every score silently."""
from __future__ import annotations

import hashlib
from pathlib import Path

from evaluation.tasks.base import TaskError

RESTORE = "restore the upstream release named in the README beside it"


class DataFileError(TaskError):
    """A benchmark file that is missing or is not the recorded upstream release."""


def verified_bytes(path: Path, sha256: str, fix: str = RESTORE) -> bytes:
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise DataFileError(f"cannot read benchmark file {path} ({error.strerror}): {fix}") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != sha256:
        raise DataFileError(f"{path} has sha256 {digest}, expected {sha256}: it is not the upstream release; {fix}")
    return content
