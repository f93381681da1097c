"""API tests of the study app (TestClient, no browser): flow, validation, auth, uploads."""

from __future__ import annotations

import io
import re

import numpy as np
from fastapi.testclient import TestClient

from fergi.study import create_app, get_settings
from tests.helpers.services import free_port
from tests.helpers.study import (
    ADMIN,
    ANSWER,
    FORM,
    WEBM_HEAD,
    Participant,
    make_settings,
    ready_participant,
)


def test_whole_session_through_the_api(client, app):
    p = Participant(client)
    assert p.state["step"] == "consent" and p.state["session_type"] == "structured"
    # Nothing before consent: no prompt and no recording.
    assert p.call("POST", "/prompt/generate", json={"form": FORM}).status_code == 409
    assert p.call("POST", "/recording/segments", json={"mime_type": "video/webm"}).status_code == 409
    assert p.consent(share=True)["step"] == "prompt"
    prompt = p.write_prompt()
    assert p.state["step"] == "webcam" and p.state["prompt"] == prompt
    assert p.state["generation"]["status"] == "queued"
    assert app.state.worker.run_pending("generate") == 1
    state = p.call("GET", "").json()
    assert state["images_ready"] == [1, 2, 3] and state["generation"]["status"] == "done"
    image = p.call("GET", "/images/2")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    # The recording is refused until the webcam check passed.
    assert p.call("POST", "/recording/segments", json={"mime_type": "video/webm"}).status_code == 409
    assert p.pass_webcam()["state"]["step"] == "images"
    seg = p.start_segment()
    for seq in range(3):
        body = (WEBM_HEAD if seq == 0 else b"") + bytes([seq]) * 1000
        assert p.chunk(seg, seq, body).status_code == 200
    for image_index in (1, 2, 3):
        p.present(seg, image_index, t0=12.0 * (image_index - 1))
        state = p.call("GET", "").json()
        assert (state["current_image"], state["image_phase"]) == (image_index, "survey")
        response = p.call("PUT", f"/images/{image_index}/answer", json={**ANSWER, "overall_rating": image_index})
        assert response.status_code == 200, response.text
    assert p.call("POST", f"/recording/{seg}/complete", json={"n_chunks": 3}).json()["complete"] is True
    assert response.json()["step"] == "ranking"
    response = p.call("PUT", "/ranking", json={"order": [3, 1, 2], "method": "keyboard"})
    assert response.status_code == 200, response.text
    assert response.json()["step"] == "done" and response.json()["ranking"] == [3, 1, 2]

    detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
    assert [a["overall_rating"] for a in detail["answers"]] == [1, 2, 3]
    assert detail["answers"][0]["emotions"] == ["amused", "surprised"]
    assert detail["ranking"] == {"order": [3, 1, 2], "method": "keyboard"}
    assert detail["consent_version"] == "1" and detail["share_video"] is True
    expected = {"segment": 0, "mime_type": "video/webm;codecs=vp9", "n_chunks": 3, "n_bytes": 3000 + len(WEBM_HEAD), "complete": True, "abandoned": False}
    assert [{k: s[k] for k in expected} for s in detail["segments"]] == [expected]
    # each presented image queued its real-time processing; the ranking queued the labels
    assert [j["kind"] for j in detail["jobs"]] == ["generate", "clips", "process"]
    assert detail["jobs"][1]["status"] == detail["jobs"][2]["status"] == "queued"
    assert detail["structured_input"]["animate_objects"][1]["name"] == "bird"


def test_session_token_is_required_and_scoped(client):
    a, b = Participant(client, "001"), Participant(client, "002")
    assert client.get(f"/api/sessions/{a.id}").status_code == 401
    assert client.get(f"/api/sessions/{a.id}", headers={"X-Session-Token": "guess"}).status_code == 403
    # b's token does not open a's session, not even to read it.
    response = client.get(f"/api/sessions/{a.id}", headers=b.headers)
    assert response.status_code == 403 and "does not open session" in response.json()["detail"]
    assert len(a.token) >= 40 and a.token != b.token


