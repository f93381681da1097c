"""Faults the study server must survive (issue 21, item 6): a missing or different media
key, a full disk under the database, an export others can read, overload answered late,
and a stream start that only looks like WebM."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading

import pytest
from fastapi.testclient import TestClient

from fergi import FergiError
from fergi.study import create_app, export_study
from tests.helpers.study import WEBM_HEAD, make_settings, ready_participant

# ---------------------------------------------------------------- media key


def _key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def test_the_media_key_is_checked_against_the_media(tmp_path):
    pytest.importorskip("cryptography")
    key = _key()
    app = create_app(make_settings(tmp_path, media_key=key))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"secret").status_code == 200
    media = app.state.settings.resolved_media_dir
    assert (media / "media_key_check").is_file()
    # A restart without the key would store new video in plaintext: refused, in one line.
    with pytest.raises(FergiError, match="media are encrypted.*FERGI_MEDIA_KEY") as missing:
        create_app(make_settings(tmp_path))
    assert "\n" not in str(missing.value)
    # A different key would store video that neither key can read with the other: refused.
    with pytest.raises(FergiError, match="not the key the media were encrypted with") as wrong:
        create_app(make_settings(tmp_path, media_key=_key()))
    assert "\n" not in str(wrong.value)
    # The right key, also second in a rotated list, opens them; so does `fergi export`.
    assert create_app(make_settings(tmp_path, media_key=f"{_key()},{key}")).state.store.encrypted
    os.environ.pop("FERGI_MEDIA_KEY", None)
    with pytest.raises(FergiError, match="media are encrypted"):
        export_study(app.state.settings.resolved_db_url, media, tmp_path / "export")


def test_a_key_on_plaintext_media_says_what_will_be_encrypted(tmp_path, capsys):
    pytest.importorskip("cryptography")
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"plain").status_code == 200
    keyed = create_app(make_settings(tmp_path, media_key=_key()))
    notice = keyed.state.store.key_notice
    assert "every new recording chunk" in notice and "stored encrypted" in notice
    assert "1 recording segment(s) of 1 session(s) already stored stay plaintext" in notice
    # The plaintext chunk stays readable with the key; a new one is stored encrypted.
    store = keyed.state.store
    assert store.read_chunk(store.chunk_path(p.id, seg, 0)) == WEBM_HEAD + b"plain"
    with TestClient(keyed) as client:
        p2 = ready_participant(client, keyed, "002")
        seg2 = p2.start_segment()
        assert p2.chunk(seg2, 0, WEBM_HEAD + b"new").status_code == 200
    assert not store.chunk_path(p2.id, seg2, 0).read_bytes().startswith(WEBM_HEAD)
    # Said once: the check value is written, a later start has nothing to say.
    assert create_app(make_settings(tmp_path, media_key=keyed.state.settings.media_key)).state.store.key_notice is None


# ---------------------------------------------------------------- full disk under the database


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs mounted for the test (root only), unmounted after it."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the full-disk test needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder) -> object:
    """Fill the file system of ``folder``; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_under_the_database_pauses_the_study_and_loses_nothing(tmp_path, small_disk):
    if os.environ.get("FERGI_TEST_DB_URL"):
        pytest.skip("the SQLite file on a full disk")
    settings = make_settings(tmp_path, db_url=f"sqlite:///{small_disk / 'study.sqlite3'}",
                             rate_limit_per_minute=100_000)
    app = create_app(settings)
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        chunks = [WEBM_HEAD + b"a" * 3000] + [bytes([65 + i % 26]) * 3000 for i in range(1, 200)]
        assert p.chunk(seg, 0, chunks[0]).status_code == 200
        filler = _fill(small_disk)
        # Chunks go on until the database needs a new page: then every write is 507.
        for seq in range(1, len(chunks)):
            response = p.chunk(seg, seq, chunks[seq])
            if response.status_code != 200:
                break
        else:
            pytest.fail("the database never ran out of space")
        refused = seq
        assert response.status_code == 507, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["paused"] is True and int(response.headers["Retry-After"]) > 0
        event = p.call("POST", "/events", json={"segment": seg, "image_index": 1, "kind": "baseline_start",
                                                "video_time": 0.0})
        assert event.status_code == 507 and event.json()["paused"] is True
        # Reading still works, and says what the server has.
        assert p.call("GET", f"/recording/{seg}").json()["n_chunks"] == refused
        # Space comes back: the client sends the same chunk again and goes on.
        filler.unlink()
        for seq in range(refused, refused + 3):
            assert p.chunk(seg, seq, chunks[seq]).status_code == 200
        assert p.call("POST", f"/recording/{seg}/complete", json={"n_chunks": refused + 3}).status_code == 200
        store = app.state.store
        for seq in range(refused + 3):
            assert store.read_chunk(store.chunk_path(p.id, seg, seq)) == chunks[seq]


# ---------------------------------------------------------------- export modes


