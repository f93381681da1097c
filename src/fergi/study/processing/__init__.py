"""The study's processing: from a recording to clips, per-frame features, activation
values and labels, and the science the admin pages show.

One clip path for the server and the library: a recording is decoded by
:class:`fergi.video.SegmentDecoder` (chunk by chunk as it is uploaded in the server's
real-time processing, whole in :func:`process_session_media` and
:func:`extract_recording_features`) and each image's clips are analysed from the decoded
frames in memory, so that both give the same features for the same recording.

Import rule: imports :mod:`fergi.study.store`, :mod:`fergi.study.protocol`,
``fergi.study._settings`` and the library (``fergi.video``, ``fergi.au``,
``fergi.features``, ``fergi.preference``, ``fergi.datasets``); never
:mod:`~fergi.study.jobs` or :mod:`~fergi.study.web`, which import it by the names below.
"""

from fergi.study.processing._analysis import (
    ImageWindows,
    analyse_image,
    decode_image_clips,
    extract_recording_features,
    image_windows,
)
from fergi.study.processing._media import (
    ClipWindow,
    assemble_chunks,
    clip_windows,
    cut_clips,
    standardize_video,
)
from fergi.study.processing._pipeline import (
    STAGES,
    SessionResult,
    StageError,
    Stages,
    process_session_media,
)
from fergi.study.processing._realtime import (
    LiveDecoders,
    check_segment,
    clip_validity,
    clip_video,
    has_recording_fault,
    is_short_clip,
    process_ready_clips,
)
from fergi.study.processing._science import (
    CI_LEVEL,
    CI_METHOD,
    agreement,
    agreement_counts,
    binomial_ci,
    clip_curves,
    clip_reasons,
    clip_valid,
    clip_windows_of,
    image_onsets,
    json_number,
    session_pairs,
    session_status,
    validity_rules,
)
from fergi.study.processing._tables import (
    LABEL_COLUMNS,
    activations_stage,
    frames_table,
    labels_stage,
    session_features_provenance,
    session_provenance,
)

__all__ = [
    "CI_LEVEL",
    "CI_METHOD",
    "LABEL_COLUMNS",
    "STAGES",
    "ClipWindow",
    "ImageWindows",
    "LiveDecoders",
    "SessionResult",
    "StageError",
    "Stages",
    "activations_stage",
    "agreement",
    "agreement_counts",
    "analyse_image",
    "assemble_chunks",
    "binomial_ci",
    "check_segment",
    "clip_curves",
    "clip_reasons",
    "clip_valid",
    "clip_validity",
    "clip_video",
    "clip_windows",
    "clip_windows_of",
    "cut_clips",
    "decode_image_clips",
    "extract_recording_features",
    "frames_table",
    "has_recording_fault",
    "image_onsets",
    "image_windows",
    "is_short_clip",
    "json_number",
    "labels_stage",
    "process_ready_clips",
    "process_session_media",
    "session_features_provenance",
    "session_pairs",
    "session_provenance",
    "session_status",
    "standardize_video",
    "validity_rules",
]
