"""Pose ratios from 68-point landmarks in the authors' oriented face frame."""

import numpy as np
import pytest

from fergi.face import pose_ratios_68


def _frontal_face() -> np.ndarray:
    """A symmetric 68-point face with hand-known distances (pixels, y down)."""
    lm = np.zeros((68, 2))
    lm[0] = [0.0, 40.0]  # image-left face edge
    lm[16] = [100.0, 40.0]  # image-right face edge
    lm[9] = [55.0, 110.0]
    lm[36:42] = [25.0, 40.0]  # image-left eye centre at (25, 40)
    lm[42:48] = [75.0, 40.0]  # image-right eye centre at (75, 40)
    lm[31:36] = [50.0, 70.0]  # nostrils 30 px below the eye line
    lm[48] = [35.0, 85.0]
    lm[54] = [65.0, 85.0]
    return lm


def test_hand_computed_frontal_face():
    pir, yir = pose_ratios_68(_frontal_face())
    # Eyes 50 px apart, nostrils 30 px below their midpoint: 30 / 50.
    assert pir == pytest.approx(0.6)
    # 25 px from the left edge to the left eye, 25 px from the right eye to the right edge.
    assert yir == pytest.approx(0.5)


def test_turned_head_hand_computed():
    lm = _frontal_face()
    lm[16] = [85.0, 40.0]  # the right cheek foreshortened: 10 px instead of 25
    _, yir = pose_ratios_68(lm)
    assert yir == pytest.approx(25 / 35)


def test_ratios_do_not_change_when_the_head_rolls():
    lm = _frontal_face()
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    rolled = (lm - 50) @ rot.T * 1.7 + [300, 200]
    assert pose_ratios_68(rolled) == pytest.approx(pose_ratios_68(lm), abs=1e-12)


def _authors_loop(lm):
    """The authors' align_face arithmetic, point by point (ffhq-dataset frame)."""
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    mouth_avg = (lm[48] + lm[54]) * 0.5
    x = (eye_right - eye_left) - np.flipud(mouth_avg - eye_avg) * [-1, 1]
    x /= np.hypot(*x)
    y = np.flipud(x) * [-1, 1]
    a = np.vstack((x, y)).T
    eye_distance, _ = np.linalg.solve(a, eye_right - eye_left)
    _, nostrils = np.linalg.solve(a, lm[31:36].mean(axis=0) - eye_avg)
    left, _ = np.linalg.solve(a, eye_left - lm[0])
    right, _ = np.linalg.solve(a, lm[16] - eye_right)
    return nostrils / eye_distance, left / (left + right)


def test_batch_equals_point_by_point_solve_on_random_faces():
    rng = np.random.default_rng(0)
    faces = _frontal_face()[None] + rng.normal(0, 4, size=(50, 68, 2))
    pir, yir = pose_ratios_68(faces)
    expected = np.array([_authors_loop(f) for f in faces])
    np.testing.assert_allclose(pir, expected[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(yir, expected[:, 1], rtol=0, atol=1e-12)


def test_missing_landmarks_give_nan_and_wrong_shape_is_refused():
    faces = np.stack([_frontal_face(), np.full((68, 2), np.nan)])
    pir, yir = pose_ratios_68(faces)
    assert np.isfinite(pir[0]) and np.isnan(pir[1]) and np.isnan(yir[1])
    with pytest.raises(ValueError, match="68"):
        pose_ratios_68(np.zeros((67, 2)))
