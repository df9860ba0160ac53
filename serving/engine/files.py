"""Checks on the files weights come from (torch-free)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from serving.errors import SpecError


def readable_file(path: Path, what: str) -> None:
    """SpecError, in words, unless `path` is a file this process may read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SpecError(f"weights: {what} {path} does not exist") from None
    except OSError as e:
        raise SpecError(f"weights: {what} {path} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise SpecError(f"weights: {what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise SpecError(f"weights: {what} {path} cannot be read: permission denied")
