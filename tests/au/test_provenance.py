"""features_meta.json from ``fergi extract``, the study worker and ``fergi export``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from skimage import data

from fergi import FergiError
from fergi.au import features_provenance
from fergi.cli._main import main
from fergi.datasets import META_NAME, feature_provenance, read_features_meta, sha256_file
from fergi.face import reaction_frames
from fergi.study import create_app, export_study
from fergi.video import write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A short neutral-then-smile clip (0.2 s + 0.3 s)."""
    frames = list(reaction_frames(data.astronaut(), neutral_s=0.2, expression_s=0.3, smile=0.8))
    return write_video(tmp_path_factory.mktemp("videos") / "reaction_clip_1.mp4", frames)


@pytest.fixture(scope="module")
def weights(checkpoint):
    """IR-50 weights of the published shape (random, created by tests/au/conftest.py)."""
    return checkpoint


def _meta(folder):
    return json.loads((folder / META_NAME).read_text())


def test_extract_writes_geometry_provenance(video, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["extract", str(video), "--out", str(out)]) == 0
    meta = _meta(out)
    assert meta["estimator"] == "geometry" and meta["estimator_version"] == "2"
    assert meta["checkpoint_sha256"] is None and meta["preprocessing"] == "fergi"
    assert meta["neutral_reference"] == "least_expressive"
    prov = feature_provenance(out)
    assert (prov.estimator, prov.estimator_version, prov.scale) == ("geometry", "2", "geometry-v2")
    # The report and the printed summary say which neutral face each video used.
    report = pd.read_csv(out / "extract_report.csv")
    assert report.loc[0, "neutral_reference"] == "least_expressive"
    assert report.loc[0, "neutral_reference_detail"].startswith("frames 1-")
    assert "least_expressive" in capsys.readouterr().out

    # A resumed run with the same settings keeps working and keeps the meta.
    assert main(["extract", str(video), "--out", str(out)]) == 0
    assert _meta(out) == meta
    assert "least_expressive" in capsys.readouterr().out  # carried over for skipped videos


def test_extract_with_baseline_seconds_says_so(video, tmp_path):
    out = tmp_path / "out"
    assert main(["extract", str(video), "--out", str(out), "--baseline-seconds", "0.2"]) == 0
    assert _meta(out)["neutral_reference"] == "baseline_seconds"
    report = pd.read_csv(out / "extract_report.csv")
    assert report.loc[0, "neutral_reference"] == "baseline_seconds"
    # Features made against another neutral reference join the folder: "mixed".
    other = video.with_name("reaction_clip_2.mp4")
    other.write_bytes(video.read_bytes())
    assert main(["extract", str(video), str(other), "--out", str(out)]) == 0
    assert _meta(out)["neutral_reference"] == "mixed"


