"""Study data a researcher can defend: first exposures only, the structured form's limits
from one source, a client disconnect in one log line, abandoned sessions after 15 min.

The browser side (blanking under a pause, the ID rule, the form at 390x844, uploads on a
slow uplink) is in ``tests/study/web/browser/test_validity.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging

import pytest
from fastapi.testclient import TestClient

from fergi.study import create_app
from fergi.study.store import StudySession
from tests.helpers.study import (
    ADMIN,
    ANSWER,
    FORM,
    Participant,
    make_settings,
    ready_participant,
    upload_segment,
)


def _event(p, segment, image, kind, t, reason=None):
    body = {"segment": segment, "image_index": image, "kind": kind, "video_time": t}
    if reason is not None:
        body["reason"] = reason
    return p.call("POST", "/events", json=body)


# ---------------------------------------------------------------- presentation attempts
def test_an_interrupted_presentation_is_an_attempt_and_its_replay_a_second_exposure(client, app):
    p = ready_participant(client, app)
    first = p.start_segment()
    assert _event(p, first, 1, "baseline_start", 0.2).status_code == 200
    assert _event(p, first, 1, "image_shown", 5.2).status_code == 200
    # An interruption needs its reason, and only it has one.
    assert _event(p, first, 1, "image_interrupted", 7.3).status_code == 422
    assert _event(p, first, 1, "image_shown", 5.3, reason="camera").status_code == 422
    assert _event(p, first, 1, "image_interrupted", 7.3, reason="camera").status_code == 200
    # The interrupted attempt cannot also end normally.
    response = _event(p, first, 1, "image_hidden", 10.2)
    assert response.status_code == 409 and "image_interrupted" in response.json()["detail"]
    # ... so the image is not presented: no survey yet, and the state says present again.
    assert p.call("PUT", "/images/1/answer", json=ANSWER).status_code == 409
    assert p.call("GET", "").json()["image_phase"] == "present"

    replay = p.start_segment()
    p.present(replay, 1, 0.1)
    detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
    attempts = detail["presentations"]
    assert [(a["image"], a["exposure"], a["segment"], a["end_reason"]) for a in attempts] == [
        (1, 1, first, "camera"), (1, 2, replay, "completed"),
    ]
    assert attempts[0]["visible_s"] == pytest.approx(2.1) and not attempts[0]["visible_estimated"]
    assert attempts[1]["seen_before_s"] == pytest.approx(2.1) and attempts[1]["visible_s"] == pytest.approx(5.0)
    assert attempts[0]["shown_at"].endswith("Z") and attempts[0]["ended_at"].endswith("Z")
    assert any(e["kind"] == "image_interrupted" and e["reason"] == "camera" for e in detail["events"])
    science = client.get(f"/api/admin/sessions/{p.id}/science", headers=ADMIN).json()
    assert [len(i["presentations"]) for i in science["images"]] == [2, 0, 0]


def test_a_page_left_mid_image_is_reported_then_named_by_the_next_load(client, app):
    """pagehide sends "left"; the reloaded page says "reload" (more precise, so kept)."""
    p = ready_participant(client, app)
    seg = p.start_segment()
    _event(p, seg, 1, "baseline_start", 0.0)
    _event(p, seg, 1, "image_shown", 5.0)
    assert _event(p, seg, 1, "image_interrupted", 6.0, reason="left").status_code == 200
    again = _event(p, seg, 1, "image_interrupted", 6.0, reason="reload")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    # A precise reason is never overwritten.
    _event(p, seg, 1, "image_interrupted", 6.0, reason="back")
    attempts = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()["presentations"]
    assert [(a["end_reason"], a["visible_s"]) for a in attempts] == [("reload", 1.0)]


def test_a_leave_names_a_recording_failure_reported_in_the_same_moment(client, app):
    """A reload breaks the page's uploads: the "recording" end they cause may reach the
    server before pagehide's "left". The leave, then the reload, name the end."""
    p = ready_participant(client, app)
    seg = p.start_segment()
    _event(p, seg, 1, "baseline_start", 0.0)
    _event(p, seg, 1, "image_shown", 5.0)
    assert _event(p, seg, 1, "image_interrupted", 6.2, reason="recording").status_code == 200
    assert _event(p, seg, 1, "image_interrupted", 6.4, reason="left").json()["duplicate"] is True
    _event(p, seg, 1, "image_interrupted", 6.4, reason="reload")
    attempts = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()["presentations"]
    # the reason is the leave's; the time stays the first report's (the image was blanked then)
    assert [(a["end_reason"], a["visible_s"]) for a in attempts] == [("reload", pytest.approx(1.2))]
    # A camera loss is its own cause: a later leave does not rename it.
    seg2 = p.start_segment()
    _event(p, seg2, 1, "baseline_start", 0.0)
    _event(p, seg2, 1, "image_shown", 1.0)
    _event(p, seg2, 1, "image_interrupted", 1.5, reason="camera")
    _event(p, seg2, 1, "image_interrupted", 1.6, reason="left")
    attempts = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()["presentations"]
    assert [a["end_reason"] for a in attempts] == ["reload", "camera"]


