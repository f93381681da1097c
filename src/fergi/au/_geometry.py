"""The ``geometry`` AU estimator: AU intensities from FaceMesh landmark movements.

How it works
------------
1. **Rigid alignment.** Every frame's 478 landmarks are aligned to a per-person
   reference shape by a 3-D similarity transform (Umeyama/Procrustes) fitted on
   points that facial expressions barely move: forehead, nose bridge and eye corners
   (``STABLE_POINTS``). Coordinates are in inter-ocular distances (IOD, eye centre to
   eye centre), x to the image right, y down, so head motion and distance to the
   camera cancel.
2. **Measures.** Heights, widths and gaps of the brows, lids, cheeks, nose wings,
   lips and chin (``_measures``) in IOD units.
3. **Neutral reference.** The measures of the person's neutral face are subtracted.
   The neutral face is the median aligned shape of a baseline clip when one is given
   (the study records 5 s before each reaction), else of the clip itself.
4. **Gains.** Each AU is a documented combination of measure changes times a gain
   (``GAINS``) chosen so that a strong, clearly visible movement gives about 3 on the
   0-5 DISFA scale, then clipped to [0, 5]: 0 is the neutral reference or the
   opposite movement (a frown gives AU4 > 0 and AU1 = 0).

What landmarks can and cannot see
---------------------------------
* Reliable: AU12 (lip corners up and out), AU25 (lips part), AU26 (jaw drop),
  AU20 (mouth stretch), AU15 (corners down), AU4 (brows down and together), AU1/AU2
  (brows up), AU5 (upper lid up, from the iris points).
* FaceMesh under-reports brow movement: its mesh is regularised towards a face
  model and brow landmarks move about half as far as the skin does. Brow measures
  are multiplied by ``BROW_COMPENSATION = 2``.
* Weak: AU6 (cheek raise; the crow's feet and lid bulge that define it are
  texture, not geometry), AU9 (nose wrinkle; wrinkles are texture, only the small
  nose-wing lift is measured) and AU17 (chin raise; the chin boss wrinkle is texture,
  only the chin-to-lip shortening is measured). Expect these three to under-respond
  and to pick up crosstalk from AU12/AU15/AU26. The scale is not calibrated against
  DISFA annotations; use activation values (changes within a clip), not absolute
  levels, and prefer the ``ir50`` estimator with trained weights for absolute
  intensities.
"""

from __future__ import annotations

import logging

import numpy as np

from fergi._errors import FergiError
from fergi.datasets._schema import AU_NAMES
from fergi.face._pose import LEFT_EYE, RIGHT_EYE

logger = logging.getLogger(__name__)

#: Landmarks used for rigid alignment: upper forehead, nose bridge below the brows
#: (not the glabella, which AU4 pulls down), inner and outer eye
#: corners, temples. Expressions of the 12 AUs hardly move them.
STABLE_POINTS = (10, 151, 168, 6, 197, 195, 33, 133, 362, 263, 127, 356, 21, 251, 54, 284)

#: Brow landmarks move about half as much as the skin in FaceMesh.
BROW_COMPENSATION = 2.0

#: Gain per AU: intensity units per inter-ocular distance of the AU's measure.
GAINS = {
    "AU1": 25.0,  # inner brow raise (compensated)
    "AU2": 25.0,  # outer brow raise (compensated)
    "AU4": 25.0,  # brow lowering (0.8 inner, 0.2 outer) + 0.5 * inner-brow gap reduction (compensated)
    "AU5": 40.0,  # upper lid above iris centre
    "AU6": 40.0,  # mean of lower-lid and cheek raise
    "AU9": 40.0,  # mean of nose-wing and upper-lip raise
    "AU12": 17.0,  # lip-corner raise (relative to nose base) + 0.5 * mouth widening
    "AU15": 35.0,  # lip-corner lowering
    "AU17": 35.0,  # chin-to-lower-lip shortening
    "AU20": 30.0,  # half mouth widening minus 1.5 * corner raise
    "AU25": 20.0,  # inner lip gap
    "AU26": 15.0,  # chin drop relative to nose base
}

# Landmark groups (image-left side first, then its mirror).
_INNER_BROW = (107, 66, 55, 65, 336, 296, 285, 295)
_OUTER_BROW = (70, 63, 46, 53, 300, 293, 276, 283)
_BROW_HEADS = ((107, 55), (336, 285))
_EYE_CORNERS = (33, 133, 362, 263)
_UPPER_LID = ((159, 158, 160), (386, 385, 387))
_IRIS = (468, 473)
_LOWER_LID = (145, 153, 144, 374, 380, 373)
_CHEEK = (50, 101, 118, 117, 280, 330, 347, 346)
_NOSE_WING = (129, 64, 48, 358, 294, 278)
_UPPER_LIP = (0, 37, 267)
_CORNERS = (61, 291)
_NOSE_BASE = (2, 94)
_INNER_UPPER_LIP = (13, 82, 312)
_INNER_LOWER_LIP = (14, 87, 317)
_LOWER_LIP = 17
_CHIN = (152, 175, 199)

