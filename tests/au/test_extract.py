"""fergi.au geometry estimator and extract_features on real-face test videos.

Test faces are ``skimage.data.astronaut()`` (a real photograph), framed like a webcam
and warped by a FaceMesh-driven thin-plate spline into a synthetic AU12 smile or AU4
frown (``fergi.face.synthesize_expression``).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from skimage import data

from fergi import FergiError
from fergi.au import GeometryAUEstimator, create_au_estimator, extract_features, write_features
from fergi.datasets import AU_NAMES, FRAME_COLUMNS
from fergi.face import FaceAnalyzer, reaction_frames, synthesize_expression, write_reaction_video
from fergi.features import compute_activation_values
from fergi.video import read_video, write_video

AU = {name: i for i, name in enumerate(AU_NAMES)}
MAGNITUDES = (0.25, 0.5, 0.75, 1.0)
NO_FACE_ROW = re.compile(r"^\d+,\d+\.\d{3},0(,-1){14}$")


@pytest.fixture(scope="module")
def canvas():
    """The astronaut framed in 640x480 like a webcam sees a face."""
    return next(reaction_frames(data.astronaut(), neutral_s=1 / 30, expression_s=0))


@pytest.fixture(scope="module")
def neutral_landmarks(canvas, analyzer):
    return analyzer.process(canvas).landmarks


def _responses(kind, canvas, analyzer, neutral_landmarks):
    est = GeometryAUEstimator().fit(neutral_landmarks[None])
    shapes = []
    for m in MAGNITUDES:
        warped = synthesize_expression(canvas, landmarks=neutral_landmarks, **{kind: m})
        shapes.append(analyzer.process(warped).landmarks)
    return est.predict(np.stack(shapes))


@pytest.mark.parametrize(
    ("kind", "target", "opposite", "strong"),
    [("smile", "AU12", ("AU15",), 2.0), ("frown", "AU4", ("AU1", "AU2"), 1.0)],
)
def test_geometry_responds_monotonically_with_bounded_crosstalk(
    kind, target, opposite, strong, canvas, analyzer, neutral_landmarks
):
    aus = _responses(kind, canvas, analyzer, neutral_landmarks)
    response = aus[:, AU[target]]
    assert np.all(np.diff(response) > 0), response
    assert response[-1] > strong
    others = np.delete(aus, AU[target], axis=1)
    # From half magnitude on, no other AU reaches half of the target's response.
    assert np.all(others[1:].max(axis=1) < 0.5 * response[1:]), aus.round(2)
    for name in opposite:  # the opposite movement stays at zero
        assert np.all(aus[:, AU[name]] < 0.1), aus.round(2)


def test_neutral_face_gives_zero(canvas, analyzer, neutral_landmarks):
    est = create_au_estimator("geometry").fit(neutral_landmarks[None])
    again = analyzer.process(canvas.copy()).landmarks
    np.testing.assert_allclose(est.predict(again[None]), 0.0, atol=0.05)
    # Head motion (a shifted and scaled face) is aligned away.
    import cv2

    m = np.array([[1.15, 0.0, -40.0], [0.0, 1.15, -20.0]])
    moved = cv2.warpAffine(canvas, m, (640, 480), borderValue=(128, 128, 128))
    # FaceMesh re-estimates the landmarks on a rescaled face with some noise.
    assert est.predict(analyzer.process(moved).landmarks[None]).max() < 0.5


def test_geometry_without_faces_gives_nan_and_fit_needs_a_face():
    est = GeometryAUEstimator()
    out = est.predict(np.full((3, 478, 3), np.nan))
    assert out.shape == (3, 12) and np.isnan(out).all()
    with pytest.raises(FergiError, match="no frame with a face"):
        est.fit(np.full((2, 478, 3), np.nan))
    with pytest.raises(FergiError, match="478"):
        est.predict(np.zeros((2, 68, 2)))


@pytest.fixture(scope="module")
def smile_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "smile.mp4"
    return write_reaction_video(path, data.astronaut(), neutral_s=1.0, expression_s=1.0, smile=0.7)


@pytest.mark.parametrize(("kind", "au"), [("smile", "AU12"), ("frown", "AU4")])
def test_neutral_then_expression_clip_gives_positive_activation(tmp_path, kind, au, smile_video):
    if kind == "smile":
        video = smile_video
    else:
        video = write_reaction_video(
            tmp_path / "frown.webm", data.astronaut(), neutral_s=1.0, expression_s=1.0, frown=1.0
        )
    table = extract_features(video)
    path = write_features(table, tmp_path / "reaction_clip_1_features.csv")
    frames = pd.read_csv(path)
    assert tuple(frames.columns) == FRAME_COLUMNS
    clips = compute_activation_values(frames)
    assert len(clips) == 1
    row = clips.iloc[0]
    assert bool(row["clip_valid"])
    activations = row[[f"{a}_activation_value" for a in AU_NAMES]].astype(float)
    assert activations[f"{au}_activation_value"] > 0.8
    assert activations.idxmax() == f"{au}_activation_value"


def test_neutral_clip_gives_no_activation(tmp_path):
    video = write_reaction_video(
        tmp_path / "neutral.mp4", data.astronaut(), neutral_s=1.0, expression_s=0.0
    )
    clips = compute_activation_values(extract_features(video))
    assert bool(clips.iloc[0]["clip_valid"])
    values = clips.iloc[0][[f"{a}_activation_value" for a in AU_NAMES]].astype(float)
    assert values.max() < 0.3


def test_baseline_clip_sets_the_neutral_reference(tmp_path, smile_video):
    baseline = write_reaction_video(
        tmp_path / "baseline.y4m", data.astronaut(), neutral_s=0.5, expression_s=0.0
    )
    with_baseline = extract_features(smile_video, baseline=baseline)
    first_second = extract_features(smile_video, baseline_seconds=0.9)
    own = extract_features(smile_video)
    # Without a reference, the clip's own least-expressive frames (its neutral first
    # second) are the neutral face: the same reading as with the baseline.
    for table in (with_baseline, first_second, own):
        assert table["AU12"].iloc[:25].max() < 0.3  # neutral part at zero
        assert table["AU12"].iloc[40:].min() > 1.0  # the held smile
    assert with_baseline.attrs["neutral_reference"] == "baseline_clip"
    assert first_second.attrs["neutral_reference"] == "baseline_seconds"
    assert own.attrs["neutral_reference"] == "least_expressive"
    change = lambda t: t["AU12"].iloc[40:].mean() - t["AU12"].iloc[:25].mean()  # noqa: E731
    assert abs(change(own) - change(with_baseline)) < 0.3


def test_no_face_video(tmp_path):
    frames = [np.full((480, 640, 3), 60 + i, np.uint8) for i in range(10)]
    frames[5] = np.ascontiguousarray(np.resize(data.coffee(), (480, 640, 3)))
    path = write_video(tmp_path / "empty_room.mp4", frames)
    table = extract_features(path)
    assert len(table) == 10 and table.attrs["face_share"] == 0
    text = write_features(table, tmp_path / "f.csv").read_text().splitlines()
    assert all(NO_FACE_ROW.match(line) for line in text[1:]), text[:3]
    assert text[3] == "3,0.067,0,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1"
    clips = compute_activation_values(pd.read_csv(tmp_path / "f.csv"))
    assert not bool(clips.iloc[0]["clip_valid"])


def test_face_leaving_the_frame_midway(tmp_path, canvas):
    frames = [canvas] * 15
    for i in range(1, 16):  # slides out to the right, 60 px per frame
        shifted = np.full_like(canvas, 128)
        shift = 60 * i
        shifted[:, shift:] = canvas[:, : 640 - shift] if shift < 640 else shifted[:, shift:]
        frames.append(shifted)
    path = write_video(tmp_path / "leaving.mp4", frames)
    table = extract_features(path)
    score = table["face_detection_confidence_score"].to_numpy()
    assert np.all(score[:15] > 0.9)
    assert np.all(table.iloc[:15][list(AU_NAMES)].to_numpy() >= 0)
    assert np.all(score[-4:] == 0)
    gone = table.iloc[-4:]
    assert (gone[list(FRAME_COLUMNS[3:])] == -1).all().all()
    np.testing.assert_array_equal(table["frame"], np.arange(1, 31))
    np.testing.assert_allclose(table["timestamp"], np.round(np.arange(30) / 30, 3))


def test_turned_head_frames_are_invalid(tmp_path, canvas):
    import cv2

    h, w = canvas.shape[:2]
    cx, half = w / 2, 0.17 * w  # the framed face's centre and half width
    u = (np.arange(w, dtype=np.float64) - cx) / half
    c = -0.5  # squeeze the image-left half of the face: a head turn
    s = np.where(u < c, -1 + (u + 1) / (c + 1), (u - c) / (1 - c))
    s = np.where(np.abs(u) > 1, u, s)
    map_x = np.tile((cx + half * s).astype(np.float32), (h, 1))
    map_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    turned = cv2.remap(canvas, map_x, map_y, cv2.INTER_LINEAR)
    path = write_video(tmp_path / "turned.mp4", [canvas] * 3 + [turned] * 12)
    table = extract_features(path)
    yir = table["yaw_indicative_ratio"].to_numpy()
    assert np.all((yir[:3] > 0.4) & (yir[:3] < 0.6))
    assert np.all(yir[3:] < 0.3)
    assert np.all(table["face_detection_confidence_score"].to_numpy()[3:] > 0)
    clips = compute_activation_values(table)
    assert clips.iloc[0]["valid_frame_share"] == pytest.approx(0.2)
    assert not bool(clips.iloc[0]["clip_valid"])


def test_variable_frame_rate_webm_640x480(tmp_path):
    frames = list(reaction_frames(data.astronaut(), neutral_s=0.5, expression_s=0.5, smile=0.8))
    rng = np.random.default_rng(7)
    times = np.concatenate(
        [[0], np.cumsum(rng.choice([0.025, 0.033, 0.045, 0.07], len(frames) - 1))]
    )
    path = write_video(tmp_path / "recording.webm", frames, timestamps=times)
    native = read_video(path, fps=None)
    assert native.frames.shape[1:] == (480, 640, 3)
    table = extract_features(path)
    n = int(np.floor(round(times[-1], 3) * 30 + 1e-6)) + 1
    assert len(table) == n
    np.testing.assert_allclose(table["timestamp"], np.round(np.arange(n) / 30, 3))
    assert table.attrs["face_share"] == 1.0
    assert table["AU12"].iloc[-5:].min() > table["AU12"].iloc[:5].max() + 1.0


def test_bad_videos_raise_fergi_error(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    zero = write_video(tmp_path / "zero.webm", [])
    for bad in (corrupt, zero):
        with pytest.raises(FergiError, match=re.escape(str(bad))):
            extract_features(bad)


def test_release_files_are_rewritten_byte_for_byte(fergi_public, tmp_path):
    # Exact formatting: reading a release file and writing it again changes nothing.
    found = {"no_face": False}
    for pattern, decimals in (
        ("baseline_clip_*_features.csv", 2),
        ("reaction_clip_*_features.csv", 3),
    ):
        files = sorted((fergi_public / "data" / "001").glob(f"session_*/{pattern}"))[:40]
        for src in files:
            table = pd.read_csv(src)
            out = write_features(table, tmp_path / src.name, decimals=decimals)
            assert out.read_bytes() == src.read_bytes(), src
            found["no_face"] |= bool((table["face_detection_confidence_score"] == 0).any())
    assert found["no_face"]


def test_write_features_parquet_and_checks(tmp_path, canvas):
    path = write_video(tmp_path / "v.mp4", [canvas] * 3)
    table = extract_features(path)
    pd.testing.assert_frame_equal(extract_features(read_video(path)), table)
    pq = write_features(table, tmp_path / "v.parquet")
    back = pd.read_parquet(pq)
    assert tuple(back.columns) == FRAME_COLUMNS
    np.testing.assert_array_equal(back["frame"], table["frame"])
    np.testing.assert_allclose(back["timestamp"], table["timestamp"], atol=1e-12)
    values = list(FRAME_COLUMNS[2:])
    np.testing.assert_allclose(back[values], table[values].round(2), atol=1e-12)
    with pytest.raises(FergiError, match="columns"):
        write_features(table.drop(columns="AU12"), tmp_path / "x.csv")
    with pytest.raises(FergiError, match="suffix"):
        write_features(table, tmp_path / "x.json")
    assert not list(tmp_path.glob(".*.tmp"))


def test_analysed_baseline_frames_are_not_analysed_again(analyzer, monkeypatch):
    """A baseline clip analysed before (the study's own) gives the same reference, for free."""
    import fergi.au._extract as extract
    from fergi.video import VideoFrames

    face = data.astronaut()
    neutral = np.stack(list(reaction_frames(face, neutral_s=0.3, expression_s=0)))
    smile = np.stack(list(reaction_frames(face, neutral_s=0.1, expression_s=0.3, smile=1.0)))

    def clip(frames, name):
        return VideoFrames(frames, np.arange(len(frames)) / 30, 30.0, name)

    baseline = clip(neutral, "baseline")
    extract_features(baseline, baseline=baseline, analyzer=analyzer)
    calls = []
    original = extract._analyse
    monkeypatch.setattr(extract, "_analyse", lambda frames, *a: calls.append(1) or original(frames, *a))
    reused = extract_features(clip(smile, "reaction"), baseline=baseline, analyzer=analyzer)
    assert len(calls) == 1  # the reaction clip only
    fresh = extract_features(clip(smile, "reaction"), baseline=clip(neutral, "copy"), analyzer=analyzer)
    assert len(calls) == 3
    pd.testing.assert_frame_equal(reused, fresh)
    assert reused.attrs["neutral_reference"] == "baseline_clip"
    # another analyser's landmarks are not taken for this one's
    with FaceAnalyzer() as other:
        extract_features(clip(smile, "reaction"), baseline=baseline, analyzer=other)
    assert len(calls) == 5
