"""From a session recording to per-frame features, activation values and labels.

:func:`process_session_media` runs the server's processing of one recording in
stages, each reported to a callback so the study's worker can show its status:

``assemble``     (only when given chunks) concatenate the MediaRecorder chunks
``standardize``  re-time the recording to a constant 30 fps
``clips``        cut each image's baseline and reaction clip by the event times
``features``     per-frame features of every clip (release format CSV)
``activations``  AU activation value of every clip (paper eqs. 1-2)
``labels``       pairwise preference labels from the annotation model

A failing stage raises :class:`StageError` naming the stage; nothing is deleted, so
the inputs and every earlier stage's outputs stay for a retry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fergi._errors import FergiError

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "SessionResult", "StageError", "process_session_media"]

STAGES = ("assemble", "standardize", "clips", "features", "activations", "labels")

OnStage = Callable[[str, str], None]


class StageError(FergiError):
    """A processing stage failed; ``stage`` names it.

    The message is one line: ``stage 'features' failed: <what went wrong>``.
    """

    def __init__(self, stage: str, message: str):
        super().__init__(f"stage {stage!r} failed: {message}")
        self.stage = stage


@dataclass
class SessionResult:
    """What :func:`process_session_media` produced.

    Attributes
    ----------
    clips : dict
        ``{image_index: {"baseline": Path, "reaction": Path}}`` (mp4 clips at ``fps``).
    frames : dict
        ``{(image_index, "baseline"|"reaction"): DataFrame}`` with exactly the
        release's per-frame columns (``FRAME_COLUMNS``).
    activations : pandas.DataFrame
        One row per clip: participant, session, image, clip, n_frames,
        valid_frame_share, clip_valid, ``AU*_activation_value``.
    labels : pandas.DataFrame
        Pairwise labels between the session's valid images (participant, session,
        image_a, image_b, preferred, score_difference, confident).
    recording : Path
        The standardised recording.
    feature_files : dict
        ``{(image_index, clip): Path}`` of the per-frame CSV files
        (``{clip}_clip_{image}_features.csv``).
    """

    clips: dict[int, dict[str, Path]]
    frames: dict[tuple[int, str], Any]
    activations: Any
    labels: Any
    recording: Path | None = None
    feature_files: dict[tuple[int, str], Path] = field(default_factory=dict)


class _Stages:
    """Run stages with status callbacks and uniform error reporting."""

    def __init__(self, on_stage: OnStage | None):
        self.on_stage = on_stage

    def _report(self, name: str, status: str) -> None:
        if self.on_stage is not None:
            self.on_stage(name, status)

    def run(self, name: str, function: Callable[[], Any]) -> Any:
        self._report(name, "running")
        try:
            result = function()
        except FergiError as exc:
            self._report(name, "failed")
            raise StageError(name, str(exc)) from exc
        except Exception as exc:  # a bug or an environment problem: still name the stage
            logger.exception("stage %r failed", name)
            self._report(name, "failed")
            raise StageError(name, f"{type(exc).__name__}: {exc}") from exc
        self._report(name, "done")
        return result


def _fresh(target: Path, *sources: Path) -> bool:
    """Whether ``target`` exists and is at least as new as every source (like make)."""
    if not target.is_file():
        return False
    mtime = target.stat().st_mtime_ns
    return all(source.is_file() and source.stat().st_mtime_ns <= mtime for source in sources)


def _existing_clips(events, out_dir: Path, recording: Path, baseline_s, reaction_s, fps):
    """The clips of an earlier run, when all of them are there and up to date."""
    from fergi.study._media import clip_windows

    clips: dict[int, dict[str, Path]] = {}
    for window in clip_windows(events, baseline_s=baseline_s, reaction_s=reaction_s, fps=fps):
        path = out_dir / f"{window.kind}_clip_{window.image_index}.mp4"
        if not _fresh(path, recording):
            return None
        clips.setdefault(window.image_index, {})[window.kind] = path
    return {image: pair for image, pair in clips.items() if len(pair) == 2} or None


def _features_stage(clips, out_dir: Path, *, estimator, checkpoint, fps, resume):
    import pandas as pd

    from fergi.au import create_au_estimator, extract_features, write_features
    from fergi.datasets import FRAME_COLUMNS

    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(estimator, str):
        # one estimator for the session: a learned one loads its weights only once
        options = {} if checkpoint is None else {"checkpoint": checkpoint}
        estimator = create_au_estimator(estimator, **options)
    frames: dict[tuple[int, str], pd.DataFrame] = {}
    files: dict[tuple[int, str], Path] = {}
    for image, pair in sorted(clips.items()):
        for clip in ("baseline", "reaction"):
            video = Path(pair[clip])
            target = out_dir / f"{clip}_clip_{image}_features.csv"
            if resume and _fresh(target, video):
                table = pd.read_csv(target)
                if list(table.columns) == list(FRAME_COLUMNS):
                    frames[(image, clip)], files[(image, clip)] = table, target
                    continue
            # the image's own baseline clip is the neutral face for its reaction clip,
            # and for itself (features_meta.json says "baseline_clip" for the session)
            baseline = Path(pair["baseline"])
            try:
                table = extract_features(video, estimator=estimator, baseline=baseline, fps=fps)
            except FergiError as exc:
                raise FergiError(f"{clip} clip of image {image}: {exc}") from exc
            # the release writes baseline clips with 2 decimals and reaction clips with 3
            write_features(table, target, decimals=2 if clip == "baseline" else 3)
            # continue from the file as saved (release rounding), so that activations
            # are the same on a resumed run and when recomputed from an export
            frames[(image, clip)], files[(image, clip)] = pd.read_csv(target), target
    return frames, files


def _activations_stage(frames, *, participant: str, session: int):
    from fergi.features import compute_activation_values

    table = _frames_table(frames, participant=participant, session=session)
    if table is None:
        raise FergiError("no clips to summarise")
    return compute_activation_values(table)


LABEL_COLUMNS = (
    "participant",
    "session",
    "image_a",
    "image_b",
    "preferred",
    "score_difference",
    "confident",
)


def _frames_table(frames, *, participant: str, session: int):
    """The per-frame tables of a session's clips as one keyed table (``load_frames`` layout)."""
    import pandas as pd

    tables = []
    for (image, clip), table in sorted(frames.items()):
        keyed = table.copy()
        keyed.insert(0, "clip", clip)
        keyed.insert(0, "image", int(image))
        keyed.insert(0, "session", int(session))
        keyed.insert(0, "participant", str(participant))
        tables.append(keyed)
    return pd.concat(tables, ignore_index=True) if tables else None


