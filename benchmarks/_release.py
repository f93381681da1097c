"""Where the release benchmarks find the public FERGI release, and its --quick subset."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "fergi-public"

# 002 is screened out (AU4 at rest), 001 and 005 are kept: screening and a two-fold LOPO
# still run, on about a tenth of the release.
QUICK_PARTICIPANTS = ("001", "002", "005")


def default_data() -> str | None:
    """``$FERGI_DATA``, else ``../shared/fergi-public`` beside the repository when present."""
    return os.environ.get("FERGI_DATA") or (str(DEFAULT) if DEFAULT.exists() else None)


def release_subset(root, participants, dest) -> Path:
    """A release-layout folder in ``dest`` with only ``participants`` (linked, not copied).

    The feature files and survey tables are symbolic links into ``root``, and the two JSON
    files of ``preparation/`` are filtered, so every loader reads the subset as it reads
    the release (a linked file of the release is still recognised as the release's).
    """
    root, dest = Path(root), Path(dest)
    participants = [str(p) for p in participants]
    (dest / "data").mkdir(parents=True, exist_ok=True)
    tables = dest / "preparation" / "preprocessed_image_data"
    tables.mkdir(parents=True, exist_ok=True)
    for p in participants:
        (dest / "data" / p).symlink_to(root / "data" / p, target_is_directory=True)
        (tables / f"{p}.csv").symlink_to(root / "preparation" / "preprocessed_image_data" / f"{p}.csv")
    for name in ("valid_sessions.json", "invalid_images.json"):
        document = json.loads((root / "preparation" / name).read_text())
        kept = {p: v for p, v in document.items() if p in participants}
        (dest / "preparation" / name).write_text(json.dumps(kept, indent=1))
    return dest
