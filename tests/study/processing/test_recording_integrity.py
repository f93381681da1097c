"""Recordings that stay valid: clip validity by frame count, replays of an interrupted
image, refused stream starts, retention of incomplete segments and orphaned temporary files."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi.datasets import FRAME_COLUMNS, load_invalid_images
from fergi.study import create_app, export_study
from fergi.study.store import Chunk, Event, Segment, StudySession
from tests.helpers.study import ADMIN, ANSWER, WEBM_HEAD, make_settings, ready_participant

FPS = 30
CHUNK_BYTES = 12_000
# Each image in its own segment: 1 s baseline from video time 0, the image from 1 s to 2 s.
EVENTS = (("baseline_start", 0.0), ("image_shown", 1.0), ("image_hidden", 2.0))


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    """One VP9 webm per image presentation, as the client records it (one segment each).

    ``stopped``: the camera stops 0.3 s after the image appeared, so the recording holds
    9 of the reaction clip's 30 frames.
    """
    from skimage import data

    from fergi.face._synthetic import reaction_frames
    from fergi.video import write_video

    face = data.astronaut()
    folder = tmp_path_factory.mktemp("segments")
    out = {}
    for name, expression_s, smile, frown in (
        ("smile", 1.3, 1.0, 0.0),
        ("frown", 1.3, 0.0, 1.0),
        ("neutral", 1.3, 0.0, 0.0),
        ("stopped", 0.3, 1.0, 0.0),
    ):
        frames = list(reaction_frames(face, neutral_s=1.0, expression_s=expression_s, smile=smile, frown=frown))
        path = write_video(folder / f"{name}.webm", frames)
        data_bytes = path.read_bytes()
        out[name] = [data_bytes[i : i + CHUNK_BYTES] for i in range(0, len(data_bytes), CHUNK_BYTES)]
    # ``frozen``: no camera frame from 1.1 s to 2.1 s (a muted track), then frames again
    frames = list(reaction_frames(face, neutral_s=1.0, expression_s=1.3, smile=1.0))
    times = [i / FPS + (1.0 if i >= 34 else 0.0) for i in range(len(frames))]
    data_bytes = write_video(folder / "frozen.webm", frames, timestamps=times).read_bytes()
    out["frozen"] = [data_bytes[i : i + CHUNK_BYTES] for i in range(0, len(data_bytes), CHUNK_BYTES)]
    return out


def settings_for(tmp_path, **overrides):
    return make_settings(tmp_path, baseline_s=1.0, present_s=1.0, **overrides)


def record(p, chunks, image, *, complete=True, events=EVENTS) -> int:
    """One image presented in a new segment of its own; returns the segment."""
    seg = p.start_segment()
    for seq, chunk in enumerate(chunks):
        assert p.chunk(seg, seq, chunk).status_code == 200
    for kind, t in events:
        response = p.call("POST", "/events", json={"segment": seg, "image_index": image, "kind": kind, "video_time": t})
        assert response.status_code == 200, response.text
    if complete:
        response = p.call("POST", f"/recording/{seg}/complete", json={"n_chunks": len(chunks)})
        assert response.status_code == 200, response.text
    return seg


def answer_and_rank(p, order):
    for image in sorted(order):
        assert p.call("PUT", f"/images/{image}/answer", json=ANSWER).status_code == 200
    response = p.call("PUT", "/ranking", json={"order": list(order)})
    assert response.status_code == 200, response.text


def clips_of(client, session_id) -> dict[tuple[int, str], dict]:
    detail = client.get(f"/api/admin/sessions/{session_id}", headers=ADMIN).json()
    return {(c["image_index"], c["clip"]): c for c in detail["clips"]}


def process_job(client, session_id) -> dict:
    detail = client.get(f"/api/admin/sessions/{session_id}", headers=ADMIN).json()
    return [j for j in detail["jobs"] if j["kind"] == "process"][-1]


# --------------------------------------------------------------------------- clip validity


def _frames(n, *, no_face=0, turned=0):
    table = pd.DataFrame(np.full((n, len(FRAME_COLUMNS)), 0.5), columns=FRAME_COLUMNS)
    table["face_detection_confidence_score"] = 0.95
    table["pitch_indicative_ratio"] = 0.7
    table.loc[: no_face - 1, "face_detection_confidence_score"] = 0.0
    table.loc[no_face : no_face + turned - 1, "yaw_indicative_ratio"] = 0.9
    return table


def test_clip_validity_names_the_reason():
    from fergi.study.processing import clip_validity

    assert clip_validity(_frames(150), expected=150) == (True, None)
    # the camera stopped: few frames, even though each shows a face
    valid, reason = clip_validity(_frames(9), expected=150)
    assert not valid and reason.startswith("9 of 150 frames (6 %): the camera stopped?")
    # at the share exactly: valid; a stricter setting refuses it
    assert clip_validity(_frames(120), expected=150)[0]
    assert not clip_validity(_frames(120), expected=150, min_frame_share=0.9)[0]
    valid, reason = clip_validity(_frames(100, no_face=70), expected=100)
    assert not valid and reason.startswith("no face in 70 % of frames")
    valid, reason = clip_validity(_frames(100, turned=40), expected=100)
    assert not valid and reason.startswith("face turned away or unclear in 40 % of frames")
    assert clip_validity(_frames(150), expected=150, still_s=1.0)[0]
    valid, reason = clip_validity(_frames(150), expected=150, still_s=1.4)
    assert not valid and reason.startswith("no new camera frame for 1.4 s: the camera froze?")


def test_camera_stopped_clip_is_invalid_and_left_out_of_labels_export_and_annotation(tmp_path, segments):
    from fergi.cli import main

    app = create_app(settings_for(tmp_path))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        record(p, segments["smile"], 1)
        record(p, segments["stopped"], 2)
        record(p, segments["frown"], 3)
        answer_and_rank(p, (1, 3, 2))
        assert app.state.worker.run_pending("process") == 1
        job = process_job(client, p.id)
        assert job["status"] == "done", job

        clips = clips_of(client, p.id)
        stopped = clips[(2, "reaction")]
        assert stopped["n_frames"] == 9 and stopped["clip_valid"] is False
        assert stopped["expected_frames"] == FPS
        assert stopped["invalid_reason"].startswith("9 of 30 frames (30 %): the camera stopped?")
        listed = {s["id"]: s for s in client.get("/api/admin/sessions", headers=ADMIN).json()}
        assert listed[p.id]["n_invalid_clips"] == 1 and listed[p.id]["n_abandoned_segments"] == 0
        others = [c for key, c in clips.items() if key != (2, "reaction")]
        assert all(c["clip_valid"] and c["invalid_reason"] is None and c["n_frames"] == FPS for c in others)
        # the labels pair only the images whose clips are valid
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        assert [(lab["image_a"], lab["image_b"]) for lab in detail["labels"]] == [(1, 3)]

    summary = export_study(app.state.settings.resolved_db_url, app.state.settings.resolved_media_dir, tmp_path / "export")
    out = tmp_path / "export"
    assert summary["sessions"] == 1
    assert summary["invalid_clips"] == {"001/session_1/reaction_clip_2": stopped["invalid_reason"]}
    # the release's way of marking images that must not be labelled
    assert load_invalid_images(out) == {("001", 1, 2)}
    session_dir = out / "data" / "001" / "session_1"
    assert not (session_dir / "reaction_clip_2_features.csv").exists()
    assert (session_dir / "baseline_clip_2_features.csv").is_file()
    assert (session_dir / "reaction_clip_3_features.csv").is_file()
    table = pd.read_csv(out / "study" / "clips.csv")
    row = table[(table["image"] == 2) & (table["clip"] == "reaction")].iloc[0]
    assert row["invalid_reason"] == stopped["invalid_reason"] and not row["exported"]
    assert row["n_frames"] == 9 and row["expected_frames"] == FPS

    labels = tmp_path / "labels.jsonl"
    assert main(["annotate", "--data", str(out), "--out", str(labels)]) in (0, None)
    pairs = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [(r["image_a"], r["image_b"]) for r in pairs] == [(1, 3)]


def test_a_clip_the_camera_froze_in_is_invalid(tmp_path, segments):
    app = create_app(settings_for(tmp_path, clip_max_still_s=0.5))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        record(p, segments["frozen"], 1)
        assert app.state.worker.run_pending("clips") == 1
        clips = clips_of(client, p.id)
        frozen = clips[(1, "reaction")]
        # every tick of the grid is there, but 27 of them repeat one camera frame
        assert frozen["n_frames"] == FPS and frozen["clip_valid"] is False
        assert frozen["invalid_reason"].startswith("no new camera frame for 0.9 s: the camera froze?")
        assert clips[(1, "baseline")]["clip_valid"] is True
        record(p, segments["smile"], 2)
        record(p, segments["frown"], 3)
        answer_and_rank(p, (1, 3, 2))
        assert app.state.worker.run_pending("process") == 1
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        assert [(lab["image_a"], lab["image_b"]) for lab in detail["labels"]] == [(2, 3)]
    # its per-frame file looks like a valid clip: the export leaves it out, image listed invalid
    summary = export_study(
        app.state.settings.resolved_db_url, app.state.settings.resolved_media_dir, tmp_path / "export",
        clip_min_frame_share=0.8,
    )
    assert list(summary["invalid_clips"]) == ["001/session_1/reaction_clip_1"]
    assert load_invalid_images(tmp_path / "export") == {("001", 1, 1)}
    assert not (tmp_path / "export" / "data" / "001" / "session_1" / "reaction_clip_1_features.csv").exists()


# --------------------------------------------------------------------------- replays


def test_a_replay_in_a_new_segment_replaces_the_interrupted_attempt(tmp_path, segments, backend):
    app = create_app(settings_for(tmp_path))
    worker = app.state.worker
    with TestClient(app) as client:
        p = ready_participant(client, app)
        # Image 1: the camera stopped, but the page went on (posted image_hidden and
        # completed the segment); its clips are analysed in real time, and invalid.
        record(p, segments["stopped"], 1)
        worker.run_pending("clips")
        assert clips_of(client, p.id)[(1, "reaction")]["clip_valid"] is False
        assert clips_of(client, p.id)[(1, "reaction")]["segment"] == 0
        # The image is replayed from its baseline in a new segment: the clips are redone.
        replay = record(p, segments["smile"], 1)
        assert clips_of(client, p.id)[(1, "reaction")]["superseded"] is True
        assert worker.run_pending("clips") == 1
        clips = clips_of(client, p.id)
        assert {key: (c["segment"], c["n_frames"], c["clip_valid"]) for key, c in clips.items()} == {
            (1, "baseline"): (replay, FPS, True),
            (1, "reaction"): (replay, FPS, True),
        }
        assert clips[(1, "reaction")]["superseded"] is False and clips[(1, "reaction")]["invalid_reason"] is None

        # Image 2: the client noticed the camera stop, abandoned that segment without
        # image_hidden or completion, and replayed the image in a new segment.
        broken = record(p, segments["stopped"], 2, complete=False, events=EVENTS[:2])
        again = record(p, segments["frown"], 2)
        third = record(p, segments["neutral"], 3)
        worker.run_pending("clips")
        answer_and_rank(p, (1, 3, 2))
        assert worker.run_pending("process") == 1
        job = process_job(client, p.id)
        assert job["status"] == "done", job
        clips = clips_of(client, p.id)
        assert {image: clips[(image, "reaction")]["segment"] for image in (1, 2, 3)} == {1: replay, 2: again, 3: third}
        assert all(c["clip_valid"] and c["n_frames"] == FPS for c in clips.values())
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        # Both replays are second looks (image 1 was seen in full, image 2 for the part of
        # its presentation its video holds): stored as exposure 2 and left out of the
        # labels, which pair only first impressions.
        assert {image: clips[(image, "reaction")]["exposure"] for image in (1, 2, 3)} == {1: 2, 2: 2, 3: 1}
        assert clips[(1, "reaction")]["seen_before_s"] == pytest.approx(1.0)
        assert clips[(2, "reaction")]["seen_before_s"] > 0.5
        assert detail["labels"] == []
        by_index = {s["segment"]: s for s in detail["segments"]}
        # the interrupted segment can never complete; it held up nothing
        assert by_index[broken]["abandoned"] and not by_index[broken]["complete"]


def test_one_segment_per_image_equals_analysing_each_segment_whole(tmp_path, segments):
    from fergi.study.processing import extract_recording_features

    app = create_app(settings_for(tmp_path))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        names = {1: "smile", 2: "frown", 3: "neutral"}
        segs = {image: record(p, segments[name], image) for image, name in names.items()}
        app.state.worker.run_pending("clips")
        answer_and_rank(p, (1, 3, 2))
        assert app.state.worker.run_pending("process") == 1
        assert process_job(client, p.id)["status"] == "done"
        features = app.state.store.features_dir(p.id)
        for image, seg in segs.items():
            paths = [app.state.store.chunk_path(p.id, seg, i) for i in range(len(segments[names[image]]))]
            events = [{"image_index": image, "kind": k, "video_time": t} for k, t in EVENTS]
            whole = extract_recording_features(paths, events, baseline_s=1.0, reaction_s=1.0, fps=FPS)
            for (i, clip), expected in whole.items():
                got = pd.read_csv(features / f"{clip}_clip_{i}_features.csv")
                assert len(got) == FPS
                pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-6, rtol=0)


def test_a_segment_per_image_with_retries_stays_under_the_segment_limit(tmp_path):
    app = create_app(make_settings(tmp_path, n_images=20))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        # 20 images, each with up to 5 attempts (camera interruptions, refused stream
        # starts) and a few reloads on top: 110 segments.
        for _ in range(110):
            p.start_segment()
        limit = app.state.settings.max_segments_per_session
        for _ in range(limit - 110):
            p.start_segment()
        response = p.call("POST", "/recording/segments", json={"mime_type": "video/webm"})
        assert response.status_code == 413 and f"limit is {limit}" in response.json()["detail"]


# --------------------------------------------------------------------------- refused stream starts


def test_a_refused_stream_start_abandons_the_segment_and_the_session_finishes(tmp_path, segments, backend):
    app = create_app(settings_for(tmp_path, n_images=2, retention="delete_after_features"))
    store = app.state.store
    with TestClient(app) as client:
        p = ready_participant(client, app)
        bad = p.start_segment()
        response = p.call("POST", "/events", json={"segment": bad, "image_index": 1, "kind": "baseline_start", "video_time": 0.0})
        assert response.status_code == 200
        response = p.chunk(bad, 0, b"no header" * 10)
        assert response.status_code == 415
        assert response.json()["code"] == "bad_stream_start" and "new segment" in response.json()["detail"]
        # everything else of that segment is refused with a code the client acts on
        for response in (
            p.chunk(bad, 0, WEBM_HEAD + b"x"),
            p.chunk(bad, 1, b"x" * 10),
            p.call("POST", "/events", json={"segment": bad, "image_index": 1, "kind": "image_shown", "video_time": 1.0}),
            p.call("POST", f"/recording/{bad}/complete", json={"n_chunks": 0}),
        ):
            assert response.status_code == 409 and response.json()["code"] == "segment_abandoned", response.text
        info = p.call("GET", f"/recording/{bad}").json()
        assert info["abandoned"] is True and "EBML" in info["abandon_reason"]
        assert not store.segment_dir(p.id, bad).exists()

        # a new segment (new recorder, new header) replays the image
        record(p, segments["smile"], 1)
        record(p, segments["frown"], 2)
        answer_and_rank(p, (1, 2))
        assert app.state.worker.run_pending("process") == 1
        job = process_job(client, p.id)
        assert job["status"] == "done" and job["stages"]["retention"] == "raw video deleted", job
        assert not (store.session_dir(p.id) / "segments").exists()
        assert all(c["clip_valid"] for c in clips_of(client, p.id).values())


# --------------------------------------------------------------------------- retention


def _age(app, session_id, seconds):
    """Make a session's recording look ``seconds`` old (segments, chunks, events)."""
    past = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=seconds)
    with app.state.sessionmaker() as db:
        for seg in db.query(Segment).filter(Segment.session_id == session_id):
            seg.started_at = past
            for chunk in db.query(Chunk).filter(Chunk.segment_id == seg.id):
                chunk.received_at = past
        for event in db.query(Event).filter(Event.session_id == session_id):
            event.received_at = past
        db.commit()