def test_admin_api_needs_the_admin_token(client, app):
    p = ready_participant(client, app)
    assert client.get("/api/admin/sessions").status_code == 401
    assert client.get("/api/admin/sessions", headers={"Authorization": "Bearer nope"}).status_code == 403
    # A participant token is no admin token.
    assert client.get("/api/admin/sessions", headers=p.headers).status_code == 401
    assert client.get(f"/api/admin/sessions/{p.id}/clips/1/reaction", headers=p.headers).status_code == 401
    assert client.get(f"/api/admin/sessions/{p.id}/clips/1/reaction", headers=ADMIN).status_code == 404
    sessions = client.get("/api/admin/sessions", headers=ADMIN).json()
    assert [s["participant_id"] for s in sessions] == ["001"]
    # The admin page trades the URL token for an HttpOnly cookie.
    response = client.get("/admin?token=wrong", follow_redirects=True)
    assert "Wrong admin token" in response.text and "fergi_admin" not in client.cookies
    response = client.get("/admin?token=test-admin", follow_redirects=False)
    assert response.status_code == 303 and "httponly" in response.headers["set-cookie"].lower()
    client.cookies.set("fergi_admin", "test-admin")
    assert client.get("/api/admin/participants").status_code == 200
    assert "Sessions" in client.get("/admin").text


def test_admin_creates_participants_with_invitation_links(client):
    response = client.post("/api/admin/participants", json={}, headers=ADMIN)
    assert response.status_code == 201
    first = response.json()
    assert "?invite=" in first["link"]
    # IDs handed out are random, not the next number: one says nothing about the others.
    ids = [first["participant_id"]] + [
        client.post("/api/admin/participants", json={}, headers=ADMIN).json()["participant_id"] for _ in range(5)
    ]
    assert len(set(ids)) == 6
    assert all(re.fullmatch(r"p[0-9a-f]{10}", pid) for pid in ids), ids
    assert not {"001", "002"} & set(ids)
    invite = first["link"].split("?invite=")[1]
    response = client.post("/api/sessions", json={"invite": invite})
    assert response.status_code == 201 and response.json()["state"]["participant_id"] == first["participant_id"]
    assert client.post("/api/sessions", json={"invite": "forged"}).status_code == 404


def test_an_invitation_binds_its_participant_id(client):
    """Typing an invited ID is refused; the link opens one session; an open study still
    takes new typed IDs."""
    link = client.post("/api/admin/participants", json={"participant_id": "001"}, headers=ADMIN).json()["link"]
    invite = link.split("?invite=")[1]
    # Typed, before and after the link was used: refused in plain words.
    for _ in range(2):
        response = client.post("/api/sessions", json={"participant_id": "001"})
        assert response.status_code == 403, response.text
        assert "invitation link" in response.json()["detail"] and "001" in response.json()["detail"]
        if _ == 0:
            assert client.post("/api/sessions", json={"invite": invite}).status_code == 201
    # The link works once.
    response = client.post("/api/sessions", json={"invite": invite})
    assert response.status_code == 410 and "already used" in response.json()["detail"]
    # An open study: a new typed ID starts a session, and that ID stays typeable.
    assert client.post("/api/sessions", json={"participant_id": "walkin-7"}).status_code == 201
    assert client.post("/api/sessions", json={"participant_id": "walkin-7"}).status_code == 201
    # Inviting a participant who typed an ID before binds the ID from then on.
    client.post("/api/admin/participants", json={"participant_id": "walkin-7"}, headers=ADMIN)
    assert client.post("/api/sessions", json={"participant_id": "walkin-7"}).status_code == 403


def test_participant_ids_are_validated(client, app):
    response = client.post("/api/sessions", json={"participant_id": "../etc"})
    assert response.status_code == 422 and "participant ID" in response.json()["detail"]
    app.dependency_overrides[get_settings] = lambda: app.state.settings.model_copy(update={"allow_new_participants": False})
    response = client.post("/api/sessions", json={"participant_id": "999"})
    assert response.status_code == 403 and "not registered" in response.json()["detail"]


def test_session_types_alternate_per_participant(client):
    types = [Participant(client, "001").state["session_type"] for _ in range(4)]
    assert types == ["structured", "free", "structured", "free"]
    # The next participants' first sessions balance the first sessions across participants.
    second = [Participant(client, "002").state for _ in range(2)]
    assert [s["session_index"] for s in second] == [1, 2]
    assert [s["session_type"] for s in second] == ["free", "structured"]
    assert Participant(client, "003").state["session_type"] == "structured"


