"""Pitch and yaw indicative ratios (FERGI paper, Supp. C) from FaceMesh or 68-point landmarks.

The paper defines the ratios on the 68-point landmarks of PyTorch Face Landmark, and the
authors' code (``align_face`` in ``preprocess_datasets.py``, which made the released
features) measures them in the *oriented face frame* of ffhq-dataset's alignment
(:func:`face_axes`: ``x`` from eye to eye tilted by the eye-to-mouth direction, ``y`` a
quarter turn from it), not along the image's rows and columns as Supp. C's text reads.
fergi follows the code on every path, so the frame-validity rule means the same thing
whichever landmarks made the ratios: :func:`pose_ratios_68` on the 68 points of the
``authors`` preprocessing, :func:`pose_ratios` on FaceMesh points at the same anatomical
places (``geometry`` and ``preprocessing="fergi"``):

=====================  ===================================  ============================
68-point (iBUG)        meaning                              FaceMesh (478-point)
=====================  ===================================  ============================
36-41 (mean)           centre of the image-left eye         33, 160, 158, 133, 153, 144
42-47 (mean)           centre of the image-right eye        362, 385, 387, 263, 373, 380
48                     image-left outer mouth corner        61
54                     image-right outer mouth corner       291
0                      image-left edge of the face          234
16                     image-right edge of the face         454
31-35 (mean)           centre of the nostrils (nose base)   98, 97, 2, 326, 327
=====================  ===================================  ============================

``YIR = a / (a + b)`` with ``a`` the distance along ``x`` from the image-left face edge
to the image-left eye centre and ``b`` from the image-right eye centre to the
image-right face edge: 0.5 for a frontal face, towards 0 or 1 as the head turns.
``PIR``: the distance along ``y`` from the eye centres' midpoint to the nostril centre
over the distance along ``x`` between the eye centres, about 0.6-0.75 for a frontal
face, smaller when the head tilts up or down far enough to foreshorten the nose. A
rolled head (tilted in the image plane) keeps its ratios. Frames are valid for FERGI when
``0.3 <= YIR <= 0.7`` and ``0.55 <= PIR <= 0.85``.

FaceMesh's 234/454 and iBUG's 0/16 are both the face outline beside the eyes but not
the same point, and the two detectors differ, so the two paths agree on a face's pose
(same frame, same formulas), not to the last decimal.
"""

from __future__ import annotations

import numpy as np

LEFT_EYE = (33, 160, 158, 133, 153, 144)
"""FaceMesh points around the image-left eye (its centre is their mean; iBUG 36-41)."""
RIGHT_EYE = (362, 385, 387, 263, 373, 380)
"""FaceMesh points around the image-right eye (its centre is their mean; iBUG 42-47)."""
LEFT_FACE_EDGE = 234
RIGHT_FACE_EDGE = 454
NOSTRILS = (98, 97, 2, 326, 327)
LEFT_MOUTH_CORNER = 61
RIGHT_MOUTH_CORNER = 291


def pose_ratios(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and yaw indicative ratios of one or many faces, from FaceMesh landmarks.

    Measured in the authors' oriented face frame (:func:`oriented_pose_ratios`) on the
    FaceMesh points listed in the module docstring.

    Parameters
    ----------
    landmarks : numpy.ndarray
        ``(478, 2+)`` or ``(N, 478, 2+)`` FaceMesh landmarks in image pixels (x right,
        y down). NaN landmarks give NaN ratios.

    Returns
    -------
    pir, yir : numpy.ndarray or float
        Pitch and yaw indicative ratios (Supp. C of the FERGI paper, as the authors'
        code computes them), scalars for one face, ``(N,)`` arrays for many.
    """
    lm = np.asarray(landmarks, dtype=float)
    single = lm.ndim == 2
    if single:
        lm = lm[None]
    pir, yir = oriented_pose_ratios(
        eye_left=lm[:, LEFT_EYE, :2].mean(axis=1),
        eye_right=lm[:, RIGHT_EYE, :2].mean(axis=1),
        mouth_left=lm[:, LEFT_MOUTH_CORNER, :2],
        mouth_right=lm[:, RIGHT_MOUTH_CORNER, :2],
        nostrils=lm[:, NOSTRILS, :2].mean(axis=1),
        edge_left=lm[:, LEFT_FACE_EDGE, :2],
        edge_right=lm[:, RIGHT_FACE_EDGE, :2],
    )
    if single:
        return float(pir[0]), float(yir[0])
    return pir, yir


# 68-point indices (iBUG 300-W order, as PyTorch Face Landmark's MobileFaceNet outputs).
LM68_EDGE_LEFT = 0
LM68_EDGE_RIGHT = 16
LM68_CHIN = 9  # the authors' code takes point 9 (just right of the chin tip) for the face height
LM68_NOSTRILS = (31, 32, 33, 34, 35)
LM68_EYE_LEFT = (36, 37, 38, 39, 40, 41)
LM68_EYE_RIGHT = (42, 43, 44, 45, 46, 47)
LM68_MOUTH_LEFT = 48
LM68_MOUTH_RIGHT = 54


def face_axes(
    eye_left: np.ndarray, eye_right: np.ndarray, mouth_left: np.ndarray, mouth_right: np.ndarray
) -> np.ndarray:
    """The oriented face frame of the authors' ``align_face`` (after NVlabs' ffhq-dataset).

    ``x`` runs from the image-left eye towards the image-right eye, tilted by the
    eye-to-mouth direction; ``y`` is ``x`` turned a quarter right (down the face).

    Parameters
    ----------
    eye_left, eye_right, mouth_left, mouth_right : numpy.ndarray
        ``(N, 2)`` points in image pixels (x right, y down).

    Returns
    -------
    numpy.ndarray
        ``(N, 2, 2)`` matrices ``A`` whose columns are the unit axes ``x`` and ``y``.
    """
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    # x = eye_to_eye - flipud(eye_to_mouth) * [-1, 1], as in ffhq-dataset.
    x = eye_to_eye - eye_to_mouth[:, ::-1] * np.array([-1.0, 1.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x / np.hypot(x[:, 0], x[:, 1])[:, None]
    y = x[:, ::-1] * np.array([-1.0, 1.0])
    return np.stack([x, y], axis=2)


def _in_frame(axes: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Coordinates ``(N, 2)`` of vectors ``v`` in the frame ``axes`` (``np.linalg.solve``)."""
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(axes).all(axis=(1, 2)) & np.isfinite(v).all(axis=1)
    if ok.any():
        # Solved as the authors do (not projected), so values agree to the last bit.
        out[ok] = np.linalg.solve(axes[ok], v[ok][..., None])[..., 0]
    return out


