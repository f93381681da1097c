"""Synthetic facial expressions for tests and demos: landmark-driven thin-plate splines.

A real face photograph (e.g. ``skimage.data.astronaut()``) is warped so that its
lip corners move up and out (a synthetic AU12 smile) or its inner brows move down
and together (a synthetic AU4 frown). The warp is a thin-plate spline through the
FaceMesh landmarks: a few "handle" landmarks get a displacement, nearby landmarks
follow with a Gaussian fall-off, and the rest of the face, the frame border and the
background stay fixed. Magnitudes are in inter-ocular distances (eye centre to eye
centre), so the same ``smile=1.0`` looks alike at any image size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fergi._errors import FergiError
from fergi.face._landmarks import _STATIC, FaceAnalyzer, detect_landmarks
from fergi.face._pose import LEFT_EYE, RIGHT_EYE
from fergi.video import write_video

# Handles in FaceMesh indices, with their displacement at magnitude 1 in inter-ocular
# units as (outward, upward). "Outward" points away from the face midline.
_SMILE_HANDLES = {61: (0.08, 0.12), 291: (0.08, 0.12)}  # lip corners
_FROWN_HANDLES = {  # inner brow heads (upper and lower brow contour)
    55: (-0.05, -0.07),
    285: (-0.05, -0.07),
    107: (-0.05, -0.07),
    336: (-0.05, -0.07),
}
_FALLOFF = {"smile": 0.22, "frown": 0.3}  # Gaussian sigma, inter-ocular units
# Landmarks that never move: eyes (with iris) and the nose, so that a frown does not
# drag the eyes and a smile does not lift the nose bridge.
_STILL = (
    33,
    7,
    163,
    144,
    145,
    153,
    154,
    155,
    133,
    173,
    157,
    158,
    159,
    160,
    161,
    246,
    263,
    249,
    390,
    373,
    374,
    380,
    381,
    382,
    362,
    398,
    384,
    385,
    386,
    387,
    388,
    466,
    168,
    6,
    197,
    195,
    5,
    4,
    1,
    19,
    94,
    2,
    *range(468, 478),
)
_GRID_STEP = 4  # the spline is evaluated every few pixels and interpolated


def _landmark_displacements(lm: np.ndarray, smile: float, frown: float) -> np.ndarray:
    """Displacement (478, 2) of every landmark, in pixels."""
    xy = lm[:, :2]
    left = xy[list(LEFT_EYE)].mean(axis=0)
    right = xy[list(RIGHT_EYE)].mean(axis=0)
    iod = float(np.linalg.norm(right - left))
    mid_x = (left[0] + right[0]) / 2
    # Face axes: x along the eye line, "up" perpendicular to it (image y points down).
    ex = (right - left) / iod
    up = np.array([ex[1], -ex[0]])
    disp = np.zeros_like(xy)
    for amount, handles, sigma in (
        (smile, _SMILE_HANDLES, _FALLOFF["smile"]),
        (frown, _FROWN_HANDLES, _FALLOFF["frown"]),
    ):
        if amount == 0:
            continue
        weights_sum = np.zeros(len(xy))
        acc = np.zeros_like(xy)
        for idx, (out, upw) in handles.items():
            side = np.sign(xy[idx, 0] - mid_x) or 1.0
            vec = (side * out * ex + upw * up) * iod * amount
            w = np.exp(-((np.linalg.norm(xy - xy[idx], axis=1) / (sigma * iod)) ** 2))
            # Points near two handles (inner brows) take a weighted mean, not a sum.
            acc += w[:, None] * vec
            weights_sum += w
        peak = np.maximum(weights_sum, 1.0)
        disp += acc / peak[:, None]
    disp[list(_STILL)] = 0.0
    return disp


def _warp(image: np.ndarray, lm: np.ndarray, disp: np.ndarray) -> np.ndarray:
    import cv2
    from scipy.interpolate import RBFInterpolator

    h, w = image.shape[:2]
    src = lm[:468, :2]  # the mesh; iris points duplicate eye positions
    dst = src + disp[:468]
    # Fixed frame border so that the background does not move.
    bx = np.linspace(0, w - 1, 9)
    by = np.linspace(0, h - 1, 9)
    border = np.concatenate(
        [
            np.c_[bx, np.zeros(9)],
            np.c_[bx, np.full(9, h - 1)],
            np.c_[np.zeros(9), by],
            np.c_[np.full(9, w - 1), by],
        ]
    )
    moving = np.linalg.norm(disp[:468], axis=1) > 1e-3
    # Far, still landmarks only pin the spline; keep a subset to keep the solve small.
    keep = moving | (np.arange(468) % 3 == 0)
    keep[[i for i in _STILL if i < 468]] = True
    dst_pts = np.concatenate([dst[keep], border])
    src_pts = np.concatenate([src[keep], border])
    spline = RBFInterpolator(dst_pts, src_pts - dst_pts, kernel="thin_plate_spline", smoothing=1e-3)
    gy, gx = np.mgrid[0 : h + _GRID_STEP : _GRID_STEP, 0 : w + _GRID_STEP : _GRID_STEP]
    grid = np.c_[gx.ravel(), gy.ravel()].astype(float)
    offsets = spline(grid).reshape(gy.shape + (2,)).astype(np.float32)
    # Upsample the coarse field to every pixel (cv2 treats it as an image).
    field = cv2.resize(
        offsets,
        (gx.shape[1] * _GRID_STEP, gy.shape[0] * _GRID_STEP),
        interpolation=cv2.INTER_LINEAR,
    )
    field = field[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xx + field[..., 0]
    map_y = yy + field[..., 1]
    return cv2.remap(
        image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def synthesize_expression(
    image: np.ndarray,
    *,
    smile: float = 0.0,
    frown: float = 0.0,
    landmarks: np.ndarray | None = None,
) -> np.ndarray:
    """Warp a face photograph into a synthetic smile (AU12) and/or frown (AU4).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB image with one clearly visible face.
    smile : float, default 0.0
        Lip corners move up by ``0.12 * smile`` and out by ``0.08 * smile``
        inter-ocular distances (1.0 is a broad smile; 0.25 a faint one).
    frown : float, default 0.0
        Inner brows move down by ``0.07 * frown`` and towards each other by
        ``0.05 * frown`` inter-ocular distances (1.0 is a marked frown).
    landmarks : numpy.ndarray, optional
        FaceMesh landmarks of ``image`` (478, 2+) in pixels; detected when omitted.

    Returns
    -------
    numpy.ndarray
        The warped ``(H, W, 3)`` uint8 RGB image (a copy even when both are 0).

    Raises
    ------
    fergi.FergiError
        No face was found in ``image``.
    """
    image = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])
    if smile == 0 and frown == 0:
        return image.copy()
    lm = detect_landmarks(image) if landmarks is None else np.asarray(landmarks, dtype=float)
    return _warp(image, lm, _landmark_displacements(lm, float(smile), float(frown)))


# Share of the frame width taken by the face box in reaction videos: about what a
# laptop webcam sees of a person at arm's length.
_FACE_WIDTH_SHARE = 0.3


def _frame_face(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Place ``image`` in a ``size = (width, height)`` frame like a webcam would see it.

    The largest face is centred and scaled to take ``_FACE_WIDTH_SHARE`` of the
    width; an image without a face is scaled to fit on mid grey.
    """
    import cv2

    width, height = size
    h, w = image.shape[:2]
    analyzer = _STATIC.setdefault("static", FaceAnalyzer())
    _, box = analyzer.detect(np.ascontiguousarray(image))
    if box is None:
        scale = min(width / w, height / h)
        cx, cy = w / 2, h / 2
    else:
        scale = _FACE_WIDTH_SHARE * width / (box[2] - box[0])
        # Slightly below the box centre, so the forehead is in view as well.
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + 0.1 * (box[3] - box[1])
    m = np.array([[scale, 0.0, width / 2 - scale * cx], [0.0, scale, height / 2 - scale * cy]])
    return cv2.warpAffine(
        image,
        m,
        (width, height),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(128, 128, 128),
    )