def test_structured_form_rules_and_attempt_limit(client):
    p = Participant(client)
    p.consent()
    bad = {**FORM, "interactional_relations": [{"entity1": "inanimate:0", "entity2": "animate:1", "relation": "holds"}]}
    response = p.call("POST", "/prompt/generate", json={"form": bad})
    assert response.status_code == 422 and "entity 1 must be an animate object" in response.json()["detail"]
    busy = {**FORM, "interactional_relations": [{"entity1": "animate:0", "entity2": "inanimate:0", "relation": "sniffs"}]}
    response = p.call("POST", "/prompt/generate", json={"form": busy})
    assert response.status_code == 422 and "activity" in response.json()["detail"]
    # Failed validations do not use up attempts; the limit applies to generated prompts.
    lefts = [p.call("POST", "/prompt/generate", json={"form": FORM}).json()["attempts_left"] for _ in range(3)]
    assert lefts == [2, 1, 0]
    response = p.call("POST", "/prompt/generate", json={"form": FORM})
    assert response.status_code == 429 and "edit the last prompt" in response.json()["detail"]
    assert p.call("PUT", "/prompt", json={"prompt": "   "}).status_code == 422
    assert p.call("PUT", "/prompt", json={"prompt": "a bird and a flower"}).status_code == 200
    assert p.call("PUT", "/prompt", json={"prompt": "something else"}).status_code == 409


def test_free_form_session_cannot_use_the_composer(client):
    Participant(client).consent()
    p = Participant(client)  # the second session of 001 is free-form
    p.consent()
    assert p.state["session_type"] == "free"
    assert p.call("POST", "/prompt/generate", json={"form": FORM}).status_code == 409


def test_chunk_uploads_are_ordered_idempotent_and_validated(client, app):
    p = ready_participant(client, app)
    seg = p.start_segment()
    first = WEBM_HEAD + b"x" * 100
    response = p.chunk(seg, 0, first)
    assert response.json() == {**response.json(), "duplicate": False, "next_seq": 1}
    # The same chunk again (a retry after a lost response) is fine, and stored once.
    response = p.chunk(seg, 0, first)
    assert response.status_code == 200 and response.json()["duplicate"] is True
    assert response.json()["n_bytes"] == len(first)
    # Different bytes under an accepted number are refused.
    response = p.chunk(seg, 0, WEBM_HEAD + b"y" * 100)
    assert response.status_code == 409 and "different content" in response.json()["detail"]
    response = p.chunk(seg, 2, b"z" * 10)
    assert response.status_code == 409 and "expects chunk 1" in response.json()["detail"]
    response = p.chunk(seg, 1, b"z" * 10, content_type="application/octet-stream")
    assert response.status_code == 415
    assert p.chunk(seg, 1, b"").status_code == 422
    limit = app.state.settings.max_chunk_bytes
    response = p.chunk(seg, 1, b"z" * (limit + 1))
    assert response.status_code == 413 and str(limit) in response.json()["detail"]
    # Resuming: the server says where to go on.
    assert p.call("GET", f"/recording/{seg}").json()["next_seq"] == 1
    assert p.chunk(seg, 1, b"z" * 10).status_code == 200
    response = p.call("POST", f"/recording/{seg}/complete", json={"n_chunks": 3})
    assert response.status_code == 409 and "upload chunk 2 next" in response.json()["detail"]
    assert p.call("POST", f"/recording/{seg}/complete", json={"n_chunks": 2}).status_code == 200
    assert p.chunk(seg, 2, b"z").status_code == 409
    # The accepted bytes are on disk, exactly.
    store = app.state.store
    assert store.chunk_path(p.id, seg, 0).read_bytes() == first
    assert p.call("PUT", "/recording/7/chunks/0", content=first, headers={"Content-Type": "video/webm"}).status_code == 404


def test_first_chunk_must_be_webm_and_segment_type_checked(client, app):
    p = ready_participant(client, app)
    response = p.call("POST", "/recording/segments", json={"mime_type": "video/mp4"})
    assert response.status_code == 415
    seg = p.start_segment()
    response = p.chunk(seg, 0, b"RIFF....AVI ")
    assert response.status_code == 415 and "not a WebM stream" in response.json()["detail"]


