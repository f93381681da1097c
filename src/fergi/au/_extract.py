"""From a video to the release's per-frame feature table (written by :mod:`fergi.au._write`)."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from fergi._errors import FergiError
from fergi.au._registry import create_au_estimator, get_au_estimator_spec
from fergi.face import (
    PREPROCESSINGS,
    AuthorsPreprocessor,
    FaceAnalyzer,
    landmark_weights_path,
    pose_ratios,
    preprocess_face,
)
from fergi.schema import AU_NAMES, FRAME_COLUMNS
from fergi.video import VideoFrames, iter_frames

logger = logging.getLogger(__name__)


#: Timed stages: decoding, the MediaPipe face graph (detection + landmarks), AUs.
STAGES = ("decode", "face", "au")

# One analyser per process: MediaPipe graph start-up is slow compared with a frame.
_ANALYZERS: dict[str, object] = {}
# One authors' preprocessor per landmark weights file and process (MobileFaceNet, detector).
_AUTHORS: dict[str, object] = {}


def _authors_preprocessor(landmarks):
    key = str(landmark_weights_path(landmarks).resolve())
    if key not in _AUTHORS:
        _AUTHORS[key] = AuthorsPreprocessor(key)
    return _AUTHORS[key]


def default_preprocessing(estimator) -> str:
    """``"authors"`` for appearance estimators (``ir50``), ``"fergi"`` for landmark ones."""
    if isinstance(estimator, str):
        kind = get_au_estimator_spec(estimator).input_kind
    else:
        kind = getattr(estimator, "input_kind", "landmarks")
    return "authors" if kind == "face" else "fergi"


def check_preprocessing(estimator, preprocessing: str | None) -> str:
    """The preprocessing to use with ``estimator`` (default: :func:`default_preprocessing`).

    Parameters
    ----------
    estimator : str or estimator
        A registry name (:func:`fergi.au.list_au_estimators`) or an estimator object.
    preprocessing : {"authors", "fergi"} or None
        The preprocessing asked for; None picks the estimator's default.

    Returns
    -------
    str
        ``"authors"`` or ``"fergi"``.

    Raises
    ------
    fergi.FergiError
        Unknown name, or ``"authors"`` with a landmark estimator (``geometry`` reads
        FaceMesh landmarks, not faces).
    """
    default = default_preprocessing(estimator)
    if preprocessing is None:
        return default
    if preprocessing not in PREPROCESSINGS:
        raise FergiError(
            f"--preprocessing {preprocessing!r}: unknown (choose from {', '.join(PREPROCESSINGS)})"
        )
    if preprocessing == "authors" and default != "authors":
        raise FergiError(
            "--preprocessing authors: only for the ir50 estimator (geometry reads FaceMesh "
            "landmarks, its preprocessing is 'fergi')"
        )
    return preprocessing


def _default_analyzer():
    return _ANALYZERS.setdefault("video", FaceAnalyzer())


def _timed(frames: Iterator, timings: dict) -> Iterator:
    it = iter(frames)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            timings["decode"] += time.perf_counter() - t
        yield item


def _frames_of(video, fps, start=None, end=None) -> tuple[Iterator, str]:
    if isinstance(video, VideoFrames):
        pairs = zip(video.timestamps, video.frames, strict=True)
        if start is not None or end is not None:
            lo, hi = start or 0.0, np.inf if end is None else end
            pairs = ((t - lo, f) for t, f in pairs if lo - 1e-9 <= t < hi)
        return pairs, video.source
    return iter_frames(video, fps=fps, start=start, end=end), str(video)


class _Clip:
    """Per-frame results of one pass over a video."""

    def __init__(self):
        self.times: list[float] = []
        self.scores: list[float] = []
        self.landmarks: list[np.ndarray | None] = []
        self.aus: dict[int, np.ndarray] = {}
        # Pose ratios measured by the preprocessing itself (the authors' 68 landmarks).
        self.pose: list[tuple[float, float]] | None = None

    def landmark_array(self) -> np.ndarray:
        out = np.full((len(self.landmarks), 478, 3), np.nan)
        for i, lm in enumerate(self.landmarks):
            if lm is not None:
                out[i] = lm
        return out


def _analyse(frames, analyzer, estimator, timings, progress, authors=None) -> _Clip:
    """Run the face analysis (and the AU model on faces) over the frames.

    ``authors``: an :class:`fergi.face.AuthorsPreprocessor`; then it alone finds the face,
    its pose ratios and the IR-50 input (no FaceMesh), as the authors' code does.
    """
    clip = _Clip()
    wants_faces = getattr(estimator, "input_kind", "landmarks") == "face"
    batch, batch_idx = [], []
    batch_size = getattr(estimator, "batch_size", 64)

    def flush():
        t = time.perf_counter()
        values = estimator.predict(np.stack(batch))
        for i, v in zip(batch_idx, values, strict=True):
            clip.aus[i] = v
        batch.clear()
        batch_idx.clear()
        timings["au"] += time.perf_counter() - t

    if authors is not None:
        clip.pose = []
        for t, img in _timed(frames, timings):
            tf = time.perf_counter()
            result = authors.process(img)
            timings["face"] += time.perf_counter() - tf
            i = len(clip.times)
            clip.times.append(float(t))
            clip.scores.append(result.score)
            clip.landmarks.append(None)
            clip.pose.append((result.pir, result.yir))
            if wants_faces and result.face is not None:
                batch.append(result.tensor())
                batch_idx.append(i)
                if len(batch) >= batch_size:
                    flush()
            if progress is not None:
                progress(1)
        if batch:
            flush()
        return clip
    analyzer.reset()
    face0 = analyzer.timings["face"]
    for t, img in _timed(frames, timings):
        obs = analyzer.process(img)
        i = len(clip.times)
        clip.times.append(float(t))
        clip.scores.append(obs.score)
        clip.landmarks.append(None if obs.landmarks is None else obs.landmarks.astype(np.float32))
        if wants_faces and obs.box is not None:
            tp = time.perf_counter()
            batch.append(preprocess_face(img, obs.box, obs.landmarks))
            batch_idx.append(i)
            timings["au"] += time.perf_counter() - tp
            if len(batch) >= batch_size:
                flush()
        if progress is not None:
            progress(1)
    if batch:
        flush()
    timings["face"] += analyzer.timings["face"] - face0
    return clip


def extract_features(
    video,
    *,
    estimator="geometry",
    baseline=None,
    checkpoint=None,
    fps: float | None = 30.0,
    baseline_seconds: float | None = None,
    analyzer=None,
    progress: Callable[[int], None] | None = None,
    preprocessing: str | None = None,
    landmarks=None,
) -> pd.DataFrame:
    """Per-frame face and AU features of one video, in the public release's schema.

    Parameters
    ----------
    video : str, path-like or fergi.video.VideoFrames
        The face video (any format PyAV reads) or already decoded frames.
    estimator : str or estimator, default "geometry"
        A name for :func:`create_au_estimator` or an estimator it returned.
    baseline : str, path-like or VideoFrames, optional
        A clip of the same person's neutral face (the study's 5 s baseline) used as
        the ``geometry`` estimator's neutral reference (may be ``video`` itself, for a
        clip that is neutral throughout). Preferred over
        ``baseline_seconds``; without either, the neutral face is taken from the
        video's least-expressive stable frames
        (:func:`fergi.au.least_expressive_frames`).
    checkpoint : str or path-like, optional
        Weights for the ``ir50`` estimator.
    fps : float or None, default 30.0
        Standardise the video to this frame rate first (None: native frames).
    baseline_seconds : float, optional
        Use the first seconds (> 0) of ``video`` itself as the neutral reference.
    analyzer : fergi.face.FaceAnalyzer, optional
        Reuse a face analyser (one per process is created otherwise).
    progress : callable, optional
        Called with 1 after every analysed frame.
    preprocessing : {"authors", "fergi"}, optional
        How faces are found and prepared. ``"authors"`` (the default for ``ir50``): the
        FERGI authors' own pipeline, exactly (:class:`fergi.face.AuthorsPreprocessor`:
        BlazeFace, margin crop, MobileFaceNet 68-point alignment, heNlm, padding), so
        their published IR-50 weights see the input they were trained on; the pose
        ratios come from the same 68 landmarks. ``"fergi"`` (the only one for
        ``geometry``, an option for ``ir50``): FaceMesh landmarks, fergi's rotation and
        contrast step (:func:`fergi.face.preprocess_face`), pose ratios from FaceMesh in
        the same oriented face frame.
    landmarks : str or path-like, optional
        MobileFaceNet weights for ``preprocessing="authors"`` (the authors'
        ``mobilefacenet_model_best.pth.tar``); default: fergi's model folder
        (:func:`fergi.face.models_dir`).

    Returns
    -------
    pandas.DataFrame
        Columns exactly ``FRAME_COLUMNS``: ``frame`` (1-based), ``timestamp`` (s,
        3 decimals), ``face_detection_confidence_score`` (0 without a face),
        pitch/yaw indicative ratios and the 12 AUs (-1 without a face, or where
        landmarks failed). ``attrs`` holds ``source``, ``timings`` (seconds per stage),
        ``n_frames``, ``face_share``, ``neutral_reference`` (how the neutral face was
        taken: ``"baseline_clip"``, ``"baseline_seconds"``, ``"least_expressive"``, the
        clip's own least-expressive stable frames, used when neither is given or the
        given one has no face, or ``"absolute"`` for estimators that need none) and
        ``neutral_reference_detail`` (which frames, in words) and ``preprocessing``.

    Raises
    ------
    fergi.FergiError
        The video (or baseline) cannot be read, or a bad estimator option.
    """
    if baseline_seconds is not None and not (
        np.isfinite(baseline_seconds) and baseline_seconds > 0
    ):
        # 0 or less would select no frame and silently fall back to the whole clip.
        raise FergiError(f"baseline_seconds must be above 0 seconds, got {baseline_seconds!r}")
    timings = dict.fromkeys(STAGES, 0.0)
    preprocessing = check_preprocessing(estimator, preprocessing)
    authors = _authors_preprocessor(landmarks) if preprocessing == "authors" else None
    if isinstance(estimator, str):
        options = {} if checkpoint is None else {"checkpoint": checkpoint}
        estimator = create_au_estimator(estimator, **options)
    analyzer = analyzer or _default_analyzer()
    frames, source = _frames_of(video, fps)
    clip = _analyse(frames, analyzer, estimator, timings, progress, authors)
    n = len(clip.times)
    if n == 0:
        raise FergiError(f"{source}: no video frames")

    t0 = time.perf_counter()
    lms = clip.landmark_array()
    _remember_landmarks(video, analyzer, lms)
    if clip.pose is not None:
        pir, yir = (np.asarray(v, dtype=float) for v in zip(*clip.pose, strict=True))
    else:
        pir, yir = pose_ratios(lms)
    aus = np.full((n, len(AU_NAMES)), np.nan)
    times = np.asarray(clip.times)
    if getattr(estimator, "input_kind", "landmarks") == "landmarks":
        est, neutral, detail = _neutral_reference(
            estimator, lms, times, baseline, baseline_seconds, fps, analyzer, timings, source,
            same=_same_video(baseline, video),
        )
        aus = est.predict(lms)
    else:
        if baseline is not None or baseline_seconds is not None:
            logger.info(
                "%s: the %s estimator is absolute; baseline ignored",
                source,
                type(estimator).__name__,
            )
        neutral, detail = "absolute", "none needed (appearance model)"
        for i, v in clip.aus.items():
            aus[i] = v
    timings["au"] += time.perf_counter() - t0

    scores = np.asarray(clip.scores, dtype=float)
    has_face = scores > 0
    has_lm = np.isfinite(lms).all(axis=(1, 2)) if clip.pose is None else has_face
    values = np.column_stack([pir, yir, aus])
    values[~has_lm, :2] = -1.0
    values[~np.isfinite(values)] = -1.0
    values[~has_face] = -1.0
    table = pd.DataFrame(values, columns=list(FRAME_COLUMNS[3:]))
    table.insert(0, "face_detection_confidence_score", np.where(has_face, scores, 0.0))
    table.insert(0, "timestamp", np.round(np.asarray(clip.times), 3))
    table.insert(0, "frame", np.arange(1, n + 1, dtype=np.int64))
    table.attrs.update(
        source=source,
        timings=timings,
        n_frames=n,
        face_share=float(has_face.mean()),
        neutral_reference=neutral,
        neutral_reference_detail=detail,
        preprocessing=preprocessing,
    )
    return table


def _span(frames: np.ndarray, times: np.ndarray) -> str:
    """``frames 1-18 (0.00-0.57 s)`` for 0-based consecutive frame indices."""
    lo, hi = int(frames[0]), int(frames[-1])
    return f"frames {lo + 1}-{hi + 1} ({times[lo]:.2f}-{times[hi]:.2f} s)"


def _same_video(baseline, video) -> bool:
    """Whether ``baseline`` is ``video`` itself (a neutral clip is its own reference)."""
    if baseline is None or baseline is video:
        return baseline is not None
    if isinstance(baseline, str | os.PathLike) and isinstance(video, str | os.PathLike):
        return Path(baseline).resolve() == Path(video).resolve()
    return False


def _remember_landmarks(video, analyzer, lms: np.ndarray) -> None:
    """Keep the landmarks of decoded frames with them, for use as another clip's baseline.

    The study measures each reaction clip against its image's baseline clip, which it
    has just analysed: this spares analysing those frames a second time. Landmarks do
    not depend on the AU estimator, only on the analyser (kept by identity).
    """
    if isinstance(video, VideoFrames):
        video.__dict__["_fergi_landmarks"] = (id(analyzer), lms)


def _known_landmarks(baseline, analyzer) -> np.ndarray | None:
    known = getattr(baseline, "__dict__", {}).get("_fergi_landmarks")
    if known is not None and known[0] == id(analyzer) and len(known[1]) == len(baseline):
        return known[1]
    return None


def _neutral_reference(
    estimator, lms, times, baseline, baseline_seconds, fps, analyzer, timings, source, same=False
):
    """A landmark estimator fitted to the neutral face, the reference kind and detail.

    Preference order: the baseline clip, the first ``baseline_seconds`` of the video,
    then the video's least-expressive stable frames (also when the given reference has
    no face, with a warning). ``same``: the baseline is the video itself (the study's
    baseline clips), whose landmarks are already at hand.
    """
    if baseline is not None:
        known = _known_landmarks(baseline, analyzer)
        if same:
            reference, base_source = lms, source
        elif known is not None:
            reference, base_source = known, baseline.source
        else:
            base_frames, base_source = _frames_of(baseline, fps)
            ref_timings = dict.fromkeys(STAGES, 0.0)
            reference = _analyse(
                base_frames, analyzer, estimator, ref_timings, None
            ).landmark_array()
            for k, v in ref_timings.items():
                timings[k] += v
        n_face = int(np.isfinite(reference).all(axis=(1, 2)).sum())
        if n_face:
            detail = f"{Path(base_source).name} ({n_face} face frames)"
            return copy.deepcopy(estimator).fit(reference), "baseline_clip", detail
        logger.warning(
            "%s: no face in the baseline clip %s; using the least-expressive frames",
            source,
            base_source,
        )
    elif baseline_seconds is not None:
        first = np.flatnonzero(times < baseline_seconds)
        ok = np.isfinite(lms[first]).all(axis=(1, 2))
        if ok.any():
            detail = f"first {baseline_seconds:g} s, {_span(first, times)}"
            return copy.deepcopy(estimator).fit(lms[first]), "baseline_seconds", detail
        logger.warning(
            "%s: no face in the first %g s; using the least-expressive frames",
            source,
            baseline_seconds,
        )
    if not np.isfinite(lms).all(axis=(1, 2)).any():
        return estimator, "least_expressive", "no face in the video"
    if not hasattr(estimator, "fit_least_expressive"):
        # A third-party landmark estimator: it handles its own reference.
        return estimator, "absolute", f"{type(estimator).__name__} chooses its own"
    est = copy.deepcopy(estimator).fit_least_expressive(lms)
    return est, "least_expressive", _span(est.reference_frames_, times)
