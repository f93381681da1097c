"""The IR-50 input: face crop with the paper's margins, alignment, contrast (Supp. B.2)."""

from __future__ import annotations

import numpy as np

from fergi.face._pose import LEFT_EYE, RIGHT_EYE

#: Margins added to the BlazeFace box, as fractions of its size: the top edge moves up
#: by 0.2 of the height, the bottom edge down by 0.05, each side out by 0.125 of the
#: width. This keeps the forehead (brow AUs) and chin (AU17, AU26) in the crop.
CROP_MARGINS = {"top": 0.2, "bottom": 0.05, "left": 0.125, "right": 0.125}
#: Side of the aligned face fed to IR-50.
FACE_SIZE = 112


def crop_box(box: np.ndarray) -> np.ndarray:
    """The paper's crop box ``(x0, y0, x1, y1)`` from a BlazeFace box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    return np.array(
        [
            x0 - CROP_MARGINS["left"] * w,
            y0 - CROP_MARGINS["top"] * h,
            x1 + CROP_MARGINS["right"] * w,
            y1 + CROP_MARGINS["bottom"] * h,
        ]
    )


def align_face(
    image: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None = None, size: int = FACE_SIZE
) -> np.ndarray:
    """Crop, rotate upright and resize the face to ``size x size`` (zero padding outside).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB frame.
    box : numpy.ndarray
        BlazeFace box ``(x0, y0, x1, y1)`` in pixels; the paper's margins are added.
    landmarks : numpy.ndarray, optional
        FaceMesh landmarks; when given, the crop is rotated about its centre so that
        the eyes are level (the paper aligns with a landmark detector as well).
    size : int, default 112

    Returns
    -------
    numpy.ndarray
        ``(size, size, 3)`` uint8 RGB.
    """
    import cv2

    x0, y0, x1, y1 = crop_box(box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    angle = 0.0
    if landmarks is not None:
        le = landmarks[list(LEFT_EYE), :2].mean(axis=0)
        re = landmarks[list(RIGHT_EYE), :2].mean(axis=0)
        angle = np.arctan2(re[1] - le[1], re[0] - le[0])
    sx, sy = size / max(x1 - x0, 1e-6), size / max(y1 - y0, 1e-6)
    c, s = np.cos(angle), np.sin(angle)
    # Output pixel = diag(sx, sy) @ R(-angle) @ (input - centre) + size / 2
    m = np.array([[sx * c, sx * s, 0.0], [-sy * s, sy * c, 0.0]])
    m[:, 2] = size / 2 - m[:, :2] @ np.array([cx, cy])
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        m,
        (size, size),
        flags=cv2.INTER_AREA if min(sx, sy) < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def enhance_contrast(face: np.ndarray, *, weight: float = 0.5) -> np.ndarray:
    """Global contrast step of the paper: histogram equalisation plus linear mapping.

    The luminance is equalised (which flattens the histogram but can over-amplify)
    and, separately, linearly stretched between its 1st and 99th percentiles; the two
    are averaged with ``weight`` on the equalised one, and the colour is scaled by the
    ratio of new to old luminance. Zero-padded pixels stay black and do not take part.

    Parameters
    ----------
    face : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    weight : float, default 0.5
        Share of histogram equalisation (1: pure equalisation, 0: pure stretch).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` float32 RGB in [0, 1].
    """
    rgb = face.astype(np.float32)
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mask = face.any(axis=2)
    out = np.zeros_like(rgb)
    if mask.sum() < 2:
        return out
    values = lum[mask]
    # Equalisation through the empirical CDF of the face pixels only.
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256)
    cdf = np.cumsum(hist).astype(np.float32)
    cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
    equalised = cdf[np.clip(lum, 0, 255).astype(np.int64)]
    lo, hi = np.percentile(values, [1, 99])
    stretched = np.clip((lum - lo) / max(hi - lo, 1.0), 0.0, 1.0)
    new_lum = weight * equalised + (1 - weight) * stretched
    gain = new_lum / np.maximum(lum / 255.0, 1.0 / 255.0)
    out = np.clip(rgb / 255.0 * gain[..., None], 0.0, 1.0)
    out[~mask] = 0.0
    return out.astype(np.float32)


def preprocess_face(
    image: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None = None
) -> np.ndarray:
    """The IR-50 input of one frame: aligned 112x112 crop after the contrast step.

    Returns
    -------
    numpy.ndarray
        ``(112, 112, 3)`` float32 RGB in [0, 1].
    """
    return enhance_contrast(align_face(image, box, landmarks))
