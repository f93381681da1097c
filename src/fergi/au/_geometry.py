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
   (the study records 5 s before each reaction), else of the clip's own
   *least-expressive stable frames* (see below).
4. **Gains.** Each AU is a documented combination of measure changes times a gain
   (``GAINS``) chosen so that a strong, clearly visible movement gives about 3 on the
   0-5 DISFA scale, then clipped to [0, 5]: 0 is the neutral reference or the
   opposite movement (a frown gives AU4 > 0 and AU1 = 0).

Least-expressive stable frames
------------------------------
Without a baseline, the clip's median face is the wrong neutral face whenever the
person shows an expression for most of the clip: on a real clip of a man neutral for
0.6 s and then smiling broadly, the median is the smile, so the neutral frames read
AU15 = 5 and AU1 = 1.6 while the smile itself reads AU12 = 0.6. A neutral face is
what the face looks like *at rest*, so :func:`least_expressive_frames` looks for the
calmest, least expressive stretch of the clip instead:

1. Every frame is aligned and its cues measured (IOD units, identity cancels out
   because cues are compared only between frames of the same clip):

   * *one-sided* cues, which every one of the 12 AUs moves in one direction only, so
     that the person's neutral value is the clip's extreme: lip gap (AU25/AU26 open
     it), jaw drop (AU26), mouth width (AU12 and AU20 widen it) and the gap between
     the inner brows (AU4 pulls them together). Each is taken relative to its least
     expressive value over the clip's windows (below);
   * *mouth curvature*: lip-corner height above the lip midline (stomion), raised by
     AU12 and lowered by AU15. It is two-sided, so it counts only beyond a dead zone
     of ``CURVATURE_DEAD_ZONE`` around level corners (people's resting mouths differ
     by about that much), which catches broad smiles and marked AU15 without
     penalising a naturally up- or down-turned mouth.

   The cue changes are weighted by the gains of the AUs they drive, so their sum,
   the *expressiveness*, is on the 0-5 AU scale.
2. Candidate references are sliding windows of ``window`` consecutive face frames
   (about 0.3 s at 30 fps, shorter for short clips). A window's score is its median
   expressiveness plus ``MOTION_WEIGHT`` times its mean frame-to-frame movement of the
   mouth and brow landmarks, so onsets, talking and blinks (unstable frames) lose to
   a held state.
3. The window with the lowest score wins; windows within ``TIE_MARGIN`` (0.3 AU) of it
   count as a tie, broken towards the start of the clip: the earliest stretch of tied
   windows wins, and within it its lowest-scoring window. The start is the natural
   tie-breaker: the paper's activation value (maximum minus the first window)
   itself assumes each reaction clip starts at rest, and movements that no one-sided
   cue sees (brows raised or lowered without a brow-gap change, AU5, AU6) then fall
   back to that assumption rather than to a coin toss.
4. The winning window grows over its neighbouring frames while their expressiveness
   stays within ``TIE_MARGIN`` of it and none of the 12 AUs, read against the window's
   median face in either direction, exceeds ``TIE_MARGIN`` (so a faint frown that no
   cue sees is not absorbed into the reference); the reference is the median aligned
   shape of those frames (``reference_frames_``).

Limits: a clip that is expressive from its first to its last frame has no neutral
frames at all; the least expressive window is then an expression, and every AU reads
relative to it. A baseline clip (or ``--baseline-seconds`` over frames known to be
neutral) is always the better reference and is preferred when given.

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

