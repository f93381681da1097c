"""Pitch and yaw indicative ratios (FERGI paper, Supp. C) from FaceMesh landmarks.

The paper defines the ratios on the 68-point landmarks of PyTorch Face Landmark.
The FaceMesh points used here are the ones at the same anatomical places:

=====================  ===================================  ============================
paper (68-point)       meaning                              FaceMesh (478-point)
=====================  ===================================  ============================
36-41 (mean)           centre of the image-left eye         33, 160, 158, 133, 153, 144
42-47 (mean)           centre of the image-right eye        362, 385, 387, 263, 373, 380
0                      image-left edge of the face          234
16                     image-right edge of the face         454
31-35 (mean)           centre of the nostrils (nose base)   98, 97, 2, 326, 327
=====================  ===================================  ============================

``YIR = d_left / (d_left + d_right)`` with ``d_left`` the horizontal distance from the
image-left face edge to the image-left eye centre and ``d_right`` from the image-right
eye centre to the image-right face edge: 0.5 for a frontal face, towards 0 or 1 as the
head turns. ``PIR = d_nostrils_eyes / d_eyes``: the vertical distance from the eye
centres' midpoint to the nostril centre over the horizontal distance between the eye
centres, about 0.6-0.75 for a frontal face, smaller when the head tilts up or down far
enough to foreshorten the nose. Frames are valid for FERGI when
``0.3 <= YIR <= 0.7`` and ``0.55 <= PIR <= 0.85``.
"""

from __future__ import annotations

import numpy as np

LEFT_EYE = (33, 160, 158, 133, 153, 144)
RIGHT_EYE = (362, 385, 387, 263, 373, 380)
LEFT_FACE_EDGE = 234
RIGHT_FACE_EDGE = 454
NOSTRILS = (98, 97, 2, 326, 327)


def pose_ratios(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pitch and yaw indicative ratios of one or many faces.

    Parameters
    ----------
    landmarks : numpy.ndarray
        ``(478, 2+)`` or ``(N, 478, 2+)`` FaceMesh landmarks in image pixels (x right,
        y down). NaN landmarks give NaN ratios.

    Returns
    -------
    pir, yir : numpy.ndarray or float
        Pitch and yaw indicative ratios (Supp. C of the FERGI paper), scalars for one
        face, ``(N,)`` arrays for many.
    """
    lm = np.asarray(landmarks, dtype=float)
    single = lm.ndim == 2
    if single:
        lm = lm[None]
    left_eye = lm[:, LEFT_EYE, :2].mean(axis=1)
    right_eye = lm[:, RIGHT_EYE, :2].mean(axis=1)
    nostrils = lm[:, NOSTRILS, :2].mean(axis=1)
    d_left = left_eye[:, 0] - lm[:, LEFT_FACE_EDGE, 0]
    d_right = lm[:, RIGHT_FACE_EDGE, 0] - right_eye[:, 0]
    d_eyes = right_eye[:, 0] - left_eye[:, 0]
    eyes_y = (left_eye[:, 1] + right_eye[:, 1]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        yir = d_left / (d_left + d_right)
        pir = (nostrils[:, 1] - eyes_y) / d_eyes
    if single:
        return float(pir[0]), float(yir[0])
    return pir, yir