@pytest.mark.slow
def test_extract_ir50_records_the_checkpoint_and_refuses_a_second_scale(
    video, weights, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(["extract", str(video), "--out", str(out)]) == 0
    capsys.readouterr()
    ir50 = ["--estimator", "ir50", "--checkpoint", str(weights), "--preprocessing", "fergi"]
    # Another estimator into the same folder would mix two AU scales: refused.
    assert main(["extract", str(video), "--out", str(out), *ir50]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "geometry v2" in err and "--overwrite" in err and "another --out" in err
    assert _meta(out)["estimator"] == "geometry"

    assert main(["extract", str(video), "--out", str(out), *ir50, "--overwrite"]) == 0
    meta = _meta(out)
    assert meta["estimator"] == "ir50" and meta["estimator_version"] == "1"
    assert meta["checkpoint_sha256"] == sha256_file(weights)
    assert meta["neutral_reference"] == "absolute" and meta["preprocessing"] == "fergi"
    prov = feature_provenance(out)
    assert prov.estimator == "ir50" and prov.checkpoint_sha256 == sha256_file(weights)
    assert pd.read_csv(out / "extract_report.csv").loc[0, "neutral_reference"] == "absolute"
    # Back to geometry without --overwrite: refused again, naming the weights.
    assert main(["extract", str(video), "--out", str(out)]) == 2
    assert "ir50 v1, weights sha256" in capsys.readouterr().err


def test_features_provenance_in_the_library(weights):
    geometry = features_provenance("geometry")
    assert (geometry.estimator_version, geometry.checkpoint_sha256) == ("2", None)
    assert geometry.neutral_reference == "least_expressive"
    ir50 = features_provenance("ir50", weights)
    assert ir50.neutral_reference == "absolute" and ir50.preprocessing == "authors"
    assert geometry.preprocessing == "fergi"
    assert features_provenance("ir50", weights, preprocessing="fergi").scale != ir50.scale
    with pytest.raises(FergiError, match="only for the ir50 estimator"):
        features_provenance("geometry", preprocessing="authors")
    assert ir50.checkpoint_sha256 == sha256_file(weights)
    with pytest.raises(FergiError, match="neutral_reference 'median'"):
        features_provenance("geometry", neutral_reference="median")
    with pytest.raises(FergiError, match="unknown AU estimator"):
        features_provenance("openface")


# --- the study: worker and export ------------------------------------------------------


def test_study_worker_and_export_carry_the_provenance(tmp_path, monkeypatch):
    from tests.helpers.study import (
        add_processed_clips,
        fake_pipeline,
        finished_session,
        make_settings,
    )

    fake_pipeline(monkeypatch)
    app = create_app(make_settings(tmp_path))
    store = app.state.store
    with TestClient(app) as client:
        processed = finished_session(client, app, "001")
        assert app.state.worker.run_pending("process") == 1
        meta = read_features_meta(store.features_dir(processed.id) / META_NAME)
        assert (meta.estimator, meta.estimator_version) == ("geometry", "2")
        assert meta.neutral_reference == "baseline_clip"
        # A session processed before meta files existed: built from the settings.
        older = finished_session(client, app, "002")
        add_processed_clips(app, older.id)
        assert not (store.features_dir(older.id) / META_NAME).exists()

    settings = app.state.settings
    out = tmp_path / "export"
    summary = export_study(settings.resolved_db_url, settings.resolved_media_dir, out)
    assert summary["sessions"] == 2
    # The fake uploads are no video: their clip videos are reported, the export goes on.
    assert summary.get("raw_clips_failed") or not summary.get("raw_clips")
    for pid in ("001", "002"):
        session_meta = read_features_meta(out / "data" / pid / "session_1" / META_NAME)
        assert session_meta.scale == "geometry-v2"
        assert session_meta.neutral_reference == "baseline_clip"
    prov = feature_provenance(out)
    assert prov.estimator == "geometry" and prov.estimator_version == "2"
    assert prov.neutral_reference == "baseline_clip"


@pytest.mark.slow
def test_extract_measures_study_reaction_clips_against_their_baseline_clip(tmp_path, capsys):
    """A study's clips (reaction_clip_<i> beside baseline_clip_<i>) are read as the study
    reads them: each reaction against its image's own baseline clip."""
    import csv
    from pathlib import Path

    from fergi.face import write_reaction_video

    session = tmp_path / "videos" / "001" / "session_1"
    session.mkdir(parents=True)
    face = data.astronaut()
    write_reaction_video(session / "baseline_clip_1.mp4", face, neutral_s=1.0, expression_s=0.0,
                         size=(320, 240))
    # Smiling for 90 % of the clip: the clip alone holds little neutral face.
    write_reaction_video(session / "reaction_clip_1.mp4", face, neutral_s=0.1, expression_s=0.9,
                         smile=1.0, size=(320, 240))
    out = tmp_path / "feats"
    assert main(["extract", str(tmp_path / "videos"), "--out", str(out)]) == 0
    with open(out / "extract_report.csv", newline="") as handle:
        rows = {Path(r["video"]).name: r for r in csv.DictReader(handle)}
    assert rows["reaction_clip_1.mp4"]["neutral_reference"] == "baseline_clip"
    assert "baseline_clip_1.mp4" in rows["reaction_clip_1.mp4"]["neutral_reference_detail"]
    assert rows["baseline_clip_1.mp4"]["neutral_reference"] == "baseline_clip"
    assert feature_provenance(out).neutral_reference == "baseline_clip"
    reaction = pd.read_csv(out / "001" / "session_1" / "reaction_clip_1_features.csv")
    assert reaction["AU12"].iloc[-10:].mean() > 1.0
    # Turned off, the clip's own least-expressive frames are the neutral face.
    other = tmp_path / "alone"
    assert main(["extract", str(tmp_path / "videos"), "--out", str(other), "--no-pair-baselines"]) == 0
    with open(other / "extract_report.csv", newline="") as handle:
        assert {r["neutral_reference"] for r in csv.DictReader(handle)} == {"least_expressive"}
