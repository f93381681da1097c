"""The study's background worker (generation, processing, retries) and the export."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi import FergiError
from fergi.datasets import FRAME_COLUMNS, load_images, load_invalid_images, load_valid_sessions
from fergi.study import create_app, create_generator, export_study
from fergi.study.store import Job, StudySession
from tests.helpers.study import (
    ADMIN,
    ANSWER,
    WEBM_HEAD,
    Participant,
    add_processed_clips,
    fake_pipeline,
    finished_session,
    make_settings,
    ready_participant,
)


def test_export_writes_the_release_layout(client, app, tmp_path):
    shared = finished_session(client, app, "001", share=True, order=(2, 3, 1))
    private = finished_session(client, app, "002", share=False, order=(1, 2, 3))
    unprocessed = finished_session(client, app, "001", share=True)
    Participant(client, "003").consent()  # an abandoned session
    add_processed_clips(app, shared.id)
    add_processed_clips(app, private.id)
    with app.state.sessionmaker() as db:  # image 2 of 002 came out black
        db.get(StudySession, private.id).images[1].invalid = True
        db.commit()

    settings = app.state.settings
    out = tmp_path / "export"
    summary = export_study(settings.resolved_db_url, settings.resolved_media_dir, out)
    assert summary["sessions"] == 2 and summary["participants"] == 2
    assert summary["skipped"] == {
        f"001/session_{unprocessed.state['session_index']}": "not processed (features missing)",
        "003/session_1": "not finished (no ranking)",
    }
    assert load_valid_sessions(out) == {"001": [1], "002": [1]}
    assert load_invalid_images(out) == {("002", 1, 2)}
    images = load_images(out).set_index(["participant", "session", "image"])
    # rank_score = n_images - position: the best image gets n_images.
    assert images.loc[("001", 1), "rank_score"].tolist() == [1, 3, 2]
    assert images.loc[("002", 1), "rank_score"].tolist() == [3, 2, 1]
    assert images.loc[("001", 1), "overall_rating"].tolist() == [3, 4, 5]
    assert bool(images.loc[("001", 1, 1), "blurry"]) and not bool(images.loc[("001", 1, 1), "sexual_content"])
    assert bool(images.loc[("001", 1, 1), "amused"]) and not bool(images.loc[("001", 1, 1), "scared"])
    assert images["CLIP_score"].isna().all()
    frames = pd.read_csv(out / "data" / "001" / "session_1" / "reaction_clip_2_features.csv")
    assert list(frames.columns) == list(FRAME_COLUMNS) and len(frames) == 150
    # Face videos only where the participant allowed sharing.
    assert len(list((out / "raw" / "001").rglob("*.mp4"))) == 6
    assert not (out / "raw" / "002").exists()
    prompts = pd.read_csv(out / "study" / "prompts.csv")
    assert prompts["participant"].astype(str).str.zfill(3).tolist() == ["001", "002"]
    assert json.loads(prompts["structured_input"][0])["animate_objects"][0]["name"] == "cat"
    assert (out / "images" / "002" / "session_1" / "image_3.png").is_file()
    with pytest.raises(FergiError, match="not empty"):
        export_study(settings.resolved_db_url, settings.resolved_media_dir, out)
    with pytest.raises(FergiError, match="no such database file"):
        export_study(str(tmp_path / "missing.sqlite3"), settings.resolved_media_dir, tmp_path / "x")


def test_export_runs_through_the_frame_loader(client, app, tmp_path):
    from fergi.datasets import load_frames

    p = finished_session(client, app)
    add_processed_clips(app, p.id)
    settings = app.state.settings
    export_study(settings.resolved_db_url, settings.resolved_media_dir, tmp_path / "out")
    frames = load_frames(tmp_path / "out")
    assert len(frames) == 3 * 2 * 150
    assert set(frames["clip"]) == {"baseline", "reaction"} and set(frames["participant"]) == {"001"}


def test_failed_generation_is_recorded_and_retried(client, app, tmp_path):
    p = Participant(client)
    p.consent()
    worker = app.state.worker

    class Broken:
        def generate(self, prompt, n, *, seed=None, on_image=None):
            raise RuntimeError("GPU out of memory")

    worker._generator = Broken()
    p.write_prompt()
    worker.run_pending("generate")
    state = p.call("GET", "").json()
    assert state["generation"] == {"status": "failed", "error": "RuntimeError: GPU out of memory"}
    jobs = client.get("/api/admin/sessions", headers=ADMIN).json()[0]["jobs"]
    assert jobs[0]["stages"]["image_1"] == "queued"
    worker._generator = create_generator("placeholder", size=64)
    response = client.post(f"/api/admin/jobs/{jobs[0]['id']}/retry", headers=ADMIN)
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert client.post(f"/api/admin/jobs/{jobs[0]['id']}/retry", headers=ADMIN).status_code == 409
    worker.run_pending("generate")
    state = p.call("GET", "").json()
    assert state["generation"]["status"] == "done" and state["images_ready"] == [1, 2, 3]


def test_processing_failure_keeps_the_raw_upload(client, app):
    p = ready_participant(client, app)
    seg = p.start_segment()
    body = WEBM_HEAD + b"this is no real video"
    p.chunk(seg, 0, body)
    for image in (1, 2, 3):
        p.present(seg, image, 12.0 * (image - 1))
        p.call("PUT", f"/images/{image}/answer", json=ANSWER)
    p.call("PUT", "/ranking", json={"order": [1, 2, 3]})
    app.state.worker.run_pending("process")
    job = [j for j in client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()["jobs"] if j["kind"] == "process"][0]
    assert job["status"] == "failed" and "assemble" in job["error"]
    assert job["stages"]["assemble"] == "failed"
    assert app.state.store.chunk_path(p.id, seg, 0).read_bytes() == body


def test_jobs_interrupted_by_a_restart_are_requeued(client, app):
    p = Participant(client)
    p.consent()
    p.write_prompt()
    with app.state.sessionmaker() as db:
        job = db.query(Job).one()
        job.status, job.attempts = "running", 1
        db.commit()
    # A new server process on the same database picks the job up again.
    second = create_app(app.state.settings)
    assert second.state.worker.recover() == 1
    assert second.state.worker.run_pending("generate") == 1
    assert p.call("GET", "").json()["images_ready"] == [1, 2, 3]


def test_background_worker_generates_while_requests_are_served(tmp_path):
    app = create_app(make_settings(tmp_path, worker=True, worker_poll_s=0.05))
    with TestClient(app) as client:
        p = Participant(client)
        p.consent()
        p.write_prompt()
        deadline = time.monotonic() + 60
        while p.call("GET", "").json()["images_ready"] != [1, 2, 3]:
            assert time.monotonic() < deadline, "the worker did not generate the images"
            time.sleep(0.05)


def test_retention_never_deletes_video_of_a_session_still_recording(tmp_path, monkeypatch):
    from fergi.study.jobs import enqueue
    from fergi.study.protocol import retention_blocker

    fake_pipeline(monkeypatch)
    app = create_app(make_settings(tmp_path, retention="delete_after_features"))
    store = app.state.store
    with TestClient(app) as client:
        # Recording in progress: two images presented, no ranking, segment still open.
        p = ready_participant(client, app)
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"a" * 10).status_code == 200
        p.present(seg, 1, 0.0)
        p.present(seg, 2, 12.0)
        with app.state.sessionmaker() as db:
            enqueue(db, p.id, "process")
            db.commit()
        assert app.state.worker.run_pending("process") == 1
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        job = [j for j in detail["jobs"] if j["kind"] == "process"][0]
        assert job["status"] == "done" and job["stages"]["retention"].startswith("raw video kept")
        assert store.chunk_path(p.id, seg, 0).is_file()
        # The recording goes on: the next chunk is accepted and kept.
        assert p.chunk(seg, 1, b"b" * 10).status_code == 200
        assert store.chunk_path(p.id, seg, 1).is_file()
        # The admin cannot start processing of an unfinished session either.
        response = client.post(f"/api/admin/sessions/{p.id}/process", headers=ADMIN)
        assert response.status_code == 409 and "not finished" in response.json()["detail"]

        # Finished with its segment still incomplete: before processing that segment holds
        # the video; processing abandons it (the session is over), and the video goes.
        done = finished_session(client, app, "002")
        with app.state.sessionmaker() as db:
            assert retention_blocker(db.get(StudySession, done.id)) == "segment 0 not complete"
        assert app.state.worker.run_pending("process") == 1
        detail = client.get(f"/api/admin/sessions/{done.id}", headers=ADMIN).json()
        job = [j for j in detail["jobs"] if j["kind"] == "process"][-1]
        assert job["stages"]["retention"] == "raw video deleted", job
        assert detail["segments"][0]["abandoned"] is True
        assert not store.chunk_path(done.id, 0, 0).exists()
        assert (store.features_dir(done.id) / "reaction_clip_3_features.csv").is_file()
        # A late chunk or completion is refused with a code, and stores nothing.
        late = done.chunk(0, 1, b"b" * 10)
        assert late.status_code == 409 and late.json()["code"] == "segment_abandoned"
        assert not store.chunk_path(done.id, 0, 1).exists()
        late = done.call("POST", "/recording/0/complete", json={"n_chunks": 1})
        assert late.status_code == 409 and late.json()["code"] == "segment_abandoned"


def test_simultaneous_answers_and_rankings_do_not_fail(client, app, monkeypatch):
    """A retry that races the first request hits the unique constraint: 200 or 409, never 500."""
    from fergi.study import store as _db
    from fergi.study.web import _routes_answers

    p = ready_participant(client, app)
    seg = p.start_segment()
    assert p.chunk(seg, 0, WEBM_HEAD + b"a").status_code == 200

    def racing(model, **competitor):
        # The competing request commits its row between our read and our commit.
        def build(**kwargs):
            with app.state.sessionmaker() as other:
                other.add(model(**{**kwargs, **competitor}))
                other.commit()
            return model(**kwargs)

        return build

    p.present(seg, 1, 0.0)
    monkeypatch.setattr(_routes_answers, "Answer", racing(_db.Answer))
    response = p.call("PUT", "/images/1/answer", json=ANSWER)
    assert response.status_code == 200, response.text
    p.present(seg, 2, 12.0)
    monkeypatch.setattr(_routes_answers, "Answer", racing(_db.Answer, overall_rating=1))
    response = p.call("PUT", "/images/2/answer", json=ANSWER)
    assert response.status_code == 409 and "already annotated" in response.json()["detail"]
    monkeypatch.setattr(_routes_answers, "Answer", _db.Answer)
    p.present(seg, 3, 24.0)
    assert p.call("PUT", "/images/3/answer", json=ANSWER).status_code == 200
    monkeypatch.setattr(_routes_answers, "Ranking", racing(_db.Ranking))
    response = p.call("PUT", "/ranking", json={"order": [3, 1, 2]})
    assert response.status_code == 200, response.text
    with app.state.sessionmaker() as db:
        sess = db.get(StudySession, p.id)
        assert len(sess.answers) == 3 and sess.ranking.order == [3, 1, 2]
        assert [a.overall_rating for a in sorted(sess.answers, key=lambda a: a.image_index)] == [5, 1, 5]