def session_provenance(estimator, checkpoint=None):
    """Provenance of a session's features: each reaction clip is measured against its own
    image's baseline clip (``baseline_clip``; ``absolute`` for estimators without one)."""
    from fergi.au import features_provenance

    spec = getattr(estimator, "spec", None)
    if spec is None and isinstance(estimator, str):
        from fergi.au import get_au_estimator_spec

        spec = get_au_estimator_spec(estimator)
    if spec is None:
        from fergi.datasets import FeatureProvenance

        return FeatureProvenance("unknown")
    return features_provenance(
        estimator, checkpoint,
        neutral_reference="baseline_clip" if spec.needs_reference else "absolute",
    )


def _labels_stage(activations, *, model, invalid_images, frames=None, provenance=None):
    """Pairwise labels of a session's valid images.

    With an :class:`~fergi.preference.AnnotationModel` (the default is scale-free), the
    session's own baseline clips normalise its reactions; its per-frame ``frames`` feed
    the quantile fallback when too few baseline clips are valid.
    """
    import pandas as pd

    try:
        from fergi.preference import AnnotationModel, ReactionData, annotate_reactions, load_model
    except ImportError:
        raise FergiError(
            "annotation model unavailable (fergi.preference.annotate_pairs is not installed)"
        ) from None
    if model is None:
        try:
            model = load_model(None)
        except FergiError as exc:
            raise FergiError(f"annotation model unavailable ({exc})") from exc
    reaction = activations[
        (activations["clip"] == "reaction")
        & activations["clip_valid"].astype(bool)
        & ~activations["image"].isin(set(invalid_images))
    ]
    reaction = reaction.dropna(subset=["AU4_activation_value", "AU12_activation_value"])
    if len(reaction) < 2:
        logger.info("fewer than 2 valid reaction clips: no pairs to label")
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    from fergi.datasets import FeatureProvenance

    keys = ["participant", "session", "image"]
    clips = activations.assign(participant=activations["participant"].astype(str))
    participant, session = str(clips["participant"].iloc[0]), int(clips["session"].iloc[0])
    data = ReactionData(
        clips=clips,
        images=clips.loc[clips["clip"] == "reaction", keys].reset_index(drop=True),
        invalid={(participant, session, int(i)) for i in invalid_images},
        provenance=provenance or FeatureProvenance("unknown"),
        frames=frames,
        source=f"participant {participant} session {session}",
    )
    if not isinstance(model, AnnotationModel):
        # A bare valence model from an older model file: raw values, as before.
        from fergi.preference import annotate_pairs

        return annotate_pairs(reaction.reset_index(drop=True), model)
    return annotate_reactions(data, model)