def test_an_incomplete_segment_without_uploads_is_abandoned_after_the_configured_time(tmp_path, backend):
    from fergi.study.protocol import retention_blocker

    app = create_app(make_settings(tmp_path, abandoned_segment_after_s=600))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"a" * 10).status_code == 200
        # recent: still open
        assert app.state.worker.sweep_segments() == 0
        assert p.call("GET", f"/recording/{seg}").json()["abandoned"] is False
        with app.state.sessionmaker() as db:
            sess = db.get(StudySession, p.id)
            sess.finished_at = sess.created_at
            db.commit()
            assert retention_blocker(sess, abandoned_after_s=600) == f"segment {seg} not complete"
        _age(app, p.id, 601)
        with app.state.sessionmaker() as db:
            assert retention_blocker(db.get(StudySession, p.id), abandoned_after_s=600) != f"segment {seg} not complete"
        assert app.state.worker.sweep_segments() == 1
        info = p.call("GET", f"/recording/{seg}").json()
        assert info["abandoned"] is True and info["abandon_reason"] == "no upload for 600 s"
        response = p.chunk(seg, 1, b"b" * 10)
        assert response.status_code == 409 and response.json()["code"] == "segment_abandoned"
        assert not app.state.store.chunk_path(p.id, seg, 1).exists()


