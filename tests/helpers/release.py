"""A small release-layout folder for tests (importable: ``from _release_folder import make_release``)."""

from __future__ import annotations

from pathlib import Path


def make_release(root: Path, clips: dict, images: dict | None = None) -> Path:
    """Write a small release-layout folder for tests.

    ``clips`` maps (participant, session, image, kind) to a per-frame DataFrame;
    ``images`` maps participant to an image-table DataFrame (release columns).
    """
    import json

    sessions: dict = {}
    for (participant, session, image, kind), frames in clips.items():
        folder = root / "data" / participant / f"session_{session}"
        folder.mkdir(parents=True, exist_ok=True)
        frames.to_csv(folder / f"{kind}_clip_{image}_features.csv", index=False)
        sessions.setdefault(participant, set()).add(session)
    prep = root / "preparation"
    (prep / "preprocessed_image_data").mkdir(parents=True, exist_ok=True)
    (prep / "valid_sessions.json").write_text(
        json.dumps({p: sorted(s) for p, s in sessions.items()})
    )
    (prep / "invalid_images.json").write_text(
        json.dumps({p: {str(s): [] for s in ss} for p, ss in sessions.items()})
    )
    for participant, table in (images or {}).items():
        table.to_csv(prep / "preprocessed_image_data" / f"{participant}.csv", index=False)
    return root
