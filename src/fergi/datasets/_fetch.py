"""Fetch the public FERGI release (mne/nilearn style)."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from fergi._errors import FergiError

logger = logging.getLogger(__name__)

REPOSITORY = "ShuangquanFeng/FERGI"
COMMIT = "de2e7fe9a73d6c249de569cea09d4d5999e2e264"
ARCHIVE_URL = f"https://github.com/{REPOSITORY}/archive/{COMMIT}.tar.gz"
ENV_VAR = "FERGI_DATA"
RELEASE_FOLDER = f"FERGI-{COMMIT[:7]}"
_MEMBERS = ("data/", "preparation/")
_HELP = (
    "point fergi at a local copy of the release with --data PATH or the "
    f"{ENV_VAR} environment variable (a folder holding data/ and preparation/)"
)


def _is_release(path: Path) -> bool:
    # preparation/ is optional: a folder of reactions alone (fergi extract output laid out
    # as data/) is the user's own data, never a reason to download the public release.
    return (path / "data").is_dir()


def default_cache_dir() -> Path:
    """User cache folder of fergi (``$XDG_CACHE_HOME/fergi`` or ``~/.cache/fergi``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fergi"


def load_manifest() -> dict[str, str]:
    """SHA-256 of every file of ``data/`` and ``preparation/`` at the pinned commit."""
    with resources.files("fergi.datasets").joinpath("fergi_manifest.txt.gz").open("rb") as fh:
        text = gzip.decompress(fh.read()).decode()
    manifest = {}
    for line in text.splitlines():
        digest, name = line.split("  ", 1)
        manifest[name] = digest
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_release(path: str | os.PathLike, manifest: dict[str, str] | None = None) -> None:
    """Check every file of a release against the SHA-256 manifest shipped with fergi.

    Raises
    ------
    FergiError
        Naming the first missing or altered file.
    """
    root = Path(path)
    manifest = load_manifest() if manifest is None else manifest
    for name, digest in sorted(manifest.items()):
        file = root / name
        if not file.is_file():
            raise FergiError(f"{file}: missing from the release (checksum manifest lists it)")
        if _sha256(file) != digest:
            raise FergiError(f"{file}: checksum mismatch (file altered or truncated)")


def _download(url: str, target: Path, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "fergi"})
    with urllib.request.urlopen(request, timeout=60) as response, open(target, "wb") as out:
        total = response.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total else None,
            unit="B",
            unit_scale=True,
            desc="FERGI release",
            disable=not progress,
        ) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                bar.update(len(block))


def _extract(archive: Path, dest: Path, *, progress: bool) -> None:
    """Unpack only data/ and preparation/ from the repository archive into ``dest``."""
    from tqdm.auto import tqdm

    with tarfile.open(archive, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not parts[1].startswith(_MEMBERS):
                continue
            if not (member.isfile() or member.isdir()):
                continue
            member.name = parts[1]
            members.append(member)
        if not members:
            raise FergiError(f"{archive}: the archive holds no data/ or preparation/ folder")
        for member in tqdm(members, desc="unpacking", unit="file", disable=not progress):
            tar.extract(member, dest, filter="data")


def fetch_fergi(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    url: str = ARCHIVE_URL,
    progress: bool = True,
) -> Path:
    """Return the local path of the public FERGI release, downloading it if needed.

    The location is resolved in order from ``data_dir``, the ``FERGI_DATA``
    environment variable, then the user cache folder (:func:`default_cache_dir`).
    A location is used as it is when it already holds ``data/`` (a local copy,
    a study exported by ``fergi export``, or reactions alone); otherwise the
    release lives in its subfolder ``FERGI-<commit>``.

    When the release is missing and ``download`` is true, the archive of the
    GitHub repository ``ShuangquanFeng/FERGI`` at the pinned commit is
    downloaded, only ``data/`` and ``preparation/`` are unpacked, and every file
    is checked against the SHA-256 manifest shipped with fergi.

    Parameters
    ----------
    data_dir : path-like, optional
        Where the release is, or where to store it.
    download : bool, default True
        Download the release when it is not found.
    url : str
        Archive address (for mirrors and tests).
    progress : bool, default True
        Show progress bars.

    Returns
    -------
    pathlib.Path
        The folder holding ``data/`` and ``preparation/``.

    Raises
    ------
    FergiError
        The release is missing and cannot be downloaded, or fails verification.
    """
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        origin = "data_dir"
    elif os.environ.get(ENV_VAR):
        base = Path(os.environ[ENV_VAR]).expanduser()
        origin = ENV_VAR
    else:
        base = default_cache_dir()
        origin = "cache"
    if _is_release(base):
        return base
    target = base / RELEASE_FOLDER
    if _is_release(target):
        return target
    if origin != "cache" and base.exists() and not base.is_dir():
        raise FergiError(f"{base}: not a folder ({_HELP})")
    if not download:
        raise FergiError(f"{base}: no FERGI release found and download=False; {_HELP}")

    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FergiError(f"{base}: cannot create the download folder ({exc.strerror}); {_HELP}") from None
    logger.info("downloading the FERGI release from %s into %s", url, target)
    with tempfile.TemporaryDirectory(dir=base, prefix=".fergi-download-") as tmp:
        archive = Path(tmp) / "release.tar.gz"
        try:
            _download(url, archive, progress=progress)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise FergiError(f"could not download the FERGI release from {url} ({reason}); {_HELP}") from None
        staging = Path(tmp) / "release"
        try:
            _extract(archive, staging, progress=progress)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise FergiError(f"{url}: the downloaded archive is corrupt ({exc}); try again") from None
        verify_release(staging)
        # Rename last, so an interrupted download never leaves a half release behind.
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target