def test_oversized_json_is_refused(client):
    p = Participant(client)
    response = p.call("POST", "/consent", content=b"{" + b" " * 300_000 + b"}", headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "limited to" in response.json()["detail"]


def test_recording_size_limit(client, app):
    p = ready_participant(client, app)
    app.dependency_overrides[get_settings] = lambda: app.state.settings.model_copy(update={"max_recording_bytes": 150})
    seg = p.start_segment()
    assert p.chunk(seg, 0, WEBM_HEAD + b"a" * 96).status_code == 200
    response = p.chunk(seg, 1, b"b" * 100)
    assert response.status_code == 413 and "150 bytes" in response.json()["detail"]


def test_rate_limit_per_session(client, app):
    app.dependency_overrides[get_settings] = lambda: app.state.settings.model_copy(update={"rate_limit_per_minute": 5})
    p = Participant(client)
    codes = [p.call("GET", "").status_code for _ in range(7)]
    assert codes[:4] == [200] * 4 and codes[-1] == 429
    response = p.call("GET", "")
    assert "Retry-After" in response.headers and "per minute" in response.json()["detail"]


def test_events_answers_and_ranking_are_validated(client, app):
    p = ready_participant(client, app)
    seg = p.start_segment()
    p.chunk(seg, 0, WEBM_HEAD + b"a")
    event = {"segment": seg, "image_index": 1, "kind": "image_shown", "video_time": 1.0}
    response = p.call("POST", "/events", json=event)
    assert response.status_code == 409 and "before baseline_start" in response.json()["detail"]
    assert p.call("POST", "/events", json={**event, "kind": "oops"}).status_code == 422
    assert p.call("POST", "/events", json={**event, "image_index": 9}).status_code == 422
    assert p.call("POST", "/events", json={**event, "segment": 5, "kind": "baseline_start"}).status_code == 404
    response = p.call("PUT", "/images/1/answer", json=ANSWER)
    assert response.status_code == 409 and "not been presented" in response.json()["detail"]
    p.present(seg, 1, 0.0)
    # A retried event keeps the first measurement.
    response = p.call("POST", "/events", json={**event, "video_time": 3.0})
    assert response.json()["duplicate"] is True
    for bad in ({"overall_rating": 8}, {"fidelity_rating": 0}, {"issues": ["ugly"]}, {"emotions": ["bored"]}):
        assert p.call("PUT", "/images/1/answer", json={**ANSWER, **bad}).status_code == 422, bad
    assert p.call("PUT", "/ranking", json={"order": [1, 2, 3]}).status_code == 409
    assert p.call("PUT", "/images/1/answer", json=ANSWER).status_code == 200
    assert p.call("PUT", "/images/1/answer", json=ANSWER).status_code == 200  # same answer again
    assert p.call("PUT", "/images/1/answer", json={**ANSWER, "overall_rating": 1}).status_code == 409
    p.present(seg, 3, 12.0)
    response = p.call("PUT", "/images/3/answer", json=ANSWER)
    assert response.status_code == 409 and "annotate image 2 first" in response.json()["detail"]
    p.present(seg, 2, 24.0)
    assert p.call("PUT", "/images/2/answer", json=ANSWER).status_code == 200
    assert p.call("PUT", "/images/3/answer", json=ANSWER).status_code == 200
    for order in ([1, 2], [1, 1, 2], [0, 1, 2]):
        assert p.call("PUT", "/ranking", json={"order": order}).status_code == 422, order
    assert p.call("PUT", "/ranking", json={"order": [2, 3, 1]}).status_code == 200
    assert p.call("PUT", "/ranking", json={"order": [2, 3, 1]}).status_code == 200
    assert p.call("PUT", "/ranking", json={"order": [1, 2, 3]}).status_code == 409
    assert p.call("POST", "/recording/segments", json={"mime_type": "video/webm"}).status_code == 409


def test_reload_resumes_where_the_participant_was(client, app):
    p = ready_participant(client, app)
    seg = p.start_segment()
    p.chunk(seg, 0, WEBM_HEAD + b"a")
    p.present(seg, 1, 0.0)
    p.call("PUT", "/images/1/answer", json=ANSWER)
    # Image 2 was on screen when the tab closed: it is shown again in a new segment.
    p.call("POST", "/events", json={"segment": seg, "image_index": 2, "kind": "baseline_start", "video_time": 12.0})
    state = p.call("GET", "").json()
    assert (state["step"], state["current_image"], state["image_phase"], state["next_segment"]) == ("images", 2, "present", 1)
    seg2 = p.start_segment()
    assert seg2 == 1
    assert p.chunk(seg2, 0, WEBM_HEAD + b"b").status_code == 200
    p.present(seg2, 2, 0.5)
    state = p.call("GET", "").json()
    assert (state["current_image"], state["image_phase"]) == (2, "survey")

    from fergi.study.protocol import select_image_events

    with app.state.sessionmaker() as db:
        from fergi.study.store import StudySession

        chosen = select_image_events(db.get(StudySession, p.id).events, 3)
    assert chosen[1][0] == 0 and chosen[2][0] == 1 and 3 not in chosen
    assert [e["video_time"] for e in chosen[2][1]] == [0.5, 5.5, 10.5]


def test_webcam_check_refuses_bad_snapshots(client, app):
    p = Participant(client)
    p.consent()
    p.write_prompt()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(buffer, format="PNG")
    response = p.call("POST", "/webcam-check", content=buffer.getvalue(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.json()["face"] is False
    assert response.json()["state"]["step"] == "webcam"
    response = p.call("POST", "/webcam-check", content=b"not an image", headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 422 and "not a readable image" in response.json()["detail"]
    response = p.call("POST", "/webcam-check", content=b"x", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


def test_consent_is_stored_with_version_and_refused_when_outdated(client, app):
    p = Participant(client)
    response = p.call("POST", "/consent", json={"agree": True, "consent_version": "0"})
    assert response.status_code == 409 and "outdated" in response.json()["detail"]
    response = p.call("POST", "/consent", json={"agree": False, "consent_version": "1"})
    assert response.status_code == 422
    p.consent(share=False)
    detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
    assert detail["consent_version"] == "1" and detail["consent_at"] and detail["share_video"] is False


def test_pages_and_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and "Rank images" in page.text and "study.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/study.js").status_code == 200
    config = client.get("/api/config").json()
    assert config["n_images"] == 3 and config["baseline_s"] == 5.0
    assert [i["key"] for i in config["issues"]][:2] == ["unmentioned_content", "repeated_generation"]
    assert config["emotions"] == ["disappointed", "satisfied", "surprised", "disgusted", "amused", "scared"]
    assert client.get("/admin").status_code == 200 and "admin token" in client.get("/admin").text.lower()


def test_llm_prompt_composer_falls_back_to_the_template(tmp_path):
    port = free_port()  # a port nobody listens on
    settings = make_settings(tmp_path, prompt_llm="openai", llm_base_url=f"http://127.0.0.1:{port}/v1", llm_timeout=2.0)
    with TestClient(create_app(settings)) as client:
        p = Participant(client)
        p.consent()
        response = p.call("POST", "/prompt/generate", json={"form": FORM})
        assert response.status_code == 200
        assert response.json()["source"] == "template" and "bird" in response.json()["prompt"]
        assert p.call("GET", "").json()["generated_prompts"][0]["source"] == "template"


def test_the_study_can_be_embedded_under_a_prefix(tmp_path):
    from fastapi import FastAPI

    study = create_app(make_settings(tmp_path))
    parent = FastAPI(lifespan=study.router.lifespan_context)
    parent.mount("/study", study)
    with TestClient(parent) as client:
        page = client.get("/study/")
        # Relative asset and API URLs keep working under the prefix.
        assert page.status_code == 200 and 'src="static/study.js"' in page.text
        assert client.get("/study/static/study.js").status_code == 200
        assert client.get("/study/api/config").json()["n_images"] == 3
        response = client.get("/study/admin?token=test-admin", follow_redirects=False)
        assert response.headers["location"].endswith("/study/admin")
        link = client.post("/study/api/admin/participants", json={}, headers=ADMIN).json()["link"]
        assert "/study/?invite=" in link


def test_non_json_bodies_are_refused_cleanly(client):
    p = Participant(client)
    # Form-encoded and plain-text bodies on a JSON route: 415, never a 500.
    for ctype in ("application/x-www-form-urlencoded", "text/plain", "application/octet-stream"):
        response = p.call("POST", "/consent", content=b"agree=1&\xff\xfe", headers={"Content-Type": ctype})
        assert response.status_code == 415 and "application/json" in response.json()["detail"], ctype
    # The content type is matched case-insensitively.
    response = p.call("POST", "/consent", content=b'{"agree": true, "consent_version": "1"}',
                      headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert response.status_code == 200, response.text
    response = p.call("POST", "/consent", content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422) and response.json()["detail"]
    response = client.post("/api/sessions", content=b'{"participant_id": 5}', headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["errors"]


def test_validation_errors_with_bytes_input_are_json(app, client):
    """The 422 handler must not put raw bytes (a non-JSON body) into its JSON answer."""
    from pydantic import BaseModel

    class Body(BaseModel):
        value: int

    @app.post("/echo-test")
    def echo(body: Body) -> dict:
        return {}

    response = client.post("/echo-test", content=b"value=1\xff", headers={"Content-Type": "text/plain"})
    assert response.status_code == 422
    assert response.json()["errors"] and "input" not in response.json()["errors"][0]


def test_json_body_limit_holds_without_content_length(client):
    p = Participant(client)

    def chunked():  # no Content-Length: transfer-encoding chunked
        yield b'{"agree": true, "consent_version": "1", "x": "'
        for _ in range(40):
            yield b"a" * 10_000
        yield b'"}'

    for ctype in ("application/json", "APPLICATION/JSON"):
        response = p.call("POST", "/consent", content=chunked(), headers={"Content-Type": ctype})
        assert response.status_code == 413 and "limited to" in response.json()["detail"], ctype
    response = p.call("POST", "/consent", content=b"{" + b" " * 300_000 + b"}", headers={"Content-Type": "Application/Json"})
    assert response.status_code == 413


def test_decompression_bomb_snapshot_is_refused(client):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A tiny PNG whose header claims 30000x30000 pixels.
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    p = Participant(client)
    p.consent()
    response = p.call("POST", "/webcam-check", content=png, headers={"Content-Type": "image/png"})
    assert response.status_code == 422 and "4096x4096" in response.json()["detail"]


def test_huge_integers_are_refused_not_crashing(client, app):
    p = ready_participant(client, app)
    seg = p.start_segment()
    huge = 2**63 + 5
    assert p.call("GET", f"/recording/{huge}").status_code == 422
    assert p.call("GET", f"/recording/{2**31 - 1}").status_code == 404
    assert p.chunk(huge, 0, WEBM_HEAD).status_code == 422
    assert p.call("POST", f"/recording/{huge}/complete", json={"n_chunks": 1}).status_code == 422
    assert p.call("POST", f"/recording/{seg}/complete", json={"n_chunks": huge}).status_code == 422
    event = {"segment": huge, "image_index": 1, "kind": "baseline_start", "video_time": 0.0}
    assert p.call("POST", "/events", json=event).status_code == 422
    assert p.call("POST", "/events", json={**event, "segment": seg, "image_index": huge}).status_code == 422
    assert p.call("PUT", f"/images/{huge}/answer", json=ANSWER).status_code == 422
    assert p.call("GET", f"/images/{huge}").status_code == 422
    assert client.get(f"/api/sessions/{huge}", headers=p.headers).status_code == 422
    for path in (f"/api/admin/sessions/{huge}", f"/api/admin/sessions/{huge}/images/1",
                 f"/api/admin/sessions/1/images/{huge}", f"/api/admin/sessions/{huge}/clips/1/reaction"):
        assert client.get(path, headers=ADMIN).status_code == 422, path
    assert client.post(f"/api/admin/sessions/{huge}/process", headers=ADMIN).status_code == 422
    assert client.post(f"/api/admin/jobs/{huge}/retry", headers=ADMIN).status_code == 422
    assert client.get(f"/api/admin/sessions/{2**31 - 1}", headers=ADMIN).status_code == 404


def test_session_creation_is_limited_per_address_not_per_header(client, app):
    import secrets

    app.dependency_overrides[get_settings] = lambda: app.state.settings.model_copy(update={"rate_limit_per_minute": 3})
    codes = [
        client.post("/api/sessions", json={"participant_id": f"p{i}"},
                    headers={"X-Session-Token": secrets.token_hex(8)}).status_code
        for i in range(5)
    ]
    assert codes[:3] == [201] * 3 and codes[3:] == [429, 429]


def test_recording_size_limit_per_session(client, app):
    p = ready_participant(client, app)
    app.dependency_overrides[get_settings] = lambda: app.state.settings.model_copy(
        update={"max_session_recording_bytes": 250, "max_segments_per_session": 3}
    )
    # Each segment is under the per-segment limit; together they exceed the session's.
    chunk = WEBM_HEAD + b"a" * (100 - len(WEBM_HEAD))  # 100 bytes
    for _ in range(2):
        seg = p.start_segment()
        assert p.chunk(seg, 0, chunk).status_code == 200
    seg = p.start_segment()
    response = p.chunk(seg, 0, chunk)
    assert response.status_code == 413 and "250 bytes per session" in response.json()["detail"]
    response = p.call("POST", "/recording/segments", json={"mime_type": "video/webm"})
    assert response.status_code == 413 and "the limit is 3" in response.json()["detail"]


def test_made_up_session_tokens_are_limited_per_address(client, app):
    import secrets

    app.dependency_overrides[get_settings] = lambda: app.state.settings.model_copy(update={"rate_limit_per_minute": 3})
    codes = [client.get("/api/sessions/1", headers={"X-Session-Token": secrets.token_hex(8)}).status_code for _ in range(5)]
    assert codes[:3] == [403] * 3 and codes[3:] == [429, 429]