def test_the_sweep_deletes_the_video_that_an_open_segment_held_after_processing(tmp_path):
    from fergi.study.store import Job

    app = create_app(make_settings(tmp_path, retention="delete_after_features", abandoned_segment_after_s=600))
    store = app.state.store
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        assert p.chunk(seg, 0, WEBM_HEAD + b"a" * 10).status_code == 200
        with app.state.sessionmaker() as db:
            # processed by an earlier version, which kept the video for the open segment
            sess = db.get(StudySession, p.id)
            sess.finished_at = sess.created_at
            db.add(Job(session_id=p.id, kind="process", status="done", stages={"retention": "raw video kept"}))
            db.commit()
        assert app.state.worker.sweep_segments() == 0
        assert store.chunk_path(p.id, seg, 0).is_file()
        _age(app, p.id, 601)
        assert app.state.worker.sweep_segments() == 1
        assert not store.chunk_path(p.id, seg, 0).exists()


def test_the_video_of_a_session_the_participant_left_is_analysed_then_deleted(tmp_path, segments):
    app = create_app(settings_for(tmp_path, retention="delete_after_features", abandoned_segment_after_s=600))
    store, worker = app.state.store, app.state.worker
    with TestClient(app) as client:
        p = ready_participant(client, app)
        record(p, segments["smile"], 1)
        # image 2: the camera stopped and the participant closed the page; the segment
        # stays incomplete and its reaction clip waits for video that never comes
        second = record(p, segments["stopped"], 2, complete=False)
        worker.run_pending("clips")
        assert set(clips_of(client, p.id)) == {(1, "baseline"), (1, "reaction")}
        assert worker.sweep_segments() == 0
        assert store.chunk_path(p.id, second, 0).is_file()

        _age(app, p.id, 601)
        # abandoned: what it holds is final, so a clips job analyses image 2 first
        assert worker.sweep_segments() == 1
        assert store.chunk_path(p.id, second, 0).is_file()
        assert worker.run_pending("clips") == 1
        clips = clips_of(client, p.id)
        assert clips[(2, "reaction")]["n_frames"] == 9 and clips[(2, "reaction")]["clip_valid"] is False
        # then the raw video goes; the features stay
        assert worker.sweep_segments() == 0
        assert not (store.session_dir(p.id) / "segments").exists()
        assert (store.features_dir(p.id) / "reaction_clip_2_features.csv").is_file()
        assert all(c["has_video"] is False for c in clips_of(client, p.id).values())