def process_session_media(
    recording_path: str | os.PathLike | Sequence[str | os.PathLike],
    events: Iterable[Mapping[str, Any] | Any],
    work_dir: str | os.PathLike,
    *,
    estimator: str = "geometry",
    model: Any = None,
    fps: float = 30,
    on_stage: OnStage | None = None,
    baseline_s: float = 5.0,
    reaction_s: float = 5.0,
    checkpoint: str | os.PathLike | None = None,
    participant: str = "000",
    session: int = 1,
    invalid_images: Iterable[int] = (),
    resume: bool = False,
    min_frame_share: float = 0.8,
) -> SessionResult:
    """Process one session recording into clips, features, activations and labels.

    Parameters
    ----------
    recording_path : path or sequence of paths
        The recording (webm from the browser, or any video), or the chunks of one
        MediaRecorder stream in order (then an ``assemble`` stage runs first).
    events : iterable of dict
        ``{"image_index", "kind": "baseline_start"|"image_shown"|"image_hidden",
        "video_time"}`` with times in seconds from video time zero (the first frame).
    work_dir : path
        Where outputs go: ``recording.webm`` (assembled), ``recording_30fps.mp4``,
        ``clips/``, ``features/``. Created if needed.
    estimator : str
        AU estimator for :func:`fergi.au.extract_features` (``"geometry"``).
    model : object, optional
        The annotation model for :func:`fergi.preference.annotate_pairs` (None: the
        shipped default).
    fps : float
        Standard frame rate (30).
    on_stage : callable, optional
        ``on_stage(stage, status)`` with status ``"running"``, ``"done"`` or
        ``"failed"``, for every stage of :data:`STAGES` that runs.
    baseline_s, reaction_s : float
        Clip durations (5 s each in the paper); use the study's durations.
    checkpoint : path, optional
        Weights for a learned AU estimator.
    participant, session : str, int
        Key columns of the activation and label tables.
    invalid_images : iterable of int
        Images to leave out of the labels (all-black safety-checker outputs).
    resume : bool
        Reuse the outputs of an earlier run in ``work_dir`` that are at least as new
        as their inputs (like make), so a retry after a failed stage only redoes
        what is needed. Stages that reuse outputs still report running/done.
    min_frame_share : float
        A clip with fewer frames than this share of its window (``baseline_s`` or
        ``reaction_s`` times ``fps``: the recording ended or the camera stopped during
        it) is invalid (``clip_valid`` false), and its image gets no label.

    Returns
    -------
    SessionResult

    Raises
    ------
    StageError
        A stage failed (a :class:`~fergi.FergiError`, message ``stage 'X' failed:
        ...``). Inputs and earlier outputs are kept.
    """
    from fergi.study._media import assemble_chunks, cut_clips, standardize_video

    work = Path(work_dir)
    stages = _Stages(on_stage)
    events = list(events)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StageError("standardize", f"{work}: cannot create the work folder ({exc})") from exc

    if isinstance(recording_path, str | os.PathLike):
        recording = Path(recording_path)
    else:
        chunks = [Path(p) for p in recording_path]
        assembled = work / "recording.webm"
        recording = stages.run(
            "assemble",
            lambda: (
                assembled
                if resume and _fresh(assembled, *chunks)
                else assemble_chunks(chunks, assembled)
            ),
        )

    standardized_path = work / "recording_30fps.mp4"
    standardized = stages.run(
        "standardize",
        lambda: (
            standardized_path
            if resume and _fresh(standardized_path, recording)
            else standardize_video(recording, standardized_path, fps=fps)
        ),
    )

    def clips_stage():
        if resume:
            kept = _existing_clips(
                events, work / "clips", standardized, baseline_s, reaction_s, fps
            )
            if kept:
                return kept
        return cut_clips(
            standardized,
            events,
            work / "clips",
            baseline_s=baseline_s,
            reaction_s=reaction_s,
            fps=fps,
        )

    clips = stages.run("clips", clips_stage)
    frames, files = stages.run(
        "features",
        lambda: _features_stage(
            clips,
            work / "features",
            estimator=estimator,
            checkpoint=checkpoint,
            fps=fps,
            resume=resume,
        ),
    )
    expected = {"baseline": round(baseline_s * fps), "reaction": round(reaction_s * fps)}

    def activations_stage():
        act = _activations_stage(frames, participant=participant, session=session)
        short = act["n_frames"].to_numpy() < min_frame_share * act["clip"].map(expected).to_numpy()
        act["clip_valid"] = act["clip_valid"].astype(bool).to_numpy() & ~short
        for image, clip, n in act.loc[short, ["image", "clip", "n_frames"]].itertuples(index=False):
            logger.warning("%s clip of image %d: %d of %d frames, invalid", clip, image, n, expected[clip])
        return act, {int(i) for i in act.loc[short, "image"]}

    activations, short_images = stages.run("activations", activations_stage)
    labels = stages.run(
        "labels",
        lambda: _labels_stage(
            activations,
            model=model,
            invalid_images=sorted(set(invalid_images) | short_images),
            frames=_frames_table(frames, participant=participant, session=session),
            provenance=session_provenance(estimator, checkpoint),
        ),
    )
    return SessionResult(
        clips=clips,
        frames=frames,
        activations=activations,
        labels=labels,
        recording=standardized,
        feature_files=files,
    )
