"""fergi.face: detection, pose ratios, IR-50 crop, and the synthetic-expression helpers."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from fergi import FergiError
from fergi.face import (
    align_face,
    crop_box,
    detect_landmarks,
    enhance_contrast,
    pose_ratios,
    preprocess_face,
    synthesize_expression,
    write_reaction_video,
)
from fergi.video import read_video


# `analyzer`: one shared analyser for the session (tests/conftest.py).
@pytest.fixture(scope="module")
def face():
    return data.astronaut()


@pytest.fixture(scope="module")
def face_landmarks(face):
    return detect_landmarks(face)


def _yaw_warp(image, c):
    """Squeeze one side of the face and stretch the other, like a head turn.

    Horizontal positions ``u`` in face half-widths around the face centre: the part
    left of ``u = c`` shows the left half of the face, the rest the right half.
    """
    import cv2

    h, w = image.shape[:2]
    cx, half = 0.43 * w, 0.22 * w  # the astronaut's face centre and half width
    u = (np.arange(w, dtype=np.float64) - cx) / half
    s = np.where(u < c, -1 + (u + 1) / (c + 1), (u - c) / (1 - c))
    s = np.where(np.abs(u) > 1, u, s)
    map_x = np.tile((cx + half * s).astype(np.float32), (h, 1))
    map_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR)


def test_largest_face_detected_with_landmarks(analyzer, face):
    obs = analyzer.process(face)
    assert obs.score > 0.9
    x0, y0, x1, y1 = obs.box
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 220
    assert obs.landmarks.shape == (478, 3)
    # Landmarks of the whole face lie inside the frame and around the box.
    assert np.all(obs.landmarks[:, 0] > x0 - 30) and np.all(obs.landmarks[:, 0] < x1 + 30)


def _place(face, scale, x, y, size=(640, 480)):
    import cv2

    cx, cy = 225, 140  # the astronaut's face centre
    m = np.array([[scale, 0, x - scale * cx], [0, scale, y - scale * cy]])
    return cv2.warpAffine(face, m, size, borderValue=(128, 128, 128))


def test_largest_of_two_faces_is_chosen(analyzer, face):
    canvas = _place(face, 1.2, 150, 240)
    canvas[:, 300:] = _place(face, 1.8, 460, 240)[:, 300:]
    assert len(analyzer._get_graph().process({"image": canvas}).face_detections) == 2
    obs = analyzer.process(canvas)
    assert obs.box[0] > 300  # the big face on the right
    assert obs.landmarks[:, 0].min() > 300


def test_no_face(analyzer):
    obs = analyzer.process(np.full((240, 320, 3), 90, np.uint8))
    assert obs.score == 0.0 and obs.box is None and obs.landmarks is None
    with pytest.raises(FergiError, match="no face"):
        detect_landmarks(data.coffee())


def test_frontal_pose_ratios(face_landmarks):
    pir, yir = pose_ratios(face_landmarks)
    assert abs(yir - 0.5) < 0.08
    assert 0.55 <= pir <= 0.85
    pirs, yirs = pose_ratios(np.stack([face_landmarks, face_landmarks]))
    assert pirs.shape == yirs.shape == (2,)


def test_mirrored_face_mirrors_yaw_ratio(face):
    pir, yir = pose_ratios(detect_landmarks(face))
    pir_m, yir_m = pose_ratios(detect_landmarks(face[:, ::-1].copy()))
    assert abs(yir + yir_m - 1) < 0.05
    assert abs(pir - pir_m) < 0.05


@pytest.mark.parametrize("amount", [0.5, -0.5])
def test_turned_face_moves_yaw_ratio_out_of_range(face, amount):
    turned = _yaw_warp(face, amount)
    pir, yir = pose_ratios(detect_landmarks(turned))
    assert not 0.3 <= yir <= 0.7
    assert (yir < 0.5) == (amount < 0)


def test_vertically_squeezed_face_moves_pitch_ratio_out_of_range(face):
    import cv2

    squeezed = cv2.resize(face, (512, 300), interpolation=cv2.INTER_AREA)
    pir, yir = pose_ratios(detect_landmarks(squeezed))
    assert pir < 0.55
    assert 0.3 <= yir <= 0.7


def test_crop_margins_alignment_and_contrast(face, face_landmarks, analyzer):
    box = analyzer.process(face).box
    x0, y0, x1, y1 = crop_box(box)
    w, h = box[2] - box[0], box[3] - box[1]
    np.testing.assert_allclose(
        [x0, y0, x1, y1],
        [box[0] - 0.125 * w, box[1] - 0.2 * h, box[2] + 0.125 * w, box[3] + 0.05 * h],
    )
    aligned = align_face(face, box, face_landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    # The eyes sit level in the upper half, the mouth in the lower half of the crop.
    # A face box partly outside the frame is zero padded.
    shifted = np.zeros_like(face)
    shifted[:, : 512 - 180] = face[:, 180:]
    edge = align_face(shifted, box - np.array([180, 0, 180, 0]))
    assert edge[:, :10].max() == 0 and edge[:, 60:].max() > 0
    # Contrast: a dull crop gets a full range, padding stays black.
    dull = (aligned.astype(float) * 0.3 + 80).astype(np.uint8)
    out = enhance_contrast(dull)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert np.percentile(out.mean(axis=2), 99) - np.percentile(out.mean(axis=2), 1) > 0.7
    padded = enhance_contrast(edge)
    assert padded[:, :10].max() == 0
    net_in = preprocess_face(face, box, face_landmarks)
    assert net_in.shape == (112, 112, 3) and net_in.dtype == np.float32


def test_synthesize_expression_moves_the_right_landmarks(face, face_landmarks):
    iod = np.linalg.norm(face_landmarks[468, :2] - face_landmarks[473, :2])
    smile = synthesize_expression(face, smile=1.0, landmarks=face_landmarks)
    assert smile.shape == face.shape and smile.dtype == np.uint8
    moved = detect_landmarks(smile)
    corner_rise = (face_landmarks[[61, 291], 1] - moved[[61, 291], 1]).mean() / iod
    width_gain = (
        (moved[291, 0] - moved[61, 0]) - (face_landmarks[291, 0] - face_landmarks[61, 0])
    ) / iod
    assert corner_rise > 0.04 and width_gain > 0.03
    # The eyes and the background did not move.
    np.testing.assert_allclose(moved[[33, 263], :2], face_landmarks[[33, 263], :2], atol=0.02 * iod)
    assert np.abs(smile[:20, :20].astype(int) - face[:20, :20]).max() <= 1

    frown = detect_landmarks(synthesize_expression(face, frown=1.0, landmarks=face_landmarks))
    brow_drop = (
        frown[[55, 285, 107, 336], 1] - face_landmarks[[55, 285, 107, 336], 1]
    ).mean() / iod
    assert brow_drop > 0.02
    np.testing.assert_allclose(frown[[61, 291], :2], face_landmarks[[61, 291], :2], atol=0.02 * iod)
    assert np.array_equal(synthesize_expression(face), face)


@pytest.mark.parametrize("suffix", [".y4m", ".mp4"])
def test_write_reaction_video(tmp_path, face, suffix):
    path = write_reaction_video(
        tmp_path / f"reaction{suffix}", face, neutral_s=0.5, expression_s=0.5, smile=1.0
    )
    if suffix == ".y4m":
        header = path.read_bytes()[:64].split(b"\n")[0].split()
        assert header[:4] == [b"YUV4MPEG2", b"W640", b"H480", b"F30:1"]
        assert any(tag.startswith(b"C420") for tag in header)
    video = read_video(path)
    assert video.frames.shape == (30, 480, 640, 3)
    # Neutral frames are identical; the last frame shows the (warped) expression.
    assert np.abs(video.frames[0].astype(int) - video.frames[14]).mean() < 1
    assert np.abs(video.frames[0].astype(int) - video.frames[-1]).max() > 40
