"""Study sessions for tests: settings, a scripted participant and finished sessions.

Everything here talks to the study app through its HTTP API (FastAPI's ``TestClient``)
the way the participant page does; the few helpers that write rows or files directly
say so. Test modules import these names from here, never from another test module.
"""

from __future__ import annotations

import io
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi.datasets import FRAME_COLUMNS
from fergi.study import StudySettings, create_app, processing
from fergi.study.store import Clip, StudySession
from tests.helpers.services import free_port

#: The start of a WebM stream as MediaRecorder writes it: the EBML header (DocType webm)
#: and the Segment's id with an unknown size.
WEBM_HEAD = bytes.fromhex(
    "1a45dfa39f4286810142f7810142f2810442f381084282847765626d4287810242858102" "1853806701ffffffffffffff"
)
ADMIN = {"Authorization": "Bearer test-admin"}
FORM = {
    "animate_objects": [
        {"name": "cat", "quantity": 1, "activity": "sleep", "characteristics": "furry"},
        {"name": "bird", "quantity": 1, "activity": "", "characteristics": ["red"]},
    ],
    "inanimate_objects": [{"name": "flower", "quantity": 1}],
    "interactional_relations": [{"entity1": "animate:1", "entity2": "inanimate:0", "relation": "looking at"}],
    "positional_relations": [],
    "location": "a garden",
    "style": "watercolor",
    "keywords": "soft light",
}
ANSWER = {
    "missing_elements": "bird",
    "overall_rating": 5,
    "alignment_rating": 4,
    "fidelity_rating": 6,
    "issues": ["blurry"],
    "emotions": ["amused", "surprised"],
}


def make_settings(tmp_path, **overrides) -> StudySettings:
    """Test settings; FERGI_TEST_DB_URL (e.g. a PostgreSQL URL) replaces the SQLite file.

    With FERGI_TEST_DB_URL every call starts from empty tables.
    """
    db_url = os.environ.get("FERGI_TEST_DB_URL")
    if db_url:
        from fergi.study.store import Base, make_engine

        engine = make_engine(db_url)
        Base.metadata.drop_all(engine)
        engine.dispose()
    values = {
        "db_url": db_url or None,
        "data_dir": tmp_path / "study",
        "admin_token": "test-admin",
        "worker": False,
        "seed": 0,
        "n_images": 3,
    }
    values.update(overrides)
    return StudySettings(**values)


