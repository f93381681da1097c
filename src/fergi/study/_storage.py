"""Where the study keeps its files. Every path is built from database ids, never from
anything a client sends."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class MediaStore:
    """The media folder of a study.

    Layout::

        sessions/<session id>/segments/<segment>/chunk_<seq>.webm   raw uploads (append-only)
        sessions/<session id>/images/image_<i>.png                  generated images
        sessions/<session id>/work/                                 processing scratch
        sessions/<session id>/clips/{baseline,reaction}_clip_<i>.mp4
        sessions/<session id>/features/{baseline,reaction}_clip_<i>_features.csv
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def session_dir(self, session_id: int) -> Path:
        return self.root / "sessions" / f"{int(session_id):06d}"

    def segment_dir(self, session_id: int, segment: int) -> Path:
        return self.session_dir(session_id) / "segments" / f"{int(segment):03d}"

    def chunk_path(self, session_id: int, segment: int, seq: int) -> Path:
        return self.segment_dir(session_id, segment) / f"chunk_{int(seq):06d}.webm"

    def image_path(self, session_id: int, index: int) -> Path:
        return self.session_dir(session_id) / "images" / f"image_{int(index)}.png"

    def work_dir(self, session_id: int) -> Path:
        return self.session_dir(session_id) / "work"

    def clips_dir(self, session_id: int) -> Path:
        return self.session_dir(session_id) / "clips"

    def features_dir(self, session_id: int) -> Path:
        return self.session_dir(session_id) / "features"

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def resolve(self, relative: str) -> Path:
        """Absolute path of a stored relative path, refusing anything outside the store."""
        path = (self.root / relative).resolve()
        path.relative_to(self.root.resolve())
        return path


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` durably (temp file, fsync, rename) and return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()