def reaction_frames(
    image: np.ndarray,
    *,
    neutral_s: float,
    expression_s: float,
    fps: float = 30,
    smile: float = 0.0,
    frown: float = 0.0,
    size: tuple[int, int] = (640, 480),
    onset_s: float = 0.2,
) -> Iterator[np.ndarray]:
    """Frames of a neutral face that then shows an expression (see ``write_reaction_video``)."""
    canvas = _frame_face(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3]), size)
    n_neutral = round(neutral_s * fps)
    n_expr = round(expression_s * fps)
    n_onset = min(max(round(onset_s * fps), 1), max(n_expr, 1))
    if n_neutral + n_expr == 0:
        raise FergiError("reaction video: neutral_s + expression_s gives no frames")
    lm = None
    if n_expr and (smile or frown):
        lm = detect_landmarks(canvas)
    for _ in range(n_neutral):
        yield canvas
    cache: dict[int, np.ndarray] = {}
    for i in range(n_expr):
        step = min(i + 1, n_onset)
        if step not in cache:
            f = step / n_onset
            cache[step] = (
                canvas
                if lm is None
                else synthesize_expression(canvas, smile=smile * f, frown=frown * f, landmarks=lm)
            )
        yield cache[step]


def write_reaction_video(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    neutral_s: float,
    expression_s: float,
    fps: float = 30,
    smile: float = 0.0,
    frown: float = 0.0,
    size: tuple[int, int] = (640, 480),
) -> Path:
    """Write a video of a face that is neutral, then shows a synthetic expression.

    The face is centred and scaled to take 30% of the frame width, as a webcam at
    arm's length sees it (an image without a face is scaled to fit on grey). After ``neutral_s``
    seconds the expression sets in over 0.2 s and is held for the rest of
    ``expression_s``.

    Parameters
    ----------
    path : str or path-like
        Output file: ``.y4m`` (raw YUV 4:2:0, what Chromium's fake webcam reads),
        ``.mp4`` (H.264) or ``.webm`` (VP9).
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB face photograph, e.g. ``skimage.data.astronaut()``.
    neutral_s, expression_s : float
        Durations of the two parts in seconds.
    fps : float, default 30
    smile, frown : float, default 0.0
        Expression magnitudes, as in :func:`synthesize_expression`.
    size : tuple of int, default (640, 480)
        ``(width, height)`` of the video.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    frames = reaction_frames(
        image,
        neutral_s=neutral_s,
        expression_s=expression_s,
        fps=fps,
        smile=smile,
        frown=frown,
        size=size,
    )
    return write_video(path, frames, fps=fps)
