"""Real-time processing: each image analysed while its survey is answered, labels at the ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi.datasets import FRAME_COLUMNS
from fergi.study import create_app
from fergi.study.store import Clip, Job, Label, StudySession
from tests.helpers.study import ADMIN, ANSWER, Participant, browser_like_recording, make_settings

FPS = 30
N_IMAGES = 5
# Per image: 1 s baseline, 1 s presentation, then 0.7 s of survey before the next baseline.
PER_IMAGE_S = 2.7
CHUNK_BYTES = 12_000


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A variable-frame-rate VP9 webm like the browser's, and its events (video time)."""
    path = tmp_path_factory.mktemp("rec") / "recording.webm"
    chunks, starts = browser_like_recording(
        path, {1: (1, 0), 2: (0, 1), 3: (0, 0), 4: (0.6, 0), 5: (0, 0.6)},
        per_image_s=PER_IMAGE_S, tail_s=2, seed=0, chunk_bytes=CHUNK_BYTES, fps=FPS,
    )
    return path, chunks, starts


def events_of(starts, image):
    t0 = starts[image]
    return [
        {"image_index": image, "kind": kind, "video_time": round(t0 + dt, 3)}
        for kind, dt in (("baseline_start", 0.0), ("image_shown", 1.0), ("image_hidden", 2.0))
    ]


def settings_for(tmp_path, **overrides):
    return make_settings(tmp_path, n_images=N_IMAGES, baseline_s=1.0, present_s=1.0, **overrides)


def stored_images(app, session_id) -> dict[int, dict]:
    with app.state.sessionmaker() as db:
        clips = db.query(Clip).filter(Clip.session_id == session_id).all()
        out: dict[int, dict] = {}
        for c in clips:
            out.setdefault(c.image_index, {})[c.clip] = dict(c.activations)
        return {i: kinds for i, kinds in out.items() if len(kinds) == 2}


class Session:
    """A participant whose webcam chunks lag behind the page's events, as in the browser."""

    def __init__(self, client, app, recording):
        self.app = app
        self.path, self.chunks, self.starts = recording
        self.p = Participant(client)
        self.p.consent(share=False)
        self.p.write_prompt()
        app.state.worker.run_pending("generate")
        self.p.pass_webcam()
        self.seg = self.p.start_segment()
        self.sent = 0

    def upload(self, n=1) -> None:
        for _ in range(n):
            assert self.p.chunk(self.seg, self.sent, self.chunks[self.sent]).status_code == 200
            self.sent += 1

    def present_and_answer(self, image) -> None:
        for ev in events_of(self.starts, image):
            response = self.p.call("POST", "/events", json={"segment": self.seg, **ev})
            assert response.status_code == 200, response.text
        assert self.p.call("PUT", f"/images/{image}/answer", json=ANSWER).status_code == 200

    def survey_until_analysed(self, image) -> None:
        """Chunks keep arriving during the survey; the worker runs what they make ready."""
        while image not in stored_images(self.app, self.p.id):
            assert self.sent < len(self.chunks), f"image {image} was never analysed"
            self.upload()
            self.app.state.worker.run_pending("clips")

    def finish(self) -> None:
        self.upload(len(self.chunks) - self.sent)
        response = self.p.call("POST", f"/recording/{self.seg}/complete", json={"n_chunks": self.sent})
        assert response.status_code == 200
        assert self.p.call("PUT", "/ranking", json={"order": [2, 5, 3, 4, 1]}).status_code == 200