def test_retention_keeps_the_video_of_an_unfinished_session_still_in_use(tmp_path, segments):
    app = create_app(settings_for(tmp_path, retention="delete_after_features", abandoned_segment_after_s=600))
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = record(p, segments["smile"], 1)
        app.state.worker.run_pending("clips")
        # the participant is answering the survey: recent activity, nothing deleted
        assert app.state.worker.sweep_segments() == 0
        assert app.state.store.chunk_path(p.id, seg, 0).is_file()


# --------------------------------------------------------------------------- temporary files


def test_orphaned_temporary_files_are_removed_at_start_up(tmp_path):
    app = create_app(make_settings(tmp_path))
    media = app.state.store.root
    segment = app.state.store.segment_dir(1, 0)
    segment.mkdir(parents=True)
    old = time.time() - 120
    orphans = [
        segment / ".tmp-abc123.webm",  # write_atomic
        app.state.store.features_dir(1) / ".reaction_clip_1_features.csv.4242.tmp",  # write_features
        app.state.store.clips_dir(1) / ".reaction_clip_1.partial.mp4",  # clip videos
        app.state.store.features_dir(1) / ".features_meta-x1y2.json",  # features meta
    ]
    kept = [
        segment / "chunk_000000.webm",  # a real chunk
        segment / ".tmp-fresh.webm",  # a write in progress in another process
        app.state.store.features_dir(1) / "reaction_clip_1_features.csv",
        tmp_path / ".tmp-outside.webm",  # not in the media folder
    ]
    for path in orphans + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for path in orphans + kept[:1] + kept[2:]:
        os.utime(path, (old, old))
    assert app.state.worker.recover() == 0
    assert [p for p in orphans if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert media.is_dir()


# --------------------------------------------------------------------------- consent


def test_the_consent_text_says_exactly_what_is_recorded(tmp_path):
    app = create_app(make_settings(tmp_path))
    with TestClient(app) as client:
        text = client.get("/api/config").json()["consent_text"]
    assert "only while each image is on screen" in text
    assert "baseline" in text
    # recording stops at the first frame 0.1 s after the image is hidden, and says so
    assert "one tenth of a second after it disappears" in text
    assert "Nothing else is recorded: not while you answer the questions, rank the images or write the prompt" in text
    assert "no sound" in text


def test_the_pipeline_of_a_whole_recording_applies_the_frame_count_rule(tmp_path, segments):
    from fergi.study import process_session_media

    recording = tmp_path / "stopped.webm"
    recording.write_bytes(b"".join(segments["stopped"]))
    events = [{"image_index": 1, "kind": k, "video_time": t} for k, t in EVENTS]
    result = process_session_media(recording, events, tmp_path / "work", baseline_s=1.0, reaction_s=1.0)
    act = result.activations.set_index("clip")
    assert act.loc["reaction", "n_frames"] == 9 and not act.loc["reaction", "clip_valid"]
    assert act.loc["baseline", "n_frames"] == FPS and act.loc["baseline", "clip_valid"]


# --------------------------------------------------------------------------- older databases


def test_a_database_of_an_earlier_version_gets_the_new_columns(tmp_path, backend):
    from sqlalchemy import inspect

    from fergi.study.store import make_engine

    settings = make_settings(tmp_path)
    engine = make_engine(settings.resolved_db_url)
    new = {"segments": ["abandoned_at", "abandon_reason"], "clips": ["invalid_reason", "expected_frames", "segment"]}
    with engine.begin() as conn:  # the tables as an earlier fergi made them
        for table, columns in new.items():
            for column in columns:
                conn.exec_driver_sql(f'ALTER TABLE {table} DROP COLUMN "{column}"')
    assert "abandoned_at" not in {c["name"] for c in inspect(engine).get_columns("segments")}
    engine.dispose()
    app = create_app(settings)
    with TestClient(app) as client:
        p = ready_participant(client, app)
        seg = p.start_segment()
        response = p.chunk(seg, 0, b"no header")
        assert response.status_code == 415 and response.json()["code"] == "bad_stream_start"
        assert client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()["segments"][0]["abandoned"] is True
    inspector = inspect(app.state.engine)
    for table, columns in new.items():
        assert set(columns) <= {c["name"] for c in inspector.get_columns(table)}
