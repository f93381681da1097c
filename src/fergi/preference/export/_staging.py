"""The export is built in a staging folder beside ``--out`` and swapped in at the end."""

from __future__ import annotations

from pathlib import Path

from fergi._atomic import stage_folder
from fergi._errors import FergiError


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _stage(final: Path, overwrite: bool, protect: Path | None) -> Path:
    if protect is not None:
        target, data = final.resolve(), protect.resolve()
        if _is_within(data, target):
            raise FergiError(f"--out {final}: is or contains the study folder {protect}; "
                             "choose a folder outside it")
    return stage_folder(final, overwrite=overwrite)
