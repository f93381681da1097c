"""fetch_fergi: location resolution, download, unpacking and hash checks (offline)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest

from fergi import FergiError
from fergi.datasets import _fetch, fetch_fergi, load_manifest, verify_release

FILES = {
    "data/001/session_1/reaction_clip_1_features.csv": b"frame,timestamp\n1,0.000\n",
    "preparation/valid_sessions.json": b'{"001": [1]}',
}


def _archive(files, prefix="FERGI-de2e7fe"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in {**files, "README.md": b"not unpacked", "code/x.py": b"print()"}.items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    """A local HTTP server serving one archive (never the internet)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def manifest(monkeypatch):
    digests = {name: hashlib.sha256(content).hexdigest() for name, content in FILES.items()}
    monkeypatch.setattr(_fetch, "load_manifest", lambda: digests)
    return digests


def test_shipped_manifest_matches_the_shared_copy(fergi_public):
    manifest = load_manifest()
    assert len(manifest) == 5760 + 101
    assert "preparation/AU4_excluded_participants.json" not in manifest
    verify_release(fergi_public)


def test_local_copy_is_used_as_is(fergi_public, monkeypatch):
    monkeypatch.delenv("FERGI_DATA", raising=False)
    assert fetch_fergi(fergi_public, download=False) == fergi_public
    monkeypatch.setenv("FERGI_DATA", str(fergi_public))
    assert fetch_fergi(download=False) == fergi_public


def test_argument_wins_over_environment_then_cache(tmp_path, monkeypatch, fergi_public):
    monkeypatch.setenv("FERGI_DATA", str(fergi_public))
    with pytest.raises(FergiError, match="no FERGI release found"):
        fetch_fergi(tmp_path / "elsewhere", download=False)
    monkeypatch.delenv("FERGI_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FergiError, match=r"cache/fergi: no FERGI release found.*--data PATH"):
        fetch_fergi(download=False)


def test_download_unpacks_only_data_and_preparation(server, manifest, tmp_path, monkeypatch):
    www, base = server
    (www / "release.tar.gz").write_bytes(_archive(FILES))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FERGI_DATA", raising=False)
    path = fetch_fergi(url=f"{base}/release.tar.gz", progress=False)
    assert path == tmp_path / "cache" / "fergi" / _fetch.RELEASE_FOLDER
    assert (path / "preparation" / "valid_sessions.json").read_bytes() == FILES["preparation/valid_sessions.json"]
    assert not (path / "README.md").exists() and not (path / "code").exists()
    # Found in the cache the second time: no download.
    assert fetch_fergi(url=f"{base}/missing.tar.gz", download=False) == path


def test_tampered_download_is_rejected_and_nothing_is_left(server, manifest, tmp_path):
    www, base = server
    bad = dict(FILES)
    bad["preparation/valid_sessions.json"] = b'{"001": [2]}'
    (www / "release.tar.gz").write_bytes(_archive(bad))
    with pytest.raises(FergiError, match=r"valid_sessions\.json: checksum mismatch"):
        fetch_fergi(tmp_path / "store", url=f"{base}/release.tar.gz", progress=False)
    assert not (tmp_path / "store" / _fetch.RELEASE_FOLDER).exists()


def test_offline_failure_is_one_line(server, manifest, tmp_path):
    _, base = server
    with pytest.raises(FergiError) as err:
        fetch_fergi(tmp_path / "store", url=f"{base}/nothing-here.tar.gz", progress=False)
    message = str(err.value)
    assert "could not download" in message and "FERGI_DATA" in message and "\n" not in message


def test_corrupt_archive(server, manifest, tmp_path):
    www, base = server
    (www / "release.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(FergiError, match="corrupt"):
        fetch_fergi(tmp_path / "store", url=f"{base}/release.tar.gz", progress=False)


def test_a_folder_with_data_only_is_used_and_never_downloaded_into(tmp_path):
    own = tmp_path / "my-reactions"
    (own / "data").mkdir(parents=True)
    assert fetch_fergi(own, download=True, url="http://127.0.0.1:9/never") == own


def test_reproduce_with_a_wrong_data_path_does_not_download(tmp_path, capsys):
    from fergi.cli import main

    missing = tmp_path / "typo"
    assert main(["reproduce", "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no FERGI release found" in err and not missing.exists()
