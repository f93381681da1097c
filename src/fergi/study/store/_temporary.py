"""Temporary files of the atomic writes, and their cleanup after a killed process."""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: Temporary names of the atomic writes in the media folder (write_atomic, write_features,
#: clip videos, features meta files): never a finished file.
_TEMPORARY_NAME = re.compile(r"^\.(tmp-.*|.*\.partial(\.[^.]+)?|.*\.tmp|features_meta-.*\.json)$")


def clean_temporary_files(root: Path, *, older_than_s: float = 60.0) -> int:
    """Delete the temporary files a killed process left in the media folder.

    Only files named like the atomic writes' temporary files, older than
    ``older_than_s`` (a write in progress in another process is younger), directly
    inside ``root`` or its subfolders; symbolic links are not followed.

    Returns
    -------
    int
        The number of files deleted.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            if not _TEMPORARY_NAME.match(name):
                continue
            path = Path(folder) / name
            try:
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError as exc:  # gone meanwhile, or not ours to delete
                logger.debug("%s: not removed (%s)", path, exc)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write in %s", removed, root)
    return removed

