"""Atomic file writes: a temporary file beside the target, renamed into place.

A crash or a full disk never leaves a half-written model, label or meta file under the
final name, and the file gets the permissions an ordinary write would give it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fergi._errors import FergiError


def publish(tmp: str, path: Path) -> None:
    """Give the temporary file ordinary permissions and move it into place atomically."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FergiError(f"{path}: cannot write ({exc.strerror})") from None


def temporary_beside(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A temporary file in ``path``'s folder (created if needed), for an atomic write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise FergiError(f"{path}: cannot write ({exc.strerror})") from None