Why over 500 lines: about 90 of them are this note, and the rest is one model read top
to bottom (landmarks, Procrustes, measures, AUs, the least-expressive neutral frames,
the estimator): its constants and measures are tuned together and split apart they
would be harder to check against each other.
"""

from __future__ import annotations

import logging

import numpy as np

from fergi._errors import FergiError
from fergi.face import LEFT_EYE, RIGHT_EYE
from fergi.schema import AU_NAMES

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


#: Resting lip corners of different people lie within about this much (IOD) of the
#: stomion's height; mouth curvature counts as expressive only beyond it.
CURVATURE_DEAD_ZONE = 0.04
#: Score units (0-5 AU scale) per IOD of mean frame-to-frame landmark movement: a
#: window in the middle of an onset (about 0.03 IOD a frame) scores about 1.5 higher
#: than a held face (about 0.002 IOD of FaceMesh jitter).
MOTION_WEIGHT = 50.0
#: Windows this close (0-5 AU scale) to the least expressive one are a tie, broken
#: towards the start of the clip; also the growth margin of the chosen window.
TIE_MARGIN = 0.3

# Landmarks whose frame-to-frame movement marks an unstable (moving) face.
_MOVING = (61, 291, 0, 17, 13, 14, 37, 267, 84, 314, 107, 336, 55, 285, 70, 300, 159, 386, 152)
_STOMION = (13, 14)
_M = {name: i for i, name in enumerate(_MEASURES)}


def _expressiveness(measures: np.ndarray, curvature: np.ndarray, anchor: dict) -> np.ndarray:
    """Expressiveness (0-5 AU scale) of frames or windows from their cues.

    ``anchor`` holds the clip's least expressive value of each one-sided cue.
    """
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    m = {name: measures[:, i] for name, i in _M.items()}
    # Weights are the gains of the AUs each cue drives, so the terms add up on the
    # AU scale (AU25 lip gap, AU26 jaw, AU20 half the width change, AU4 half the
    # compensated brow-gap change, AU12 corner height).
    return (
        GAINS["AU25"] * relu(m["lip_gap"] - anchor["lip_gap"])
        + GAINS["AU26"] * relu(m["jaw"] - anchor["jaw"])
        + GAINS["AU20"] * 0.5 * relu(m["mouth_width"] - anchor["mouth_width"])
        + GAINS["AU4"] * BROW_COMPENSATION * 0.5 * relu(anchor["brow_gap"] - m["brow_gap"])
        + GAINS["AU12"] * relu(np.abs(curvature) - CURVATURE_DEAD_ZONE)
    )


def least_expressive_frames(landmarks: np.ndarray, window: int | None = None) -> np.ndarray:
    """Indices of a clip's least-expressive stable frames: its neutral face.

    Parameters
    ----------
    landmarks : numpy.ndarray
        ``(N, 478, 3)`` FaceMesh landmarks in pixels; NaN rows (no face) are skipped.
    window : int, optional
        Candidate window length in face frames; default ``clip(n // 10, 3, 10)`` for
        ``n`` face frames (0.1-0.33 s at 30 fps).

    Returns
    -------
    numpy.ndarray
        Sorted indices into ``landmarks`` of the frames that make the neutral reference:
        one stretch of face frames (consecutive unless a frame without a face lies
        inside the chosen window). The method is described in ``fergi.au._geometry``.

    Raises
    ------
    fergi.FergiError
        No frame has a face.
    """
    lm = np.asarray(landmarks, dtype=float)
    ok = GeometryAUEstimator._valid(lm)
    index = np.flatnonzero(ok)
    n = len(index)
    if n == 0:
        raise FergiError("neutral reference: no frame with a face")
    if window is None:
        window = int(np.clip(n // 10, 3, 10))
    window = max(1, min(int(window), n))
    # Only the stable points drive the alignment, so the median template is fine
    # here even when most of the clip is an expression.
    aligned = _procrustes(lm[ok], np.median(_normalise(lm[ok]), axis=0))
    measures = _measures(aligned)
    corners = -aligned[:, list(_CORNERS), 1].mean(axis=1)
    curvature = corners + aligned[:, list(_STOMION), 1].mean(axis=1)
    moving = aligned[:, list(_MOVING), :2]
    step = np.zeros(n)
    if n > 1:
        step[1:] = np.sqrt(np.mean(np.sum(np.diff(moving, axis=0) ** 2, axis=2), axis=1))
        step[0] = step[1]

    # Window medians: robust to single-frame jitter, blinks and tracking glitches.
    starts = np.arange(n - window + 1)
    cues = np.column_stack([measures, curvature])
    win = np.median(np.lib.stride_tricks.sliding_window_view(cues, window, axis=0), axis=-1)
    win_measures, win_curv = win[:, :-1], win[:, -1]
    anchor = {
        "lip_gap": win_measures[:, _M["lip_gap"]].min(),
        "jaw": win_measures[:, _M["jaw"]].min(),
        "mouth_width": win_measures[:, _M["mouth_width"]].min(),
        "brow_gap": win_measures[:, _M["brow_gap"]].max(),
    }
    # A window's motion: its frames' steps, except the step into its first frame.
    if window > 1:
        total = np.concatenate([[0.0], np.cumsum(step)])
        motion = (total[starts + window] - total[starts + 1]) / (window - 1)
    else:
        motion = step
    express = _expressiveness(win_measures, win_curv, anchor)
    score = express + MOTION_WEIGHT * motion
    # Near-ties go to the earliest calm stretch (consecutive tied windows), and within
    # it to its best window, so that a window straddling an onset does not win.
    tied = score <= score.min() + TIE_MARGIN
    first = int(np.argmax(tied))
    after = np.flatnonzero(~tied[first:])
    stop = first + int(after[0]) if len(after) else len(score)  # end of the stretch
    best = first + int(np.argmin(score[first:stop]))

    # Grow over neighbouring frames (consecutive face frames only) that are as calm
    # and read as the same face: no AU, in either direction, beyond TIE_MARGIN from the
    # window's median. The second test keeps movements that no cue sees (a faint frown
    # without a brow-gap change) out of the reference.
    frame_express = _expressiveness(measures, curvature, anchor)
    centre = np.median(measures[best : best + window], axis=0)
    up, down = _au_from_deltas(measures - centre), _au_from_deltas(centre - measures)
    drift = np.maximum(up, down).max(axis=1)
    calm = (frame_express <= express[best] + TIE_MARGIN) & (drift <= TIE_MARGIN)
    lo, hi = best, best + window - 1
    while lo > 0 and index[lo - 1] == index[lo] - 1 and calm[lo - 1]:
        lo -= 1
    while hi < n - 1 and index[hi + 1] == index[hi] + 1 and calm[hi + 1]:
        hi += 1
    logger.debug(
        "least-expressive reference: frames %d-%d of %d (score %.2f, expressiveness %.2f)",
        index[lo] + 1,
        index[hi] + 1,
        len(lm),
        score[best],
        express[best],
    )
    return index[lo : hi + 1]


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
    reference_frames_ : numpy.ndarray or None
        Indices of the frames (of the landmarks given to :meth:`fit` or
        :meth:`fit_least_expressive`) the reference was taken from.

    Notes
    -----
    ``predict`` without a prior ``fit`` takes the neutral reference from the clip's
    own least-expressive stable frames (:func:`least_expressive_frames`), not from its
    median face, which is an expression when the person is expressive for most of the
    clip. Measures, gains (``GAINS``) and the brow compensation
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
        self.reference_frames_ = None

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
        self.reference_frames_ = np.flatnonzero(ok)
        return self

    def fit_least_expressive(self, landmarks: np.ndarray) -> GeometryAUEstimator:
        """Set the neutral reference from a clip's least-expressive stable frames.

        For clips without a baseline; see :func:`least_expressive_frames`.

        Parameters
        ----------
        landmarks : numpy.ndarray
            ``(N, 478, 3)`` FaceMesh landmarks in pixels; NaN rows (no face) ignored.

        Returns
        -------
        self
            With ``reference_frames_`` the indices of the frames used.

        Raises
        ------
        fergi.FergiError
            No frame has a face.
        """
        lm = np.asarray(landmarks, dtype=float)
        frames = least_expressive_frames(lm)
        self.fit(lm[frames])
        self.reference_frames_ = frames
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
            else GeometryAUEstimator(self.reference_quantile).fit_least_expressive(lm)
        )
        aligned = _procrustes(lm[ok], ref.reference_)
        out[ok] = _au_from_deltas(_measures(aligned) - ref.reference_measures_)
        return out