def oriented_pose_ratios(
    *,
    eye_left: np.ndarray,
    eye_right: np.ndarray,
    mouth_left: np.ndarray,
    mouth_right: np.ndarray,
    nostrils: np.ndarray,
    edge_left: np.ndarray,
    edge_right: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and yaw indicative ratios in the oriented face frame (the authors' code).

    The authors' ``align_face`` (``preprocess_datasets.py`` in ShuangquanFeng/FERGI),
    which made the released per-frame features, measures every distance along the
    axes of the oriented face frame (:func:`face_axes`), not along the image's rows
    and columns as Supp. C's text reads. A rolled head therefore keeps its ratios.

    ``PIR = (nostrils - eye_mid)·y / (eye_right - eye_left)·x`` and
    ``YIR = a / (a + b)`` with ``a = (eye_left - edge_left)·x`` and
    ``b = (edge_right - eye_right)·x``.

    Parameters
    ----------
    eye_left, eye_right, mouth_left, mouth_right, nostrils, edge_left, edge_right : numpy.ndarray
        ``(N, 2)`` points in image pixels: the eye centres, the outer mouth corners,
        the nostril centre and the face's image-left and image-right edges.

    Returns
    -------
    pir, yir : numpy.ndarray
        ``(N,)`` ratios; NaN where a point is missing or the frame degenerates.
    """
    pts = [np.asarray(p, dtype=float).reshape(-1, 2) for p in
           (eye_left, eye_right, mouth_left, mouth_right, nostrils, edge_left, edge_right)]
    el, er, ml, mr, nos, edl, edr = pts
    axes = face_axes(el, er, ml, mr)
    eye_avg = (el + er) * 0.5
    eye_distance = _in_frame(axes, er - el)[:, 0]
    nostrils_to_eyes = _in_frame(axes, nos - eye_avg)[:, 1]
    left = _in_frame(axes, el - edl)[:, 0]
    right = _in_frame(axes, edr - er)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        pir = nostrils_to_eyes / eye_distance
        yir = left / (left + right)
    return pir, yir


def pose_ratios_68(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and yaw indicative ratios from 68-point landmarks, as the authors compute them.

    Parameters
    ----------
    landmarks : numpy.ndarray
        ``(68, 2+)`` or ``(N, 68, 2+)`` landmarks in the iBUG 300-W order (OpenFace,
        py-feat, dlib and PyTorch Face Landmark all use it), in pixels with x right
        and y down. NaN landmarks give NaN ratios.

    Returns
    -------
    pir, yir : float or numpy.ndarray
        Scalars for one face, ``(N,)`` arrays for many (see :func:`oriented_pose_ratios`).
    """
    lm = np.asarray(landmarks, dtype=float)
    single = lm.ndim == 2
    if single:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1] != 68 or lm.shape[2] < 2:
        raise ValueError(f"expected (N, 68, 2) landmarks, got shape {np.shape(landmarks)}")
    lm = lm[..., :2]
    pir, yir = oriented_pose_ratios(
        eye_left=lm[:, LM68_EYE_LEFT].mean(axis=1),
        eye_right=lm[:, LM68_EYE_RIGHT].mean(axis=1),
        mouth_left=lm[:, LM68_MOUTH_LEFT],
        mouth_right=lm[:, LM68_MOUTH_RIGHT],
        nostrils=lm[:, LM68_NOSTRILS].mean(axis=1),
        edge_left=lm[:, LM68_EDGE_LEFT],
        edge_right=lm[:, LM68_EDGE_RIGHT],
    )
    if single:
        return float(pir[0]), float(yir[0])
    return pir, yir
