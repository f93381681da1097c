"""Time process_session_media on a realistic synthetic session (5 images, 5 s + 5 s clips, 640x480).

Usage: python benchmarks/bench_studylib.py   (prints the seconds per processing stage)
"""

import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data

from fergi.face._synthetic import reaction_frames
from fergi.preference import AUcombValence
from fergi.study._pipeline import process_session_media
from fergi.video import write_video

root = Path(tempfile.mkdtemp())
face = data.astronaut()
frames = []
events = []
for image, (sm, fr) in {1: (1, 0), 2: (0, 1), 3: (0, 0), 4: (0.6, 0), 5: (0, 0.6)}.items():
    t0 = len(frames) / 30
    frames += reaction_frames(face, neutral_s=5, expression_s=5, smile=sm, frown=fr)
    frames += reaction_frames(face, neutral_s=3, expression_s=0)
    events += [
        dict(image_index=image, kind="baseline_start", video_time=t0 + 0.01),
        dict(image_index=image, kind="image_shown", video_time=t0 + 5.01),
        dict(image_index=image, kind="image_hidden", video_time=t0 + 10.01),
    ]
rng = np.random.default_rng(0)
keep = [i for i in range(len(frames)) if i == 0 or rng.random() > 0.1]
ts = np.array([0.0] + [i / 30 + rng.uniform(0, 0.004) for i in keep[1:]])
write_video(root / "rec.webm", (frames[i] for i in keep), timestamps=ts)
print(
    f"recording: {ts[-1]:.1f} s, {len(keep)} VFR frames, {(root / 'rec.webm').stat().st_size / 1e6:.1f} MB"
)
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
)
for name in ("standardize", "clips", "features", "activations", "labels"):
    print(f"{name:12s} {marks[(name, 'done')] - marks[(name, 'running')]:6.1f} s")
print(f"total        {time.perf_counter() - t:6.1f} s")
print(r.labels.to_string())
