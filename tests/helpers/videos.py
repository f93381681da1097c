"""Small videos made by tests: a smiling face clip set and face-less gray clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def gray_clip(path: Path, n_frames: int, level: int = 70) -> Path:
    """A small face-less clip: quick to extract, its row count tells it apart."""
    from fergi.video import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, [np.full((64, 96, 3), level, np.uint8)] * n_frames)
    return path


def write_study_videos(root: Path) -> Path:
    """A study-like folder: two reaction clips of a smile (mp4, webm) and a face-less room video.

    ``root/p1/session_1/reaction_clip_{1,2}.*`` hold the same 0.8 s of the astronaut (the
    second reversed), ``root/p1/room.y4m`` five gray frames.
    """
    from skimage import data

    from fergi.face import reaction_frames
    from fergi.video import write_video

    frames = list(reaction_frames(data.astronaut(), neutral_s=0.4, expression_s=0.4, smile=0.8))
    (root / "p1" / "session_1").mkdir(parents=True)
    write_video(root / "p1" / "session_1" / "reaction_clip_1.mp4", frames)
    write_video(root / "p1" / "session_1" / "reaction_clip_2.webm", frames[::-1])
    write_video(root / "p1" / "room.y4m", [np.full((120, 160, 3), 70, np.uint8)] * 5)
    return root