def test_the_export_is_owner_only_whatever_the_umask(tmp_path):
    from tests.helpers.study import processed_study

    app, _ = processed_study(make_settings(tmp_path), share=True)
    settings = app.state.settings
    out = tmp_path / "export"
    previous = os.umask(0o022)
    try:
        summary = export_study(settings.resolved_db_url, settings.resolved_media_dir, out)
    finally:
        os.umask(previous)
    assert summary["sessions"] == 1 and summary["raw_clips"] == 6
    paths = [out, *out.rglob("*")]
    assert any(path.suffix == ".mp4" for path in paths) and any(path.suffix == ".csv" for path in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


# ---------------------------------------------------------------- overload


def test_overload_is_answered_within_the_pool_timeout(tmp_path):
    """SQLite's write lock held by another process: the refusal comes when the request's
    pool timeout is spent, not after the pool timeout and then the 10 s lock timeout."""
    import sqlite3

    if os.environ.get("FERGI_TEST_DB_URL"):
        pytest.skip("SQLite's lock")
    settings = make_settings(tmp_path, rate_limit_per_minute=100_000, db_pool_timeout=1.0)
    app = create_app(settings)
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"x").status_code == 200
        blocker = sqlite3.connect(settings.resolved_db_url.removeprefix("sqlite:///"))
        blocker.execute("BEGIN IMMEDIATE")  # another process writing for longer than the timeout
        try:
            responses = [p.chunk(seg, 1, b"y" * 100), p.call("PUT", "/images/1/answer", json={})]
            event = p.call("POST", "/events", json={"segment": seg, "image_index": 1,
                                                    "kind": "baseline_start", "video_time": 0.0})
        finally:
            blocker.rollback()
            blocker.close()
        for response in (responses[0], event):
            assert response.status_code == 503, response.text
            assert "Retry-After" in response.headers
            # The server's own account of the wait: the pool timeout, not 10 s more for the lock.
            assert response.json()["waited_s"] < settings.db_pool_timeout + 2.0 < 10.0
        assert p.chunk(seg, 1, b"y" * 100).status_code == 200


def test_chunks_waiting_for_a_thread_are_refused_at_the_deadline(tmp_path, monkeypatch):
    """Every chunk thread is busy: a chunk waits for one until the pool timeout, then 503."""
    from fergi.study.web import _routes_recording

    settings = make_settings(tmp_path, rate_limit_per_minute=100_000, db_pool_timeout=0.5)
    app = create_app(settings)
    release = threading.Event()
    entered = threading.Semaphore(0)
    real = _routes_recording._put_chunk_in_thread

    def stuck(*args):
        entered.release()
        release.wait(60)
        return real(*args)

    with TestClient(app) as client:
        participants = [ready_participant(client, app, f"{i:03d}") for i in range(_routes_recording.CHUNK_THREADS + 1)]
        segments = [p.start_segment() for p in participants]
        monkeypatch.setattr(_routes_recording, "_put_chunk_in_thread", stuck)
        results = {}

        def upload(i):
            results[i] = participants[i].chunk(segments[i], 0, WEBM_HEAD + b"x")

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(_routes_recording.CHUNK_THREADS)]
        for thread in threads:
            thread.start()
        for _ in threads:
            assert entered.acquire(timeout=60)  # every chunk thread is taken
        late = participants[-1].chunk(segments[-1], 0, WEBM_HEAD + b"x")
        release.set()
        for thread in threads:
            thread.join(60)
        # Refused while the others were still stuck (they finish only after release).
        assert late.status_code == 503 and late.json()["waited_s"] >= settings.db_pool_timeout
        # The stuck ones are past their deadline too: stored, or refused to be sent again.
        for i in range(len(threads)):
            assert results[i].status_code in (200, 503), results[i].text
            n_chunks = participants[i].call("GET", f"/recording/{segments[i]}").json()["n_chunks"]
            assert n_chunks == (1 if results[i].status_code == 200 else 0)
        assert participants[-1].chunk(segments[-1], 0, WEBM_HEAD + b"x").status_code == 200


# ---------------------------------------------------------------- stream start


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"\x1a\x45\xdf\xa3" + b"garbage" * 40, "EBML header is truncated"),
        # a well-formed EBML header of another document type (Matroska, not WebM)
        (bytes.fromhex("1a45dfa39b4286810142f7810142f2810442f38108428288") + b"matroska"
         + bytes.fromhex("1853806701ffffffffffffff"), "DocType is not webm"),
        (WEBM_HEAD[:36] + b"garbage" * 10, "no Segment follows"),
    ],
)
def test_a_stream_start_must_parse_as_a_webm_header(tmp_path, body, problem):
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        response = p.chunk(seg, 0, body)
        assert response.status_code == 415 and response.json()["code"] == "bad_stream_start"
        assert problem in response.json()["detail"]
        info = p.call("GET", f"/recording/{seg}").json()
        assert info["abandoned"] is True and info["n_chunks"] == 0
        # A real stream start is accepted in a new segment.
        assert p.chunk(p.start_segment(), 0, WEBM_HEAD + b"x").status_code == 200