class Participant:
    """A scripted participant talking to the API."""

    def __init__(self, client: TestClient, participant_id: str = "001"):
        self.client = client
        response = client.post("/api/sessions", json={"participant_id": participant_id})
        assert response.status_code == 201, response.text
        body = response.json()
        self.id = body["session_id"]
        self.token = body["token"]
        self.state = body["state"]
        self.headers = {"X-Session-Token": self.token}

    def call(self, method: str, suffix: str, **kwargs):
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.request(method, f"/api/sessions/{self.id}{suffix}", headers=headers, **kwargs)

    def consent(self, share: bool = False):
        response = self.call("POST", "/consent", json={"agree": True, "consent_version": "1", "share_video": share})
        assert response.status_code == 200, response.text
        return response.json()

    def write_prompt(self):
        if self.state["session_type"] == "structured":
            response = self.call("POST", "/prompt/generate", json={"form": FORM})
            assert response.status_code == 200, response.text
            prompt = response.json()["prompt"] + " (edited)"
        else:
            prompt = "A painting of a dog in the style of Van Gogh"
        response = self.call("PUT", "/prompt", json={"prompt": prompt})
        assert response.status_code == 200, response.text
        self.state = response.json()
        return prompt

    def pass_webcam(self):
        from PIL import Image
        from skimage import data

        buffer = io.BytesIO()
        Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
        response = self.call("POST", "/webcam-check", content=buffer.getvalue(), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        assert response.json()["face"] is True
        return response.json()

    def start_segment(self):
        response = self.call("POST", "/recording/segments", json={"mime_type": "video/webm;codecs=vp9", "width": 640, "height": 480})
        assert response.status_code == 201, response.text
        return response.json()["segment"]

    def chunk(self, segment: int, seq: int, data: bytes, content_type: str = "video/webm"):
        return self.call("PUT", f"/recording/{segment}/chunks/{seq}", content=data, headers={"Content-Type": content_type})

    def present(self, segment: int, image: int, t0: float):
        for kind, dt in (("baseline_start", 0.0), ("image_shown", 5.0), ("image_hidden", 10.0)):
            response = self.call("POST", "/events", json={"segment": segment, "image_index": image, "kind": kind, "video_time": t0 + dt})
            assert response.status_code == 200, response.text


def ready_participant(client, app, pid="001") -> Participant:
    """A participant past consent, prompt (images generated) and the camera check."""
    p = Participant(client, pid)
    p.consent(share=True)
    p.write_prompt()
    app.state.worker.run_pending("generate")
    p.pass_webcam()
    return p


def finished_session(client, app, pid="001", share=True, order=(2, 3, 1)) -> Participant:
    """A session of 3 images answered and ranked through the API (a stub recording, not processed)."""
    p = Participant(client, pid)
    p.consent(share=share)
    p.write_prompt()
    app.state.worker.run_pending("generate")
    p.pass_webcam()
    seg = p.start_segment()
    assert p.chunk(seg, 0, WEBM_HEAD + b"a" * 10).status_code == 200
    for image in (1, 2, 3):
        p.present(seg, image, 12.0 * (image - 1))
        assert p.call("PUT", f"/images/{image}/answer", json={**ANSWER, "overall_rating": image + 2}).status_code == 200
    assert p.call("PUT", "/ranking", json={"order": list(order)}).status_code == 200
    return p


def fake_features(n: int, seed: int) -> pd.DataFrame:
    """``n`` per-frame rows in the release's schema, random values (seeded), a face in every frame."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(rng.uniform(0, 1, (n, len(FRAME_COLUMNS))).round(2), columns=FRAME_COLUMNS)
    table["frame"] = np.arange(1, n + 1)
    table["timestamp"] = (np.arange(n) / 30).round(3)
    table["face_detection_confidence_score"] = 0.95
    return table


def processed_study(settings: StudySettings, **session):
    """A study app with one finished session (``finished_session``'s options) that its
    processing has left clips and feature files for: ``(app, session_id)``."""
    app = create_app(settings)
    with TestClient(app) as client:
        p = finished_session(client, app, **session)
        add_processed_clips(app, p.id)
    return app, p.id


def add_processed_clips(app, session_id: int) -> None:
    """What a finished processing job leaves: clip rows and feature files."""
    store = app.state.store
    with app.state.sessionmaker() as db:
        sess = db.get(StudySession, session_id)
        for image in range(1, sess.n_images + 1):
            for clip in ("baseline", "reaction"):
                path = store.features_dir(sess.id) / f"{clip}_clip_{image}_features.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                fake_features(150, image).to_csv(path, index=False)
                video = store.clips_dir(sess.id) / f"{clip}_clip_{image}.mp4"
                video.parent.mkdir(parents=True, exist_ok=True)
                video.write_bytes(b"not really a video")
                db.add(
                    Clip(session_id=sess.id, image_index=image, clip=clip, n_frames=150,
                         features_file=store.relative(path), video_file=store.relative(video))
                )
        db.commit()


def fake_pipeline(monkeypatch):
    """Processing without video decoding: every presented image gets both clips."""

    def fake(db, sess, store, settings, live, **kwargs):
        presented = {e.image_index for e in sess.events if e.kind == "image_hidden"}
        for image in sorted(presented - {c.image_index for c in sess.clips}):
            for clip in ("baseline", "reaction"):
                path = store.features_dir(sess.id) / f"{clip}_clip_{image}_features.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                fake_features(30, image).to_csv(path, index=False)
                db.add(Clip(session_id=sess.id, image_index=image, clip=clip, n_frames=30,
                            features_file=store.relative(path)))
        db.commit()
        db.refresh(sess)
        return dict.fromkeys(presented, "done")

    monkeypatch.setattr(processing, "process_ready_clips", fake)
    monkeypatch.setattr(processing, "check_segment", lambda paths, source: None)


def browser_like_recording(path, expressions, *, per_image_s, tail_s, seed, chunk_bytes, fps=30):
    """A variable-frame-rate VP9 webm like the browser's, one image after another.

    ``expressions`` maps each image to its (smile, frown): 1 s neutral baseline, 1 s of
    that expression, then neutral until ``per_image_s``; ``tail_s`` of neutral end it.
    MediaRecorder drops frames under load and stamps them in milliseconds, so about one
    frame in ten is dropped and the stamps jitter by up to 4 ms.

    Returns
    -------
    chunks : list of bytes
        The file cut into ``chunk_bytes`` pieces, as the page uploads it.
    starts : dict
        Each image's baseline start, in video seconds.
    """
    from skimage import data

    from fergi.face._synthetic import reaction_frames
    from fergi.video import write_video

    face = data.astronaut()
    frames, starts = [], {}
    for image, (smile, frown) in expressions.items():
        starts[image] = len(frames) / fps + 0.01
        frames += reaction_frames(face, neutral_s=1, expression_s=1, smile=smile, frown=frown)
        frames += reaction_frames(face, neutral_s=per_image_s - 2, expression_s=0)
    frames += reaction_frames(face, neutral_s=tail_s, expression_s=0)
    rng = np.random.default_rng(seed)
    keep = [i for i in range(len(frames)) if i == 0 or rng.random() > 0.1]
    times = [0.0] + [i / fps + rng.uniform(0, 0.004) for i in keep[1:]]
    write_video(path, (frames[i] for i in keep), timestamps=times)
    data_bytes = path.read_bytes()
    return [data_bytes[i : i + chunk_bytes] for i in range(0, len(data_bytes), chunk_bytes)], starts


def upload_recording(client, app, recording, chunk_size=48_000):
    """A participant ready to record, whose one segment holds ``recording`` (uploaded in
    chunks and completed): returns the participant and the segment."""
    p = Participant(client)
    p.consent(share=True)
    p.write_prompt()
    app.state.worker.run_pending("generate")
    p.pass_webcam()
    return p, upload_segment(p, recording, chunk_size)


def upload_segment(p, recording, chunk_size=48_000) -> int:
    """A new segment of participant ``p`` holding ``recording`` (uploaded in chunks and
    completed): returns its index."""
    seg = p.start_segment()
    data = recording.read_bytes()
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    for seq, chunk in enumerate(chunks):
        assert p.chunk(seg, seq, chunk).status_code == 200
    assert p.call("POST", f"/recording/{seg}/complete", json={"n_chunks": len(chunks)}).status_code == 200
    return seg


def run_session(client, app, recording, chunk_size=48_000):
    p, seg = upload_recording(client, app, recording, chunk_size)
    # Two images, 1 s baseline and 1 s presentation each.
    for image, start in ((1, 0.2), (2, 2.6)):
        for kind, offset in (("baseline_start", 0.0), ("image_shown", 1.0), ("image_hidden", 2.0)):
            response = p.call("POST", "/events", json={"segment": seg, "image_index": image, "kind": kind, "video_time": start + offset})
            assert response.status_code == 200
        assert p.call("PUT", f"/images/{image}/answer", json=ANSWER).status_code == 200
    assert p.call("PUT", "/ranking", json={"order": [2, 1]}).status_code == 200
    assert app.state.worker.run_pending("process") == 1
    return p, seg


#: (image, baseline_start) of each presentation: 1 s baseline, 1 s image. The recording is
#: neutral for 3 s, then smiles: image 2's reaction starts with the smile, and image 3's
#: reaction clip runs past the end of the recording (5.5 s), so it is short.
PRESENTATIONS = ((1, 0.0), (2, 2.0), (3, 4.0))


def processed_session(client, app, recording, presentations=PRESENTATIONS, order=(2, 1, 3), chunk_size=48_000):
    """A session recorded, answered, ranked and processed (geometry estimator) through the API."""
    p, seg = upload_recording(client, app, recording, chunk_size)
    for image, start in presentations:
        for kind, offset in (("baseline_start", 0.0), ("image_shown", 1.0), ("image_hidden", 2.0)):
            response = p.call(
                "POST", "/events", json={"segment": seg, "image_index": image, "kind": kind, "video_time": start + offset}
            )
            assert response.status_code == 200, response.text
        assert p.call("PUT", f"/images/{image}/answer", json=ANSWER).status_code == 200
    assert p.call("PUT", "/ranking", json={"order": list(order)}).status_code == 200
    assert app.state.worker.run_pending("process") == 1
    return p


@contextmanager
def serve(app):
    """Serve an ASGI app with uvicorn on a free port in a thread: yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("the study server did not start within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