_MEASURES = (
    "inner_brow",
    "outer_brow",
    "brow_gap",
    "upper_lid",
    "lower_lid",
    "cheek",
    "nose_wing",
    "upper_lip",
    "corner_height",
    "mouth_width",
    "chin_lip",
    "lip_gap",
    "jaw",
)


def _normalise(shapes: np.ndarray) -> np.ndarray:
    """Per-frame normalisation: eye midpoint at 0, IOD 1, eye line along x."""
    le = shapes[:, LEFT_EYE].mean(axis=1)
    re = shapes[:, RIGHT_EYE].mean(axis=1)
    origin = (le + re) / 2
    ex = re - le
    iod = np.linalg.norm(ex, axis=1, keepdims=True)
    ex = ex / iod
    down = shapes[:, 2] - origin  # towards the nose base
    ey = down - np.sum(down * ex, axis=1, keepdims=True) * ex
    ey /= np.linalg.norm(ey, axis=1, keepdims=True)
    ez = np.cross(ex, ey)
    rot = np.stack([ex, ey, ez], axis=1)  # rows are the new axes
    return np.einsum("nij,nkj->nki", rot, shapes - origin[:, None]) / iod[:, :, None]


def _procrustes(shapes: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Similarity-align every shape (N, 478, 3) to ``template`` on ``STABLE_POINTS``."""
    idx = list(STABLE_POINTS)
    src = shapes[:, idx]
    dst = template[idx]
    mu_s = src.mean(axis=1, keepdims=True)
    mu_d = dst.mean(axis=0)
    sc = src - mu_s
    dc = dst - mu_d
    cov = np.einsum("nki,kj->nij", sc, dc)  # (N, 3, 3)
    u, s, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", u, vt)))
    fix = np.ones((len(shapes), 3))
    fix[:, 2] = d
    # R maps source to template: R = (U diag(fix) Vt)^T applied on the right.
    rot = np.einsum("nij,nj,njk->nik", u, fix, vt)
    scale = np.sum(s * fix, axis=1) / np.sum(sc**2, axis=(1, 2))
    return scale[:, None, None] * np.einsum("nki,nij->nkj", shapes - mu_s, rot) + mu_d


def _mean(shapes: np.ndarray, idx, axis: int) -> np.ndarray:
    return shapes[:, list(idx), axis].mean(axis=1)


def _measures(a: np.ndarray) -> np.ndarray:
    """The geometric measures (N, len(_MEASURES)) of aligned shapes, IOD units.

    Heights are positive upwards (image y points down).
    """
    y, x = 1, 0
    height = lambda idx: -_mean(a, idx, y)  # noqa: E731
    lid = np.mean(
        [height(u) - (-a[:, i, y]) for u, i in zip(_UPPER_LID, _IRIS, strict=True)], axis=0
    )
    gap = np.mean(
        [
            _mean(a, _BROW_HEADS[1], x) - _mean(a, _BROW_HEADS[0], x),
        ],
        axis=0,
    )
    nose_base = height(_NOSE_BASE)
    # Brows are measured from the eye corners rather than in the aligned frame: the
    # residual alignment error of FaceMesh's upper face is as large as a brow movement.
    eye_line = height(_EYE_CORNERS)
    return np.stack(
        [
            height(_INNER_BROW) - eye_line,
            height(_OUTER_BROW) - eye_line,
            gap,
            lid,
            height(_LOWER_LID),
            height(_CHEEK),
            height(_NOSE_WING),
            height(_UPPER_LIP),
            height(_CORNERS) - nose_base,
            a[:, _CORNERS[1], x] - a[:, _CORNERS[0], x],
            a[:, _CHIN[0], y] - a[:, _LOWER_LIP, y],
            _mean(a, _INNER_LOWER_LIP, y) - _mean(a, _INNER_UPPER_LIP, y),
            a[:, _CHIN[0], y] + nose_base,
        ],
        axis=1,
    )


def _au_from_deltas(d: np.ndarray) -> np.ndarray:
    """AU intensities (N, 12) in ``AU_NAMES`` order from measure changes (N, M)."""
    m = {name: d[:, i] for i, name in enumerate(_MEASURES)}
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    comp = BROW_COMPENSATION
    corner = m["corner_height"]
    raw = {
        "AU1": comp * m["inner_brow"],
        "AU2": comp * m["outer_brow"],
        "AU4": comp * (-(0.8 * m["inner_brow"] + 0.2 * m["outer_brow"]) - 0.5 * m["brow_gap"]),
        "AU5": m["upper_lid"],
        "AU6": 0.5 * (m["lower_lid"] + m["cheek"]),
        "AU9": 0.5 * (m["nose_wing"] + m["upper_lip"]),
        "AU12": corner + 0.5 * m["mouth_width"],
        "AU15": -corner,
        "AU17": -m["chin_lip"],
        "AU20": 0.5 * m["mouth_width"] - 1.5 * relu(corner),
        "AU25": m["lip_gap"],
        "AU26": m["jaw"],
    }
    out = np.stack([GAINS[au] * raw[au] for au in AU_NAMES], axis=1)
    return np.clip(out, 0.0, 5.0)


class GeometryAUEstimator:
    """AU intensities from FaceMesh landmarks, relative to a per-person neutral face.

    Parameters
    ----------
    reference_quantile : float, default 0.5
        The neutral reference is this quantile (the median by default) of the aligned
        landmark positions over the reference frames.

    Attributes
    ----------
    reference_ : numpy.ndarray or None
        ``(478, 3)`` neutral shape in IOD units once :meth:`fit` was called.
    reference_measures_ : numpy.ndarray or None

    Notes
    -----
    ``predict`` without a prior ``fit`` uses the clip itself (its median face) as the
    neutral reference. Measures, gains (``GAINS``) and the brow compensation
    (``BROW_COMPENSATION``: FaceMesh moves brow points about half as far as the skin)
    are documented in ``fergi.au._geometry``.

    Limits: AU6 (cheek raise), AU9 (nose wrinkle) and AU17 (chin raise) are mostly
    wrinkles and bulges, i.e. texture, which landmarks do not see; they are weak and
    pick up crosstalk from the mouth AUs. The scale is not calibrated on DISFA
    annotations: compare changes within a person (activation values), not absolute
    levels across people; for absolute intensities use the ``ir50`` estimator with
    trained weights.
    """

    input_kind = "landmarks"

    def __init__(self, reference_quantile: float = 0.5):
        self.reference_quantile = reference_quantile
        self.reference_ = None
        self.reference_measures_ = None

    @staticmethod
    def _valid(landmarks: np.ndarray) -> np.ndarray:
        lm = np.asarray(landmarks, dtype=float)
        if lm.ndim != 3 or lm.shape[1:] != (478, 3):
            raise FergiError(f"landmarks: expected shape (N, 478, 3), got {lm.shape}")
        return np.isfinite(lm).all(axis=(1, 2))

    def fit(self, landmarks: np.ndarray) -> GeometryAUEstimator:
        """Set the neutral reference from the frames of a neutral (baseline) clip.

        Parameters
        ----------
        landmarks : numpy.ndarray
            ``(N, 478, 3)`` FaceMesh landmarks in pixels; NaN rows (no face) ignored.

        Returns
        -------
        self

        Raises
        ------
        fergi.FergiError
            No frame has a face.
        """
        lm = np.asarray(landmarks, dtype=float)
        ok = self._valid(lm)
        if not ok.any():
            raise FergiError("neutral reference: no frame with a face")
        first = np.quantile(_normalise(lm[ok]), self.reference_quantile, axis=0)
        aligned = _procrustes(lm[ok], first)
        self.reference_ = np.quantile(aligned, self.reference_quantile, axis=0)
        self.reference_measures_ = _measures(self.reference_[None])[0]
        return self

    def predict(self, landmarks: np.ndarray) -> np.ndarray:
        """AU intensities of every frame.

        Parameters
        ----------
        landmarks : numpy.ndarray
            ``(N, 478, 3)`` FaceMesh landmarks in pixels; rows of NaN mean no face.

        Returns
        -------
        numpy.ndarray
            ``(N, 12)`` intensities in ``AU_NAMES`` order, on a 0-5 scale; NaN rows
            where there was no face.
        """
        lm = np.asarray(landmarks, dtype=float)
        ok = self._valid(lm)
        out = np.full((len(lm), len(AU_NAMES)), np.nan)
        if not ok.any():
            return out
        ref = (
            self
            if self.reference_ is not None
            else GeometryAUEstimator(self.reference_quantile).fit(lm)
        )
        aligned = _procrustes(lm[ok], ref.reference_)
        out[ok] = _au_from_deltas(_measures(aligned) - ref.reference_measures_)
        return out
