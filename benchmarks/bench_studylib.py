"""Time process_session_media on a realistic synthetic session (5 images, 5 s + 5 s clips, 640x480).

Usage: python benchmarks/bench_studylib.py [--quick]   (prints the seconds per processing stage)

``--quick`` (what the test suite runs): 2 images (a smile, a frown) with 1 s + 1 s clips.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

STAGES = ("standardize", "clips", "features", "activations", "labels")
# image index: (smile, frown) strengths of its reaction.
IMAGES = {1: (1, 0), 2: (0, 1), 3: (0, 0), 4: (0.6, 0), 5: (0, 0.6)}
FULL = {"images": 5, "clip_s": 5.0, "gap_s": 3.0}
QUICK = {"images": 2, "clip_s": 1.0, "gap_s": 0.5}


def make_recording(path: Path, images: int, clip_s: float, gap_s: float):
    """A VFR webm of ``images`` baseline + reaction pairs (as a browser records) and its events."""
    import numpy as np
    from skimage import data

    from fergi.face._synthetic import reaction_frames
    from fergi.video import write_video

    face = data.astronaut()
    frames, events = [], []
    for image in range(1, images + 1):
        smile, frown = IMAGES[image]
        t0 = len(frames) / 30
        frames += reaction_frames(face, neutral_s=clip_s, expression_s=clip_s, smile=smile, frown=frown)
        frames += reaction_frames(face, neutral_s=gap_s, expression_s=0)
        events += [
            dict(image_index=image, kind="baseline_start", video_time=t0 + 0.01),
            dict(image_index=image, kind="image_shown", video_time=t0 + clip_s + 0.01),
            dict(image_index=image, kind="image_hidden", video_time=t0 + 2 * clip_s + 0.01),
        ]
    # Drop about 10 % of the frames and jitter the rest, like MediaRecorder under load.
    rng = np.random.default_rng(0)
    keep = [i for i in range(len(frames)) if i == 0 or rng.random() > 0.1]
    ts = np.array([0.0] + [i / 30 + rng.uniform(0, 0.004) for i in keep[1:]])
    write_video(path, (frames[i] for i in keep), timestamps=ts)
    return ts, events


def main(argv=None) -> dict:
    """Print the seconds per stage and the labels; return the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} (for tests)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL

    from fergi.preference import AUcombValence
    from fergi.study._pipeline import process_session_media

    with tempfile.TemporaryDirectory(prefix="fergi-bench-") as tmp:
        root = Path(tmp)
        ts, events = make_recording(root / "rec.webm", **size)
        megabytes = (root / "rec.webm").stat().st_size / 1e6
        print(f"recording: {ts[-1]:.1f} s, {len(ts)} VFR frames, {megabytes:.1f} MB")
        marks = {}

        def on_stage(name, status):
            marks[(name, status)] = time.perf_counter()

        t = time.perf_counter()
        r = process_session_media(
            root / "rec.webm",
            events,
            root / "work",
            model=AUcombValence(k=1.0, w_au4=0.5, threshold=0.1),
            on_stage=on_stage,
            baseline_s=size["clip_s"],
            reaction_s=size["clip_s"],
        )
        total = time.perf_counter() - t
    stages = {name: marks[(name, "done")] - marks[(name, "running")] for name in STAGES}
    for name, seconds in stages.items():
        print(f"{name:12s} {seconds:6.1f} s")
    print(f"total        {total:6.1f} s")
    print(r.labels.to_string())
    return {
        "recording_s": float(ts[-1]),
        "frames": len(ts),
        "megabytes": megabytes,
        "stages_s": stages,
        "total_s": total,
        "labels": r.labels,
    }


if __name__ == "__main__":
    main()
