"""The study server under attack and faults: control characters, trusted proxies, a
full disk, cross-origin admin requests, file modes, invitation tokens, the admin token,
TLS behind a proxy (issue 10, items 2 and 3)."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from fergi.study import create_app
from tests.helpers.services import free_port
from tests.helpers.study import ADMIN, ANSWER, WEBM_HEAD, make_settings, ready_participant

# ---------------------------------------------------------------- control characters


def test_control_characters_are_refused_with_422_everywhere(tmp_path, backend):
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        # Open without login: PostgreSQL refused the NUL with a 500 here.
        response = client.post("/api/sessions", json={"invite": "x\u0000"})
        assert response.status_code == 422, response.text
        assert "invite" in response.json()["detail"] and "U+0000" in response.json()["detail"]
        assert client.post("/api/sessions", json={"participant_id": "p\u0001"}).status_code == 422
        p = ready_participant(client, app)
        for method, suffix, body in (
            ("PUT", "/prompt", {"prompt": "a dog\u0000 in the rain"}),
            ("POST", "/consent", {"agree": True, "consent_version": "1\u001b"}),
            ("PUT", "/images/1/answer", {**ANSWER, "missing_elements": "bird\u007f"}),
            ("PUT", "/images/1/answer", {**ANSWER, "issues": ["blurry\u0000"]}),
            ("PUT", "/images/1/answer", {**ANSWER, "bad\u0000key": 1}),
        ):
            response = p.call(method, suffix, json=body)
            assert response.status_code == 422, (suffix, body, response.text)
            assert "control character" in response.json()["detail"]
        response = client.post("/api/admin/participants", json={"note": "x\u0000"}, headers=ADMIN)
        assert response.status_code == 422 and "note" in response.json()["detail"]
        # Query parameters and the path as well.
        assert client.get("/api/admin/sessions?participant_id=x%00", headers=ADMIN).status_code == 422
        assert client.get("/api/admin/sessions?participant_id=x%1B1", headers=ADMIN).status_code == 422
        assert client.get("/api/admin/sessions", headers=ADMIN).status_code == 200
        # Free text keeps its newlines and tabs.
        p.present(p.start_segment(), 1, 0.0)
        answer = {**ANSWER, "missing_elements": "a bird\n\tand a cat\r\n"}
        assert p.call("PUT", "/images/1/answer", json=answer).status_code == 200
        assert app.state.settings.db_url == (os.environ.get("FERGI_TEST_DB_URL") or None)


# ---------------------------------------------------------------- proxies


def _serve(app, tmp_path, extra_args=()):
    """The app in a real uvicorn, configured as `fergi serve` configures it."""
    import uvicorn

    from fergi.cli._main import build_parser
    from fergi.cli.serve import uvicorn_options

    port = free_port()
    args = build_parser().parse_args(["serve", "--port", str(port), "--data-dir", str(tmp_path), *extra_args])
    server = uvicorn.Server(uvicorn.Config(app, **{**uvicorn_options(args, app.state.settings), "log_level": "warning"}))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def _creations(base: str, forwarded: list[str]) -> list[int]:
    with httpx.Client(base_url=base) as http:
        return [
            http.post("/api/sessions", json={"participant_id": f"p{i}"}, headers={"X-Forwarded-For": ip}).status_code
            for i, ip in enumerate(forwarded)
        ]


def test_forwarded_for_from_an_untrusted_client_is_ignored(tmp_path):
    app = create_app(make_settings(tmp_path, rate_limit_per_minute=3))
    server, thread, base = _serve(app, tmp_path)
    try:
        # From 127.0.0.1, a made-up address per request gave a fresh allowance each time.
        codes = _creations(base, [f"203.0.113.{i}" for i in range(5)])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert codes == [201, 201, 201, 429, 429]


def test_forwarded_for_from_a_trusted_proxy_is_the_client(tmp_path):
    app = create_app(make_settings(tmp_path, rate_limit_per_minute=3, trusted_proxies=["127.0.0.0/8"]))
    server, thread, base = _serve(app, tmp_path)
    try:
        distinct = _creations(base, [f"203.0.113.{i}" for i in range(5)])
        same = _creations(base, ["198.51.100.7"] * 4)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert distinct == [201] * 5
    assert same == [201, 201, 201, 429]


def test_trusted_proxies_setting_is_validated():
    from pydantic import ValidationError

    from fergi.study import StudySettings

    assert StudySettings(trusted_proxies="10.0.0.1, 10.1.0.0/16").trusted_proxies == ["10.0.0.1", "10.1.0.0/16"]
    assert StudySettings().resolved_trusted_proxies == []
    assert StudySettings(behind_proxy=True).resolved_trusted_proxies == ["127.0.0.1", "::1"]
    with pytest.raises(ValidationError, match="not an IP address"):
        StudySettings(trusted_proxies=["proxy.example"])


def test_secure_cookie_and_hsts_over_https_from_a_trusted_proxy(tmp_path):
    app = create_app(make_settings(tmp_path, behind_proxy=True))
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}
    with TestClient(app, client=("127.0.0.1", 40000)) as proxied:
        response = proxied.get("/admin?token=test-admin", headers=https, follow_redirects=False)
        assert response.status_code == 303
        cookie = response.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert response.headers["location"].startswith("https://")
        plain = proxied.get("/admin?token=test-admin", follow_redirects=False)
        assert "secure" not in plain.headers["set-cookie"].lower()
        assert "strict-transport-security" not in plain.headers
    # The same header from anyone else is not believed.
    with TestClient(app, client=("203.0.113.9", 40000)) as direct:
        response = direct.get("/admin?token=test-admin", headers=https, follow_redirects=False)
        assert "secure" not in response.headers["set-cookie"].lower()
        assert "strict-transport-security" not in response.headers


# ---------------------------------------------------------------- full disk


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_media_disk_is_507_and_loses_nothing(tmp_path, monkeypatch, code):
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"a").status_code == 200
        real_fsync = os.fsync

        def full(_fd):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", full)
        response = p.chunk(seg, 1, b"b" * 100)
        assert response.status_code == 507, response.text
        assert response.headers["content-type"] == "application/json"
        assert "paused on the server side" in response.json()["detail"]
        assert response.json()["paused"] is True and int(response.headers["Retry-After"]) > 0
        monkeypatch.setattr(os, "fsync", real_fsync)
        # The refused chunk was not counted and no partial file is left.
        assert p.call("GET", f"/recording/{seg}").json()["n_chunks"] == 1
        segdir = app.state.store.segment_dir(p.id, seg)
        assert sorted(f.name for f in segdir.iterdir()) == ["chunk_000000.webm"]
        assert p.chunk(seg, 1, b"b" * 100).status_code == 200


def test_other_os_errors_stay_server_errors(tmp_path, monkeypatch):
    app = create_app(make_settings(tmp_path))
    with TestClient(app, raise_server_exceptions=False) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        monkeypatch.setattr(os, "fsync", lambda _fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        assert p.chunk(seg, 0, WEBM_HEAD + b"a").status_code == 500


# ---------------------------------------------------------------- admin Origin


def test_admin_state_changes_check_the_origin(tmp_path):
    app = create_app(make_settings(tmp_path, public_url="https://study.example.org"))
    with TestClient(app) as client:
        def post(headers=None, cookie=True):
            client.cookies.clear()
            if cookie:
                client.cookies.set("fergi_admin", "test-admin")
            return client.post("/api/admin/participants", json={}, headers=headers or {}).status_code

        # Cookie sessions (a browser): only the study's own pages may change anything.
        assert post({"Origin": "https://evil.example"}) == 403
        assert post({"Referer": "https://evil.example/page"}) == 403
        assert post({"Sec-Fetch-Site": "cross-site"}) == 403
        assert post({"Origin": "null", "Sec-Fetch-Site": "same-site"}) == 403
        assert post() == 403  # nothing says where it came from
        assert post({"Origin": "http://testserver"}) == 201
        assert post({"Origin": "https://study.example.org"}) == 201
        assert post({"Referer": "http://testserver/admin"}) == 201
        # A same-origin fetch under Referrer-Policy: no-referrer sends Origin: null.
        assert post({"Origin": "null", "Sec-Fetch-Site": "same-origin"}) == 201
        # A token in a header is an API client: no Origin is fine, a foreign one is not.
        assert post(ADMIN, cookie=False) == 201
        assert post({**ADMIN, "Origin": "https://evil.example"}, cookie=False) == 403
        # Reading is not a state change.
        client.cookies.set("fergi_admin", "test-admin")
        assert client.get("/api/admin/participants", headers={"Origin": "https://evil.example"}).status_code == 200


# ---------------------------------------------------------------- file modes


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_are_0600_and_folders_0700(tmp_path):
    before = os.umask(0o022)
    os.umask(before)
    settings = make_settings(tmp_path)
    if settings.db_url:
        pytest.skip("checks the SQLite file")
    app = create_app(settings)
    data = settings.data_dir
    with TestClient(app) as client:
        p = ready_participant(client, app)  # runs the image generation: PNG files
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"a").status_code == 200
        client.post("/api/admin/participants", json={}, headers=ADMIN)
        files = [f for f in data.rglob("*") if f.is_file()]
        folders = [data] + [f for f in data.rglob("*") if f.is_dir()]
        assert any(f.suffix == ".png" for f in files) and any(f.suffix == ".webm" for f in files)
        assert {f.name for f in files} >= {"study.sqlite3", "study.sqlite3-wal"}
        assert {str(f.relative_to(data)): oct(_mode(f)) for f in files if _mode(f) != 0o600} == {}
        assert {str(f.relative_to(data)): oct(_mode(f)) for f in folders if _mode(f) != 0o700} == {}
    # The umask is the process's: given back when the app stops.
    assert os.umask(before) == before


# ---------------------------------------------------------------- invitations


def test_invites_are_stored_hashed_and_single_use(tmp_path):
    from sqlalchemy import select

    from fergi.study.store import Participant, hash_token

    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        link = client.post("/api/admin/participants", json={"participant_id": "001"}, headers=ADMIN).json()["link"]
        token = link.split("?invite=")[1]
        with app.state.sessionmaker() as db:
            stored = db.scalar(select(Participant.invite_token).where(Participant.id == "001"))
        assert stored == hash_token(token) and token not in stored
        assert client.post("/api/sessions", json={"invite": token}).status_code == 201
        response = client.post("/api/sessions", json={"invite": token})
        assert response.status_code == 410 and "already used" in response.json()["detail"]
        listed = client.get("/api/admin/participants", headers=ADMIN).json()
        assert listed[0]["invite"] == "used" and listed[0]["link"] is None
        assert token not in str(listed)
        # A new link for the next session replaces the used one.
        again = client.post("/api/admin/participants", json={"participant_id": "001"}, headers=ADMIN).json()
        new = again["link"].split("?invite=")[1]
        assert new != token and client.post("/api/sessions", json={"invite": token}).status_code == 404
        assert client.post("/api/sessions", json={"invite": new}).json()["state"]["session_index"] == 2
        # Reusable when the admin says so.
        many = client.post("/api/admin/participants", json={"participant_id": "002", "reusable": True}, headers=ADMIN).json()
        assert many["invite_reusable"] is True
        reuse = many["link"].split("?invite=")[1]
        assert [client.post("/api/sessions", json={"invite": reuse}).status_code for _ in range(3)] == [201] * 3


def test_a_database_with_plain_invites_is_upgraded(tmp_path):
    from sqlalchemy import text

    from fergi.study.store import hash_token, make_engine

    settings = make_settings(tmp_path)
    if settings.db_url:
        pytest.skip("drops columns of the SQLite file")
    url = settings.resolved_db_url
    engine = make_engine(url)
    with engine.begin() as conn:  # the participants table of the previous version
        conn.execute(text("ALTER TABLE participants DROP COLUMN invite_reusable"))
        conn.execute(text("ALTER TABLE participants DROP COLUMN invite_used_at"))
        conn.execute(text("INSERT INTO participants (id, invite_token, note, created_at) VALUES ('007', 'plain-old-token', '', '2026-01-01')"))
    engine.dispose()
    app = create_app(settings)
    with TestClient(app) as client:
        with app.state.engine.connect() as conn:
            assert conn.execute(text("SELECT invite_token FROM participants")).scalar() == hash_token("plain-old-token")
        # Old links opened any number of sessions: they still do.
        codes = [client.post("/api/sessions", json={"invite": "plain-old-token"}).status_code for _ in range(2)]
        assert codes == [201, 201]


# ---------------------------------------------------------------- admin token


def test_admin_token_is_printed_once(tmp_path, monkeypatch, capsys):
    import uvicorn

    from fergi.cli._main import main

    for key in [k for k in os.environ if k.startswith("FERGI_")]:
        monkeypatch.delenv(key)
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: runs.append(kwargs))
    data = tmp_path / "d"
    argv = ["serve", "--data-dir", str(data), "--port", str(free_port())]
    assert main(argv) == 0
    first = capsys.readouterr().out
    token = (data / "admin_token").read_text().strip()
    assert f"/admin?token={token}" in first and "shown once" in first
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert token not in second
    assert str(data / "admin_token") in second and "admin page" in second
    # Uvicorn believes no forwarding header itself: the app decides, from trusted proxies.
    assert [r["proxy_headers"] for r in runs] == [False, False]
    monkeypatch.setenv("FERGI_ADMIN_TOKEN", "from-env-secret")
    assert main(argv) == 0
    third = capsys.readouterr().out
    assert "from-env-secret" not in third and "FERGI_ADMIN_TOKEN" in third


def test_serve_proxy_options_become_settings(tmp_path, monkeypatch):
    from fergi.cli._main import build_parser
    from fergi.cli.serve import settings_from_args

    monkeypatch.delenv("FERGI_TRUSTED_PROXIES", raising=False)
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--behind-proxy",
                                      "--trusted-proxies", "10.0.0.5,10.1.0.0/16",
                                      "--public-url", "https://study.example.org"])
    settings = settings_from_args(args)
    assert settings.behind_proxy and settings.trusted_proxies == ["10.0.0.5", "10.1.0.0/16"]
    assert settings.public_url == "https://study.example.org"
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--behind-proxy"])
    assert settings_from_args(args).resolved_trusted_proxies == ["127.0.0.1", "::1"]

