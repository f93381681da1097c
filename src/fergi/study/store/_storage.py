"""Where the study keeps its files. Every path is built from database ids, never from
anything a client sends.

The media live in a local folder (the default) or on object storage through
``fsspec`` (``s3://bucket/prefix``, with ``s3fs``), so that the server and any number
of ``fergi worker`` processes on other machines share nothing but the database and the
bucket. A local store hands out :class:`pathlib.Path` objects exactly as before; an
object store hands out :class:`RemotePath` objects with the same method names
(``/``, ``name``, ``is_file``, ``read_bytes`` ...). Work that needs real files (video
encoding, CSV writing) goes through :meth:`MediaStore.output`, which gives a local
scratch file and uploads it.

Raw video can be encrypted at rest (``FERGI_MEDIA_KEY``, a Fernet key): recording
chunks are stored encrypted and decrypted only in memory when processing reads them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from fergi._errors import FergiError
from fergi.study.store._files import (
    ChunkStream,
    RemotePath,
    StorePath,
    _fsync_dir,
    is_url,
    write_atomic,
    write_durably,
)
from fergi.study.store._keys import _FERNET_PREFIX, _Cipher, check_media_key

logger = logging.getLogger(__name__)


class MediaStore:
    """The media folder (or object-store prefix) of a study.

    Layout::

        sessions/<session id>/segments/<segment>/chunk_<seq>.webm   raw uploads (append-only)
        sessions/<session id>/images/image_<i>.png                  generated images
        sessions/<session id>/work/                                 processing scratch
        sessions/<session id>/clips/{baseline,reaction}_clip_<i>.mp4
        sessions/<session id>/features/{baseline,reaction}_clip_<i>_features.csv

    Parameters
    ----------
    root : path
        The local media folder (use :func:`open_store` for a URL).
    key : str, optional
        Fernet key(s) of the raw video's encryption at rest (``FERGI_MEDIA_KEY``).
    """

    #: Decrypted/downloaded chunks of an object store kept in memory, at most (bytes):
    #: a live decoder re-reads its segment from the start on every new chunk.
    CACHE_BYTES = 256 * 1024 * 1024

    def __init__(self, root: Path | RemotePath, *, key: str | None = None) -> None:
        self.root = root if isinstance(root, RemotePath) else Path(root)
        self._cipher = _Cipher(key) if key else None
        #: What :func:`check_media_key` had to say at start-up (None: nothing).
        self.key_notice: str | None = None
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()

    @property
    def is_remote(self) -> bool:
        """Whether the media are on object storage."""
        return isinstance(self.root, RemotePath)

    @property
    def location(self) -> str:
        """The folder or URL, for messages."""
        return str(self.root)

    @property
    def encrypted(self) -> bool:
        return self._cipher is not None

    def session_dir(self, session_id: int) -> StorePath:
        return self.root / "sessions" / f"{int(session_id):06d}"

    def segment_dir(self, session_id: int, segment: int) -> StorePath:
        return self.session_dir(session_id) / "segments" / f"{int(segment):03d}"

    def chunk_path(self, session_id: int, segment: int, seq: int) -> StorePath:
        return self.segment_dir(session_id, segment) / f"chunk_{int(seq):06d}.webm"

    def image_path(self, session_id: int, index: int) -> StorePath:
        return self.session_dir(session_id) / "images" / f"image_{int(index)}.png"

    def work_dir(self, session_id: int) -> StorePath:
        return self.session_dir(session_id) / "work"

    def clips_dir(self, session_id: int) -> StorePath:
        return self.session_dir(session_id) / "clips"

    def features_dir(self, session_id: int) -> StorePath:
        return self.session_dir(session_id) / "features"

    def relative(self, path: StorePath) -> str:
        if self.is_remote:
            return PurePosixPath(path.path).relative_to(self.root.path).as_posix()
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def resolve(self, relative: str) -> StorePath:
        """Absolute path of a stored relative path, refusing anything outside the store."""
        if self.is_remote:
            parts = PurePosixPath(relative).parts
            if not parts or ".." in parts or PurePosixPath(relative).is_absolute():
                raise ValueError(f"{relative!r} is outside the media store")
            return self.root / PurePosixPath(relative).as_posix()
        path = (self.root / relative).resolve()
        path.relative_to(self.root.resolve())
        return path

    # ---------------------------------------------------------------- files
    def write_bytes(self, path: StorePath, data: bytes) -> str:
        """Store ``data`` durably at ``path`` (local: temp file, fsync, rename; an object
        store's PUT is atomic) and return its sha256."""
        return write_atomic(path, data)

    def open_read(self, path: StorePath):
        """A binary file object of a stored file."""
        return path.open("rb")

    @contextmanager
    def output(self, path: StorePath) -> Iterator[Path]:
        """A local file to write ``path`` into; stored when the block ends without error.

        A local store yields ``path`` itself (its folder created), so writers keep their
        own atomic renames; an object store yields a scratch file and uploads it.
        """
        if not isinstance(path, RemotePath):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield path
            return
        scratch = Path(tempfile.mkdtemp(prefix="fergi-media-"))
        try:
            local = scratch / path.name
            yield local
            if local.exists():
                path.fs.put_file(str(local), path.path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @contextmanager
    def output_dir(self, folder: StorePath) -> Iterator[Path]:
        """A local folder whose files are stored under ``folder`` when the block ends."""
        if not isinstance(folder, RemotePath):
            folder.mkdir(parents=True, exist_ok=True)
            yield folder
            return
        scratch = Path(tempfile.mkdtemp(prefix="fergi-media-"))
        try:
            yield scratch
            for local in sorted(scratch.iterdir()):
                if local.is_file() and not local.name.startswith("."):
                    folder.fs.put_file(str(local), (folder / local.name).path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @contextmanager
    def local_copies(self, paths: Sequence[StorePath]) -> Iterator[list[Path]]:
        """Local files of stored ones (themselves on a local store; a scratch copy else)."""
        if not self.is_remote:
            yield [Path(p) for p in paths]
            return
        scratch = Path(tempfile.mkdtemp(prefix="fergi-media-"))
        try:
            out = []
            for i, path in enumerate(paths):
                local = scratch / f"{i}_{path.name}"
                path.fs.get_file(path.path, str(local))
                out.append(local)
            yield out
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def copy_to(self, path: StorePath, target: Path) -> None:
        """Copy a stored file to a local file."""
        if isinstance(path, RemotePath):
            path.fs.get_file(path.path, str(target))
        else:
            shutil.copyfile(path, target)

    def remove_tree(self, path: StorePath) -> None:
        """Delete a folder (prefix) and everything under it; nothing there is fine."""
        if isinstance(path, RemotePath):
            try:
                path.fs.rm(path.path, recursive=True)
            except FileNotFoundError:
                pass
            with self._cache_lock:
                for key in [k for k in self._cache if k.startswith(path.path + "/")]:
                    self._cache_bytes -= len(self._cache.pop(key))
            return
        shutil.rmtree(path, ignore_errors=True)

    def has_files(self, path: StorePath) -> bool:
        """Whether a folder (prefix) holds anything."""
        if isinstance(path, RemotePath):
            return bool(path.fs.find(path.path, maxdepth=None))
        return path.is_dir()

    # ---------------------------------------------------------------- recording chunks
    def staged_chunk_path(self, session_id: int, segment: int, seq: int, sha256: str) -> StorePath:
        """The temporary name of a chunk before its row is committed (hidden, by content)."""
        final = self.chunk_path(session_id, segment, seq)
        return final.with_name(f".{final.stem}.{sha256[:16]}.part")

    def stage_chunk(self, session_id: int, segment: int, seq: int, data: bytes, sha256: str) -> StorePath:
        """Write a chunk under a temporary name (encrypted when a key is set).

        :meth:`commit_chunk` gives it its final name once its database row is committed:
        of two requests racing for one chunk only the winner's bytes are ever visible,
        and the name carries the content hash so a retried request finds its own.
        """
        staged = self.staged_chunk_path(session_id, segment, seq, sha256)
        stored = self._cipher.encrypt(data) if self._cipher else data
        write_durably(staged, stored)  # (hashed once, by the caller)
        return staged

    def commit_chunk(self, staged: StorePath, session_id: int, segment: int, seq: int) -> None:
        """Move a staged chunk to its final name (idempotent: a repeat finds it done)."""
        final = self.chunk_path(session_id, segment, seq)
        if isinstance(staged, RemotePath):
            if not staged.exists():
                if final.exists():
                    return
                raise FergiError(f"{staged}: the staged chunk is gone")
            # copy + delete: a reader sees either no object or the whole one
            staged.fs.mv(staged.path, final.path)
            return
        try:
            os.replace(staged, final)
        except FileNotFoundError:
            if not final.is_file():
                raise
            return
        _fsync_dir(final.parent)

    def finish_commit(self, session_id: int, segment: int, seq: int, sha256: str) -> None:
        """A chunk sent again whose row exists: commit its staged bytes if the first
        request stopped between its database commit and its rename."""
        staged = self.staged_chunk_path(session_id, segment, seq, sha256)
        if staged.exists():
            self.commit_chunk(staged, session_id, segment, seq)

    def discard(self, staged: StorePath) -> None:
        """Remove a staged chunk that lost a race (or whose row was refused)."""
        staged.unlink(missing_ok=True)

    def missing_chunks(self, session_id: int, segment: int, seqs: Sequence[int]) -> list[str]:
        """Names of the chunks the database lists but the store lacks."""
        paths = [self.chunk_path(session_id, segment, s) for s in seqs]
        if isinstance(self.root, RemotePath):
            folder = self.segment_dir(session_id, segment)
            try:
                present = {PurePosixPath(p).name for p in folder.fs.ls(folder.path, detail=False)}
            except FileNotFoundError:
                present = set()
            return [p.name for p in paths if p.name not in present]
        return [p.name for p in paths if not p.is_file()]

    def read_chunk(self, path: StorePath) -> bytes:
        """The (decrypted) bytes of one stored chunk."""
        cache_key = path.path if isinstance(path, RemotePath) else None
        if cache_key is not None:
            with self._cache_lock:
                if cache_key in self._cache:
                    self._cache.move_to_end(cache_key)
                    return self._cache[cache_key]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FergiError(f"{path}: recording chunk does not exist") from None
        if self._cipher is not None and data.startswith(_FERNET_PREFIX):
            data = self._cipher.decrypt(data, str(path))
        elif self._cipher is not None:
            pass  # stored in plaintext before the key was set (check_media_key said so)
        elif data.startswith(_FERNET_PREFIX) and re.fullmatch(rb"[A-Za-z0-9_=-]+", data):
            raise FergiError(f"{path}: the recording chunk is encrypted; set FERGI_MEDIA_KEY to read it")
        if cache_key is not None:
            with self._cache_lock:
                self._cache[cache_key] = data
                self._cache_bytes += len(data)
                while self._cache_bytes > self.CACHE_BYTES and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= len(old)
        return data

    def segment_stream(self, session_id: int, segment: int, chunks: Sequence[Any]) -> ChunkStream:
        """The segment's stream as one seekable file, read chunk by chunk.

        ``chunks`` are the segment's rows (``seq`` and ``size``, the size received).
        """
        parts = []
        for chunk in chunks:
            path = self.chunk_path(session_id, segment, chunk.seq)
            parts.append(((lambda p=path: self.read_chunk(p)), int(chunk.size)))
        return ChunkStream(parts)


def open_store(
    location: str | os.PathLike, *, key: str | None = None, options: dict[str, Any] | None = None
) -> MediaStore:
    """The media store of a folder or an fsspec URL (``s3://bucket/prefix``).

    Parameters
    ----------
    location : str or path
        A local folder (created if needed) or a URL. For ``s3://`` the endpoint and
        credentials come from ``options`` (s3fs's: ``key``, ``secret``, ``endpoint_url``,
        ``client_kwargs`` ...) or the usual AWS variables (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``).
    key : str, optional
        Fernet key(s) for encryption at rest of raw video (``FERGI_MEDIA_KEY``).
    options : dict, optional
        Storage options passed to fsspec.

    Returns
    -------
    MediaStore

    Raises
    ------
    fergi.FergiError
        The folder cannot be created, the protocol's package is missing, or the bucket
        cannot be reached.
    """
    if not is_url(location):
        folder = Path(str(location).removeprefix("file://")).expanduser().resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FergiError(f"--media {folder}: cannot create the media folder ({exc.strerror})") from None
        return MediaStore(folder, key=key)
    url = str(location).rstrip("/")
    protocol = url.split("://", 1)[0]
    opts = dict(options or {})
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
        # Other processes write the same bucket: never answer from a stale listing.
        opts.setdefault("use_listings_cache", False)
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, **opts)
    except ImportError as exc:
        package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
        raise FergiError(
            f"--media {url}: needs the {package.get(protocol, exc.name or protocol)} package "
            "(pip install 'fergi[distributed]')"
        ) from None
    except ValueError as exc:
        raise FergiError(f"--media {url}: {exc}") from None
    root = RemotePath(fs, path)
    try:
        # Fail at start with one line, not at the first upload.
        fs.ls(path.split("/", 1)[0], detail=False)
    except FileNotFoundError:
        raise FergiError(f"--media {url}: the bucket does not exist") from None
    except Exception as exc:  # network, credentials, permissions
        raise FergiError(f"--media {url}: cannot reach the object store ({type(exc).__name__}: {exc})") from None
    return MediaStore(root, key=key)


def store_from_settings(settings) -> MediaStore:
    """The media store a :class:`~fergi.study.StudySettings` names (``media_url`` or the
    media folder, ``media_key``, ``media_options``), its key checked (:func:`check_media_key`).

    ``store.key_notice`` holds what the check has to say (None when nothing), also logged.
    """
    key = settings.media_key.get_secret_value() if settings.media_key is not None else ""
    store = open_store(settings.media_location, key=key.strip() or None, options=settings.media_options)
    store.key_notice = check_media_key(store)
    if store.key_notice:
        logger.warning("%s", store.key_notice)
    return store