def test_an_attempt_without_an_end_is_estimated_from_its_video_never_as_unseen():
    from types import SimpleNamespace as NS

    from fergi.study.store import presentation_attempts

    now = dt.datetime(2026, 1, 1)
    events = [
        NS(segment=0, image_index=1, kind="baseline_start", video_time=0.0, received_at=now, reason=None),
        NS(segment=0, image_index=1, kind="image_shown", video_time=5.0, received_at=now, reason=None),
        # segment 1: stopped during the baseline, the image never appeared
        NS(segment=1, image_index=1, kind="baseline_start", video_time=0.0, received_at=now, reason=None),
        NS(segment=2, image_index=1, kind="baseline_start", video_time=0.0, received_at=now, reason=None),
        NS(segment=2, image_index=1, kind="image_shown", video_time=5.0, received_at=now, reason=None),
        NS(segment=2, image_index=1, kind="image_hidden", video_time=10.0, received_at=now, reason=None),
    ]
    sess = NS(events=events, segments=[NS(index=0, n_chunks=7), NS(index=1, n_chunks=2), NS(index=2, n_chunks=11)])
    attempts = presentation_attempts(sess, present_s=5.0, chunk_s=1.0)
    assert [(a.exposure, a.segment, a.end_reason) for a in attempts] == [(1, 0, None), (2, 2, "completed")]
    # 7 s of video, the image from 5 s: about 2 s seen (an estimate, capped at present_s)
    assert attempts[0].visible_estimated and attempts[0].visible_s == pytest.approx(2.0)
    assert attempts[1].seen_before_s == pytest.approx(2.0)


# ---------------------------------------------------------------- the structured form
def test_the_form_limits_come_from_the_server_and_a_422_names_the_row(client):
    from fergi.study.content import MAX_ITEM_CHARS, MAX_NAME_CHARS

    limits = client.get("/api/config").json()["structured_limits"]
    assert limits["item_chars"] == MAX_ITEM_CHARS == 40 and limits["name_chars"] == MAX_NAME_CHARS
    p = Participant(client)
    p.consent()
    long_item = "x" * 46
    form = {**FORM, "animate_objects": [FORM["animate_objects"][0], {"name": "bird", "characteristics": ["red", long_item]}]}
    response = p.call("POST", "/prompt/generate", json={"form": form})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("structured input: ")  # as before, for API users
    [error] = body["errors"]
    assert (error["group"], error["index"], error["field"], error["item"]) == ("animate_objects", 1, "characteristics", 1)
    assert error["message"] == f"Characteristic \u201c{long_item}\u201d has 46 characters; at most 40 are allowed. Please shorten it."
    # A rule of the whole form names its relation's row.
    bad = {**FORM, "interactional_relations": [{"entity1": "inanimate:0", "entity2": "animate:1", "relation": "near"}]}
    [error] = p.call("POST", "/prompt/generate", json={"form": bad}).json()["errors"]
    assert (error["group"], error["index"]) == ("interactional_relations", 0)
    assert error["message"].startswith("Entity 1 must be an animate object")
    # A failed generation costs no attempt.
    assert p.call("GET", "").json()["attempts_left"] == 3