def test_decoding_as_chunks_arrive_equals_decoding_the_whole_file(recording):
    from fergi.video import SegmentDecoder, iter_frames

    path, chunks, _ = recording
    whole = [frame for _, frame in iter_frames(path, fps=FPS)]
    data = b"".join(chunks)
    decoder = SegmentDecoder(FPS)
    windows = [(w, 40 * w + 3, 30) for w in range(len(whole) // 40)] + [("end", len(whole) - 10, 30)]
    sent = 0
    for key, first, n in windows:
        decoder.want(key, first, n)
        while not decoder.done(key):
            sent += CHUNK_BYTES
            decoder.advance(data[:sent], final=sent >= len(data))
        frames = decoder.pop(key)
        assert len(frames) == min(n, len(whole) - first)
        assert all(np.array_equal(frames[j], whole[first + j]) for j in range(len(frames))), key
    # every packet decoded once, in one pass
    assert decoder.n_fed <= len(whole)


@pytest.mark.slow
def test_each_image_is_analysed_during_its_survey_and_equals_a_whole_recording_run(tmp_path, recording):
    from fergi.study.processing import extract_recording_features

    app = create_app(settings_for(tmp_path))
    with TestClient(app) as client:
        s = Session(client, app, recording)
        s.upload()
        for image in range(1, N_IMAGES + 1):
            assert image not in stored_images(app, s.p.id)
            s.present_and_answer(image)
            if image == 1:
                # the admin sees the image waiting for its video, then analysed
                app.state.worker.run_pending("clips")
                detail = client.get(f"/api/admin/sessions/{s.p.id}", headers=ADMIN).json()
                assert [j["stages"] for j in detail["jobs"] if j["kind"] == "clips"] == [{"image 1": "queued"}]
            s.survey_until_analysed(image)
            # the activation values are stored before the next image is shown
            values = stored_images(app, s.p.id)[image]
            assert values["reaction"]["AU12_activation_value"] is not None
            assert sorted(stored_images(app, s.p.id)) == list(range(1, image + 1))
        # the worker did not wait for the end of the recording
        assert s.sent < len(s.chunks)
        detail = client.get(f"/api/admin/sessions/{s.p.id}", headers=ADMIN).json()
        clips_job = [j for j in detail["jobs"] if j["kind"] == "clips"][-1]
        assert all(clips_job["stages"][f"image {i}"] == "done" for i in range(1, N_IMAGES + 1))
        # no clip video was encoded for a participant who does not share video
        assert not any(app.state.store.clips_dir(s.p.id).glob("*.mp4"))

        s.finish()
        assert app.state.worker.run_pending("process") == 1
        detail = client.get(f"/api/admin/sessions/{s.p.id}", headers=ADMIN).json()
        job = [j for j in detail["jobs"] if j["kind"] == "process"][0]
        assert job["status"] == "done", job
        assert job["stages"]["labels"] == "done" and job["stages"]["store"] == "done"
        assert len(detail["labels"]) >= 1
        assert len(detail["clips"]) == 2 * N_IMAGES
        # the admin can still watch a clip: encoded now, from the raw upload, and kept
        video = client.get(f"/api/admin/sessions/{s.p.id}/clips/2/reaction", headers=ADMIN)
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        assert (app.state.store.clips_dir(s.p.id) / "reaction_clip_2.mp4").is_file()

        # the same upload, processed whole at the end
        events = [ev for image in range(1, N_IMAGES + 1) for ev in events_of(s.starts, image)]
        chunk_paths = [app.state.store.chunk_path(s.p.id, s.seg, i) for i in range(s.sent)]
        whole = extract_recording_features(chunk_paths, events, baseline_s=1.0, reaction_s=1.0, fps=FPS)
        assert sorted(whole) == sorted((i, c) for i in range(1, N_IMAGES + 1) for c in ("baseline", "reaction"))
        features = app.state.store.features_dir(s.p.id)
        for (image, clip), expected in whole.items():
            got = pd.read_csv(features / f"{clip}_clip_{image}_features.csv")
            assert list(got.columns) == list(FRAME_COLUMNS) and len(got) == FPS
            pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_restart_resumes_after_the_last_stored_image(tmp_path, recording, monkeypatch):
    from fergi.study.processing import _analysis as _realtime

    settings = settings_for(tmp_path)
    first = create_app(settings)
    with TestClient(first) as client:
        s = Session(client, first, recording)
        s.upload()
        for image in (1, 2, 3):
            s.present_and_answer(image)
            s.survey_until_analysed(image)
        # image 4 is presented and the worker is killed while its job runs
        s.present_and_answer(4)
        with first.state.sessionmaker() as db:
            job = db.query(Job).filter(Job.session_id == s.p.id, Job.kind == "clips").one()
            job.status, job.attempts = "running", 1
            db.commit()
    first.state.worker.stop()

    analysed = []
    original = _realtime._analyse_clip

    def spy(frames, baseline, **kwargs):
        analysed.append(kwargs["source"])
        return original(frames, baseline, **kwargs)

    monkeypatch.setattr(_realtime, "_analyse_clip", spy)
    second = create_app(settings)
    with TestClient(second) as client:
        assert second.state.worker.recover() == 1
        s.app, s.p.client = second, client
        s.survey_until_analysed(4)
        s.present_and_answer(5)
        s.survey_until_analysed(5)
        s.finish()
        assert second.state.worker.run_pending() >= 1
        # images 1-3 were not analysed again
        assert sorted({src.rsplit("image ", 1)[1] for src in analysed}) == ["4", "5"]
        assert len(analysed) == 4
        with second.state.sessionmaker() as db:
            sess = db.get(StudySession, s.p.id)
            assert sorted((c.image_index, c.clip) for c in sess.clips) == sorted(
                (i, c) for i in range(1, N_IMAGES + 1) for c in ("baseline", "reaction")
            )
            assert db.query(Label).filter(Label.session_id == s.p.id).count() >= 1
            process = [j for j in sess.jobs if j.kind == "process"]
            assert [j.status for j in process] == ["done"]
        # decoding again from the start after the restart changes nothing either
        monkeypatch.setattr(_realtime, "_analyse_clip", original)
        events = [ev for image in range(1, N_IMAGES + 1) for ev in events_of(s.starts, image)]
        chunk_paths = [second.state.store.chunk_path(s.p.id, s.seg, i) for i in range(s.sent)]
        whole = _realtime.extract_recording_features(
            chunk_paths, events, baseline_s=1.0, reaction_s=1.0, fps=FPS
        )
        features = second.state.store.features_dir(s.p.id)
        for (image, clip), expected in whole.items():
            got = pd.read_csv(features / f"{clip}_clip_{image}_features.csv")
            pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_failed_image_is_one_line_keeps_what_was_stored_and_is_retried(tmp_path, recording, monkeypatch):
    from fergi import FergiError
    from fergi.study.processing import _analysis as _realtime

    original = _realtime._analyse_clip
    broken = {"image 2"}

    def flaky(frames, baseline, **kwargs):
        if any(kwargs["source"].endswith(b) for b in broken):
            raise FergiError("the face analyser ran out of memory")
        return original(frames, baseline, **kwargs)

    monkeypatch.setattr(_realtime, "_analyse_clip", flaky)
    app = create_app(settings_for(tmp_path))
    with TestClient(app) as client:
        s = Session(client, app, recording)
        s.upload()
        s.present_and_answer(1)
        s.survey_until_analysed(1)
        s.present_and_answer(2)
        while True:  # the survey of image 2: chunks arrive until its clips are covered
            s.upload()
            app.state.worker.run_pending("clips")
            detail = client.get(f"/api/admin/sessions/{s.p.id}", headers=ADMIN).json()
            job = [j for j in detail["jobs"] if j["kind"] == "clips"][-1]
            if job["status"] != "done":
                break
        assert job["status"] == "failed" and "\n" not in job["error"]
        assert job["error"] == (
            "FergiError: baseline clip of image 2: the face analyser ran out of memory"
        )
        assert job["stages"]["image 1"] == "done" and job["stages"]["image 2"] == "failed"
        assert sorted(stored_images(app, s.p.id)) == [1]
        assert s.p.call("GET", "").json()["step"] == "images"  # the participant goes on
        # more chunks do not decode a failing recording again and again
        s.upload()
        detail = client.get(f"/api/admin/sessions/{s.p.id}", headers=ADMIN).json()
        assert [j["status"] for j in detail["jobs"] if j["kind"] == "clips"] == ["failed"]
        # the admin retries once the cause is fixed; image 1 is not analysed again
        broken.clear()
        assert client.post(f"/api/admin/jobs/{job['id']}/retry", headers=ADMIN).status_code == 200
        app.state.worker.run_pending("clips")
        assert sorted(stored_images(app, s.p.id)) == [1, 2]
