"""Files of the media store: local and object-storage paths, atomic writes, and a
recording read back as one stream without holding it in memory."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from fergi._errors import FergiError

logger = logging.getLogger(__name__)


def is_url(location: str | os.PathLike) -> bool:
    """Whether a media location is an fsspec URL (``s3://...``) rather than a folder."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


class RemotePath:
    """A path on an fsspec filesystem with the pathlib methods the study uses.

    Object stores have no folders: :meth:`mkdir` does nothing and a "folder" exists
    while an object lies under it.
    """

    def __init__(self, fs, path: str) -> None:
        self.fs = fs
        self.path = path.rstrip("/")

    # ---------------------------------------------------------------- pure parts
    def __truediv__(self, other: str) -> RemotePath:
        return RemotePath(self.fs, f"{self.path}/{other}")

    @property
    def _pure(self) -> PurePosixPath:
        return PurePosixPath(self.path)

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.fs, str(self._pure.parent))

    def with_name(self, name: str) -> RemotePath:
        return RemotePath(self.fs, str(self._pure.with_name(name)))

    def as_posix(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ---------------------------------------------------------------- filesystem
    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def write_bytes(self, data: bytes) -> int:
        self.fs.pipe_file(self.path, data)
        return len(data)

    def open(self, mode: str = "rb"):
        return self.fs.open(self.path, mode)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        return None  # no folders on an object store

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def iterdir(self) -> Iterator[RemotePath]:
        try:
            names = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return iter(())
        return iter(RemotePath(self.fs, n) for n in names if n.rstrip("/") != self.path)

    def glob(self, pattern: str) -> Iterator[RemotePath]:
        return iter(RemotePath(self.fs, n) for n in self.fs.glob(f"{self.path}/{pattern}"))


StorePath = Path | RemotePath


class ChunkStream(io.RawIOBase):
    """A read-only, seekable file over a segment's chunks, as if they were one file.

    Only one chunk is held in memory at a time (the assembled recording never is).

    Parameters
    ----------
    parts : sequence of (callable, int)
        For each chunk, a function returning its (decrypted) bytes and its size.
    """

    def __init__(self, parts: Sequence[tuple[Callable[[], bytes], int]]) -> None:
        super().__init__()
        self._loaders = [load for load, _ in parts]
        self._starts = [0]
        for _, size in parts:
            self._starts.append(self._starts[-1] + int(size))
        self._pos = 0
        self._current: tuple[int, bytes] | None = None

    @property
    def size(self) -> int:
        return self._starts[-1]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _part(self, index: int) -> bytes:
        if self._current is None or self._current[0] != index:
            data = self._loaders[index]()
            expected = self._starts[index + 1] - self._starts[index]
            if len(data) != expected:
                raise FergiError(f"recording chunk {index} has {len(data)} bytes, {expected} were recorded")
            self._current = (index, data)
        return self._current[1]

    def read(self, size: int = -1) -> bytes:
        # whole reads across chunk boundaries (a raw read may stop at one)
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        out = bytearray()
        while len(out) < size:
            buffer = bytearray(size - len(out))
            n = self.readinto(buffer)
            if not n:
                break
            out += buffer[:n]
        return bytes(out)

    def readinto(self, buffer) -> int:
        if self._pos >= self.size:
            return 0
        import bisect

        index = bisect.bisect_right(self._starts, self._pos) - 1
        data = self._part(index)
        offset = self._pos - self._starts[index]
        n = min(len(buffer), len(data) - offset)
        buffer[:n] = data[offset : offset + n]
        self._pos += n
        return n


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` durably (temp file, fsync, rename) and return its sha256."""
    write_durably(path, data)
    return hashlib.sha256(data).hexdigest()


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` durably (temp file, fsync, rename), without hashing it: for the
    chunk route, whose caller has hashed the bytes already."""
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return
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