# ---------------------------------------------------------------- small things
def test_a_client_leaving_mid_upload_is_one_log_line(caplog):
    import anyio
    from fastapi import HTTPException
    from starlette.requests import Request

    from fergi.study.web._deps import read_body_limited

    messages = iter([{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    request = Request({"type": "http", "method": "PUT", "path": "/api/sessions/1/recording/0/chunks/3",
                       "headers": [], "query_string": b""}, receive)
    caplog.set_level(logging.INFO, logger="fergi.study.web._deps")

    async def main():
        with pytest.raises(HTTPException) as info:
            await read_body_limited(request, 1000, "chunk 3")
        return info.value

    exc = anyio.run(main)
    assert exc.status_code == 400 and "interrupted" in exc.detail
    records = [r for r in caplog.records if r.name == "fergi.study.web._deps"]
    assert len(records) == 1 and records[0].exc_info is None
    assert "disconnected after 3 bytes of chunk 3" in records[0].getMessage()


def test_sessions_idle_for_15_minutes_are_abandoned_by_default(tmp_path):
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        idle, fresh = Participant(client, "001"), Participant(client, "002")
        twenty_min_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=20)
        with app.state.sessionmaker() as db:
            db.get(StudySession, idle.id).created_at = twenty_min_ago
            db.commit()
        body = client.get("/api/admin/overview", headers=ADMIN).json()
        assert body["abandoned_after_min"] == 15
        assert {r["id"]: r["status"] for r in body["session_rows"]} == {idle.id: "abandoned", fresh.id: "in progress"}
        light = client.get("/api/admin/activity", headers=ADMIN).json()
        assert light["abandoned_after_min"] == 15 and light["sessions"][str(idle.id)]["status"] == "abandoned"
    # Configurable: FERGI_ABANDONED_SESSION_AFTER_MIN.
    app = create_app(make_settings(tmp_path / "b", abandoned_session_after_min=30))
    with TestClient(app) as client:
        Participant(client, "001")
        assert client.get("/api/admin/overview", headers=ADMIN).json()["abandoned_after_min"] == 30


def test_the_consent_text_says_what_is_recorded():
    from fergi.study._settings import DEFAULT_CONSENT_TEXT

    # The client records until the first frame captured 0.1 s after the image is hidden.
    assert "one tenth of a second after it disappears" in DEFAULT_CONSENT_TEXT
    assert "shown again" in DEFAULT_CONSENT_TEXT and "saw it before" in DEFAULT_CONSENT_TEXT


# ---------------------------------------------------------------- end to end on a real video
@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from skimage import data

    from fergi.face import write_reaction_video

    path = tmp_path_factory.mktemp("rec") / "recording.webm"
    return write_reaction_video(path, data.astronaut(), neutral_s=2.0, expression_s=2.0, smile=1.0)


@pytest.mark.slow
def test_a_replay_is_stored_as_exposure_2_exported_and_left_out_of_labels(tmp_path, recording, caplog):
    """Image 1 is interrupted 0.7 s in and replayed: its clips say exposure 2, seen 0.7 s
    before; the export holds the attempts; annotate leaves it out and counts it."""
    from fergi.cli._main import main
    from fergi.study import export_study

    app = create_app(make_settings(tmp_path, n_images=3, baseline_s=0.5, present_s=0.5))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        first = upload_segment(p, recording)
        assert _event(p, first, 1, "baseline_start", 0.1).status_code == 200
        assert _event(p, first, 1, "image_shown", 0.6).status_code == 200
        assert _event(p, first, 1, "image_interrupted", 1.3, reason="hidden").status_code == 200
        replay = upload_segment(p, recording)
        for image, t in ((1, 0.1), (2, 1.3), (3, 2.5)):
            for kind, offset in (("baseline_start", 0.0), ("image_shown", 0.5), ("image_hidden", 1.0)):
                assert _event(p, replay, image, kind, t + offset).status_code == 200
            assert p.call("PUT", f"/images/{image}/answer", json=ANSWER).status_code == 200
        assert p.call("PUT", "/ranking", json={"order": [2, 1, 3]}).status_code == 200
        assert app.state.worker.run_pending("process") == 1
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        assert [j["status"] for j in detail["jobs"] if j["kind"] == "process"] == ["done"]
        clips = {(c["image_index"], c["clip"]): c for c in detail["clips"]}
        assert (clips[(1, "reaction")]["exposure"], clips[(1, "reaction")]["seen_before_s"]) == (2, pytest.approx(0.7))
        assert (clips[(2, "reaction")]["exposure"], clips[(2, "reaction")]["seen_before_s"]) == (1, 0.0)
        # The server's own labels leave the second look out: only the pair (2, 3).
        assert [(lab["image_a"], lab["image_b"]) for lab in detail["labels"]] == [(2, 3)]

        settings = app.state.settings
        out = tmp_path / "export"
        export_study(settings.resolved_db_url, settings.resolved_media_dir, out)
    with (out / "study" / "presentations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["image"], r["exposure"], r["end_reason"]) for r in rows] == [
        ("1", "1", "hidden"), ("1", "2", "completed"), ("2", "1", "completed"), ("3", "1", "completed"),
    ]
    assert float(rows[0]["visible_s"]) == pytest.approx(0.7) and float(rows[1]["seen_before_s"]) == pytest.approx(0.7)
    with (out / "study" / "clips.csv").open() as handle:
        exported = {(r["image"], r["clip"]): r for r in csv.DictReader(handle)}
    assert exported[("1", "reaction")]["exposure"] == "2" and float(exported[("1", "reaction")]["seen_before_s"]) == pytest.approx(0.7)

    caplog.set_level(logging.WARNING)
    labels = tmp_path / "labels.jsonl"
    assert main(["annotate", "--data", str(out), "--out", str(labels)]) == 0
    pairs = [json.loads(line) for line in labels.read_text().splitlines()]
    assert {(r["image_a"], r["image_b"]) for r in pairs} == {(2, 3)}
    assert any("left out 1 reaction(s) to an image seen before for more than 0.5 s" in r.getMessage()
               for r in caplog.records)
    # The threshold is an option: tolerating 1 s keeps the replay.
    assert main(["annotate", "--data", str(out), "--out", str(labels), "--max-seen-before", "1"]) == 0
    assert len(labels.read_text().splitlines()) == 3
    # reproduce reads the same file
    caplog.clear()
    assert main(["reproduce", "--data", str(out), "--out", str(tmp_path / "results"), "--no-figures",
                 "--no-preference"]) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["n_reaction_clips_valid"] == 2
    assert any("left out 1 reaction(s)" in r.getMessage() for r in caplog.records)
