"""Processing a real uploaded recording: clips, features, activations, labels, retention."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from fergi.datasets import AU_NAMES
from fergi.study import create_app, export_study
from tests.helpers.study import ADMIN, make_settings, run_session

pytestmark = pytest.mark.slow

FPS = 30


@pytest.fixture
def recording(reaction_webm):
    """A VP9 webm like the browser's: 2.5 s neutral, then a smile, 5 s in all."""
    return reaction_webm


def test_processing_cuts_clips_extracts_features_and_labels(tmp_path, recording):
    app = create_app(make_settings(tmp_path, n_images=2, baseline_s=1.0, present_s=1.0))
    with TestClient(app) as client:
        p, seg = run_session(client, app, recording)
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        job = [j for j in detail["jobs"] if j["kind"] == "process"][0]
        assert job["status"] == "done", job
        # decoding, standardising, cutting and analysing run per image in the "clips" stage
        for stage in ("assemble", "clips", "activations", "labels", "store"):
            assert job["stages"][stage] == "done", (stage, job["stages"])
        assert job["stages"]["image 1"] == job["stages"]["image 2"] == "done"
        clips = {(c["image_index"], c["clip"]): c for c in detail["clips"]}
        assert sorted(clips) == [(1, "baseline"), (1, "reaction"), (2, "baseline"), (2, "reaction")]
        assert all(c["n_frames"] == FPS for c in clips.values())
        assert clips[(2, "reaction")]["activations"]["AU12_activation_value"] is not None
        assert len(detail["labels"]) == 1 and {detail["labels"][0]["image_a"], detail["labels"][0]["image_b"]} == {1, 2}
        # The clip video is admin-only media.
        assert client.get(f"/api/admin/sessions/{p.id}/clips/1/reaction", headers=p.headers).status_code == 401
        video = client.get(f"/api/admin/sessions/{p.id}/clips/1/reaction", headers=ADMIN)
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        store = app.state.store
        features = pd.read_csv(store.features_dir(p.id) / "reaction_clip_2_features.csv")
        assert len(features) == FPS and (features["face_detection_confidence_score"] >= 0.9).all()
        # The raw upload is untouched by processing.
        assert store.chunk_path(p.id, seg, 0).read_bytes() == recording.read_bytes()[:48_000]

        settings = app.state.settings
        out = tmp_path / "export"
        export_study(settings.resolved_db_url, settings.resolved_media_dir, out)
        assert sorted(f.name for f in (out / "raw" / "001" / "session_1").iterdir()) == [
            "baseline_clip_1.mp4", "baseline_clip_2.mp4", "reaction_clip_1.mp4", "reaction_clip_2.mp4",
        ]
        labels = pd.read_csv(out / "study" / "labels.csv")
        assert len(labels) == 1
        # The export is a release: the analysis stages read it unchanged.
        from fergi.datasets import load_frames, load_images, load_invalid_images
        from fergi.features import compute_activation_values, image_table

        clips_table = compute_activation_values(load_frames(out))
        table = image_table(load_images(out), clips_table, load_invalid_images(out))
        assert sorted(table["image"]) == [1, 2] and table["rank_score"].tolist() == [1, 2]
        from fergi.cli._main import main

        assert main(["annotate", "--data", str(out), "--out", str(tmp_path / "labels.jsonl")]) == 0
        assert (tmp_path / "labels.jsonl").read_text().count("\n") == 1
        # ... and so do the statistics and figures of `fergi reproduce`.
        assert main(["reproduce", "--data", str(out), "--out", str(tmp_path / "results")]) == 0
        results = json.loads((tmp_path / "results" / "results.json").read_text())
        assert results["participants"]["all"] == 1 and results["n_reaction_clips_valid"] == 2
        assert set(results["statistics"]["rating"]) == set(AU_NAMES)
        assert "2 participants" in results["preference_skipped"]


def test_retention_deletes_raw_video_but_keeps_features(tmp_path, recording):
    app = create_app(make_settings(tmp_path, n_images=2, baseline_s=1.0, present_s=1.0, retention="delete_after_features"))
    with TestClient(app) as client:
        p, seg = run_session(client, app, recording)
        detail = client.get(f"/api/admin/sessions/{p.id}", headers=ADMIN).json()
        job = [j for j in detail["jobs"] if j["kind"] == "process"][0]
        assert job["status"] == "done" and job["stages"]["retention"] == "raw video deleted"
        store = app.state.store
        assert not store.chunk_path(p.id, seg, 0).exists()
        assert not any(store.clips_dir(p.id).glob("*"))
        assert all(not c["has_video"] for c in detail["clips"])
        assert (store.features_dir(p.id) / "reaction_clip_1_features.csv").is_file()
        assert client.get(f"/api/admin/sessions/{p.id}/clips/1/reaction", headers=ADMIN).status_code == 404
