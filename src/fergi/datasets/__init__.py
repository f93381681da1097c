"""The FERGI release: fetch it, load it into tidy tables, and name its columns."""

from fergi.datasets._fetch import (
    ARCHIVE_URL,
    COMMIT,
    default_cache_dir,
    fetch_fergi,
    load_manifest,
    verify_release,
)
from fergi.datasets._load import (
    list_clip_files,
    load_frames,
    load_images,
    load_invalid_images,
    load_valid_sessions,
)
from fergi.datasets._schema import (
    ACTIVATION_COLUMNS,
    AU_NAMES,
    CLIP_KINDS,
    EMOTIONS,
    FRAME_COLUMNS,
    IMAGE_COLUMNS,
    ISSUES,
    KEY_COLUMNS,
    RATINGS,
    SCORE_COLUMNS,
    activation_column,
)

__all__ = [
    "ACTIVATION_COLUMNS",
    "ARCHIVE_URL",
    "AU_NAMES",
    "CLIP_KINDS",
    "COMMIT",
    "EMOTIONS",
    "FRAME_COLUMNS",
    "IMAGE_COLUMNS",
    "ISSUES",
    "KEY_COLUMNS",
    "RATINGS",
    "SCORE_COLUMNS",
    "activation_column",
    "default_cache_dir",
    "fetch_fergi",
    "list_clip_files",
    "load_frames",
    "load_images",
    "load_invalid_images",
    "load_manifest",
    "load_valid_sessions",
    "verify_release",
]
