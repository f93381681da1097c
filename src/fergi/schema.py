"""Column names of the FERGI tables (the names of the public release)."""

AU_NAMES: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU9", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26",
)
"""The 12 DISFA action units estimated for every frame."""

FRAME_COLUMNS: tuple[str, ...] = (
    "frame",
    "timestamp",
    "face_detection_confidence_score",
    "pitch_indicative_ratio",
    "yaw_indicative_ratio",
    *AU_NAMES,
)
"""Columns of a per-frame feature file, in the release's order."""

EMOTIONS: tuple[str, ...] = (
    "disappointed", "satisfied", "surprised", "disgusted", "amused", "scared",
)
"""The six emotions of the annotation survey (Fig. S6)."""

ISSUES: tuple[str, ...] = (
    "unmentioned_content",
    "repeated_generation",
    "existence_of_body",
    "blurry",
    "psychological_discomfort",
    "sexual_content",
    "violent_content",
    "defamatory_content",
)
"""The eight image issues of the annotation survey (Fig. S6)."""

RATINGS: tuple[str, ...] = ("overall_rating", "alignment_rating", "fidelity_rating")

SCORE_COLUMNS: tuple[str, ...] = (
    "CLIP_score", "Aesthetic_score", "BLIP_score", "ImageReward_score", "PickScore", "HPS_V2_score",
)
"""The six baseline scores of the release, in its order."""

IMAGE_COLUMNS: tuple[str, ...] = (
    "session_index",
    "image_index",
    *RATINGS,
    *ISSUES,
    *EMOTIONS,
    "rank_score",
    *SCORE_COLUMNS,
)
"""Columns of ``preparation/preprocessed_image_data/<participant>.csv``."""

KEY_COLUMNS: tuple[str, ...] = ("participant", "session", "image")
"""Keys of one image in the tidy tables."""

CLIP_KINDS: tuple[str, ...] = ("baseline", "reaction")
"""The two clips of one image presentation: the baseline before it and the reaction to it."""

CLIP_MIN_VALID_SHARE: float = 0.8
"""A clip is valid when at least this share of its frames is valid (frame validity:
confident, frontal face): the paper (Sec. 5) drops a clip when more than 20 % of its
frames are excluded, and the authors' ``config.py``, which made the release, has
``valid_proportion_threshold = 0.8``. Not the study's ``clip_min_frame_share`` (the share of a clip's window the camera
actually recorded), whose default is also 0.8."""


def activation_column(au: str) -> str:
    """Name of the activation-value column of ``au`` (``"AU12"`` -> ``"AU12_activation_value"``)."""
    return f"{au}_activation_value"


ACTIVATION_COLUMNS: tuple[str, ...] = tuple(activation_column(au) for au in AU_NAMES)
