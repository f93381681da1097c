"""One clip path: the server's real-time processing and the library's
``process_session_media`` give the same clip features for the same recording."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi.datasets import FRAME_COLUMNS
from fergi.study import create_app, process_session_media
from fergi.study.store import Clip
from tests.helpers.study import ANSWER, Participant, browser_like_recording, make_settings

FPS = 30
N_IMAGES = 3
# Per image: 1 s baseline, 1 s presentation, then 0.7 s of survey before the next baseline.
PER_IMAGE_S = 2.7
CHUNK_BYTES = 12_000


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A variable-frame-rate VP9 webm like the browser's (dropped frames, millisecond
    stamps), with a smile, a frown and a neutral face, and its events in video time."""
    path = tmp_path_factory.mktemp("rec") / "recording.webm"
    chunks, starts = browser_like_recording(
        path, {1: (1, 0), 2: (0, 1), 3: (0, 0)},
        per_image_s=PER_IMAGE_S, tail_s=1, seed=1, chunk_bytes=CHUNK_BYTES, fps=FPS,
    )
    events = [
        {"image_index": image, "kind": kind, "video_time": round(starts[image] + dt, 3)}
        for image in range(1, N_IMAGES + 1)
        for kind, dt in (("baseline_start", 0.0), ("image_shown", 1.0), ("image_hidden", 2.0))
    ]
    return path, chunks, events


def _live(tmp_path, chunks, events):
    """The server's path: chunks uploaded while the images are presented, each image's
    clips analysed by the worker as soon as its video is on the server."""
    app = create_app(make_settings(tmp_path, n_images=N_IMAGES, baseline_s=1.0, present_s=1.0))
    with TestClient(app) as client:
        p = Participant(client)
        p.consent(share=False)
        p.write_prompt()
        app.state.worker.run_pending("generate")
        p.pass_webcam()
        seg = p.start_segment()
        sent = 0
        sent_when_stored = {}
        for image in range(1, N_IMAGES + 1):
            for ev in (e for e in events if e["image_index"] == image):
                assert p.call("POST", "/events", json={"segment": seg, **ev}).status_code == 200
            assert p.call("PUT", f"/images/{image}/answer", json=ANSWER).status_code == 200
            with app.state.sessionmaker() as db:
                stored = {c.image_index for c in db.query(Clip).filter(Clip.session_id == p.id)}
            while image not in stored:
                assert sent < len(chunks), f"image {image} was never analysed"
                assert p.chunk(seg, sent, chunks[sent]).status_code == 200
                sent += 1
                app.state.worker.run_pending("clips")
                with app.state.sessionmaker() as db:
                    stored = {c.image_index for c in db.query(Clip).filter(Clip.session_id == p.id)}
            sent_when_stored[image] = sent
        # real time: the first image was analysed from a part of the upload
        assert sent_when_stored[1] < len(chunks)
        with app.state.sessionmaker() as db:
            clips = db.query(Clip).filter(Clip.session_id == p.id).all()
            activations = {(c.image_index, c.clip): dict(c.activations) for c in clips}
        features = app.state.store.features_dir(p.id)
        tables = {
            (image, clip): pd.read_csv(features / f"{clip}_clip_{image}_features.csv")
            for image in range(1, N_IMAGES + 1)
            for clip in ("baseline", "reaction")
        }
    return tables, activations


@pytest.mark.slow
def test_live_and_offline_clip_features_are_equal(tmp_path, recording):
    path, chunks, events = recording
    live_tables, live_activations = _live(tmp_path / "live", chunks, events)

    # the library's path, on the same recording (whole, and as the uploaded chunks)
    chunk_files = []
    for i, data in enumerate(chunks):
        chunk_files.append(tmp_path / f"chunk_{i:03d}.webm")
        chunk_files[-1].write_bytes(data)
    for source in (path, chunk_files):
        work = tmp_path / ("offline_whole" if source is path else "offline_chunks")
        result = process_session_media(source, events, work, baseline_s=1.0, reaction_s=1.0, fps=FPS)
        assert sorted(result.frames) == sorted(live_tables)
        for key, live in live_tables.items():
            offline = pd.read_csv(result.feature_files[key])  # the file as saved
            pd.testing.assert_frame_equal(result.frames[key], offline)
            assert list(offline.columns) == list(FRAME_COLUMNS) and len(offline) == FPS
            # frame for frame the same features: the same decoding, the same analysis
            pd.testing.assert_frame_equal(offline, live, check_exact=False, atol=1e-9, rtol=0)
        act = result.activations.set_index(["image", "clip"])
        au_columns = [c for c in act.columns if c.endswith("_activation_value")]
        assert au_columns
        for (image, clip), values in live_activations.items():
            assert sorted(values) == sorted(au_columns)
            offline_values = act.loc[(image, clip), au_columns].astype(float)
            np.testing.assert_allclose(
                offline_values.to_numpy(), [values[c] for c in au_columns], rtol=0, atol=1e-9, equal_nan=True
            )
        # and the smile of image 1 is what both saw
        assert act.loc[(1, "reaction"), "AU12_activation_value"] > act.loc[(2, "reaction"), "AU12_activation_value"]
