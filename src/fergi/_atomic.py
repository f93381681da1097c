"""Atomic file writes: a temporary file beside the target, renamed into place.

A crash or a full disk never leaves a half-written model, label or meta file under the
final name, and the file gets the permissions an ordinary write would give it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from fergi._errors import FergiError


def publish(tmp: str, path: Path) -> None:
    """Give the temporary file ordinary permissions and move it into place atomically."""
    try:
        os.chmod(tmp, 0o666 & ~_umask())
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


def stage_folder(final: Path, *, overwrite: bool, mode: int = 0o777) -> Path:
    """An empty staging folder beside ``final``, to be published with :func:`swap_in`.

    Whatever is written into it stays invisible under ``final`` until the swap, so a
    failed export leaves the previous one untouched. ``final`` must be absent, an empty
    folder, or (with ``overwrite``) a folder to replace.
    """
    if final.exists() and not final.is_dir():
        raise FergiError(f"--out {final}: exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise FergiError(f"--out {final}: folder is not empty (use --overwrite to replace it)")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = final.with_name(f".{final.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
        staged.mkdir(mode=mode)
        if mode != 0o777:
            # mkdir's mode is filtered by the umask; an explicit mode must hold whatever it is.
            staged.chmod(mode)
    except OSError as exc:
        raise FergiError(f"--out {final}: cannot write there ({exc.strerror or exc})") from None
    return staged


def swap_in(staged: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``staged`` folder, the old one removed last.

    Raises ``OSError`` (the old folder put back) when the rename fails.
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        final.rename(old)
    try:
        staged.rename(final)
    except OSError:
        if old is not None:
            old.rename(final)
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
