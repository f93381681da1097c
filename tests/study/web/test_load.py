"""The study server under load: slow uploads, an exhausted pool, many participants
arriving at once (issue 10, item 2). Speed figures are in benchmarks/bench_study.py;
these tests check behaviour only."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fergi.study import create_app
from tests.helpers.services import free_port
from tests.helpers.study import WEBM_HEAD, make_settings, ready_participant, serve


def _upload_settings(tmp_path, **overrides):
    return make_settings(tmp_path, rate_limit_per_minute=100_000, **overrides)


def test_trickling_uploads_hold_no_database_connection(tmp_path):
    """16 uploads whose bodies have not arrived yet must not starve other requests."""
    app = create_app(_upload_settings(tmp_path, db_pool_size=4, db_pool_timeout=5))
    client = TestClient(app)  # no lifespan: the async part below drives the app itself
    participants = [ready_participant(client, app, f"t{i:02d}") for i in range(16)]
    segments = [p.start_segment() for p in participants]

    async def scenario():
        release = asyncio.Event()
        started = 0

        async def trickle():
            nonlocal started
            started += 1
            yield WEBM_HEAD
            await release.wait()  # the rest of the body only comes later
            yield b"x" * 1000

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as aclient:
            uploads = [
                asyncio.create_task(
                    aclient.put(
                        f"/api/sessions/{p.id}/recording/{seg}/chunks/0",
                        content=trickle(),
                        headers={**p.headers, "Content-Type": "video/webm"},
                    )
                )
                for p, seg in zip(participants, segments, strict=True)
            ]
            while started < len(uploads):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # every upload is now waiting for its body
            other = participants[0]
            state = await asyncio.wait_for(
                aclient.get(f"/api/sessions/{other.id}", headers=other.headers), timeout=60
            )
            created = await asyncio.wait_for(aclient.post("/api/sessions", json={"participant_id": "new"}), timeout=60)
            release.set()
            done = await asyncio.wait_for(asyncio.gather(*uploads), timeout=60)
        return state, created, done

    # In a thread: a blocked event loop (a connection awaited on it) cannot time itself out.
    result = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert result, "other requests starved while 16 uploads waited for their bodies"
    state, created, done = result[0]
    assert state.status_code == 200, state.text
    assert created.status_code == 201, created.text
    assert [r.status_code for r in done] == [200] * 16
    assert all(r.json()["n_chunks"] == 1 for r in done)


def test_unknown_token_uploads_are_refused_before_the_body_is_read(tmp_path):
    app = create_app(_upload_settings(tmp_path))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        response = client.put(
            f"/api/sessions/{p.id}/recording/{seg}/chunks/0",
            content=WEBM_HEAD + b"x",
            headers={"X-Session-Token": "forged", "Content-Type": "video/webm"},
        )
        assert response.status_code == 403
        assert p.chunk(seg, 0, WEBM_HEAD + b"x").status_code == 200


def test_no_free_connection_is_503_with_retry_after(tmp_path):
    app = create_app(_upload_settings(tmp_path, db_pool_size=1, db_pool_timeout=0.2))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        held = app.state.engine.connect()  # the pool's only connection
        try:
            response = p.call("GET", "")
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1 and "busy" in response.json()["detail"]
            assert p.chunk(seg, 0, WEBM_HEAD + b"x").status_code == 503
            assert client.post("/api/sessions", json={"participant_id": "002"}).status_code == 503
        finally:
            held.close()
        # Nothing was half stored: the chunk is accepted now.
        assert p.chunk(seg, 0, WEBM_HEAD + b"x").json()["n_chunks"] == 1


def test_pool_is_sized_for_the_threads(tmp_path):
    settings = make_settings(tmp_path)
    app = create_app(settings)
    # Requests run in 40 threads and the worker in 4: each can hold a connection at once.
    assert settings.resolved_pool_size >= 44
    if not os.environ.get("FERGI_TEST_DB_URL"):
        assert app.state.engine.pool.size() == settings.resolved_pool_size
        assert app.state.engine.pool.timeout() == settings.db_pool_timeout == 5.0


def test_many_session_creations_at_once_never_fail(tmp_path):
    """64 participants starting at the same moment: each gets a session (or a 503 to
    retry, as the page does), never a 500; with the defaults, all of them get one."""
    app = create_app(_upload_settings(tmp_path))

    async def start(client, pid):
        # As the page does: a 503 (busy past the pool timeout) is sent again after Retry-After.
        for _ in range(10):
            response = await client.post("/api/sessions", json={"participant_id": pid})
            if response.status_code != 503:
                return response
            await asyncio.sleep(float(response.headers["Retry-After"]))
        return response

    async def burst():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
            return await asyncio.gather(*(start(client, f"c{i:03d}") for i in range(64)))

    with serve(app) as base:
        responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * 64, [r.text for r in responses if r.status_code != 201][:3]
    with app.state.sessionmaker() as db:
        from sqlalchemy import func, select

        from fergi.study.store import StudySession

        assert db.scalar(select(func.count()).select_from(StudySession)) == 64


@pytest.mark.slow
def test_sqlite_write_lock_held_too_long_is_503(tmp_path):
    import sqlite3

    settings = _upload_settings(tmp_path)
    if settings.db_url:
        pytest.skip("SQLite's lock")
    app = create_app(settings)
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        blocker = sqlite3.connect(settings.resolved_db_url.removeprefix("sqlite:///"))
        blocker.execute("BEGIN IMMEDIATE")  # another process writing for longer than busy_timeout
        try:
            response = p.chunk(seg, 0, WEBM_HEAD + b"x")
        finally:
            blocker.rollback()
            blocker.close()
        assert response.status_code == 503 and "Retry-After" in response.headers
        assert p.chunk(seg, 0, WEBM_HEAD + b"x").status_code == 200


@pytest.mark.slow
def test_serve_with_several_processes(tmp_path):
    """`fergi serve --workers 2`: both processes serve, one of them runs the worker."""
    import subprocess
    import sys

    port = free_port()
    import fergi

    env = {k: v for k, v in os.environ.items() if not k.startswith("FERGI_")}
    # This checkout's fergi, whatever the current folder is.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fergi.__file__).parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "fergi", "serve", "--port", str(port), "--workers", "2",
         "--data-dir", str(tmp_path / "d"), "--n-images", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "fergi serve --workers 2 did not come up"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=30) as client:
            body = client.post("/api/sessions", json={"participant_id": "w1"}).json()
            api, headers = f"/api/sessions/{body['session_id']}", {"X-Session-Token": body["token"]}
            client.post(f"{api}/consent", json={"agree": True, "consent_version": "1"}, headers=headers).raise_for_status()
            if body["state"]["session_type"] == "structured":
                from tests.helpers.study import FORM

                client.post(f"{api}/prompt/generate", json={"form": FORM}, headers=headers).raise_for_status()
            client.put(f"{api}/prompt", json={"prompt": "a dog"}, headers=headers).raise_for_status()
            # The generation job is run by whichever process holds the worker lock.
            while client.get(api, headers=headers).json()["images_ready"] != [1, 2]:
                assert time.monotonic() < deadline + 60, "no process ran the worker"
                time.sleep(0.3)
        assert (tmp_path / "d" / "worker.lock").is_file()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert "Traceback" not in output, output[-3000:]
